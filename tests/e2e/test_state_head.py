"""The host rolls back, deletes, re-adds and truncates what it stores (DESIGN §13), as real
processes: a running server over a real SQLite file, edited by a second connection, and the
host-callable `records_changed` ECALL called as the host would.

While running, the enclave never goes back to an older version of a record it has seen
(records_changed is only a hint); at start, the store must match the enclave-signed state
head, or the start fails closed naming the cause. Putting the host's files back as they were
makes the server start again: nothing was lost, nothing was silently re-created.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from enclave_kms.errors import StateRollbackError
from tests.e2e.conftest import CLI, Server, b64, fails, ok, served, unb64
from tests.e2e.test_hostile_host import Db

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("e2e-state") / "data") as server:
        yield server


@pytest.fixture
def c(host: Server) -> Iterator[httpx.Client]:
    if host.running is None:
        host.start()
    with host.client() as client:
        yield client


@pytest.fixture
def db(host: Server) -> Db:
    return Db(host.data_dir / "kms.sqlite")


def refuses_to_start(host: Server, cause: str) -> str:
    """The next start fails closed with `cause`; the server is not running afterwards."""
    host.stop()
    with pytest.raises(StateRollbackError) as caught:
        host.start()
    assert host.running is None
    assert f"cause: {cause}" in caught.value.message, caught.value.message
    return caught.value.message


def records_changed(host: Server, kind: str, id: str) -> None:
    """What a hostile host can do at any time: tell the enclave a record changed."""
    host.live.enclave.call("records_changed", kind=kind, id=id, timeout=30)


def audit_rows(db: Db) -> list[tuple[Any, ...]]:
    return db.run("SELECT seq, chain, record FROM audit ORDER BY seq")


def restore_audit(db: Db, rows: list[tuple[Any, ...]]) -> None:
    db.run("DELETE FROM audit")
    for row in rows:
        db.run("INSERT INTO audit(seq, chain, record) VALUES (?, ?, ?)", row)


def new_token(c: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "policies": [{"keys": ["*"], "operations": ["encrypt"]}], **extra}
    issued: dict[str, Any] = ok(c.post("/v1/tokens", json=body), 201)
    return issued


# ------------------------------------------------------------------ never backwards


def _revoke(c: httpx.Client, target: str) -> None:
    ok(c.delete(f"/v1/tokens/{target}"))


def _disable(c: httpx.Client, target: str) -> None:
    ok(c.patch(f"/v1/keys/{target}", json={"enabled": False}))


def _raise_min(c: httpx.Client, target: str) -> None:
    ok(c.post(f"/v1/keys/{target}/rotate"))
    ok(c.patch(f"/v1/keys/{target}", json={"min_decryption_version": 2}))


def _schedule(c: httpx.Client, target: str) -> None:
    ok(c.delete(f"/v1/keys/{target}"))


CHANGES: dict[str, Callable[[httpx.Client, str], None]] = {
    "revoke-token": _revoke,
    "disable-key": _disable,
    "raise-min-decryption-version": _raise_min,
    "schedule-deletion": _schedule,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_rollback_while_running_is_refused(
    host: Server, c: httpx.Client, db: Db, change: str
) -> None:
    """The host keeps the record from before a security-relevant change, rolls the record
    back and calls records_changed: the change stays in force (the rolled-back record is
    refused, 502 state_rollback); after a restart the store no longer matches the head."""
    if change == "revoke-token":
        issued = new_token(c, "victim")
        kind, target, use = "token", issued["info"]["id"], issued["token"]
    else:
        kind, target, use = "key", f"rb-{change}", ""
        ok(c.post("/v1/keys", json={"name": target}), 201)
    ct = (
        ""
        if kind == "token"
        else ok(c.post(f"/v1/keys/{target}/encrypt", json={"plaintext": b64(b"old")}))["ciphertext"]
    )
    before = db.record(kind, target)
    CHANGES[change](c, target)
    after = db.record(kind, target)
    db.set(kind, target, *before)
    records_changed(host, kind, target)
    if kind == "token":
        with host.client(use) as victim:
            resp = victim.post("/v1/keys/anything/encrypt", json={"plaintext": "YQ=="})
            assert resp.status_code in (401, 502), resp.text
            assert resp.status_code != 200
        fails(c.get(f"/v1/tokens/{target}"), 502, "state_rollback")
    else:
        message = fails(c.get(f"/v1/keys/{target}"), 502, "state_rollback")
        assert f"key/{target}" in message
        assert "rolled back" in message
        fails(c.post(f"/v1/keys/{target}/decrypt", json={"ciphertext": ct}), 502, "state_rollback")
    assert ok(c.get("/v1/health"))["status"] == "ok"  # everything else keeps working
    refuses_to_start(host, "records-rolled-back")
    db.set(kind, target, *after)  # the host puts the real record back
    host.start()
    with host.client() as c2:
        if kind == "token":
            with host.client(use) as victim:
                fails(
                    victim.post("/v1/keys/x/encrypt", json={"plaintext": "YQ=="}),
                    401,
                    "unauthenticated",
                )
        elif change == "disable-key" or change == "raise-min-decryption-version":
            fails(c2.post(f"/v1/keys/{target}/decrypt", json={"ciphertext": ct}), 409, "key_state")
        else:
            assert ok(c2.get(f"/v1/keys/{target}"))["deletion_scheduled_at"] is not None


def test_deleted_record_while_running_and_at_start(host: Server, c: httpx.Client, db: Db) -> None:
    ok(c.post("/v1/keys", json={"name": "gone"}), 201)
    row = db.record("key", "gone")
    db.delete("key", "gone")
    records_changed(host, "key", "gone")
    message = fails(c.get("/v1/keys/gone"), 502, "state_rollback")
    assert "deleted by the host" in message
    # A listing that hides it is refused too (the enclave knows every record it holds).
    fails(c.get("/v1/keys", params={"limit": 1000}), 502, "state_rollback")
    refuses_to_start(host, "records-missing")
    db.run("INSERT INTO records(kind, id, version, blob) VALUES ('key', 'gone', ?, ?)", row)
    host.start()
    with host.client() as c2:
        ok(c2.get("/v1/keys/gone"))


def test_re_added_record_is_refused(host: Server, c: httpx.Client, db: Db) -> None:
    """A record the head never covered (here: a copy of a real one under another name, as a
    host would put back a deleted record) makes the start fail closed."""
    ok(c.post("/v1/keys", json={"name": "original"}), 201)
    version, blob = db.record("key", "original")
    db.run(
        "INSERT INTO records(kind, id, version, blob) VALUES ('key', 'copy', ?, ?)",
        (version, blob),
    )
    refuses_to_start(host, "records-added")
    db.delete("key", "copy")
    host.start()


def test_state_head_rolled_back_alone(host: Server, c: httpx.Client, db: Db) -> None:
    head = db.record("config", "state-head")
    ok(c.post("/v1/keys", json={"name": "after-head"}), 201)
    current = db.record("config", "state-head")
    db.set("config", "state-head", *head)
    refuses_to_start(host, "records-added")
    db.set("config", "state-head", *current)
    host.start()


def test_audit_truncation_is_refused(host: Server, c: httpx.Client, db: Db) -> None:
    for i in range(5):
        ok(c.post("/v1/keys", json={"name": f"audited-{i}"}), 201)
    host.stop()
    rows = audit_rows(db)
    db.run("DELETE FROM audit WHERE seq > ?", (rows[-4][0],))
    # The truncated log still verifies on its own (every record links and is signed) ...
    # ... but not against the signed state head:
    refuses_to_start(host, "audit-truncated")
    verify = subprocess.run(
        [str(CLI), "audit", "verify", str(host.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode != 0, verify.stdout
    assert "truncated" in (verify.stdout + verify.stderr)
    # Truncating and putting back an older state head: the records no longer match it.
    restore_audit(db, rows)
    host.start()


def test_missing_audit_key_is_refused(host: Server, c: httpx.Client, db: Db) -> None:
    host.stop()
    key = db.record("config", "audit-key")
    head = db.record("config", "state-head")
    rows = audit_rows(db)
    db.delete("config", "audit-key")
    refuses_to_start(host, "audit-key-missing")
    # Deleting the audit key, the head and the log together: still no silent new start.
    db.delete("config", "state-head")
    db.run("DELETE FROM audit")
    refuses_to_start(host, "audit-key-missing")
    db.run("INSERT INTO records(kind, id, version, blob) VALUES ('config', 'audit-key', ?, ?)", key)
    refuses_to_start(host, "head-missing")
    db.run(
        "INSERT INTO records(kind, id, version, blob) VALUES ('config', 'state-head', ?, ?)", head
    )
    restore_audit(db, rows)
    host.start()
    with host.client() as c2:
        ok(c2.get("/v1/keys/original"))


def test_acknowledged_state_survives_restarts(host: Server, c: httpx.Client) -> None:
    """Nothing of this is a false alarm: plain restarts keep starting (every test above
    restarted this server already; one more, after all of them, is the check)."""
    ct = ok(c.post("/v1/keys/original/encrypt", json={"plaintext": b64(b"kept")}))["ciphertext"]
    host.restart()
    with host.client() as c2:
        assert (
            unb64(ok(c2.post("/v1/keys/original/decrypt", json={"ciphertext": ct}))["plaintext"])
            == b"kept"
        )
