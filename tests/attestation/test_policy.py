"""Policy: TOML loading (strict, errors name the key) and validation of verified quotes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.policy import (
    DEFAULT_POLICY,
    Policy,
    check_binding,
    require_identity,
    validate,
)
from enclave_kms.attestation.tdx_policy import TdxRules
from enclave_kms.attestation.types import (
    INTEL_SGX_ROOT_SPKI_SHA256,
    TcbStatus,
    TrustRoot,
    VerifiedQuote,
)
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import ConfigError, EnclaveKMSError, PolicyError
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.tdx import TdReport10

# coco-trustee/occlum_quote.dat (SOURCES.md): a DEBUG enclave with these exact fields.
OCCLUM_MR_ENCLAVE = "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
OCCLUM_MR_SIGNER = "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
PINNED = Policy(mr_enclave=(bytes.fromhex(OCCLUM_MR_ENCLAVE),))  # identity is required


def verified_from(
    quote: bytes,
    *,
    status: TcbStatus = TcbStatus.UP_TO_DATE,
    advisories: tuple[str, ...] = (),
    simulated_root: bool = False,
    root: str = INTEL_SGX_ROOT_SPKI_SHA256,
) -> VerifiedQuote:
    """A VerifiedQuote around a real quote, as `verify_quote` would return it.

    Only for quotes without complete collateral (coco occlum): what policy sees is the
    quote's own fields plus the grading, which these tests choose.
    """
    parsed = parse_quote(quote)
    return VerifiedQuote(
        quote=parsed,
        tee="TDX" if parsed.is_tdx else "SGX",
        tcb_status=status,
        platform_tcb_status=status,
        qe_tcb_status=TcbStatus.UP_TO_DATE,
        advisory_ids=advisories,
        fmspc=bytes.fromhex("00606A000000"),
        pck_ca="platform",
        tcb_date=T0,
        collateral_expiry=T0,
        verified_at=T0,
        root_spki_sha256=root,
        simulated_root=simulated_root,
    )


@pytest.fixture(scope="module")
def occlum(sgx_testdata: Path) -> bytes:
    return (sgx_testdata / "coco-trustee" / "occlum_quote.dat").read_bytes()


@pytest.fixture(scope="module")
def phala_verified(sgx_testdata: Path) -> VerifiedQuote:
    d = sgx_testdata / "phala-dcap-qvl"
    return verify_quote(
        (d / "sgx_quote").read_bytes(),
        load_collateral((d / "sgx_quote_collateral.json").read_bytes()),
        trust_root=TrustRoot.intel_production(),
        now=datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC),
    )


# ---------------------------------------------------------------------- loading


FULL = f"""
mr_enclave = ["{OCCLUM_MR_ENCLAVE}", "0x{"ab" * 32}"]
mr_signer = "{OCCLUM_MR_SIGNER.upper()}"
isv_prod_id = 0
min_isv_svn = 0
allow_debug = true
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
rejected_advisories = ["intel-sa-00615"]
report_data = "74657374"
simulated_root = "{"CD" * 32}"
"""


def test_full_policy_loads_with_normalised_values() -> None:
    p = Policy.from_toml(FULL.encode())
    assert p.mr_enclave == (bytes.fromhex(OCCLUM_MR_ENCLAVE), b"\xab" * 32)
    assert p.mr_signer == bytes.fromhex(OCCLUM_MR_SIGNER)
    assert (p.isv_prod_id, p.min_isv_svn, p.allow_debug) == (0, 0, True)
    assert p.accepted_tcb_statuses == (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED)
    assert p.rejected_advisories == ("INTEL-SA-00615",)
    assert p.report_data == b"test"
    assert p.simulated_root == "cd" * 32


def test_to_toml_round_trips() -> None:
    p = Policy.from_toml(FULL)
    assert Policy.from_toml(p.to_toml()) == p
    assert Policy.from_toml(DEFAULT_POLICY.to_toml()) == DEFAULT_POLICY


def test_empty_file_is_the_strict_default() -> None:
    p = Policy.from_toml(b"")
    assert p == DEFAULT_POLICY
    assert p.allow_debug is False
    assert p.accepted_tcb_statuses == (TcbStatus.UP_TO_DATE,)
    assert p.simulated_root is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('mr_enklave = ["00"]', "mr_enklave"),
        ('mr_enclave = "' + "00" * 32 + '"', "mr_enclave"),
        ("mr_enclave = []", "mr_enclave"),
        ('mr_enclave = ["' + "00" * 31 + '"]', "mr_enclave"),
        ('mr_enclave = ["' + "0g" * 32 + '"]', "mr_enclave"),
        ("mr_signer = 5", "mr_signer"),
        ('mr_signer = "abc"', "mr_signer"),
        ('mr_signer = "' + "00 " * 32 + '"', "mr_signer"),
        ('isv_prod_id = "1"', "isv_prod_id"),
        ("isv_prod_id = true", "isv_prod_id"),
        ("isv_prod_id = 65536", "isv_prod_id"),
        ("min_isv_svn = -1", "min_isv_svn"),
        ("min_isv_svn = 1.5", "min_isv_svn"),
        ('allow_debug = "false"', "allow_debug"),
        ("allow_debug = 0", "allow_debug"),
        ('accepted_tcb_statuses = ["UpToDate", "Fine"]', "accepted_tcb_statuses"),
        ('accepted_tcb_statuses = "UpToDate"', "accepted_tcb_statuses"),
        ("accepted_tcb_statuses = []", "accepted_tcb_statuses"),
        ('rejected_advisories = "INTEL-SA-00615"', "rejected_advisories"),
        ("rejected_advisories = [1]", "rejected_advisories"),
        ('report_data = "' + "00" * 65 + '"', "report_data"),
        ('report_data = ""', "report_data"),
        ('simulated_root = "' + "00" * 16 + '"', "simulated_root"),
        ("[mr_signer]\nx = 1", "mr_signer"),
    ],
)
def test_bad_fields_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Policy.from_toml(text)
    assert key in exc.value.message
    assert "\n" not in exc.value.message


@pytest.mark.parametrize(
    "data", [b"mr_signer = ", b"allow_debug = true\nallow_debug = false", b"\xff"]
)
def test_unparsable_toml_is_config_error(data: bytes) -> None:
    with pytest.raises(ConfigError, match="policy"):
        Policy.from_toml(data)


def test_code_built_policy_keeps_the_same_invariants() -> None:
    with pytest.raises(ConfigError, match="mr_signer"):
        Policy(mr_signer=b"short")
    with pytest.raises(ConfigError, match="accepted_tcb_statuses"):
        Policy(accepted_tcb_statuses=())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_policy_or_config_error(text: str) -> None:
    try:
        Policy.from_toml(text)
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["mr_enclave", "mr_signer", "isv_prod_id", "allow_debug", "report_data"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=70),
            lambda inner: st.lists(inner, max_size=3),
            max_leaves=5,
        ),
    )
)
def test_arbitrary_values_give_policy_or_config_error(doc: dict[str, object]) -> None:
    try:
        Policy.from_mapping(doc)
    except ConfigError:
        pass


# ---------------------------------------------------------------------- validate


def test_validate_accepts_only_verified_quotes(occlum: bytes) -> None:
    for not_verified in (occlum, parse_quote(occlum), {"tcb_status": "UpToDate"}, None):
        with pytest.raises(TypeError, match="VerifiedQuote"):
            validate(not_verified, DEFAULT_POLICY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Policy"):
        validate(verified_from(occlum), {"allow_debug": True})  # type: ignore[arg-type]


def test_a_policy_without_identity_accepts_nothing(occlum: bytes, sgx_testdata: Path) -> None:
    """Issue 17 defect 1: the default policy used to accept any genuine enclave."""
    sgx = verified_from(occlum)
    tdx = verified_from((sgx_testdata / "phala-dcap-qvl" / "tdx_quote").read_bytes())
    for verified in (sgx, tdx):
        for policy in (DEFAULT_POLICY, Policy(allow_debug=True), Policy(mr_signer=bytes(32))):
            with pytest.raises(PolicyError, match="pins no enclave identity"):
                validate(verified, policy)
    with pytest.raises(ConfigError, match="pins no enclave identity"):
        require_identity(DEFAULT_POLICY)
    # Only under its unsafe name does "any genuine enclave" pass.
    validate(tdx, Policy(any_enclave_unsafe=True))
    validate(sgx, Policy(any_enclave_unsafe=True, allow_debug=True))
    unsafe = Policy.from_toml("any_enclave_unsafe = true\nallow_debug = true\n")
    assert unsafe.any_enclave_unsafe
    assert Policy.from_toml(unsafe.to_toml()) == unsafe


def test_debug_enclave_fails_a_pinned_policy_and_passes_with_allow_debug(occlum: bytes) -> None:
    verified = verified_from(occlum)
    assert verified.debug
    with pytest.raises(PolicyError) as exc:
        validate(verified, PINNED)
    assert len(exc.value.violations) == 1
    assert exc.value.violations[0].startswith("debug")
    validate(verified, replace(PINNED, allow_debug=True))


def test_every_violation_is_reported_at_once(occlum: bytes) -> None:
    verified = verified_from(
        occlum,
        status=TcbStatus.OUT_OF_DATE,
        advisories=("INTEL-SA-00615", "INTEL-SA-00289"),
        simulated_root=True,
        root="ee" * 32,
    )
    policy = Policy(
        mr_enclave=(b"\x01" * 32, b"\x02" * 32),
        mr_signer=b"\x03" * 32,
        isv_prod_id=1,
        min_isv_svn=2,
        rejected_advisories=("INTEL-SA-00615", "INTEL-SA-00289"),
        report_data=b"nope",
    )
    with pytest.raises(PolicyError) as exc:
        validate(verified, policy, report_data=b"also wrong")
    v = exc.value.violations
    for needle in (
        "mr_enclave " + OCCLUM_MR_ENCLAVE,
        "mr_signer " + OCCLUM_MR_SIGNER,
        "isv_prod_id 0",
        "isv_svn 0 < minimum 2",
        "debug",
        "tcb_status OutOfDate",
        "advisory INTEL-SA-00615",
        "advisory INTEL-SA-00289",
        "(policy)",
        "(caller)",
        "not Intel's production root",
    ):
        assert sum(needle in line for line in v) == 1, needle
    assert len(v) == 11
    assert "; ".join(v) in exc.value.message


def test_matching_identity_passes(occlum: bytes) -> None:
    policy = Policy.from_toml(
        f"""
        mr_enclave = ["{"00" * 32}", "{OCCLUM_MR_ENCLAVE}"]
        mr_signer = "{OCCLUM_MR_SIGNER}"
        isv_prod_id = 0
        min_isv_svn = 0
        allow_debug = true
        report_data = "{b"test".hex()}"
        """
    )
    validate(verified_from(occlum), policy, report_data=b"test" + bytes(60))


def test_report_data_is_compared_as_prefix_or_whole(occlum: bytes) -> None:
    verified = verified_from(occlum)
    relaxed = replace(PINNED, allow_debug=True)
    validate(verified, relaxed, report_data=b"te")
    validate(verified, relaxed, report_data=b"test" + bytes(60))
    for wrong in (b"tesu", b"test" + bytes(59) + b"\x01"):
        with pytest.raises(PolicyError, match="report_data"):
            validate(verified, relaxed, report_data=wrong)
    with pytest.raises(PolicyError, match="1 to 64"):
        validate(verified, relaxed, report_data=bytes(65))


def test_simulated_root_needs_to_be_named(occlum: bytes) -> None:
    root = "5a" * 32
    verified = verified_from(occlum, simulated_root=True, root=root)
    debug_ok = replace(PINNED, allow_debug=True)
    with pytest.raises(PolicyError, match="not Intel's production root"):
        validate(verified, debug_ok)
    with pytest.raises(PolicyError, match="not Intel's production root"):
        validate(verified, replace(debug_ok, simulated_root="a5" * 32))
    validate(verified, replace(debug_ok, simulated_root=root.upper()))
    # Naming a simulated root adds trust; it does not take away the production root.
    validate(verified_from(occlum), replace(debug_ok, simulated_root=root))


def test_real_sgx_quote_status_and_advisories(phala_verified: VerifiedQuote) -> None:
    assert phala_verified.tcb_status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    pinned = Policy(mr_enclave=(phala_verified.mr_enclave,))
    with pytest.raises(PolicyError) as exc:
        validate(phala_verified, pinned)
    assert exc.value.violations == (
        "tcb_status ConfigurationAndSWHardeningNeeded is not accepted (accepted: UpToDate)",
    )
    accepting = replace(pinned, accepted_tcb_statuses=tuple(TcbStatus))
    validate(phala_verified, accepting)
    with pytest.raises(PolicyError) as exc:
        validate(phala_verified, replace(accepting, rejected_advisories=("INTEL-SA-00615",)))
    assert exc.value.violations == ("advisory INTEL-SA-00615 is rejected by the policy",)
    # Hello, world! is what this quote's enclave put in its report data.
    validate(phala_verified, replace(accepting, report_data=b"Hello, world!"))


def test_tdx_quote_has_no_sgx_identity(sgx_testdata: Path) -> None:
    verified = verified_from((sgx_testdata / "phala-dcap-qvl" / "tdx_quote").read_bytes())
    assert not verified.quote.body.debug  # type: ignore[union-attr]
    with pytest.raises(PolicyError, match="pins no enclave identity"):
        validate(verified, DEFAULT_POLICY)
    with pytest.raises(PolicyError) as exc:
        validate(verified, Policy(mr_enclave=(bytes(32),), isv_prod_id=0))
    assert exc.value.violations == (
        "mr_enclave: a TDX quote has no SGX enclave identity",
        "isv_prod_id: a TDX quote has no SGX enclave identity",
    )
    body = verified.quote.body
    assert isinstance(body, TdReport10)
    validate(verified, Policy(tdx=TdxRules(mr_td=(body.mr_td,))))


def test_policy_error_is_an_enclave_kms_error() -> None:
    assert issubclass(PolicyError, EnclaveKMSError)


# ---------------------------------------------------------------------- binding helper


def test_check_binding_on_the_tutorial_json(sgx_testdata: Path) -> None:
    info = json.loads(
        (sgx_testdata / "azure-maa-oe-sample" / "enclave.info.release.json").read_text()
    )
    quote = bytes.fromhex(info["QuoteHex"])[16:]
    held = bytes.fromhex(info["EnclaveHeldDataHex"])
    report_data = parse_quote(quote).body.report_data
    assert check_binding(report_data, held)
    assert not check_binding(report_data, held[:-1] + b"\x01")
    assert not check_binding(report_data[:31], held)
    assert check_binding(hashlib.sha256(b"").digest(), b"")
