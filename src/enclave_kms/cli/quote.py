"""`enclave-kms quote …`: inspect and verify evidence.

`inspect` only parses: it shows what the evidence *claims* and proves nothing. `verify` runs the
full DCAP verification at a given time, then the policy (the strict default when no policy file
is given), and exits with the code of the first failing stage (see `cli/exits.py`).
Failures are raised as `EnclaveKMSError`s; `cli/main.py` turns them into one stderr line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.console import Console
from rich.table import Table

from enclave_kms.attestation.evidence import (
    Evidence,
    EvidenceForm,
    load_evidence,
    strip_comment_lines,
)
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot, VerifiedQuote
from enclave_kms.errors import EnclaveKMSError, PolicyError, UsageError
from enclave_kms.sgx.pck import parse_pck_extension, pck_ca_kind
from enclave_kms.sgx.quote import Quote
from enclave_kms.sgx.report import ReportBody
from enclave_kms.sgx.tdx import TdReport10
from enclave_kms.sgx.tutorial import OE_ENCLAVE_TYPE_SGX, oe_attributes, oe_product_id

app = typer.Typer(no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


# ---------------------------------------------------------------------- helpers


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} file is a directory: {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset, as UTC (a naive time is ambiguous)."""
    text = value.strip()
    if "T" not in text.upper() and " " not in text:
        raise UsageError(
            f"--at {value!r}: expected an RFC 3339 date-time like 2025-07-19T10:01:17Z"
        )
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise UsageError(
            f"--at {value!r}: not an RFC 3339 date-time (e.g. 2025-07-19T10:01:17Z)"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise UsageError(f"--at {value!r}: include a timezone, e.g. a trailing Z for UTC")
    return when.astimezone(UTC)


def _pck_facts(quote: Quote) -> dict[str, str]:
    """FMSPC and issuing CA from the quote's own PCK leaf, when it carries one (type 5)."""
    try:
        leaf = quote.pck_certificates()[0]
        ext = parse_pck_extension(leaf)
        return {"fmspc": ext.fmspc.hex().upper(), "pck_ca": pck_ca_kind(leaf)}
    except (EnclaveKMSError, IndexError):
        cert_type = quote.signature_data.certification_data.cert_type
        return {"fmspc": "n/a", "pck_ca": f"n/a (certification data type {cert_type})"}


def evidence_summary(ev: Evidence) -> dict[str, Any]:
    """Everything `inspect` shows, as plain JSON-able values (claims, not verified facts)."""
    quote = ev.quote
    body = quote.body
    out: dict[str, Any] = {
        "form": ev.form.value,
        "hex_encoded": ev.hex_encoded,
        "tee": "TDX" if isinstance(body, TdReport10) else "SGX",
        "quote_version": quote.version,
        "qe_svn": quote.header.qe_svn,
        "pce_svn": quote.header.pce_svn,
    }
    if isinstance(body, ReportBody):
        out.update(
            mr_enclave=body.mr_enclave.hex(),
            mr_signer=body.mr_signer.hex(),
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            debug=body.attributes.debug,
            attributes=body.attributes.flag_names(),
        )
        out["enclave_info"] = {
            "Type": OE_ENCLAVE_TYPE_SGX,
            "MrEnclaveHex": body.mr_enclave.hex().upper(),
            "MrSignerHex": body.mr_signer.hex().upper(),
            "ProductIdHex": oe_product_id(body.isv_prod_id).hex().upper(),
            "SecurityVersion": body.isv_svn,
            "Attributes": oe_attributes(body),
        }
    elif isinstance(body, TdReport10):
        out.update(
            mr_td=body.mr_td.hex(),
            **{f"rt_mr{i}": m.hex() for i, m in enumerate(body.rt_mrs)},
            tee_tcb_svn=body.tee_tcb_svn.hex(),
            debug=body.debug,
        )
    out["report_data"] = body.report_data.hex()
    out.update(_pck_facts(quote))
    if quote.trailing and ev.form is EvidenceForm.RAW_QUOTE:
        out["trailing_bytes"] = len(quote.trailing)
    if ev.binds_held_data is not None:
        out["held_data_bytes"] = len(ev.held_data or b"")
        out["held_data_bound"] = ev.binds_held_data
    if ev.extra:
        out["details"] = dict(ev.extra)
    return out


def verified_summary(v: VerifiedQuote) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tee": v.tee,
        "tcb_status": v.tcb_status.value,
        "platform_tcb_status": v.platform_tcb_status.value,
        "qe_tcb_status": v.qe_tcb_status.value,
        "advisory_ids": list(v.advisory_ids),
        "fmspc": v.fmspc.hex().upper(),
        "pck_ca": v.pck_ca,
        "tcb_date": v.tcb_date.isoformat() if v.tcb_date else None,
        "collateral_expiry": v.collateral_expiry.isoformat(),
        "verified_at": v.verified_at.isoformat(),
        "root_spki_sha256": v.root_spki_sha256,
        "simulated_root": v.simulated_root,
        "second_opinion": v.second_opinion,
    }
    if v.tee == "SGX":
        out.update(
            mr_enclave=v.mr_enclave.hex(),
            mr_signer=v.mr_signer.hex(),
            isv_prod_id=v.isv_prod_id,
            isv_svn=v.isv_svn,
            debug=v.debug,
        )
    out["report_data"] = v.report_data.hex()
    return out


