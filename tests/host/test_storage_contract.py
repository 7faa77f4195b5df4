"""The Storage contract, on both backends (SQLite file, real PostgreSQL server): compare-and-set,
bytewise paging, audit chains in order, exactly one winner among concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_kms.host.storage import Storage
from enclave_kms.host.storage.postgres import PostgresStorage
from enclave_kms.host.storage.sqlite import SQLiteStorage
from tests.pg_server import fresh_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "sqlite":
        db: Storage = SQLiteStorage(tmp_path / "kms.sqlite")
    else:
        db = PostgresStorage(fresh_database(request.getfixturevalue("pg")))
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


def test_audit_batch_and_head_commit_together_or_not_at_all(store: Storage) -> None:
    """The group commit's one transaction: the batch and the head's compare-and-set are kept
    together, and a lost compare-and-set keeps neither."""
    assert store.audit_append([b"a0"], 0, ("config", "state-head", 0, b"h1"))
    assert store.get("config", "state-head") == (1, b"h1")
    assert not store.audit_append([b"a1", b"a2"], 0, ("config", "state-head", 0, b"stale"))
    assert store.audit_records(0) == [b"a0"]
    assert store.get("config", "state-head") == (1, b"h1")
    assert store.audit_append([b"a1", b"a2"], 0, ("config", "state-head", 1, b"h2"))
    assert store.audit_records(0) == [b"a0", b"a1", b"a2"]
    assert store.get("config", "state-head") == (2, b"h2")


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
