"""The state head over a real SQLite store, in process: crash windows of the intent-then-write
protocol never make a later start fail, and every partial rollback does."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.enclave.state.head import StateTracker
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.errors import StateRollbackError
from enclave_kms.host.storage.sqlite import SQLiteStorage

SRK = os.urandom(32)
KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SQLiteStorage]:
    s = SQLiteStorage(tmp_path / "kms.sqlite")
    yield s
    s.close()


def start(storage: SQLiteStorage, *, exact: bool = True) -> tuple[StateTracker, RecordStore]:
    """What the enclave does at initialize: check the store against the head, then track."""
    tracker = StateTracker(storage, SRK, KEY, worker=0, exact=exact)
    tracker.open(allow_create=lambda found: "test store" if not found else None)
    store = RecordStore(storage, RecordCipher(SRK))
    store.track(tracker)
    return tracker, store


def acknowledge(tracker: StateTracker) -> None:
    """What the audit batch before every acknowledgement does: move the head again, which
    drops the intents of the writes that completed."""
    tracker.audit_advanced(0, 1, bytes(32))


def test_writes_then_restarts_start(storage: SQLiteStorage) -> None:
    _, store = start(storage)
    v = store.put("key", "a", 0, {"n": 1})
    store.put("key", "a", v, {"n": 2})
    store.put("token", "t", 0, {"n": 1})
    store.delete("token", "t", 1)
    for _ in range(2):
        tracker, store = start(storage)
    assert tracker.head.count == 1
    assert store.get("key", "a") is not None


@pytest.mark.parametrize("record_written", [False, True])
def test_a_crash_between_head_and_record_never_blocks_a_start(
    storage: SQLiteStorage, record_written: bool
) -> None:
    """Killed after the intent reached the head, before (or after) the record did: the next
    start accepts either version, settles, and every start after it still works."""
    tracker, store = start(storage)
    store.put("key", "a", 0, {"n": 1})
    tracker.before_write("key", "a", 1, 2)  # ... and the process dies here
    if record_written:
        storage.put("key", "a", 1, RecordCipher(SRK).seal("key", "a", 2, {"n": 2}))
    for _ in range(3):
        tracker, store = start(storage)
    found = store.get("key", "a")
    assert found is not None
    assert found.version == (2 if record_written else 1)
    assert tracker.head.pending == ()


def test_partial_rollback_deletion_and_re_adding_fail_closed(storage: SQLiteStorage) -> None:
    tracker, store = start(storage)
    store.put("key", "a", 0, {"n": 1})
    old = storage.get("key", "a")
    assert old is not None
    store.put("key", "a", 1, {"n": 2})
    acknowledge(tracker)
    new = storage.get("key", "a")
    assert new is not None
    storage._run("UPDATE records SET version=?, blob=? WHERE id='a'", old)
    with pytest.raises(StateRollbackError, match="records-rolled-back"):
        start(storage)
    storage._run("DELETE FROM records WHERE id='a'")
    with pytest.raises(StateRollbackError, match="records-missing"):
        start(storage)
    storage.put("key", "a", 0, new[1])
    storage._run("UPDATE records SET version=2 WHERE id='a'")
    start(storage)  # put back as it was: starts
    storage.put("key", "b", 0, new[1])
    with pytest.raises(StateRollbackError, match="records-added"):
        start(storage)


def test_while_running_the_enclave_never_goes_back(storage: SQLiteStorage) -> None:
    _, store = start(storage)
    store.put("token", "t", 0, {"revoked": False})
    before = storage.get("token", "t")
    assert before is not None
    store.put("token", "t", 1, {"revoked": True})
    storage._run("UPDATE records SET version=?, blob=? WHERE id='t'", before)
    with pytest.raises(StateRollbackError, match="record-rolled-back"):
        store.get("token", "t")
    storage._run("DELETE FROM records WHERE id='t'")
    with pytest.raises(StateRollbackError, match="record-deleted"):
        store.get("token", "t")
    with pytest.raises(StateRollbackError, match="listing-altered"):
        store.list_ids("token")