_LABELS = {
    "form": "Evidence form",
    "hex_encoded": "Given as hex text",
    "qe_svn": "QE SVN",
    "pce_svn": "PCE SVN",
    "attributes": "Attribute flags",
    "rt_mr0": "RTMR0",
    "rt_mr1": "RTMR1",
    "rt_mr2": "RTMR2",
    "rt_mr3": "RTMR3",
    "tee_tcb_svn": "TEE TCB SVN",
    "trailing_bytes": "Trailing bytes (unsigned)",
    "held_data_bytes": "Held data size",
    "platform_tcb_status": "Platform TCB status",
    "qe_tcb_status": "QE TCB status",
    "tcb_date": "TCB date",
    "collateral_expiry": "Collateral expires",
    "verified_at": "Verified at",
    "root_spki_sha256": "Root SPKI SHA-256",
    "simulated_root": "Simulated root",
    "second_opinion": "dcap-qvl status",
    "tee": "TEE",
    "quote_version": "Quote version",
    "mr_enclave": "MRENCLAVE",
    "mr_signer": "MRSIGNER",
    "isv_prod_id": "ProductID",
    "isv_svn": "SVN",
    "debug": "Debug",
    "mr_td": "MRTD",
    "report_data": "Report data",
    "fmspc": "FMSPC",
    "pck_ca": "PCK CA",
    "held_data_bound": "Held data bound by report_data",
    "tcb_status": "TCB status",
    "advisory_ids": "Advisories",
}


