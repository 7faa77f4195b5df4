"""`enclave-kms quote …` through the real entry point: output, exit codes, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_kms.cli import exits
from enclave_kms.cli.main import main

PHALA_AT = "2025-07-19T10:01:17Z"
OE_AT = "2022-04-26T23:50:00Z"


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def one_line_error(self) -> str:
        """The error must be exactly one stderr line, no traceback."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert "Traceback" not in self.err
        assert lines[0].startswith("error: ")
        return lines[0]

    def json(self) -> dict[str, object]:
        value = json.loads(self.out)
        assert isinstance(value, dict)
        return value


Runner = Callable[..., Run]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    def run(*args: str | Path) -> Run:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        code = exc.value.code
        assert isinstance(code, int)
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def phala(sgx_testdata: Path) -> Path:
    return sgx_testdata / "phala-dcap-qvl"


@pytest.fixture(scope="module")
def oe(sgx_testdata: Path) -> Path:
    return sgx_testdata / "openenclave-tests"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    return path


# ---------------------------------------------------------------------- inspect


def test_inspect_tutorial_json_shows_fields_table_and_binding(
    cli: Runner, sgx_testdata: Path
) -> None:
    r = cli("quote", "inspect", sgx_testdata / "azure-maa-oe-sample" / "enclave.info.debug.json")
    assert r.code == exits.OK, r.err
    assert (
        '"MrSignerHex": "62BA6BCAB59700C340BDBCD36BF74C6E0D6892CDF91671DCA93BCBFFF81EF9F2"' in r.out
    )
    assert '"ProductIdHex": "01000000000000000000000000000000"' in r.out
    for label in ("TEE", "Quote version", "MRENCLAVE", "MRSIGNER", "ProductID", "SVN", "Debug"):
        assert label in r.out
    for label in ("Report data", "FMSPC", "PCK CA", "Held data bound by report_data"):
        assert label in r.out
    assert "00906ED50000" in r.out
    assert "processor" in r.out
    bound_row = next(line for line in r.out.splitlines() if "Held data bound" in line)
    assert "yes" in bound_row


@pytest.mark.parametrize(
    ("rel", "expect"),
    [
        (
            "azure-maa-oe-sample/enclave.info.release.json",
            {"form": "tutorial-json", "held_data_bound": True, "debug": False, "isv_prod_id": 1},
        ),
        (
            "openenclave-tests/evidence",
            {
                "form": "oe-evidence",
                "held_data_bound": True,
                "debug": True,
                "fmspc": "00906ED50000",
            },
        ),
        (
            "phala-dcap-qvl/sgx_quote",
            {"form": "raw-quote", "tee": "SGX", "quote_version": 3, "pck_ca": "processor"},
        ),
        (
            "phala-dcap-qvl/tdx-quote.hex",
            {"form": "raw-quote", "tee": "TDX", "hex_encoded": True, "trailing_bytes": 70},
        ),
        ("phala-dcap-qvl/tdx_quote_outdated", {"tee": "TDX", "quote_version": 5}),
        (
            "automata-dcap-rs/quote_v3_sgx_test_verifyv3.hex",
            {"hex_encoded": True, "fmspc": "00606A000000", "pck_ca": "platform"},
        ),
        ("coco-trustee/occlum_quote.dat", {"debug": True, "isv_svn": 0}),
        (
            "intel-qvl-sampledata-testpki/quote.dat",
            {"fmspc": "n/a", "pck_ca": "n/a (certification data type 1)"},
        ),
        ("openenclave-tests/sgx_report_bad.bin", {"form": "oe-report"}),
        (
            "openenclave-tests/sgx_cert_rsa_bad.der",
            {"form": "ratls-certificate", "held_data_bound": True},
        ),
    ],
)
def test_inspect_json_on_every_form(
    cli: Runner, sgx_testdata: Path, rel: str, expect: dict[str, object]
) -> None:
    r = cli("quote", "inspect", "--json", sgx_testdata / rel)
    assert r.code == exits.OK, r.err
    data = r.json()
    for key, value in expect.items():
        assert data[key] == value, key


def test_inspect_bad_certificate_reports_its_signature(cli: Runner, oe: Path) -> None:
    data = cli("quote", "inspect", "--json", oe / "sgx_cert_ec_bad.der").json()
    details = data["details"]
    assert isinstance(details, dict)
    assert details["self_signature"].startswith("INVALID")


