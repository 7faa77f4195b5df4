"""SQLite storage: durability across reopen, schema versioning and migration, readers that never
wait for the writer (the contract both backends meet is in test_storage_contract.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from enclave_kms.errors import StorageError
from enclave_kms.host.storage.sqlite import SQLiteStorage


@pytest.fixture
def db(tmp_path: Path) -> SQLiteStorage:
    return SQLiteStorage(tmp_path / "kms.sqlite")


def test_writes_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "kms.sqlite"
    db = SQLiteStorage(path)
    db.put("key", "a", 0, b"sealed")
    db.audit_append([b"r1", b"r2"])
    db.close()
    again = SQLiteStorage(path)
    assert again.get("key", "a") == (1, b"sealed")
    assert again.audit_records() == [b"r1", b"r2"]


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kms.sqlite"
    SQLiteStorage(path).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=99")
    raw.close()
    with pytest.raises(StorageError, match="schema version 99"):
        SQLiteStorage(path)


def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StorageError, match="cannot open storage"):
        SQLiteStorage(tmp_path / "dir.sqlite")


def test_reads_do_not_wait_for_the_writer(db: SQLiteStorage) -> None:
    db.put("key", "a", 0, b"v1")
    got: list[tuple[int, bytes] | None] = []
    with db._lock:  # a writer holding the lock, e.g. during a commit's fsync
        reader = threading.Thread(target=lambda: got.append(db.get("key", "a")))
        reader.start()
        reader.join(5)
        assert not reader.is_alive()
    assert got == [(1, b"v1")]


def test_readers_see_every_committed_write_from_many_threads(db: SQLiteStorage) -> None:
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(100):
            db.put("key", f"k{i:03d}", 0, b"x")

    def reader() -> None:
        try:
            seen = 0
            for _ in range(200):
                ids = db.list_ids("key", "", 1000)
                assert len(ids) >= seen  # never goes back
                seen = len(ids)
        except (AssertionError, StorageError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(db.list_ids("key", "", 1000)) == 100


def test_audit_chains_are_separate_sequences(tmp_path: Path) -> None:
    db = SQLiteStorage(tmp_path / "kms.sqlite")
    db.audit_append([b"a0", b"a1"], chain=0)
    db.audit_append([b"b0"], chain=1)
    db.audit_append([b"a2"])  # chain 0 by default
    db.audit_append([b"b1", b"b2"], chain=1)
    assert db.audit_chains() == [0, 1]
    assert db.audit_records() == [b"a0", b"a1", b"a2"]
    assert db.audit_records(1) == [b"b0", b"b1", b"b2"]
    assert db.audit_tail(1, 10, chain=1) == [b"b1", b"b2"]  # positions count within a chain
    assert db.audit_tail(2, 1) == [b"a2"]
    db.close()


V1_SCHEMA = """
CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0), blob BLOB NOT NULL,
    PRIMARY KEY (kind, id)) WITHOUT ROWID;
CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, record BLOB NOT NULL);
INSERT INTO records VALUES ('key', 'k', 3, x'0102');
INSERT INTO audit(record) VALUES (x'aa'), (x'bb');
PRAGMA user_version=1;
"""


def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "kms.sqlite"
    raw = sqlite3.connect(path)
    raw.executescript(V1_SCHEMA)
    raw.close()
    db = SQLiteStorage(path)
    assert db.get("key", "k") == (3, b"\x01\x02")
    assert db.audit_records() == [b"\xaa", b"\xbb"]  # the old chain is chain 0
    db.audit_append([b"\xcc"])
    db.audit_append([b"\xdd"], chain=1)
    assert db.audit_tail(2, 5) == [b"\xcc"]
    db.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone() == (2,)
    raw.close()
    SQLiteStorage(path).close()  # and it opens again as it is
