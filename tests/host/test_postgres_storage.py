"""PostgreSQL storage on a real server: what only a database server can do to us (go away
mid-write, be shared by two servers, hold a newer schema). The contract both backends meet is
in test_storage_contract.py."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from enclave_kms.errors import ConfigError, StorageError
from enclave_kms.host.storage import open_storage
from enclave_kms.host.storage.postgres import PostgresStorage, connect_timeout, redact
from enclave_kms.host.storage.sqlite import SQLiteStorage
from tests.pg_server import PostgresServer, fresh_database

pytestmark = pytest.mark.postgres


def test_writes_survive_a_server_crash(pg: PostgresServer) -> None:
    """Acknowledged means flushed: an immediate (crash) shutdown right after loses nothing."""
    url = fresh_database(pg)
    db = PostgresStorage(url)
    for i in range(50):
        assert db.put("key", f"k{i:02d}", 0, f"v{i}".encode())
    db.audit_append([b"r1", b"r2"])
    db.close()
    pg.stop("immediate")
    pg.start()
    again = PostgresStorage(url)
    assert len(again.list_ids("key", "", 100)) == 50
    assert again.get("key", "k49") == (1, b"v49")
    assert again.audit_records() == [b"r1", b"r2"]
    again.close()


def test_unreachable_database_fails_every_call_typed_then_recovers(pg: PostgresServer) -> None:
    url = fresh_database(pg) + "?connect_timeout=2"  # each refused call waits this long
    db = PostgresStorage(url, exclusive=False)
    assert db.put("key", "a", 0, b"v1")
    pg.stop("immediate")
    try:
        with pytest.raises(StorageError):
            db.put("key", "a", 1, b"v2")
        with pytest.raises(StorageError):
            db.get("key", "a")
        with pytest.raises(StorageError, match="audit append failed"):
            db.audit_append([b"r"])
    finally:
        pg.start()
    # the failed write was not applied; the pool reconnects by itself
    for _ in range(50):
        try:
            got = db.get("key", "a")
            break
        except StorageError:
            threading.Event().wait(0.2)
    assert got == (1, b"v1")
    assert db.put("key", "a", 1, b"v2")
    db.close()


def test_the_url_connect_timeout_bounds_the_wait_for_a_connection() -> None:
    assert connect_timeout("postgresql://kms@db/kms") == 10
    assert connect_timeout("postgresql://kms@db/kms?connect_timeout=3") == 3
    assert connect_timeout("postgresql://kms@db/kms?connect_timeout=1") == 2  # libpq's floor
    assert connect_timeout("postgresql://kms@db/kms?connect_timeout=0") == 10  # 0: libpq's none
    with pytest.raises(ConfigError, match="whole seconds"):
        connect_timeout("postgresql://kms:pw@db/kms?connect_timeout=soon")


def test_one_server_per_database(pg: PostgresServer) -> None:
    url = fresh_database(pg)
    first = PostgresStorage(url)
    with pytest.raises(ConfigError, match="in use by other enclave-kms servers"):
        PostgresStorage(url)
    first.close()
    PostgresStorage(url).close()  # the lock went with the first server's session


def test_other_schema_version_is_refused(pg: PostgresServer) -> None:
    url = fresh_database(pg)
    PostgresStorage(url).close()
    name = url.rsplit("/", 1)[1]
    pg.sql("UPDATE enclave_kms_meta SET value = 99", db=name)  # a newer build's schema
    with pytest.raises(StorageError, match="schema version 99"):
        PostgresStorage(url)


def test_no_server_is_a_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError) as caught:
        PostgresStorage("postgresql://kms:hunter2@127.0.0.1:1/kms")
    assert "hunter2" not in caught.value.message
    assert "***" in caught.value.message


def test_open_storage_takes_a_url_or_a_path(tmp_path: Path, pg: PostgresServer) -> None:
    sqlite = open_storage(str(tmp_path / "x.sqlite"))
    assert isinstance(sqlite, SQLiteStorage)
    sqlite.close()
    postgres = open_storage(fresh_database(pg))
    assert isinstance(postgres, PostgresStorage)
    postgres.close()
    with pytest.raises(ConfigError):
        open_storage("mysql://x@y/z")
    assert redact("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"


def test_replicas_share_a_database_but_not_a_replica_id(pg: PostgresServer) -> None:
    url = fresh_database(pg)
    a, b = PostgresStorage(url, replica=1), PostgresStorage(url, replica=2)
    assert a.put("key", "k", 0, b"1")
    assert b.put("key", "k", 1, b"2")
    with pytest.raises(ConfigError, match="replica id 1 is already serving"):
        PostgresStorage(url, replica=1)
    with pytest.raises(ConfigError, match="in use by other enclave-kms servers"):
        PostgresStorage(url)  # a lone server next to replicas would cache stale records
    a.close()
    b.close()
    lone = PostgresStorage(url)
    with pytest.raises(ConfigError, match=r"a lone .* server holds the database"):
        PostgresStorage(url, replica=3)
    lone.close()
    PostgresStorage(url, replica=1).close()  # every lock went with the sessions
    with pytest.raises(ConfigError, match="between 0 and"):
        PostgresStorage(url, replica=-1)
    with pytest.raises(ConfigError, match="SQLite file serves one server"):
        open_storage("/tmp/never.sqlite", replica=1)


def test_a_replica_whose_id_was_taken_over_stops_writing(pg: PostgresServer) -> None:
    url = fresh_database(pg)
    name = url.rsplit("/", 1)[1]
    first, other = PostgresStorage(url, replica=1), PostgresStorage(url, replica=2)
    assert first.put("key", "a", 0, b"1")
    # replica 1's session is lost (a split) and a new process takes replica id 1
    pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND objsubid = 2 AND objid = 1",
        db=name,
    )
    second = PostgresStorage(url, replica=1)
    assert second.put("key", "b", 0, b"2")
    with pytest.raises(StorageError, match="another enclave-kms server"):
        first.put("key", "c", 0, b"3")
    assert other.put("key", "d", 0, b"4")  # the other replica id is not fenced
    for db in (first, second, other):
        db.close()