# ---------------------------------------------------------------------- verify


def test_verify_real_quote_fails_default_policy_on_status(cli: Runner, phala: Path) -> None:
    r = cli(
        "quote", "verify", phala / "sgx_quote",
        "--collateral", phala / "sgx_quote_collateral.json", "--at", PHALA_AT,
        "--any-enclave-unsafe",
    )  # fmt: skip
    assert r.code == exits.POLICY
    line = r.one_line_error()
    assert "ConfigurationAndSWHardeningNeeded is not accepted" in line
    assert "ConfigurationAndSWHardeningNeeded" in r.out  # the verified result is still shown
    assert "INTEL-SA-00289, INTEL-SA-00615" in r.out


def test_verify_requires_an_identity_or_the_unsafe_flag(
    cli: Runner, phala: Path, tmp_path: Path
) -> None:
    """Issue 17 defect 1: no policy used to mean "any genuine enclave", called strict."""
    base: list[str | Path] = [
        phala / "sgx_quote", "--collateral", phala / "sgx_quote_collateral.json", "--at", PHALA_AT,
    ]  # fmt: skip
    r = cli("quote", "verify", *base)
    assert r.code == exits.USAGE
    assert "--any-enclave-unsafe" in r.one_line_error()
    no_identity = write(tmp_path, "weak.toml", 'accepted_tcb_statuses = ["UpToDate"]\n')
    r = cli("quote", "verify", *base, "--policy", no_identity, "--json")
    assert r.code == exits.USAGE
    assert "pins no enclave identity" in r.one_line_error()
    r = cli("quote", "verify", *base, "--policy", no_identity, "--any-enclave-unsafe")
    assert r.code == exits.USAGE


