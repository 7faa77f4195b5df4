"""`enclave-kms platform …`: create and drive the simulated SGX platform.

Everything printed here is public (fingerprints, FMSPC, TCB); keys never leave the platform
directory. The simulated root protects nothing: verifiers accept it only when named.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from enclave_kms.attestation.collateral import collateral_to_json
from enclave_kms.errors import UsageError
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.pcs import DEFAULT_VALIDITY, PcsResponse, TcbScenario
from enclave_kms.platform.sim.platform import (
    DEFAULT_CPU_SVN,
    DEFAULT_FMSPC,
    DEFAULT_PCE_SVN,
    SealRule,
    SimPlatform,
    default_platform_dir,
)
from enclave_kms.sgx.report import AttributeFlags, Attributes

app = typer.Typer(no_args_is_help=True)

_DIR_HELP = (
    "Platform directory (default: $ENCLAVE_KMS_PLATFORM_DIR, "
    "else ~/.local/share/enclave-kms/platform)."
)
DirOption = Annotated[Path | None, typer.Option("--dir", help=_DIR_HELP)]
OutOption = Annotated[Path, typer.Option("--out", help="Output file.")]
_SCENARIOS = ", ".join(s.value for s in TcbScenario)


def _dir(value: Path | None) -> Path:
    return value if value is not None else default_platform_dir()


def _hex(value: str, what: str, size: int | None = None, *, max_size: int | None = None) -> bytes:
    text = value.strip().removeprefix("0x")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{what}: not hex") from None
    if size is not None and len(data) != size:
        raise UsageError(f"{what}: expected {size} bytes, got {len(data)}")
    if max_size is not None and len(data) > max_size:
        raise UsageError(f"{what}: at most {max_size} bytes, got {len(data)}")
    return data


def _write_public(path: Path, data: bytes) -> None:
    """Write a public artefact (root certificate, collateral, quote): mode 0644."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _summary(platform: SimPlatform) -> dict[str, object]:
    cfg = platform.config
    root = platform.trust_root()
    return {
        "directory": str(platform.path),
        "simulated": True,
        "root_subject": root.certificate.subject.rfc4514_string(),
        "root_spki_sha256": root.spki_sha256,
        "fmspc": cfg.fmspc.hex().upper(),
        "pce_id": cfg.pce_id.hex().upper(),
        "tcb_components": list(cfg.cpu_svn),
        "cpu_svn": cfg.cpu_svn.hex(),
        "pce_svn": cfg.pce_svn,
        "tcb_scenario": cfg.tcb_scenario.value,
        "seal_rule": cfg.seal_rule.value,
        "qe_mr_signer": cfg.qe_mr_signer.hex(),
        "qe_isv_svn": cfg.qe_identity.isv_svn,
        "pck_serial": f"{platform.pki.pck_cert.serial_number:x}",
        "created": cfg.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _print_summary(platform: SimPlatform) -> None:
    for key, value in _summary(platform).items():
        shown = " ".join(str(v) for v in value) if isinstance(value, list) else value
        typer.echo(f"{key:17} {shown}")


@app.command()
def init(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    directory: DirOption = None,
    fmspc: Annotated[str, typer.Option(help="FMSPC (12 hex digits).")] = DEFAULT_FMSPC.hex(),
    cpu_svn: Annotated[
        str, typer.Option(help="CPUSVN = TCB components (32 hex digits).")
    ] = DEFAULT_CPU_SVN.hex(),
    pce_svn: Annotated[int, typer.Option(help="PCESVN of the simulated PCE.")] = DEFAULT_PCE_SVN,
    tcb_scenario: Annotated[
        str, typer.Option(help=f"Initial TCB scenario ({_SCENARIOS}).")
    ] = TcbScenario.UP_TO_DATE.value,
    seal_rule: Annotated[
        str, typer.Option(help="Seal-key rule: sgx, or gramine (current CPUSVN/ISVSVN only).")
    ] = SealRule.SGX.value,
    root_from: Annotated[
        Path | None,
        typer.Option(
            help="Another simulated platform whose root (and FMSPC, QE identity, TCB scenario) "
            "this CPU shares, as real CPUs share Intel's; its own fuse secret and PCK are new."
        ),
    ] = None,
) -> None:
    """Create a simulated platform: fuse secret, PCK key, QE key and a simulated PKI."""
    if not 0 <= pce_svn < 1 << 16:
        raise UsageError("--pce-svn: must be 0..65535")
    vendor = SimPlatform.open(root_from) if root_from is not None else None
    platform = SimPlatform.init(
        _dir(directory),
        fmspc=_hex(fmspc, "--fmspc", 6),
        cpu_svn=_hex(cpu_svn, "--cpu-svn", 16),
        pce_svn=pce_svn,
        scenario=TcbScenario.parse(tcb_scenario),
        root_from=vendor,
        seal_rule=SealRule.parse(seal_rule),
    )
    typer.echo("Created a SIMULATED SGX platform (not a TEE: it protects nothing).")
    if vendor is not None:
        typer.echo(f"It shares the simulated root of {vendor.path} (another simulated CPU).")
    _print_summary(platform)


@app.command()
def show(
    directory: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the root fingerprint, FMSPC, TCB components, PCESVN and TCB scenario."""
    platform = SimPlatform.open(_dir(directory))
    if as_json:
        typer.echo(json.dumps(_summary(platform), indent=2))
    else:
        _print_summary(platform)


@app.command()
def root(out: OutOption, directory: DirOption = None) -> None:
    """Export the simulated root CA certificate (PEM) for verifiers that name it explicitly."""
    platform = SimPlatform.open(_dir(directory))
    _write_public(out, platform.root_pem())
    typer.echo(f"wrote {out} (simulated root, SPKI SHA-256 {platform.trust_root().spki_sha256})")


@app.command()
def tcb(
    scenario: Annotated[str | None, typer.Argument(help=f"One of: {_SCENARIOS}.")] = None,
    cpu_svn: Annotated[
        str | None,
        typer.Option(help="A new CPUSVN (32 hex digits): a microcode/TCB-recovery update."),
    ] = None,
    seal_rule: Annotated[
        str | None,
        typer.Option(help="sgx (any SVN up to the current) or gramine (current SVNs only)."),
    ] = None,
    directory: DirOption = None,
) -> None:
    """Change the platform's TCB: the TCB switch (collateral's status), the CPUSVN (a new PCK
    certificate; seal keys change) or the seal-key rule. A running `enclave-kms serve` reads
    the platform at start: restart it for a change to apply."""
    if scenario is None and cpu_svn is None and seal_rule is None:
        raise UsageError("give a TCB scenario, --cpu-svn or --seal-rule")
    platform = SimPlatform.open(_dir(directory))
    if scenario is not None:
        platform.set_tcb_scenario(TcbScenario.parse(scenario))
    if cpu_svn is not None:
        platform.set_cpu_svn(_hex(cpu_svn, "--cpu-svn", 16))
    if seal_rule is not None:
        platform.set_seal_rule(SealRule.parse(seal_rule))
    if scenario is not None:
        typer.echo(f"tcb_scenario {platform.config.tcb_scenario.value}")
    if cpu_svn is not None:
        typer.echo(f"cpu_svn {platform.config.cpu_svn.hex()}")
    if seal_rule is not None:
        typer.echo(f"seal_rule {platform.config.seal_rule.value}")
    typer.echo(
        "takes effect when the platform is next loaded: restart a running `enclave-kms serve` "
        "that uses this platform, until then it serves collateral of the old status",
        err=True,
    )


@app.command()
def collateral(
    out: OutOption,
    fmt: Annotated[str, typer.Option("--format", help="dcap-qvl | pcs-dir")] = "dcap-qvl",
    validity_days: Annotated[
        int, typer.Option(help="Days until nextUpdate.")
    ] = DEFAULT_VALIDITY.days,
    directory: DirOption = None,
) -> None:
    """Issue signed TCB Info, QE Identity and CRLs valid from now (file, or pcs-dir directory)."""
    if validity_days < 1:
        raise UsageError("--validity-days: must be at least 1")
    platform = SimPlatform.open(_dir(directory))
    now = datetime.now(UTC)
    pcs = platform.pcs(validity=timedelta(days=validity_days))
    if fmt == "dcap-qvl":
        _write_public(out, collateral_to_json(pcs.collateral(now)))
    elif fmt == "pcs-dir":
        _write_pcs_dir(out, pcs.pcs_responses(now))
    else:
        raise UsageError(f"--format: unknown format {fmt[:20]!r} (dcap-qvl or pcs-dir)")
    typer.echo(f"wrote {out} ({fmt}, scenario {platform.config.tcb_scenario.value})")


_PCS_FILES = {
    "/sgx/certification/v4/tcb": "tcbinfo.json",
    "/sgx/certification/v4/qe/identity": "qeidentity.json",
    "/sgx/certification/v4/pckcrl": "pckcrl.der",
    "/sgx/certification/v4/rootcacrl": "rootcacrl.der",
}


def _write_pcs_dir(out: Path, responses: list[PcsResponse]) -> None:
    """One file per response body plus `index.json` (URL path, file, headers) for replay."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out}: {exc.strerror}") from None
    index: list[dict[str, object]] = []
    for response in responses:
        name = _PCS_FILES[response.path.split("?", 1)[0]]
        _write_public(out / name, response.body)
        index.append({"path": response.path, "file": name, "headers": response.headers})
    _write_public(out / "index.json", json.dumps(index, indent=2).encode("utf-8"))


