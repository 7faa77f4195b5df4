"""TDX policy fields on real TD quotes, and the second opinion only where it applies (issue 17
defect 5: a genuine TD without SEPT_VE_DISABLE was refused as "evidence invalid")."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from enclave_kms.attestation import second_opinion
from enclave_kms.attestation.policy import Policy, validate
from enclave_kms.attestation.tdx_policy import TdxRules
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.errors import ConfigError, PolicyError
from enclave_kms.sgx.tdx import TdReport10, TdReport15
from tests.attestation.test_policy import verified_from
from tests.attestation.test_verify_vectors import INTEL, phala_tdx


def _td(sgx_testdata: Path, rel: str) -> tuple[bytes, TdReport10]:
    raw = (sgx_testdata / rel).read_bytes()
    verified = verified_from(raw)
    body = verified.quote.body
    assert isinstance(body, TdReport10)
    return raw, body


def test_a_td_without_sept_ve_disable_is_a_policy_matter(sgx_testdata: Path) -> None:
    raw, body = _td(sgx_testdata, "google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat")
    assert not int.from_bytes(body.td_attributes, "little") & (1 << 28)
    verified = verified_from(raw)
    pinned = Policy(tdx=TdxRules(mr_td=(body.mr_td,)))
    with pytest.raises(PolicyError, match="SEPT_VE_DISABLE"):
        validate(verified, pinned)
    validate(verified, Policy(tdx=TdxRules(mr_td=(body.mr_td,), require_sept_ve_disable=False)))
    # dcap-qvl refuses such TDs outright: it is not asked, so it cannot make this "invalid".
    collateral = phala_tdx(sgx_testdata).collateral
    reason = second_opinion.not_applicable(verified.quote, collateral)
    assert reason is not None
    assert "SEPT_VE_DISABLE" in reason


def test_every_tdx_field_is_checked_and_reported(sgx_testdata: Path) -> None:
    raw, body = _td(sgx_testdata, "phala-dcap-qvl/tdx_quote")
    verified = verified_from(raw)
    exact = TdxRules(
        mr_td=(body.mr_td,),
        rt_mr0=body.rt_mr0,
        rt_mr1=body.rt_mr1,
        rt_mr2=body.rt_mr2,
        rt_mr3=body.rt_mr3,
        mr_config_id=body.mr_config_id,
        mr_owner=body.mr_owner,
        mr_owner_config=body.mr_owner_config,
        mr_seam=(body.mr_seam,),
        mr_service_td=bytes(48),  # a TDX 1.0 body has no service TD: all zero
        xfam=body.xfam,
        min_tee_tcb_svn=body.tee_tcb_svn,
    )
    validate(verified, Policy(tdx=exact))
    wrong: dict[str, Any] = dict.fromkeys(
        ("rt_mr0", "rt_mr1", "rt_mr2", "rt_mr3", "mr_config_id"), b"Z" * 48
    )
    wrong |= {"mr_td": (b"\x5a" * 48,), "mr_seam": (b"\x5a" * 48,)}
    wrong["xfam"] = b"\xff" * 8
    wrong["min_tee_tcb_svn"] = b"\xff" * 16
    with pytest.raises(PolicyError) as info:
        validate(verified, Policy(tdx=dataclasses.replace(exact, **wrong)))
    assert len(info.value.violations) == len(wrong)


def test_tdx_rules_on_an_sgx_quote_and_sgx_rules_on_a_td_are_violations(
    sgx_testdata: Path,
) -> None:
    sgx = verified_from((sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes())
    with pytest.raises(PolicyError, match="an SGX quote has no TD measurements"):
        validate(
            sgx,
            Policy(
                mr_enclave=(sgx.mr_enclave,),
                tdx=TdxRules(rt_mr0=bytes(48)),
                accepted_tcb_statuses=tuple(TcbStatus),
            ),
        )


def test_tdx_fields_load_from_toml_and_round_trip(sgx_testdata: Path) -> None:
    raw, body = _td(sgx_testdata, "phala-dcap-qvl/tdx_quote_outdated")  # quote v5, TDX 1.5
    assert isinstance(body, TdReport15)
    text = (
        f'mr_td = ["{body.mr_td.hex()}"]\n'
        f'rt_mr3 = "{body.rt_mr3.hex()}"\n'
        f'mr_service_td = "{body.mr_service_td.hex()}"\n'
        f'min_tee_tcb_svn = "{body.tee_tcb_svn.hex()}"\n'
        "require_sept_ve_disable = false\n"
        'accepted_tcb_statuses = ["UpToDate", "OutOfDate"]\n'
    )
    policy = Policy.from_toml(text)
    assert policy.pins_identity
    assert Policy.from_toml(policy.to_toml()) == policy
    validate(verified_from(raw), policy)
    for bad in (
        'mr_td = ["00"]\n',
        'xfam = "00"\n',
        "require_sept_ve_disable = 1\n",
        "mr_td = []\n",
    ):
        with pytest.raises(ConfigError):
            Policy.from_toml(bad)


def test_the_intel_root_is_built_in(sgx_testdata: Path) -> None:
    assert INTEL.production