def test_verify_real_quote_passes_a_policy_accepting_its_status(
    cli: Runner, phala: Path, tmp_path: Path
) -> None:
    policy = write(
        tmp_path,
        "p.toml",
        'accepted_tcb_statuses = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]\n'
        'report_data = "48656c6c6f"\n'
        'mr_enclave = ["33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"]\n',
    )
    r = cli(
        "quote", "verify", phala / "sgx_quote", "--collateral", phala / "sgx_quote_collateral.json",
        "--at", PHALA_AT, "--policy", policy, "--json",
    )  # fmt: skip
    assert r.code == exits.OK, r.err
    data = r.json()
    assert data["form"] == "raw-quote"
    assert data["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert data["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert data["second_opinion"] == "ConfigurationAndSWHardeningNeeded"
    assert data["policy"] == {"source": str(policy), "ok": True, "violations": []}


def test_verify_without_second_opinion(cli: Runner, phala: Path) -> None:
    r = cli(
        "quote", "verify", phala / "tdx_quote", "--collateral", phala / "tdx_quote_collateral.json",
        "--at", "2025-07-19T10:00:34Z", "--no-second-opinion", "--json", "--any-enclave-unsafe",
    )  # fmt: skip
    assert r.code == exits.OK, r.err
    data = r.json()
    assert (data["tee"], data["tcb_status"], data["second_opinion"]) == ("TDX", "UpToDate", None)


def test_debug_enclave_fails_default_policy_listing_every_violation(cli: Runner, oe: Path) -> None:
    r = cli(
        "quote", "verify", oe / "evidence", "--collateral", oe / "endorsements", "--at", OE_AT,
        "--json", "--any-enclave-unsafe",
    )  # fmt: skip
    assert r.code == exits.POLICY
    violations = r.json()["policy"]["violations"]  # type: ignore[index]
    assert violations == [
        "debug: the enclave is a debug enclave and the policy does not allow debug",
        "tcb_status SWHardeningNeeded is not accepted (accepted: UpToDate)",
    ]
    line = r.one_line_error()
    assert all(v in line for v in violations)


def test_debug_enclave_passes_with_allow_debug(cli: Runner, oe: Path, tmp_path: Path) -> None:
    policy = write(
        tmp_path,
        "debug.toml",
        "allow_debug = true\n"
        'accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n'
        'mr_enclave = ["91dd79e47cae70787883e617838c7c981cc9744ebac9756c8ce03f09057538ac"]\n'
        'mr_signer = "bc71834fb17ac2be20fba8717616b75a9e39cf3f1872f1528b3678a89f5ff37c"\n'
        "isv_prod_id = 1\nmin_isv_svn = 1\n",
    )
    r = cli(
        "quote", "verify", oe / "evidence", "--collateral", oe / "endorsements", "--at", OE_AT,
        "--policy", policy,
    )  # fmt: skip
    assert r.code == exits.OK, r.err
    assert "policy met" in r.out


def test_tutorial_json_verifies_against_oe_endorsements(
    cli: Runner, sgx_testdata: Path, oe: Path
) -> None:
    r = cli(
        "quote", "verify", sgx_testdata / "azure-maa-oe-sample" / "enclave.info.release.json",
        "--collateral", oe / "endorsements", "--at", OE_AT, "--json", "--any-enclave-unsafe",
    )  # fmt: skip
    assert r.code == exits.POLICY  # genuine, but its platform is OutOfDate as of that day
    assert r.json()["tcb_status"] == "OutOfDate"


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("missing evidence", exits.USAGE, "evidence file not found"),
        ("missing collateral", exits.USAGE, "collateral file not found"),
        ("missing policy", exits.USAGE, "policy file not found"),
        ("directory", exits.USAGE, "is a directory"),
        ("garbage", exits.EVIDENCE_INVALID, "quote"),
        ("truncated quote", exits.EVIDENCE_INVALID, "signature data"),
        ("wrong collateral", exits.COLLATERAL, "PCK CRL"),
        ("garbage collateral", exits.COLLATERAL, "collateral"),
        ("expired collateral", exits.COLLATERAL, "expired"),
        ("bad time", exits.USAGE, "--at"),
        ("time without zone", exits.USAGE, "timezone"),
        ("bad policy toml", exits.USAGE, "invalid TOML"),
        ("bad policy hex", exits.USAGE, "mr_signer"),
        ("unknown policy key", exits.USAGE, "mr_enclve"),
        ("bad status name", exits.USAGE, "accepted_tcb_statuses"),
        ("bad trust root", exits.USAGE, "trust root"),
        ("bad pck chain", exits.USAGE, "PCK chain"),
        ("untrusted root", exits.EVIDENCE_INVALID, "root"),
    ],
)
def test_bad_input_is_one_line_with_the_right_code(
    cli: Runner, phala: Path, tmp_path: Path, case: str, code: int, needle: str
) -> None:
    quote, collateral = phala / "sgx_quote", phala / "sgx_quote_collateral.json"
    garbage = write(tmp_path, "garbage", bytes(range(256)) * 3)
    cases: dict[str, list[str | Path]] = {
        "missing evidence": [tmp_path / "nope", "--collateral", collateral],
        "missing collateral": [quote, "--collateral", tmp_path / "nope"],
        "missing policy": [quote, "--collateral", collateral, "--policy", tmp_path / "nope"],
        "directory": [tmp_path, "--collateral", collateral],
        "garbage": [garbage, "--collateral", collateral, "--at", PHALA_AT],
        "truncated quote": [
            write(tmp_path, "t", quote.read_bytes()[:1000]), "--collateral", collateral,
        ],
        "wrong collateral": [quote, "--collateral", phala / "tdx_quote_collateral.json",
                             "--at", PHALA_AT],
        "garbage collateral": [quote, "--collateral", garbage, "--at", PHALA_AT],
        "expired collateral": [quote, "--collateral", collateral, "--at", "2025-08-19T00:00:00Z"],
        "bad time": [quote, "--collateral", collateral, "--at", "19/07/2025"],
        "time without zone": [quote, "--collateral", collateral, "--at", "2025-07-19T10:01:17"],
        "bad policy toml": [quote, "--collateral", collateral, "--at", PHALA_AT, "--policy",
                            write(tmp_path, "p1", "allow_debug = \n")],
        "bad policy hex": [quote, "--collateral", collateral, "--at", PHALA_AT, "--policy",
                           write(tmp_path, "p2", 'mr_signer = "xyz"\n')],
        "unknown policy key": [quote, "--collateral", collateral, "--at", PHALA_AT, "--policy",
                               write(tmp_path, "p3", 'mr_enclve = ["00"]\n')],
        "bad status name": [quote, "--collateral", collateral, "--at", PHALA_AT, "--policy",
                            write(tmp_path, "p4", 'accepted_tcb_statuses = ["Fine"]\n')],
        "bad trust root": [quote, "--collateral", collateral, "--trust-root", garbage],
        "bad pck chain": [quote, "--collateral", collateral, "--pck-chain", garbage],
        "untrusted root": [
            quote, "--collateral", collateral, "--at", PHALA_AT, "--no-second-opinion",
            "--trust-root",
            write(tmp_path, "root.pem",
                  (phala.parent / "intel-qvl-sampledata-testpki" / "trustedRootCaCert.pem")
                  .read_bytes()),
        ],
    }  # fmt: skip
    args = cases[case]
    if "--policy" not in args:
        args = [*args, "--any-enclave-unsafe"]  # identity is required: say so by name
    r = cli("quote", "verify", *args)
    assert r.code == code, (r.code, r.err)
    assert needle in r.one_line_error()


