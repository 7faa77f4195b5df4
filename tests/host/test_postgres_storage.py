"""PostgreSQL storage on a real server: the Storage contract SQLite meets, plus what only a
database server can do to us (go away mid-write, be shared by two servers, hold an older or
newer schema)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_kms.errors import ConfigError, StorageError
from enclave_kms.host.storage import Storage, open_storage
from enclave_kms.host.storage.postgres import PostgresStorage, redact
from enclave_kms.host.storage.sqlite import SQLiteStorage
from tests.pg_server import PostgresServer, postgres_server

pytestmark = pytest.mark.postgres
_names = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def _fresh_database(pg: PostgresServer) -> str:
    name = f"t{next(_names)}"
    pg.sql(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "sqlite":
        db: Storage = SQLiteStorage(tmp_path / "kms.sqlite")
    else:
        db = PostgresStorage(_fresh_database(request.getfixturevalue("pg")))
    yield db
    db.close()


def test_put_is_compare_and_set(store: Storage) -> None:
    assert store.get("key", "a") is None
    assert store.put("key", "a", 0, b"v1")
    assert not store.put("key", "a", 0, b"again")
    assert store.get("key", "a") == (1, b"v1")
    assert not store.put("key", "a", 2, b"stale")
    assert store.put("key", "a", 1, b"v2")
    assert store.get("key", "a") == (2, b"v2")
    assert not store.delete("key", "a", 1)
    assert store.delete("key", "a", 2)
    assert store.get("key", "a") is None


def test_listing_is_bytewise_ordered_and_paged_per_kind(store: Storage) -> None:
    names = ["b", "B", "a-1", "a_1", "é", "a", "Z"]
    for name in names:
        assert store.put("key", name, 0, b"x")
    store.put("token", "zz", 0, b"x")
    expected = sorted(names, key=lambda n: n.encode())  # as SQLite compares: bytewise
    assert store.list_ids("key", "", 100) == expected
    assert store.list_ids("key", expected[2], 2) == expected[3:5]
    assert store.list_ids("token", "", 10) == ["zz"]


def test_audit_chains_keep_order_and_batches(store: Storage) -> None:
    store.audit_append([b"a0", b"a1"], chain=0)
    store.audit_append([b"b0"], chain=1)
    store.audit_append([b"a2"], chain=0)
    assert store.audit_records(0) == [b"a0", b"a1", b"a2"]
    assert store.audit_records(1) == [b"b0"]
    assert store.audit_tail(1, 5, chain=0) == [b"a1", b"a2"]
    assert store.audit_chains() == [0, 1]


def test_concurrent_cas_lets_exactly_one_writer_win(store: Storage) -> None:
    store.put("key", "a", 0, b"v1")
    wins: list[int] = []

    def writer(i: int) -> None:
        if store.put("key", "a", 1, f"w{i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("key", "a") == (2, f"w{wins[0]}".encode())


def test_writes_survive_a_server_crash(pg: PostgresServer) -> None:
    """Acknowledged means flushed: an immediate (crash) shutdown right after loses nothing."""
    url = _fresh_database(pg)
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
    url = _fresh_database(pg)
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


def test_one_server_per_database(pg: PostgresServer) -> None:
    url = _fresh_database(pg)
    first = PostgresStorage(url)
    with pytest.raises(ConfigError, match="in use by another enclave-kms server"):
        PostgresStorage(url)
    first.close()
    PostgresStorage(url).close()  # the lock went with the first server's session


def test_other_schema_version_is_refused(pg: PostgresServer) -> None:
    url = _fresh_database(pg)
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
    postgres = open_storage(_fresh_database(pg))
    assert isinstance(postgres, PostgresStorage)
    postgres.close()
    with pytest.raises(ConfigError):
        open_storage("mysql://x@y/z")
    assert redact("postgresql://u:pw@h:5/d") == "postgresql://u:***@h:5/d"
