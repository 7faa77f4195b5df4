"""Shared fixtures: the real SGX/TDX vectors live beside the repo in tests/vectors/sgx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.client.real_server import RealKMS
    from tests.pg_server import PostgresServer

REPO = Path(__file__).resolve().parents[1]
SGX_TESTDATA = REPO / "tests" / "vectors" / "sgx"


@pytest.fixture(scope="session")
def sgx_testdata() -> Path:
    assert SGX_TESTDATA.is_dir(), f"missing test vectors at {SGX_TESTDATA}"
    return SGX_TESTDATA


@pytest.fixture(scope="session")
def real_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealKMS]:
    """One real simulated KMS (initialised; admin token in `.token`) for the whole session."""
    from tests.client.real_server import real_kms as start_real_kms

    with start_real_kms(tmp_path_factory.mktemp("real-kms")) as kms:
        yield kms


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session's storage tests (tests/pg_server.py); a
    test that stops it starts it again before it ends."""
    from tests.pg_server import postgres_server

    with postgres_server() as server:
        yield server
