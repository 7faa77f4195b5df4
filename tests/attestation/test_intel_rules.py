"""Issue 17 defect 7: Intel's QVL grading rules, exactly (convergence, tcbType, level order).

The convergence table is written out by hand from Intel's `convergeTcbStatusWithQeTcbStatus`
and its enclave-report check (any QE / TDX-module status other than UpToDate and Revoked
counts as OutOfDate), not computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave_kms.attestation import tcb
from enclave_kms.attestation.tcb_info import TcbInfo
from enclave_kms.attestation.types import TcbStatus as S
from enclave_kms.errors import TcbLevelError
from enclave_kms.sgx.pck import parse_pck_extension
from enclave_kms.sgx.quote import parse_quote

# What the platform status becomes when the QE (or TDX module) is "OutOfDate-like".
UNDER_OUT_OF_DATE = {
    S.UP_TO_DATE: S.OUT_OF_DATE,
    S.SW_HARDENING_NEEDED: S.OUT_OF_DATE,
    S.CONFIGURATION_NEEDED: S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.CONFIGURATION_AND_SW_HARDENING_NEEDED: S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.OUT_OF_DATE: S.OUT_OF_DATE,
    S.OUT_OF_DATE_CONFIGURATION_NEEDED: S.OUT_OF_DATE_CONFIGURATION_NEEDED,
    S.REVOKED: S.REVOKED,
}
OUT_OF_DATE_LIKE = (
    S.OUT_OF_DATE,
    S.SW_HARDENING_NEEDED,
    S.CONFIGURATION_NEEDED,
    S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
    S.OUT_OF_DATE_CONFIGURATION_NEEDED,
)


def _expected(platform: S, qe: S) -> S:
    if qe is S.UP_TO_DATE:
        return platform
    if qe is S.REVOKED:
        return S.REVOKED
    assert qe in OUT_OF_DATE_LIKE
    return UNDER_OUT_OF_DATE[platform]


@pytest.mark.parametrize("qe", list(S), ids=[s.value for s in S])
@pytest.mark.parametrize("platform", list(S), ids=[s.value for s in S])
def test_convergence_over_every_status_pair(platform: S, qe: S) -> None:
    assert tcb.converge(platform, qe) is _expected(platform, qe)


def test_the_sixteen_pairs_that_used_to_grade_differently() -> None:
    changed = [
        (p, q)
        for q in (
            S.SW_HARDENING_NEEDED,
            S.CONFIGURATION_NEEDED,
            S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
            S.OUT_OF_DATE_CONFIGURATION_NEEDED,
        )
        for p in (
            S.UP_TO_DATE,
            S.SW_HARDENING_NEEDED,
            S.CONFIGURATION_NEEDED,
            S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        )
    ]
    assert len(changed) == 16
    for p, q in changed:
        assert tcb.converge(p, q) is not p  # the old code let the platform status stand


def _phala(sgx_testdata: Path) -> tuple[dict[str, object], object]:
    d = sgx_testdata / "phala-dcap-qvl"
    doc = json.loads((d / "sgx_quote_collateral.json").read_text())
    leaf = parse_quote((d / "sgx_quote").read_bytes()).pck_certificates()[0]
    return json.loads(doc["tcb_info"]), parse_pck_extension(leaf)


def test_tcb_type_other_than_zero_is_refused(sgx_testdata: Path) -> None:
    info, pck = _phala(sgx_testdata)
    assert tcb.match_platform_tcb(TcbInfo.parse(json.dumps(info).encode()), pck)  # type: ignore[arg-type]
    info["tcbType"] = 1
    with pytest.raises(TcbLevelError, match="tcbType 1"):
        tcb.match_platform_tcb(TcbInfo.parse(json.dumps(info).encode()), pck)  # type: ignore[arg-type]


def test_levels_are_walked_in_intels_order_not_the_documents(sgx_testdata: Path) -> None:
    info, pck = _phala(sgx_testdata)
    signed = tcb.match_platform_tcb(TcbInfo.parse(json.dumps(info).encode()), pck)  # type: ignore[arg-type]
    levels = info["tcbLevels"]
    assert isinstance(levels, list)
    for shuffled in (levels[::-1], levels[1::2] + levels[::2]):
        info["tcbLevels"] = shuffled
        graded = tcb.match_platform_tcb(TcbInfo.parse(json.dumps(info).encode()), pck)  # type: ignore[arg-type]
        assert graded.sgx_level == signed.sgx_level
        assert graded.status is signed.status is S.CONFIGURATION_AND_SW_HARDENING_NEEDED