def _table(title: str, data: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if isinstance(value, dict):
            continue
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif isinstance(value, list):
            shown = ", ".join(str(v) for v in value) or "-"
        else:
            shown = "-" if value is None else str(value)
        table.add_row(_LABELS.get(key, key), shown)
    return table


def _print_details(console: Console, summary: dict[str, Any]) -> None:
    if "enclave_info" in summary:
        console.print(json.dumps(summary["enclave_info"], indent=2), markup=False)
    console.print(_table("Evidence", summary))
    if "details" in summary:
        console.print(_table("Details", summary["details"]))


# ---------------------------------------------------------------------- commands


@app.command("inspect")
def inspect_cmd(
    file: Annotated[str, typer.Argument(help="Evidence: quote, OE report/evidence, JSON, cert.")],
    as_json: JsonOption = False,
) -> None:
    """Show what evidence claims (nothing is verified): identity, TCB facts, held-data binding."""
    evidence = load_evidence(_read(file, "evidence"))
    summary = evidence_summary(evidence)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_details(Console(highlight=False, soft_wrap=True), summary)


@app.command("verify")
def verify_cmd(
    file: Annotated[str, typer.Argument(help="Evidence file (any form `inspect` accepts).")],
    *,
    collateral: Annotated[
        str, typer.Option("--collateral", help="dcap-qvl JSON or OE endorsements.")
    ],
    at: Annotated[
        str | None, typer.Option("--at", help="Verification time, RFC 3339 (default: now).")
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="Policy TOML pinning the enclave (required, or the flag --any-enclave-unsafe).",
        ),
    ] = None,
    any_enclave_unsafe: Annotated[
        bool,
        typer.Option(
            "--any-enclave-unsafe",
            help="No policy file: accept ANY genuine enclave (strict otherwise). Unsafe to "
            "trust; for checking that evidence is genuine.",
        ),
    ] = False,
    form: Annotated[
        str | None,
        typer.Option(
            "--form",
            help="Declared evidence form (raw-quote, oe-report, oe-evidence, tutorial-json, "
            "ratls-certificate): other forms are refused, never reinterpreted.",
        ),
    ] = None,
    trust_root: Annotated[
        str | None,
        typer.Option("--trust-root", help="Root CA PEM to trust instead of Intel's."),
    ] = None,
    pck_chain: Annotated[
        str | None,
        typer.Option("--pck-chain", help="PCK chain PEM (leaf first) for quotes without one."),
    ] = None,
    no_second_opinion: Annotated[
        bool, typer.Option("--no-second-opinion", help="Skip the dcap-qvl cross-check.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Appraise evidence: verify it against collateral at a time, then check the policy."""
    from enclave_kms.attestation.appraise import appraise
    from enclave_kms.attestation.cache import VerificationCache
    from enclave_kms.attestation.collateral import load_collateral

    # Gather every input first, so a usage mistake never costs a verification.
    now = parse_rfc3339(at) if at is not None else datetime.now(UTC)
    raw = _read(file, "evidence")
    # Published OE vectors carry `#` licence lines before the binary endorsements.
    collateral_bytes = strip_comment_lines(_read(collateral, "collateral"))
    if policy is not None and any_enclave_unsafe:
        raise UsageError("--policy and --any-enclave-unsafe exclude each other")
    if policy is not None:
        chosen_policy = Policy.from_toml(_read(policy, "policy"))
    elif any_enclave_unsafe:
        chosen_policy = Policy(any_enclave_unsafe=True)
    else:
        raise UsageError(
            "quote verify needs --policy FILE (a policy pinning the enclave's identity), or "
            "--any-enclave-unsafe to only check that the evidence is genuine"
        )
    declared = _form(form) if form is not None else None
    root = (
        TrustRoot.from_pem(_read(trust_root, "trust root"))
        if trust_root is not None
        else TrustRoot.intel_production()
    )
    chain = _load_chain(pck_chain) if pck_chain is not None else None

    evidence = load_evidence(raw, form=declared)
    violations: tuple[str, ...] = ()
    try:
        verified = appraise(
            evidence,
            chosen_policy,
            expected_report_data=None,
            now=now,
            collateral=load_collateral(collateral_bytes),
            cache=VerificationCache.disabled(),
            trust_root=root,
            form=declared,
            pck_chain=chain,
            second_opinion=not no_second_opinion,
        ).verified
    except PolicyError as exc:
        if not isinstance(exc.subject, VerifiedQuote):
            raise
        verified, violations = exc.subject, exc.violations
    summary = {"form": evidence.form.value, **verified_summary(verified)}
    summary["policy"] = {
        "source": policy or "any-enclave-unsafe",
        "ok": not violations,
        "violations": list(violations),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console = Console(highlight=False, soft_wrap=True)
        console.print(_table("Verified quote", summary))
        verdict = "policy met" if not violations else f"policy NOT met ({len(violations)})"
        console.print(verdict, markup=False)
    if violations:
        raise PolicyError(violations)


def _form(value: str) -> EvidenceForm:
    try:
        return EvidenceForm(value.strip().lower())
    except ValueError:
        names = ", ".join(f.value for f in EvidenceForm)
        raise UsageError(f"--form {value!r}: one of {names}") from None


def _load_chain(path: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "PCK chain"))
    except ValueError:
        raise UsageError(f"PCK chain {path}: not a PEM certificate chain") from None
    return certs


@app.command("mrsigner")
def mrsigner_cmd(
    pubkey: Annotated[str, typer.Argument(help="RSA-3072 (e=3) enclave signing public key, PEM.")],
) -> None:
    """MRSIGNER for an enclave signing key: SHA-256 of its little-endian modulus."""
    from enclave_kms.sgx.sigstruct import mr_signer_from_public_key

    data = _read(pubkey, "public key")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"{pubkey}: not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise UsageError(f"{pubkey}: not an RSA public key (SGX signing keys are RSA-3072, e=3)")
    try:
        typer.echo(mr_signer_from_public_key(key).hex())
    except EnclaveKMSError as exc:
        raise UsageError(exc.message) from None
