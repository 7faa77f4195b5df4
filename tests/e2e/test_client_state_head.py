"""A host restores a complete, consistent older snapshot of the data directory (DESIGN §13):
the one rollback an enclave on one machine cannot see. The SDK can: every answer carries the
enclave's state head (generation, hash) inside attested TLS, the SDK remembers the highest per
installation and refuses a server that goes back. A client that never saw the later state
accepts the old one (the single-machine gap that replicas close, docs/operations.md)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import KMSClient, state_head
from enclave_kms.errors import StateRollbackError
from tests.e2e.conftest import Server, served

pytestmark = pytest.mark.slow


def sdk(server: Server) -> KMSClient:
    ident = server.live.identity
    root = TrustRoot.from_pem(server.live.root_path.read_bytes())
    policy = Policy(
        mr_enclave=(bytes.fromhex(ident["mr_enclave"]),),
        mr_signer=bytes.fromhex(ident["mr_signer"]),
        isv_prod_id=ident["isv_prod_id"],
        min_isv_svn=ident["isv_svn"],
        simulated_root=root.spki_sha256,
    )
    return KMSClient(server.url, token=server.token, policy=policy, trust_root=root)


def snapshot(data_dir: Path, to: Path) -> None:
    """The host's copy of the whole store while the server is stopped."""
    to.mkdir(parents=True, exist_ok=True)
    for name in ("kms.sqlite", "kms.sqlite-wal", "kms.sqlite-shm"):
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, to / name)


def restore(data_dir: Path, frm: Path) -> None:
    for name in ("kms.sqlite", "kms.sqlite-wal", "kms.sqlite-shm"):
        (data_dir / name).unlink(missing_ok=True)
        if (frm / name).exists():
            shutil.copy2(frm / name, data_dir / name)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with served(tmp_path / "data") as s:
        yield s


def test_sdk_refuses_a_server_restored_from_an_older_snapshot(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_head, "DEFAULT", state_head.StateHeads())
    remembered = tmp_path / "state-heads.json"
    state_head.remember_in(remembered)
    with sdk(server) as kms:
        kms.create_key("before-snapshot")
    server.stop()
    snapshot(server.data_dir, tmp_path / "old")
    server.start()
    with sdk(server) as kms:
        kms.create_key("after-snapshot")
        kms.rotate_key("after-snapshot")
        seen = state_head.current().snapshot()
    server.stop()
    restore(server.data_dir, tmp_path / "old")
    server.start()  # consistent: the enclave itself cannot tell
    with sdk(server) as kms, pytest.raises(StateRollbackError, match="went back"):
        kms.list_keys()
    # The memory survives the client: a new process reading the same file refuses too.
    fresh = state_head.StateHeads(remembered)
    assert fresh.snapshot() == seen
    # A client that never saw the later state accepts the old one: the stated gap.
    blank = state_head.StateHeads()
    installation, (generation, _) = next(iter(seen.items()))
    blank.observe(f"v1 {installation} {generation - 3} {'0' * 64}", {})
    with pytest.raises(StateRollbackError, match="went back"):
        fresh.observe(f"v1 {installation} {generation - 3} {'0' * 64}", fresh.snapshot())


def test_state_heads_tolerate_reordering_and_catch_forks() -> None:
    heads = state_head.StateHeads()
    inst = "ab" * 16

    def h(n: int) -> str:
        return f"{n:064x}"

    floor = heads.snapshot()  # two requests sent at once...
    heads.observe(f"v1 {inst} 11 {h(11)}", floor)
    heads.observe(f"v1 {inst} 10 {h(10)}", floor)  # ...answered out of order: fine
    assert heads.snapshot()[inst] == (11, h(11))
    with pytest.raises(StateRollbackError, match="went back"):
        heads.observe(f"v1 {inst} 10 {h(10)}", heads.snapshot())  # sent after 11 was seen
    with pytest.raises(StateRollbackError, match="forked"):
        heads.observe(f"v1 {inst} 11 {h(99)}", heads.snapshot())
    with pytest.raises(StateRollbackError, match="malformed"):
        heads.observe("v1 nonsense", {})
    heads.observe(None, heads.snapshot())  # an older server: nothing to check