def _identity_from_options(
    mr_enclave: str | None, mr_signer: str | None, isv_prod_id: int, isv_svn: int, debug: bool
) -> EnclaveIdentity:
    if mr_enclave is None or mr_signer is None:
        raise UsageError("give an image DIR, or both --mr-enclave and --mr-signer")
    for name, value in (("--isv-prod-id", isv_prod_id), ("--isv-svn", isv_svn)):
        if not 0 <= value < 1 << 16:
            raise UsageError(f"{name}: must be 0..65535")
    flags = AttributeFlags.INIT | AttributeFlags.MODE64BIT
    if debug:
        flags |= AttributeFlags.DEBUG
    return EnclaveIdentity(
        mr_enclave=_hex(mr_enclave, "--mr-enclave", 32),
        mr_signer=_hex(mr_signer, "--mr-signer", 32),
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        attributes=Attributes(int(flags), 0x3),
    )


@app.command()
def quote(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    out: OutOption,
    image_dir: Annotated[
        Path | None, typer.Argument(help="A built and signed enclave image directory.")
    ] = None,
    report_data: Annotated[str, typer.Option(help="Up to 64 bytes as hex.")] = "",
    mr_enclave: Annotated[str | None, typer.Option(help="Without DIR: MRENCLAVE (hex).")] = None,
    mr_signer: Annotated[str | None, typer.Option(help="Without DIR: MRSIGNER (hex).")] = None,
    isv_prod_id: Annotated[int, typer.Option(help="Without DIR: ISVPRODID.")] = 1,
    isv_svn: Annotated[int, typer.Option(help="Without DIR: ISVSVN.")] = 1,
    debug: Annotated[bool, typer.Option("--debug", help="Without DIR: DEBUG attribute.")] = False,
    directory: DirOption = None,
) -> None:
    """Quote for a measured enclave image (testing utility): EREPORT to the QE, then quote."""
    data = _hex(report_data, "--report-data", max_size=64)
    if image_dir is not None:
        identity = _identity_from_image(image_dir)
    else:
        identity = _identity_from_options(mr_enclave, mr_signer, isv_prod_id, isv_svn, debug)
    platform = SimPlatform.open(_dir(directory))
    raw = platform.quote(identity, data)
    _write_public(out, raw)
    typer.echo(
        f"wrote {out} ({len(raw)} bytes): mr_enclave {identity.mr_enclave.hex()} "
        f"mr_signer {identity.mr_signer.hex()} isv_prod_id {identity.isv_prod_id} "
        f"isv_svn {identity.isv_svn} debug {identity.attributes.debug}"
    )


def _identity_from_image(image_dir: Path) -> EnclaveIdentity:
    """The measured identity of a verified image: the loader refuses a tampered one."""
    from enclave_kms.platform.sim.loader import load_image

    return load_image(image_dir).identity
