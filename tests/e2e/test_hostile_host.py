"""A hostile host: it edits the SQLite file under a running (or stopped) enclave.

A running enclave answers from its own memory of the records it holds (enclave/state/cache.py),
so an edit under it changes nothing until the record is read from the host again: after a
restart. Then altering or swapping a record's bytes makes that one key fail with a clear error
(502 integrity_violation naming the record); other keys keep working, no answer is ever wrong,
the server keeps answering. Deleting a record, changing its version or rolling it back puts
the store behind the enclave-signed state head: the start fails closed, naming the cause
(more of that in test_state_head.py). An altered audit
record is found by `verify_chain` and `enclave-kms audit verify`, naming the record. Garbage
answers to the storage OCALLs are refused with typed errors (in process, over a real EDL
channel).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_kms import edl
from enclave_kms.edl_endpoint import Endpoint
from enclave_kms.enclave.host_calls import HostCalls
from enclave_kms.enclave.state.audit import AuditEvent, AuditLog, verify_chain
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.errors import (
    AuditError,
    BoundaryError,
    EnclaveKMSError,
    IntegrityError,
    SealingError,
    StateRollbackError,
)
from tests.e2e.conftest import CLI, Server, b64, fails, ok, served, unb64

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with served(tmp_path_factory.mktemp("e2e-hostile") / "data") as server:
        yield server


@pytest.fixture
def c(host: Server) -> Iterator[httpx.Client]:
    if host.running is None:
        host.start()
    with host.client() as client:
        yield client


class Db:
    """The host's view of kms.sqlite: a second connection, as any process on the host."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path, timeout=60, isolation_level=None)) as db:
            return db.execute(sql, args).fetchall()

    def record(self, kind: str, id: str) -> tuple[int, bytes]:
        rows = self.run("SELECT version, blob FROM records WHERE kind=? AND id=?", (kind, id))
        assert len(rows) == 1, (kind, id)
        return int(rows[0][0]), bytes(rows[0][1])

    def set(self, kind: str, id: str, version: int, blob: bytes) -> None:
        self.run(
            "UPDATE records SET version=?, blob=? WHERE kind=? AND id=?", (version, blob, kind, id)
        )

    def delete(self, kind: str, id: str) -> None:
        self.run("DELETE FROM records WHERE kind=? AND id=?", (kind, id))


@pytest.fixture
def db(host: Server) -> Db:
    return Db(host.data_dir / "kms.sqlite")


def make_key(c: httpx.Client, name: str, key_type: str = "aes256-gcm") -> tuple[str, bytes]:
    """Create `name` and return a ciphertext of a fresh plaintext under it."""
    ok(c.post("/v1/keys", json={"name": name, "type": key_type}), 201)
    plain = os.urandom(24)
    if key_type != "aes256-gcm":
        return "", plain
    ct = ok(c.post(f"/v1/keys/{name}/encrypt", json={"plaintext": b64(plain)}))["ciphertext"]
    return ct, plain


def decrypt(c: httpx.Client, name: str, ct: str) -> httpx.Response:
    return c.post(f"/v1/keys/{name}/decrypt", json={"ciphertext": ct})


def assert_integrity_failure(c: httpx.Client, name: str, ct: str) -> None:
    """Every use of `name` fails with 502 integrity_violation naming its record."""
    responses = [
        decrypt(c, name, ct),
        c.post(f"/v1/keys/{name}/encrypt", json={"plaintext": "YQ=="}),
        c.get(f"/v1/keys/{name}"),
        c.post(f"/v1/keys/{name}/rotate"),
        c.patch(f"/v1/keys/{name}", json={"enabled": False}),
    ]
    for resp in responses:
        message = fails(resp, 502, "integrity_violation")
        assert f"key/{name}" in message, message


@contextmanager
def restarted(host: Server) -> Iterator[httpx.Client]:
    """Restart the enclave, so that it reads every record from the host again."""
    host.restart()
    with host.client() as client:
        yield client


