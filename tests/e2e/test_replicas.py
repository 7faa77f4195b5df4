"""Replicas on one PostgreSQL database, as real processes (DESIGN §14, docs/replicas.md):
what one acknowledges is in force on the others at once; a restored older database is
refused by every live replica and by a restarted one; kill -9 of a replica loses nothing
acknowledged while the SDK fails over. Each replica has its own data directory; they share
one simulated CPU (the join by mutual attestation across CPUs is tested elsewhere)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator

import httpx
import pytest

from enclave_kms.client import FailoverKMSClient, KMSClient
from enclave_kms.client.tls import unverified_context
from enclave_kms.errors import (
    AuditError,
    KeyStateError,
    PermissionDeniedError,
    StateRollbackError,
    UnauthenticatedError,
)
from tests.e2e.replica_cluster import CLI, Cluster, Replica, cluster, free_port
from tests.pg_server import PostgresServer, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def three(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("replicas"), fresh_database(pg), 3) as found:
        yield found


@pytest.fixture(scope="module")
def admin(three: Cluster) -> str:
    first = three.replicas[0]
    with KMSClient(first.url, policy=three.policy(), trust_root=three.trust_root) as kms:
        return kms.init().token


def _client(three: Cluster, index: int, token: str) -> KMSClient:
    return KMSClient(
        three.replicas[index].url, token=token, policy=three.policy(), trust_root=three.trust_root
    )


def test_a_change_on_one_replica_is_in_force_on_another_at_once(three: Cluster, admin: str) -> None:
    with _client(three, 0, admin) as a, _client(three, 1, admin) as b:
        a.create_key("shared")
        v1 = b.encrypt("shared", b"one")  # B holds the key (and the admin token) in memory now
        assert v1.startswith("ekms:v1:")
        # rotation: B encrypts under the new version right after A acknowledged it
        a.rotate_key("shared")
        assert b.encrypt("shared", b"two").startswith("ekms:v2:")
        # min_decryption_version: B refuses the old version right away
        a.configure_key("shared", min_decryption_version=2)
        with pytest.raises(KeyStateError):
            b.decrypt("shared", v1)
        # disable, then enable again
        a.configure_key("shared", enabled=False)
        with pytest.raises(KeyStateError):
            b.encrypt("shared", b"x")
        a.configure_key("shared", enabled=True)
        assert b.decrypt("shared", b.encrypt("shared", b"back")) == b"back"
        # scheduled deletion
        a.delete_key("shared")
        with pytest.raises(KeyStateError):
            b.encrypt("shared", b"x")
        a.restore_key("shared")
        assert b.encrypt("shared", b"y").startswith("ekms:v2:")
        # token policy and revocation: a scoped token issued on A works on B at once (and only
        # as far as its policy goes); revoked on A, it is refused on B at once
        issued = a.create_token("app", [{"keys": ["shared"], "operations": ["encrypt"]}])
        with _client(three, 1, issued.token) as app:
            app.encrypt("shared", b"allowed")
            with pytest.raises(PermissionDeniedError):
                app.decrypt("shared", v1)
            a.revoke_token(issued.info.id)
            with pytest.raises(UnauthenticatedError):
                app.encrypt("shared", b"revoked")


def test_replicas_answer_who_they_are_and_serve_metrics(three: Cluster, admin: str) -> None:
    with _client(three, 2, admin) as c:
        c.encrypt("shared", b"m")
    url = three.replicas[2].url
    with httpx.Client(base_url=url, verify=unverified_context(), timeout=10) as http:
        listed = http.get("/v1/sys/replicas", headers={"authorization": f"Bearer {admin}"})
        assert listed.status_code == 200, listed.text
        doc = listed.json()
        assert doc["replica"] == 3
        assert doc["ready"] is True
        assert sorted(p["replica"] for p in doc["peers"]) == [1, 2]
        assert all(p["reachable"] and p["generation"] >= 1 for p in doc["peers"])
        assert http.get("/v1/sys/replicas").status_code == 401
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'ekms_requests_total{route="POST /v1/keys/{name}/encrypt",status="200"}' in text
        assert "ekms_ready 1" in text
        assert "ekms_replica_id 3" in text
        assert "shared" not in text  # route templates only, never a key name
        assert admin not in text


def test_kill_9_of_a_replica_loses_no_acknowledged_write(three: Cluster, admin: str) -> None:
    urls = [r.url for r in three.replicas]
    acked: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    half = threading.Event()
    kms = FailoverKMSClient(urls, token=admin, policy=three.policy(), trust_root=three.trust_root)

    def writer() -> None:
        n = 0
        while not stop.is_set():
            name = f"w-{n}"
            n += 1
            try:
                kms.create_key(name)
            except Exception as exc:  # noqa: BLE001 - an unacknowledged write is allowed
                errors.append(exc)
                continue
            acked.append(name)
            if len(acked) == 5:
                half.set()

    thread = threading.Thread(target=writer)
    with kms:
        thread.start()
        assert half.wait(60)
        first = kms.current_url
        victim = next(r for r in three.replicas if r.url == first)
        three.kill(victim)  # the replica the client is writing through
        before = len(acked)
        for _ in range(600):
            if len(acked) >= before + 5:
                break
            threading.Event().wait(0.05)
        stop.set()
        thread.join(60)
        assert len(acked) >= before + 5, errors[-3:]  # the survivors kept writing
        assert kms.current_url != first
        present = {k.name for k in kms.iter_keys()}
        lost = [name for name in acked if name not in present]
        assert lost == [], lost
        # a write whose outcome was unknown was raised, never re-sent blindly elsewhere
        assert all(not isinstance(e, AssertionError) for e in errors)
    three.start(victim)  # it comes back: a majority confirms its state, it serves again
    with _client(three, three.replicas.index(victim), admin) as back:
        assert back.get_key(acked[-1]).name == acked[-1]


def test_a_replica_on_another_cpu_joins_by_attestation_and_serves_beside_the_others(
    three: Cluster, admin: str
) -> None:
    """Join (custody/) and replicas together: a new simulated CPU under the same root cannot
    unseal the storage root key, obtains it from a live replica by mutual attestation, seals
    it to itself, and serves the same installation at once, consistent with the others."""
    cpu_b = three.base / "cpu-b"
    subprocess.run(
        [CLI, "platform", "init", "--dir", str(cpu_b), "--root-from", str(three.platform_dir)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    joiner = Replica(9, free_port(), three.base / "r9", platform_dir=cpu_b)
    joiner.join = three.replicas[0].url
    three.replicas.append(joiner)
    try:
        three.start(joiner)
        # it serves, so it joined: CPU B unseals nothing the others sealed
        with _client(three, 0, admin) as a:
            a.create_key("joined-cpu")
            ciphertext = a.encrypt("joined-cpu", b"from A")
        with _client(three, 3, admin) as d:
            assert d.decrypt("joined-cpu", ciphertext) == b"from A"
            d.rotate_key("joined-cpu")
        with _client(three, 1, admin) as b:
            assert b.get_key("joined-cpu").latest_version == 2
    finally:
        three.stop(joiner)
        three.replicas.remove(joiner)


def test_a_restored_older_database_is_refused_live_and_on_restart(
    three: Cluster, admin: str, pg: PostgresServer
) -> None:
    """Last in the module: it leaves the database rolled back."""
    db = three.storage.rsplit("/", 1)[1]
    with _client(three, 0, admin) as a:
        a.create_key("before-snapshot")
    pg.sql("CREATE TABLE snap_records AS SELECT * FROM records", db=db)
    pg.sql("CREATE TABLE snap_audit AS SELECT * FROM audit", db=db)
    with _client(three, 0, admin) as a, _client(three, 1, admin) as b:
        a.create_key("after-snapshot")
        a.rotate_key("before-snapshot")
        b.encrypt("before-snapshot", b"seen")  # B sees the later generation too
    restarted = three.replicas[2]
    three.stop(restarted)
    # The operator restores the older snapshot, consistent records + audit + head.
    pg.sql(
        "BEGIN; TRUNCATE records, audit; INSERT INTO records SELECT * FROM snap_records; "
        "INSERT INTO audit SELECT * FROM snap_audit; COMMIT",
        db=db,
    )
    for index in (0, 1):  # every live replica that saw the later generation refuses it
        answer = _raw_encrypt(three.replicas[index].url, admin)
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["code"] == "state_rollback"
        assert "restored to an older state" in answer.json()["error"]["message"]
    # The SDK is refused too (its attestation request cannot be audited into that store).
    with pytest.raises((StateRollbackError, AuditError)), _client(three, 0, admin) as live:
        live.encrypt("before-snapshot", b"x")
    # The restarted replica finds the snapshot self-consistent, but no peer confirms it.
    three.start(restarted, wait_ready=False)
    three.wait_up(restarted)
    with pytest.raises(AssertionError, match="no 200 from /v1/sys/ready"):
        three.wait_ready(restarted, timeout=4)  # several rounds of asking its peers
    answer = _raw_encrypt(restarted.url, admin)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "not_ready"
    ready = httpx.get(f"{restarted.url}/v1/sys/ready", verify=unverified_context(), timeout=5)
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"


def _raw_encrypt(url: str, token: str) -> httpx.Response:
    """What the server itself answers (the SDK's own state-head check left out)."""
    return httpx.post(
        f"{url}/v1/keys/before-snapshot/encrypt",
        json={"plaintext": "eA=="},
        headers={"authorization": f"Bearer {token}"},
        verify=unverified_context(),
        timeout=10,
    )