def test_verify_defaults_to_now(cli: Runner, phala: Path) -> None:
    """Without --at the current time is used: this 2025 collateral has long expired."""
    r = cli(
        "quote", "verify", phala / "sgx_quote", "--collateral", phala / "sgx_quote_collateral.json",
        "--any-enclave-unsafe",
    )  # fmt: skip
    assert r.code == exits.COLLATERAL
    assert "expired" in r.one_line_error()


def test_inspect_errors(cli: Runner, tmp_path: Path, phala: Path) -> None:
    missing = cli("quote", "inspect", tmp_path / "missing.bin")
    assert missing.code == exits.USAGE
    assert "not found" in missing.one_line_error()
    garbage = cli("quote", "inspect", write(tmp_path, "g", b"\x03\x00" + b"\xff" * 100))
    assert garbage.code == exits.EVIDENCE_INVALID
    garbage.one_line_error()
    empty = cli("quote", "inspect", write(tmp_path, "e", b""))
    assert empty.code == exits.EVIDENCE_INVALID
    assert "empty" in empty.one_line_error()
    collateral = cli("quote", "inspect", phala / "sgx_quote_collateral.json")
    assert collateral.code == exits.EVIDENCE_INVALID


@pytest.mark.parametrize(
    ("rel", "step_words"),
    [
        ("openenclave-tests/sgx_report_bad.bin", "not issued by"),
        ("openenclave-tests/sgx_cert_ec_bad.der", "self-signature"),
        ("openenclave-tests/sgx_cert_rsa_bad.der", "self-signature"),
    ],
)
def test_open_enclave_negative_vectors_are_rejected(
    cli: Runner, sgx_testdata: Path, oe: Path, rel: str, step_words: str
) -> None:
    r = cli(
        "quote", "verify", sgx_testdata / rel, "--collateral", oe / "endorsements", "--at", OE_AT,
        "--any-enclave-unsafe",
    )  # fmt: skip
    assert r.code == exits.EVIDENCE_INVALID
    assert step_words in r.one_line_error()


def test_verbose_shows_the_traceback(cli: Runner, tmp_path: Path) -> None:
    r = cli("--verbose", "quote", "inspect", write(tmp_path, "g", b"\x03\x00" + b"\xff" * 100))
    assert r.code == exits.EVIDENCE_INVALID
    assert len(r.err.strip().splitlines()) > 1


# ---------------------------------------------------------------------- mrsigner


def test_mrsigner_known_answer(cli: Runner, sgx_testdata: Path) -> None:
    r = cli("quote", "mrsigner", sgx_testdata / "azure-maa-oe-sample" / "signing_public.pem")
    assert r.code == exits.OK, r.err
    assert r.out.strip() == "62ba6bcab59700c340bdbcd36bf74c6e0d6892cdf91671dca93bcbfff81ef9f2"


@pytest.mark.parametrize("kind", ["ec", "rsa2048", "not pem", "missing"])
def test_mrsigner_rejects_other_keys(cli: Runner, tmp_path: Path, kind: str) -> None:
    def pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
        return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    path = tmp_path / "key.pem"
    if kind == "ec":
        path.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    elif kind == "rsa2048":
        path.write_bytes(pem(rsa.generate_private_key(3, 2048)))
    elif kind == "not pem":
        path.write_bytes(b"hello")
    r = cli("quote", "mrsigner", path)
    assert r.code == exits.USAGE
    r.one_line_error()
