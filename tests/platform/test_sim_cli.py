"""`enclave-kms platform …`: init, show, root, tcb, collateral and quote, end to end through the
files a user would hand to a verifier."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner, Result

from enclave_kms.attestation.collateral import from_pcs_responses, load_collateral, to_dcap_qvl
from enclave_kms.attestation.types import Collateral, TcbStatus, TrustRoot
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.cli.platform import app
from enclave_kms.errors import ConfigError, PlatformPermissionError, UsageError
from enclave_kms.platform.sim.platform import ENV_DIR, SimPlatform
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.report import ReportBody

MR_ENCLAVE = "a1" * 32
MR_SIGNER = "5e" * 32


def sgx_body(raw: bytes) -> ReportBody:
    body = parse_quote(raw).body
    assert isinstance(body, ReportBody)
    return body


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: str | Path) -> str:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def dcap_status(quote: bytes, collateral: Collateral, root_pem: bytes) -> str:
    root = x509.load_pem_x509_certificate(root_pem).public_bytes(Encoding.DER)
    now = int(datetime.now(UTC).timestamp())
    report = dcap_qvl.verify_with_root_ca(quote, to_dcap_qvl(collateral), root, now)
    return str(report.status)


@pytest.fixture
def platform_dir(tmp_path: Path) -> Path:
    path = tmp_path / "platform"
    out = ok("init", "--dir", path)
    assert "SIMULATED" in out
    return path


def test_init_show_root(platform_dir: Path, tmp_path: Path) -> None:
    platform = SimPlatform.open(platform_dir)
    shown = json.loads(ok("show", "--dir", platform_dir, "--json"))
    assert shown["root_spki_sha256"] == platform.trust_root().spki_sha256
    assert shown["fmspc"] == platform.config.fmspc.hex().upper()
    assert shown["tcb_components"] == list(platform.config.cpu_svn)
    assert shown["pce_svn"] == platform.config.pce_svn
    assert shown["tcb_scenario"] == "UpToDate"
    text = ok("show", "--dir", platform_dir)
    assert platform.trust_root().spki_sha256 in text
    root_file = tmp_path / "root.pem"
    ok("root", "--out", root_file, "--dir", platform_dir)
    assert root_file.read_bytes() == platform.root_pem()
    assert TrustRoot.from_pem(root_file.read_bytes()).simulated


def test_init_options(tmp_path: Path) -> None:
    path = tmp_path / "p"
    ok(
        "init",
        "--dir",
        path,
        "--fmspc",
        "00112233AABB",
        "--cpu-svn",
        "05" * 16,
        "--pce-svn",
        "11",
        "--tcb-scenario",
        "OutOfDate",
    )
    config = SimPlatform.open(path).config
    assert config.fmspc == bytes.fromhex("00112233AABB")
    assert config.cpu_svn == bytes([5] * 16)
    assert config.pce_svn == 11
    assert config.tcb_scenario.value == "OutOfDate"


def test_tcb_switch_collateral_and_quote_files(platform_dir: Path, tmp_path: Path) -> None:
    assert "SWHardeningNeeded" in ok("tcb", "swhardeningneeded", "--dir", platform_dir)
    root_file, col_file, quote_file = tmp_path / "root.pem", tmp_path / "c.json", tmp_path / "q"
    ok("root", "--out", root_file, "--dir", platform_dir)
    ok("collateral", "--out", col_file, "--dir", platform_dir)
    ok(
        "quote",
        "--dir",
        platform_dir,
        "--mr-enclave",
        MR_ENCLAVE,
        "--mr-signer",
        MR_SIGNER,
        "--isv-svn",
        "3",
        "--report-data",
        "00ff" * 32,
        "--out",
        quote_file,
    )
    quote = quote_file.read_bytes()
    body = sgx_body(quote)
    assert body.mr_enclave.hex() == MR_ENCLAVE
    assert body.isv_svn == 3
    assert body.report_data == bytes.fromhex("00ff" * 32)
    collateral = load_collateral(col_file.read_bytes())
    assert dcap_status(quote, collateral, root_file.read_bytes()) == "SWHardeningNeeded"
    verified = verify_quote(
        quote,
        collateral,
        trust_root=TrustRoot.from_pem(root_file.read_bytes()),
        now=datetime.now(UTC),
    )
    assert verified.tcb_status == TcbStatus.SW_HARDENING_NEEDED


def test_collateral_pcs_dir(platform_dir: Path, tmp_path: Path) -> None:
    ok("tcb", "OutOfDate", "--dir", platform_dir)
    out = tmp_path / "pcs"
    ok("collateral", "--out", out, "--format", "pcs-dir", "--dir", platform_dir)
    index = {entry["file"]: entry for entry in json.loads((out / "index.json").read_text())}
    assert set(index) == {"tcbinfo.json", "qeidentity.json", "pckcrl.der", "rootcacrl.der"}
    collateral = from_pcs_responses(
        tcb_info_body=(out / "tcbinfo.json").read_bytes(),
        tcb_info_issuer_chain=index["tcbinfo.json"]["headers"]["TCB-Info-Issuer-Chain"],
        qe_identity_body=(out / "qeidentity.json").read_bytes(),
        qe_identity_issuer_chain=index["qeidentity.json"]["headers"][
            "SGX-Enclave-Identity-Issuer-Chain"
        ],
        pck_crl=(out / "pckcrl.der").read_bytes(),
        pck_crl_issuer_chain=index["pckcrl.der"]["headers"]["SGX-PCK-CRL-Issuer-Chain"],
        root_ca_crl=(out / "rootcacrl.der").read_bytes(),
    )
    platform = SimPlatform.open(platform_dir)
    ok(
        "quote",
        "--dir",
        platform_dir,
        "--mr-enclave",
        MR_ENCLAVE,
        "--mr-signer",
        MR_SIGNER,
        "--out",
        tmp_path / "q",
    )
    status = dcap_status((tmp_path / "q").read_bytes(), collateral, platform.root_pem())
    assert status == "OutOfDate"


def test_default_directory_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "env-platform"))
    ok("init")
    assert (tmp_path / "env-platform" / "platform.toml").exists()
    assert json.loads(ok("show", "--json"))["directory"] == str(tmp_path / "env-platform")


def test_loose_permissions_refused(platform_dir: Path) -> None:
    platform_dir.chmod(0o755)
    result = run("show", "--dir", platform_dir)
    assert isinstance(result.exception, PlatformPermissionError)
    platform_dir.chmod(0o700)
    (platform_dir / "pck.key.pem").chmod(0o644)
    result = run(
        "quote",
        "--dir",
        platform_dir,
        "--mr-enclave",
        MR_ENCLAVE,
        "--mr-signer",
        MR_SIGNER,
        "--out",
        platform_dir / "q",
    )
    assert isinstance(result.exception, PlatformPermissionError)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("tcb", "Compromised"), ConfigError),
        (("collateral", "--out", "x", "--format", "pem"), UsageError),
        (("collateral", "--out", "x", "--validity-days", "0"), UsageError),
        (("quote", "--out", "x"), UsageError),
        (("quote", "--out", "x", "--mr-enclave", "zz", "--mr-signer", MR_SIGNER), UsageError),
        (
            (
                "quote",
                "--out",
                "x",
                "--mr-enclave",
                MR_ENCLAVE,
                "--mr-signer",
                MR_SIGNER,
                "--report-data",
                "00" * 65,
            ),
            UsageError,
        ),
    ],
)
def test_bad_input_is_a_typed_error(
    platform_dir: Path, args: tuple[str, ...], error: type[Exception]
) -> None:
    result = run(*args, "--dir", platform_dir)
    assert isinstance(result.exception, error)


def test_quote_for_a_signed_image(platform_dir: Path, tmp_path: Path) -> None:
    """`platform quote DIR`: the identity comes from the loader's verification of the image."""
    from enclave_kms.cli.enclave import app as enclave_app

    runner = CliRunner()
    key, image = tmp_path / "signer.pem", tmp_path / "image"
    for args in (
        ["keygen", "--out", str(key)],
        ["build", "--out", str(image)],
        ["sign", str(image), "--key", str(key)],
    ):
        result = runner.invoke(enclave_app, args)
        assert result.exit_code == 0, (result.output, result.exception)
    measured = json.loads(runner.invoke(enclave_app, ["measure", str(image), "--json"]).output)
    ok("quote", image, "--report-data", "ab" * 64, "--out", tmp_path / "q", "--dir", platform_dir)
    body = sgx_body((tmp_path / "q").read_bytes())
    assert body.mr_enclave.hex() == measured["mr_enclave"]
    assert body.mr_signer.hex() == measured["mr_signer"]
    assert (body.isv_prod_id, body.isv_svn) == (
        measured["product_id"],
        measured["security_version"],
    )
    assert body.attributes.debug == measured["debug"]