def assert_still_serving(
    host: Server, c: httpx.Client, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    assert host.live.enclave.alive()
    assert ok(c.get("/v1/health"))["status"] == "ok"
    for name, (ct, plain) in bystanders.items():
        assert unb64(ok(decrypt(c, name, ct))["plaintext"]) == plain
        fresh = ok(c.post(f"/v1/keys/{name}/encrypt", json={"plaintext": b64(plain)}))
        assert unb64(ok(decrypt(c, name, fresh["ciphertext"]))["plaintext"]) == plain


@pytest.fixture(scope="module")
def bystanders() -> dict[str, tuple[str, bytes]]:
    return {}


def test_altered_records_fail_alone(
    host: Server, c: httpx.Client, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    bystanders["bystander"] = make_key(c, "bystander")
    alterations: dict[str, Callable[[bytes], bytes]] = {
        "flip-one-bit": lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:],
        "flip-last-bit": lambda b: b[:-1] + bytes([b[-1] ^ 0x80]),
        "truncate": lambda b: b[: len(b) // 2],
        "random": lambda b: os.urandom(len(b)),
        "empty": lambda b: b"",
        "magic-only": lambda b: b[:4],
    }
    made: dict[str, tuple[str, bytes]] = {}
    for label, alter in alterations.items():
        name = f"altered-{label}"
        made[name] = make_key(c, name)
        version, blob = db.record("key", name)
        db.set("key", name, version, alter(blob))
    # The running enclave holds these records: the host's edits change none of its answers.
    for name, (ct, plain) in made.items():
        assert unb64(ok(decrypt(c, name, ct))["plaintext"]) == plain
    with restarted(host) as c:
        for name, (ct, _) in made.items():
            assert_integrity_failure(c, name, ct)
        assert_still_serving(host, c, bystanders)
        page = ok(c.get("/v1/keys", params={"limit": 1000}))
    assert set(made) <= set(page["unreadable"])
    assert "bystander" in {k["name"] for k in page["keys"]}


def test_swapped_records_fail_both(
    host: Server, c: httpx.Client, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    # Two AES keys at the same record version: the swap keeps versions, only ids change.
    ct_a, _ = make_key(c, "swap-a")
    ct_b, _ = make_key(c, "swap-b")
    (va, blob_a), (vb, blob_b) = db.record("key", "swap-a"), db.record("key", "swap-b")
    assert va == vb
    db.set("key", "swap-a", vb, blob_b)
    db.set("key", "swap-b", va, blob_a)
    # Across types: an EC key's record presented as an AES key's.
    ct_c, _ = make_key(c, "swap-aes")
    make_key(c, "swap-ec", "ec-p256")
    (vc, blob_c), (ve, blob_e) = db.record("key", "swap-aes"), db.record("key", "swap-ec")
    db.set("key", "swap-aes", ve, blob_e)
    db.set("key", "swap-ec", vc, blob_c)
    with restarted(host) as c:
        assert_integrity_failure(c, "swap-a", ct_a)
        assert_integrity_failure(c, "swap-b", ct_b)
        # Not even the other key's own ciphertext opens under the swapped record.
        fails(decrypt(c, "swap-a", ct_b), 502, "integrity_violation")
        assert_integrity_failure(c, "swap-aes", ct_c)
        fails(c.post("/v1/keys/swap-ec/sign", json={"input": "YQ=="}), 502, "integrity_violation")
        assert_still_serving(host, c, bystanders)


def refuses_to_start(host: Server, cause: str) -> None:
    """The next start fails closed naming `cause` (DESIGN §13); nothing is silently re-made."""
    host.stop()
    with pytest.raises(StateRollbackError) as caught:
        host.start()
    assert host.running is None
    assert f"cause: {cause}" in caught.value.message, caught.value.message


def test_deleted_record_fails_closed(
    host: Server, c: httpx.Client, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    ct, plain = make_key(c, "deleted")
    row = db.record("key", "deleted")
    db.delete("key", "deleted")
    assert unb64(ok(decrypt(c, "deleted", ct))["plaintext"]) == plain  # held in memory
    refuses_to_start(host, "records-missing")
    db.run("INSERT INTO records(kind, id, version, blob) VALUES ('key', 'deleted', ?, ?)", row)
    with restarted(host) as c:
        assert unb64(ok(decrypt(c, "deleted", ct))["plaintext"]) == plain
        assert_still_serving(host, c, bystanders)


def test_bumped_or_replayed_versions_fail_closed(
    host: Server, c: httpx.Client, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    make_key(c, "bumped")
    version, blob = db.record("key", "bumped")
    db.set("key", "bumped", version + 1, blob)
    refuses_to_start(host, "records-rolled-back")
    db.set("key", "bumped", version, blob)

    # Version N's bytes presented as version N+1 (a replay after a rotation): the version set
    # still matches the head, so the server starts and that one record fails authentication.
    host.start()
    with host.client() as c:
        ct1, plain = make_key(c, "replayed")
        old_version, old_blob = db.record("key", "replayed")
        ok(c.post("/v1/keys/replayed/rotate"))
        ct2 = ok(c.post("/v1/keys/replayed/encrypt", json={"plaintext": b64(plain)}))["ciphertext"]
    new_version, new_blob = db.record("key", "replayed")
    assert new_version == old_version + 1
    db.set("key", "replayed", new_version, old_blob)
    with restarted(host) as c:
        assert_integrity_failure(c, "replayed", ct1)
    # A whole-record rollback (old bytes at their own version) authenticates on its own, but
    # is behind the signed state head: the enclave does not start on it.
    db.set("key", "replayed", old_version, old_blob)
    refuses_to_start(host, "records-rolled-back")
    db.set("key", "replayed", new_version, new_blob)
    with restarted(host) as c:
        for ct in (ct1, ct2):
            assert unb64(ok(decrypt(c, "replayed", ct))["plaintext"]) == plain
        assert_still_serving(host, c, bystanders)


def test_altered_token_record_fails_alone(
    host: Server, c: httpx.Client, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    issued = ok(
        c.post(
            "/v1/tokens",
            json={"name": "victim", "policies": [{"keys": ["*"], "operations": ["encrypt"]}]},
        ),
        201,
    )
    token_id = issued["info"]["id"]
    version, blob = db.record("token", token_id)
    db.set("token", token_id, version, blob[:-1] + bytes([blob[-1] ^ 1]))
    with restarted(host) as c:
        with host.client(issued["token"]) as victim:
            resp = victim.post("/v1/keys/bystander/encrypt", json={"plaintext": "YQ=="})
            fails(resp, 502, "integrity_violation")
        fails(c.get(f"/v1/tokens/{token_id}"), 502, "integrity_violation")
        assert_still_serving(host, c, bystanders)  # the admin's token is untouched
        db.set("token", token_id, version, blob)  # put back: it works again (never cached)
        with host.client(issued["token"]) as victim:
            ok(victim.post("/v1/keys/bystander/encrypt", json={"plaintext": "YQ=="}))


def test_deleting_the_init_marker_gives_the_host_nothing(
    host: Server, c: httpx.Client, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    """The host can always reach the port, so `POST /v1/sys/init` must never hand it an
    admin token, whatever it does to the store and the process: the running enclave
    remembers it is initialized, and a restart without the marker (or without the marker and
    the state head) fails closed instead of starting a new installation."""
    ct, plain = make_key(c, "init-target")
    marker = db.record("config", "tokens-initialized")
    head = db.record("config", "state-head")
    db.delete("config", "tokens-initialized")
    with host.client(anonymous=True) as anon:
        fails(anon.post("/v1/sys/init"), 409, "conflict")  # a running enclave remembers
    refuses_to_start(host, "records-missing")
    db.delete("config", "state-head")
    refuses_to_start(host, "head-missing")
    insert = "INSERT INTO records(kind, id, version, blob) VALUES (?, ?, ?, ?)"
    db.run(insert, ("config", "tokens-initialized", *marker))
    db.run(insert, ("config", "state-head", *head))
    with restarted(host) as c:
        with host.client(anonymous=True) as anon:
            fails(anon.post("/v1/sys/init"), 409, "conflict")
        assert unb64(ok(decrypt(c, "init-target", ct))["plaintext"]) == plain
        assert_still_serving(host, c, bystanders)


def test_tampering_while_stopped_then_restart(
    host: Server, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    if host.running is None:
        host.start()
    with host.client() as c:
        ct, plain = make_key(c, "altered-offline")
        wrapping_pem = ok(c.get("/v1/sys/wrapping-key"))["public_key_pem"]
    host.stop()
    version, blob = db.record("key", "altered-offline")
    db.set("key", "altered-offline", version, blob[::-1])
    wrapping = db.record("config", "wrapping-key")
    db.set("config", "wrapping-key", wrapping[0], wrapping[1][:-1] + bytes([wrapping[1][-1] ^ 1]))
    host.start()
    with host.client() as c:
        assert_integrity_failure(c, "altered-offline", ct)
        fails(c.get("/v1/sys/wrapping-key"), 502, "integrity_violation")
        db.set("config", "wrapping-key", *wrapping)
        assert ok(c.get("/v1/sys/wrapping-key"))["public_key_pem"] == wrapping_pem
        db.set("key", "altered-offline", version, blob)
        assert unb64(ok(decrypt(c, "altered-offline", ct))["plaintext"]) == plain
        fails(decrypt(c, "altered-random", "ekms:v1:" + b64(bytes(40))), 502, "integrity_violation")
        assert_still_serving(host, c, bystanders)


def test_altered_storage_root_key_refuses_to_start(
    host: Server, db: Db, bystanders: dict[str, tuple[str, bytes]]
) -> None:
    """The sealed storage root key is never silently replaced: a start on an altered one
    fails with a clear error, and works again once the host puts it back."""
    host.stop()
    version, blob = db.record("identity", "storage-root-key")
    db.set("identity", "storage-root-key", version, blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(SealingError) as caught:
        host.start()
    assert host.running is None
    assert "unseal" in caught.value.message
    db.set("identity", "storage-root-key", version, blob)
    host.start()
    with host.client() as c:
        assert_still_serving(host, c, bystanders)


def test_altered_audit_record_is_named(host: Server, db: Db) -> None:
    host.stop()
    records = [bytes(r[0]) for r in db.run("SELECT record FROM audit ORDER BY seq")]
    assert len(records) > 20
    verify_chain(records)
    target = len(records) // 2
    raw, sig = cbor2.loads(records[target])
    body = cbor2.loads(raw)
    body["outcome"] = "ok" if body["outcome"] != "ok" else "permission_denied"
    forged = cbor2.dumps([cbor2.dumps(body, canonical=True), sig])
    (seq,) = db.run("SELECT seq FROM audit ORDER BY seq LIMIT 1 OFFSET ?", (target,))[0]
    db.run("UPDATE audit SET record=? WHERE seq=?", (forged, seq))

    altered = [bytes(r[0]) for r in db.run("SELECT record FROM audit ORDER BY seq")]
    with pytest.raises(AuditError, match=rf"audit record {target}\b"):
        verify_chain(altered)
    # Dropping a record instead is named too.
    with pytest.raises(AuditError, match=rf"audit record {target}\b"):
        verify_chain(records[:target] + records[target + 1 :])

    probe = subprocess.run(
        [str(CLI), "audit", "verify", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip("`enclave-kms audit verify` is not available in this tree yet")
    result = subprocess.run(
        [str(CLI), "audit", "verify", str(host.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert f"audit record {target}" in result.stdout + result.stderr
    db.run("UPDATE audit SET record=? WHERE seq=?", (records[target], seq))
    result = subprocess.run(
        [str(CLI), "audit", "verify", str(host.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- garbage OCALL results


def _noop(**_: Any) -> dict[str, Any]:
    return {}


class Channel:
    """The enclave's HostCalls over a real EDL channel (two endpoints on pipes) to a host
    whose storage OCALLs answer whatever `answers[name]` returns."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        ocalls = {c.name: self._answer(c.name) for c in edl.OCALLS}
        h2e_r, h2e_w = os.pipe()
        e2h_r, e2h_w = os.pipe()
        self.enclave = Endpoint(
            os.fdopen(h2e_r, "rb", buffering=0),
            os.fdopen(e2h_w, "wb", buffering=0),
            serves="ecall",
            handlers={c.name: _noop for c in edl.ECALLS},
        ).start()
        self.host = Endpoint(
            os.fdopen(e2h_r, "rb", buffering=0),
            os.fdopen(h2e_w, "wb", buffering=0),
            serves="ocall",
            handlers=ocalls,
        ).start()
        self.calls = HostCalls(lambda name, **args: self.enclave.call(name, timeout=60, **args))
        self.cipher = RecordCipher(bytes(range(32)))
        self.store = RecordStore(self.calls, self.cipher)
        self._lock = threading.Lock()

    def _answer(self, name: str) -> Any:
        def handler(**args: Any) -> Any:
            if args.get("kind") == "config":
                return {"version": 0}  # no init marker: the store stays unbound
            answer = self.answers.get(name, {})
            if isinstance(answer, Exception):
                raise answer
            return answer

        return handler

    def close(self) -> None:
        self.host.close()
        self.enclave.close()


@pytest.fixture(scope="module")
def channel() -> Iterator[Channel]:
    ch = Channel()
    yield ch
    ch.close()


SEALED = RecordCipher(bytes(range(32))).seal("key", "k", 1, {"v": 1})
BAD_GET_ANSWERS: list[Any] = [
    {},
    {"version": 1},
    {"version": 1, "blob": None},
    {"version": "1", "blob": SEALED},
    {"version": True, "blob": SEALED},
    {"version": -1, "blob": SEALED},
    {"version": 2**64, "blob": SEALED},
    {"version": 1.0, "blob": SEALED},
    {"version": 1, "blob": "text"},
    {"version": 1, "blob": [SEALED]},
    {"version": 1, "blob": SEALED, "extra": 1},
    {"version": 1, "blob": b""},
    {"version": 1, "blob": b"EKR1"},
    {"version": 1, "blob": b"EKR1" + bytes(100)},
    {"version": 1, "blob": SEALED[:-1]},
    {"version": 2, "blob": SEALED},  # another version's bytes
    {"version": 1, "blob": RecordCipher(bytes(range(32))).seal("key", "other", 1, {"v": 1})},
    {"version": 1, "blob": RecordCipher(bytes(32)).seal("key", "k", 1, {"v": 1})},
    {"version": 1, "blob": bytes(4 * 1024 * 1024 + 1)},
    {"version": 1, "blob": SEALED, "ok": True},
    [],
    None,
    "garbage",
    ValueError("host crashed"),
    BoundaryError("host says no"),
]


@pytest.mark.parametrize("answer", BAD_GET_ANSWERS, ids=lambda a: repr(a)[:40])
def test_garbage_store_get_is_a_typed_error(channel: Channel, answer: Any) -> None:
    channel.answers["store_get"] = answer
    with pytest.raises(EnclaveKMSError) as caught:
        channel.store.get("key", "k")
    # The host's own failure comes back as its code ("internal" for an untyped crash).
    expected = (IntegrityError, BoundaryError)
    assert isinstance(caught.value, expected) or caught.value.code == "internal", caught.value


def test_good_store_get_still_opens(channel: Channel) -> None:
    channel.answers["store_get"] = {"version": 1, "blob": SEALED}
    found = channel.store.get("key", "k")
    assert found is not None
    assert (found.version, found.value) == (1, {"v": 1})
    channel.answers["store_get"] = {"version": 0}
    assert channel.store.get("key", "k") is None


@pytest.mark.parametrize(
    ("name", "answer", "run"),
    [
        ("store_list", {"ids": ["b", "a"]}, lambda s: s.list_ids("key", limit=10)),
        ("store_list", {"ids": ["a", "a"]}, lambda s: s.list_ids("key", limit=10)),
        ("store_list", {"ids": ["a", 1]}, lambda s: s.list_ids("key", limit=10)),
        ("store_list", {"ids": ["a", "b", "c"]}, lambda s: s.list_ids("key", limit=2)),
        ("store_list", {"ids": "abc"}, lambda s: s.list_ids("key", limit=10)),
        ("store_list", {}, lambda s: s.list_ids("key", limit=10)),
        ("store_put", {"ok": "yes"}, lambda s: s.put("key", "k", 0, {"v": 1})),
        ("store_put", {"ok": 1}, lambda s: s.put("key", "k", 0, {"v": 1})),
        ("store_put", {}, lambda s: s.put("key", "k", 0, {"v": 1})),
        ("store_delete", {"ok": None}, lambda s: s.delete("key", "k", 1)),
    ],
)
def test_garbage_other_storage_answers_are_typed_errors(
    channel: Channel, name: str, answer: Any, run: Any
) -> None:
    channel.answers[name] = answer
    with pytest.raises(EnclaveKMSError):
        run(channel.store)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=80) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    answer=st.dictionaries(st.sampled_from(["version", "blob", "ok", "x"]), _values, max_size=3)
    | _values
)
def test_any_store_get_answer_is_a_value_or_a_typed_error(channel: Channel, answer: Any) -> None:
    channel.answers["store_get"] = answer
    try:
        found = channel.store.get("key", "k")
    except EnclaveKMSError:
        return
    # Only "absent" or the authentic record can come out.
    assert found is None or (found.version, found.value) == (1, {"v": 1})


# ----------------------------------------------------------------- audit tail after a crash


def _chain(key: ec.EllipticCurvePrivateKey, events: int) -> list[bytes]:
    records: list[bytes] = []
    log = AuditLog(key, records.extend)
    for i in range(events):
        log.record(AuditEvent("t", "op", f"k{i}", "ok", f"r{i}"))
    return records


def _hash(record: bytes) -> bytes:
    return hashlib.sha256(cbor2.loads(record)[0]).digest()


@pytest.mark.parametrize(
    ("tail", "adopted"),
    [
        (lambda recs, other: recs[2:], 4),  # the whole crash tail is ours
        (lambda recs, other: [*recs[2:4], b"garbage", *recs[4:]], 2),  # up to the garbage
        (lambda recs, other: recs[3:], 0),  # a gap: nothing continues the sealed head
        (lambda recs, other: [recs[2], recs[2]], 1),  # a replayed record
        (lambda recs, other: other[2:], 0),  # records of another audit key
        (lambda recs, other: [b"", b"\x80", cbor2.dumps([b"x", b"y"])], 0),
    ],
)
def test_resumed_audit_log_adopts_only_its_own_tail(
    tail: Callable[[list[bytes], list[bytes]], list[bytes]], adopted: int
) -> None:
    """After a crash between an append and the sealed head's update, the host holds records
    past the head. A resumed log adopts those it signed, in order, and nothing else."""
    key = ec.generate_private_key(ec.SECP256R1())
    records = _chain(key, 5)  # genesis + 5: the head was sealed after record 1
    other = _chain(ec.generate_private_key(ec.SECP256R1()), 5)
    given_tail = tail(records, other)
    stored = records[:2] + records[2 : 2 + adopted]
    heads: list[tuple[int, bytes]] = []
    log = AuditLog(
        key,
        stored.extend,
        head=(2, _hash(records[1])),
        persist_head=lambda seq, prev: heads.append((seq, prev)),
        tail_fn=lambda seq: [records[1], *given_tail] if seq == 1 else pytest.fail(f"at {seq}"),
    )
    assert log.head[0] == 2 + adopted
    assert heads == ([(2 + adopted, _hash(records[1 + adopted]))] if adopted else [])
    log.record(AuditEvent("t", "after", "", "ok", "resumed"))
    assert verify_chain(stored).records == 3 + adopted
