"""`serve --workers 2`: two enclave processes on one store and one port.

Each worker keeps its own memory of records and its own audit chain; the host relays every
record change to the other worker before the writer answers (host/workers.py). So a client
whose connections land on different workers sees one server: one certificate, and every
change made through one worker in force on the other at once.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.host.storage.sqlite import SQLiteStorage
from tests.e2e.conftest import CLI, HTTP_TIMEOUT, Server, b64, fails, ok, served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("e2e-workers") / "data", workers=2) as server:
        yield server


def _connection(server: Server, token: str | None = None) -> httpx.Client:
    """A client that keeps exactly one connection, hence one worker, while it lives."""
    return httpx.Client(
        base_url=server.url,
        verify=False,
        timeout=HTTP_TIMEOUT,
        headers={"Authorization": f"Bearer {token or server.token}"},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


@pytest.fixture
def by_worker(two: Server) -> Iterator[dict[int, httpx.Client]]:
    """One client per worker: new connections until the kernel has given us both."""
    found: dict[int, httpx.Client] = {}
    try:
        for _ in range(200):
            client = _connection(two)
            worker = ok(client.get("/v1/health"))["worker"]
            if worker in found:
                client.close()
                continue
            found[worker] = client
            if len(found) == 2:
                yield found
                return
        pytest.fail(f"200 connections all reached workers {sorted(found)}")
    finally:
        for client in found.values():
            client.close()


def test_both_workers_serve_one_certificate(two: Server) -> None:
    parts = urlsplit(two.url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    certificates = set()
    for _ in range(20):
        with (
            socket.create_connection((parts.hostname, parts.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls,
        ):
            certificates.add(tls.getpeercert(binary_form=True))
    assert len(certificates) == 1


def test_a_change_through_one_worker_holds_on_the_other(
    by_worker: dict[int, httpx.Client],
) -> None:
    w0, w1 = by_worker[0], by_worker[1]
    ok(w0.post("/v1/keys", json={"name": "shared", "type": "aes256-gcm"}), 201)
    plain = b64(b"both workers")
    ct = ok(w1.post("/v1/keys/shared/encrypt", json={"plaintext": plain}))["ciphertext"]
    assert ok(w0.post("/v1/keys/shared/decrypt", json={"ciphertext": ct}))["plaintext"] == plain

    # Worker 1 holds the key now; worker 0 disables it: worker 1 refuses at once.
    ok(w0.patch("/v1/keys/shared", json={"enabled": False}))
    fails(w1.post("/v1/keys/shared/encrypt", json={"plaintext": plain}), 409, "key_state")
    ok(w1.patch("/v1/keys/shared", json={"enabled": True}))
    ok(w0.post("/v1/keys/shared/encrypt", json={"plaintext": plain}))

    # A rotation through worker 1 is the latest version on worker 0.
    ok(w1.post("/v1/keys/shared/rotate"))
    ct2 = ok(w0.post("/v1/keys/shared/encrypt", json={"plaintext": plain}))["ciphertext"]
    assert ct2.startswith("ekms:v2:")


def _on_each_worker(server: Server, token: str) -> dict[int, httpx.Client]:
    """The token's own connections, one on each worker."""
    users: dict[int, httpx.Client] = {}
    while len(users) < 2:
        client = _connection(server, token)
        worker = ok(client.get("/v1/health"))["worker"]
        if worker in users:
            client.close()
        else:
            users[worker] = client
    return users


@pytest.mark.parametrize("revoked", ["itself", "its-issuer"])
def test_a_token_revoked_on_one_worker_is_refused_by_the_other(
    two: Server, by_worker: dict[int, httpx.Client], revoked: str
) -> None:
    """Both workers hold the token (and its issuer) in memory; the revocation, through
    worker 1, of the token or of the token that issued it (the child is never written) is
    refused on the very next request on either worker."""
    key = f"for-token-{revoked}"
    ok(by_worker[0].post("/v1/keys", json={"name": key, "type": "aes256-gcm"}), 201)
    use = [{"keys": ["*"], "operations": ["encrypt"]}]
    manager = ok(
        by_worker[0].post(
            "/v1/tokens",
            json={"name": "manager", "policies": [*use, {"operations": ["tokens.manage"]}]},
        ),
        201,
    )
    with _connection(two, manager["token"]) as as_manager:
        issued = ok(as_manager.post("/v1/tokens", json={"name": "child", "policies": use}), 201)
    users = _on_each_worker(two, issued["token"])
    try:
        for client in users.values():  # both workers now hold the token and its lineage
            ok(client.post(f"/v1/keys/{key}/encrypt", json={"plaintext": "YQ=="}))
        target = issued if revoked == "itself" else manager
        ok(by_worker[1].delete(f"/v1/tokens/{target['info']['id']}"))
        for client in users.values():
            resp = client.post(f"/v1/keys/{key}/encrypt", json={"plaintext": "YQ=="})
            assert "revoked" in fails(resp, 401, "unauthenticated")
    finally:
        for client in users.values():
            client.close()


def test_each_worker_keeps_its_own_verifiable_audit_chain(
    two: Server, by_worker: dict[int, httpx.Client]
) -> None:
    heads = {w: ok(c.get("/v1/audit")) for w, c in by_worker.items()}
    assert {h["chain"] for h in heads.values()} == {0, 1}
    storage = SQLiteStorage(two.data_dir / "kms.sqlite")
    try:
        chains = {chain: storage.audit_records(chain) for chain in storage.audit_chains()}
    finally:
        storage.close()
    assert set(chains) == {0, 1}
    keys = {verify_chain(records).public_key_sha256 for records in chains.values()}
    assert keys == {heads[0]["public_key_sha256"]}  # one audit key, two chains
    result = subprocess.run(
        [str(CLI), "audit", "verify", str(two.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chain 0:" in result.stdout
    assert "chain 1:" in result.stdout


def test_a_restart_resumes_both_chains(two: Server) -> None:
    two.restart()
    with two.client() as c:
        for _ in range(10):
            ok(c.get("/v1/health"))
    storage = SQLiteStorage(two.data_dir / "kms.sqlite")
    try:
        for chain in (0, 1):
            verify_chain(storage.audit_records(chain))
    finally:
        storage.close()
