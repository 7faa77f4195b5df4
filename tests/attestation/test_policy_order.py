"""`loosenings`: each field's "tighter" direction is allowed and the opposite one is named."""

from __future__ import annotations

import pytest

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.policy_order import is_tighter, loosenings

A, B, C = "aa" * 32, "bb" * 32, "cc" * 32
TD, TD2 = "dd" * 48, "ee" * 48
ROOT, ROOT2 = "11" * 32, "22" * 32

BASE = f"""
mr_enclave = ["{A}", "{B}"]
mr_signer = "{C}"
isv_prod_id = 1
min_isv_svn = 3
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
rejected_advisories = ["INTEL-SA-1"]
simulated_root = "{ROOT}"
mr_td = ["{TD}", "{TD2}"]
rt_mr1 = "{TD}"
min_tee_tcb_svn = "{"03" * 16}"
"""


STATUSES = 'accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]\n'


def p(text: str) -> Policy:
    return Policy.from_toml(text)


def edit(old: str, new: str) -> Policy:
    assert old in BASE
    return p(BASE.replace(old, new))


TIGHTER = {
    "measurements shrink": (f'mr_enclave = ["{A}", "{B}"]', f'mr_enclave = ["{A}"]'),
    "min svn rises": ("min_isv_svn = 3", "min_isv_svn = 4"),
    "statuses shrink": ('"UpToDate", "SWHardeningNeeded"', '"UpToDate"'),
    "advisories grow": ('["INTEL-SA-1"]', '["INTEL-SA-1", "INTEL-SA-2"]'),
    "root dropped (Intel's only)": (f'simulated_root = "{ROOT}"', ""),
    "mr_td shrinks": (f'mr_td = ["{TD}", "{TD2}"]', f'mr_td = ["{TD2}"]'),
    "tee svn rises": (f'min_tee_tcb_svn = "{"03" * 16}"', f'min_tee_tcb_svn = "{"04" * 16}"'),
    "pin added": ("isv_prod_id = 1", f'isv_prod_id = 1\nrt_mr2 = "{TD}"'),
}
LOOSER = {
    "measurement added": (f'mr_enclave = ["{A}", "{B}"]', f'mr_enclave = ["{A}", "{B}", "{C}"]'),
    "measurements dropped": (f'mr_enclave = ["{A}", "{B}"]', ""),
    "min svn lowered": ("min_isv_svn = 3", "min_isv_svn = 2"),
    "min svn dropped": ("min_isv_svn = 3", ""),
    "status added": (
        '"UpToDate", "SWHardeningNeeded"',
        '"UpToDate", "SWHardeningNeeded", "OutOfDate"',
    ),
    "advisory dropped": ('["INTEL-SA-1"]', '["INTEL-SA-2"]'),
    "debug allowed": ("isv_prod_id = 1", "isv_prod_id = 1\nallow_debug = true"),
    "signer changed": (f'mr_signer = "{C}"', f'mr_signer = "{A}"'),
    "product unpinned": ("isv_prod_id = 1", ""),
    "root changed": (f'simulated_root = "{ROOT}"', f'simulated_root = "{ROOT2}"'),
    "mr_td added": (f'mr_td = ["{TD}", "{TD2}"]', f'mr_td = ["{TD}", "{A}{A[:32]}"]'),
    "rtmr unpinned": (f'rt_mr1 = "{TD}"', ""),
    "tee svn lowered": (
        f'min_tee_tcb_svn = "{"03" * 16}"',
        f'min_tee_tcb_svn = "{"02" + "03" * 15}"',
    ),
    "sept_ve no longer required": (
        "isv_prod_id = 1",
        "isv_prod_id = 1\nrequire_sept_ve_disable = false",
    ),
    "unsafe any enclave": ("isv_prod_id = 1", "isv_prod_id = 1\nany_enclave_unsafe = true"),
}


@pytest.mark.parametrize("change", TIGHTER.values(), ids=list(TIGHTER))
def test_tightening_is_allowed(change: tuple[str, str]) -> None:
    assert loosenings(p(BASE), edit(*change)) == []


@pytest.mark.parametrize("change", LOOSER.values(), ids=list(LOOSER))
def test_loosening_is_named(change: tuple[str, str]) -> None:
    found = loosenings(p(BASE), edit(*change))
    assert found, change
    assert not is_tighter(p(BASE), edit(*change))


def test_every_loosening_is_reported_at_once() -> None:
    new = p(
        BASE.replace("min_isv_svn = 3", "min_isv_svn = 1").replace(
            '"UpToDate", "SWHardeningNeeded"', '"UpToDate", "OutOfDate"'
        )
    )
    found = loosenings(p(BASE), new)
    assert any("min_isv_svn" in f for f in found)
    assert any("OutOfDate" in f for f in found)


def test_a_constraint_on_an_unconstrained_field_is_tighter() -> None:
    loose = p(f'mr_signer = "{C}"\nisv_prod_id = 1\nsimulated_root = "{ROOT}"\n' + STATUSES)
    assert is_tighter(loose, p(BASE))
    assert not is_tighter(p(BASE), loose)
    assert not is_tighter(p(f'mr_signer = "{C}"\nisv_prod_id = 1\n'), p(BASE))  # adds a root
