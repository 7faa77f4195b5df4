"""Shared fixtures: the real SGX/TDX vectors live beside the repo in ../shared/testdata/sgx."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SGX_TESTDATA = REPO.parent / "shared" / "testdata" / "sgx"


@pytest.fixture(scope="session")
def sgx_testdata() -> Path:
    assert SGX_TESTDATA.is_dir(), f"missing test vectors at {SGX_TESTDATA}"
    return SGX_TESTDATA
