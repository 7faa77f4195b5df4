"""Fixtures of the client tests: one simulated platform for every fake server."""

from __future__ import annotations

import pytest

from enclave_kms.platform.sim.platform import SimPlatform
from tests.client.fakes import World


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("client-world")
    return World(SimPlatform.init(base / "platform"), base)
