"""RecordStore over the real SQLite backend: the host tampering with rows is caught."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.errors import ConflictError, IntegrityError
from enclave_kms.host.storage.sqlite import SQLiteStorage


@pytest.fixture
def paths(tmp_path: Path) -> Path:
    return tmp_path / "kms.sqlite"


@pytest.fixture
def store(paths: Path) -> RecordStore:
    return RecordStore(SQLiteStorage(paths), RecordCipher(os.urandom(32)))


def test_versions_advance_and_conflicts_are_typed(store: RecordStore) -> None:
    assert store.put("key", "a", 0, {"v": 1}) == 1
    assert store.put("key", "a", 1, {"v": 2}) == 2
    got = store.get("key", "a")
    assert got is not None
    assert got.version == 2
    assert got.value == {"v": 2}
    with pytest.raises(ConflictError):
        store.put("key", "a", 1, {"v": "late"})


def test_host_swapping_rows_is_detected(store: RecordStore, paths: Path) -> None:
    store.put("key", "a", 0, {"material": "A"})
    store.put("key", "b", 0, {"material": "B"})
    raw = sqlite3.connect(paths)
    blob_b = raw.execute("SELECT blob FROM records WHERE id='b'").fetchone()[0]
    raw.execute("UPDATE records SET blob=? WHERE id='a'", (blob_b,))
    raw.commit()
    with pytest.raises(IntegrityError, match="key/a"):
        store.get("key", "a")
    assert store.get("key", "b") is not None  # the other record still works


def test_host_bumping_version_is_detected(store: RecordStore, paths: Path) -> None:
    store.put("key", "a", 0, {"material": "A"})
    raw = sqlite3.connect(paths)
    raw.execute("UPDATE records SET version=7 WHERE id='a'")
    raw.commit()
    with pytest.raises(IntegrityError, match="failed authentication"):
        store.get("key", "a")


class LyingBackend:
    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        return (0, b"")

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        return True

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        return ["b", "a", "a"]

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        return True


def test_nonsense_from_the_host_is_refused() -> None:
    store = RecordStore(LyingBackend(), RecordCipher(os.urandom(32)))
    with pytest.raises(IntegrityError, match="version 0"):
        store.get("key", "a")
    with pytest.raises(IntegrityError, match="malformed"):
        store.list_ids("key")


def test_installation_binding_keeps_records_from_another_installation_closed(
    paths: Path,
) -> None:
    """A host that deletes the init marker can only start a new, empty installation: the
    records of the real one do not open under another installation id."""
    backend = SQLiteStorage(paths)
    cipher = RecordCipher(os.urandom(32))
    real = RecordStore(backend, cipher)
    real.bind(os.urandom(32))
    real.put("key", "payments", 0, {"material": "real"})
    impostor = RecordStore(backend, cipher)
    impostor.bind(os.urandom(32))
    with pytest.raises(IntegrityError, match="key/payments"):
        impostor.get("key", "payments")
    with pytest.raises(ConflictError, match="another installation"):
        real.bind(os.urandom(32))
    config_view = RecordStore(backend, cipher)  # config records are not installation-bound
    config_view.put("config", "c", 0, {"x": 1})
    got = impostor.get("config", "c")
    assert got is not None
