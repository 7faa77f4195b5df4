"""The enclave's record cache: exact under its own writes, bounded, and never a way around
authentication; `memory_only` refuses host access instead of waiting on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from enclave_kms.enclave.state.cache import (
    RecordCache,
    WouldBlock,
    memory_only,
    require_host_access,
)
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.errors import ConflictError, IntegrityError
from enclave_kms.host.storage.sqlite import SQLiteStorage


class Counting:
    """The host storage with a count of calls: what reaches the host and what does not."""

    def __init__(self, path: Path) -> None:
        self.inner = SQLiteStorage(path)
        self.gets = 0

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        self.gets += 1
        return self.inner.get(kind, id)

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        return self.inner.put(kind, id, expected_version, blob)

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        return self.inner.list_ids(kind, after, limit)

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        return self.inner.delete(kind, id, expected_version)


@pytest.fixture
def host(tmp_path: Path) -> Counting:
    return Counting(tmp_path / "kms.sqlite")


INSTALLATION = bytes(range(32))


@pytest.fixture
def store(host: Counting) -> RecordStore:
    """Bound, like a running enclave's after init (an unbound store looks for the init
    marker on every key read)."""
    store = RecordStore(host, RecordCipher(os.urandom(32)), cache=RecordCache())
    store.bind(INSTALLATION)
    return store


def test_reads_after_a_write_never_reach_the_host(store: RecordStore, host: Counting) -> None:
    v = store.put("key", "k", 0, {"n": 1})
    for _ in range(5):
        found = store.get("key", "k")
        assert found is not None
        assert (found.version, found.value) == (v, {"n": 1})
    assert host.gets == 0
    v2 = store.put("key", "k", v, {"n": 2})  # write-through: the next read sees it
    found = store.get("key", "k")
    assert found is not None
    assert (found.version, found.value) == (v2, {"n": 2})
    assert host.gets == 0


def test_every_read_gets_its_own_objects(store: RecordStore) -> None:
    store.put("key", "k", 0, {"items": [1, 2]})
    first = store.get("key", "k")
    assert first is not None
    first.value["items"].append(3)
    again = store.get("key", "k")
    assert again is not None
    assert again.value == {"items": [1, 2]}


def test_a_record_is_cached_only_once_it_authenticates(tmp_path: Path) -> None:
    host = Counting(tmp_path / "kms.sqlite")
    cipher = RecordCipher(os.urandom(32))
    RecordStore(host, cipher).bound_to(INSTALLATION).put("key", "k", 0, {"n": 1})
    version, blob = host.inner.get("key", "k") or (0, b"")
    host.inner.put("key", "k", version, blob[:-1] + bytes([blob[-1] ^ 1]))
    reader = RecordStore(host, cipher, cache=RecordCache())
    reader.bind(INSTALLATION)
    for _ in range(3):  # refused every time, read from the host every time
        with pytest.raises(IntegrityError):
            reader.get("key", "k")
    assert host.gets == 3


def test_a_refused_write_forgets_the_record(store: RecordStore, host: Counting) -> None:
    v = store.put("key", "k", 0, {"n": 1})
    other = RecordStore(host, RecordCipher(os.urandom(32)))  # another writer on the host
    assert other.put("config", "x", 0, 1) == 1
    host.inner.put("key", "k", v, b"changed by someone else")
    with pytest.raises(ConflictError):
        store.put("key", "k", v - 1, {"n": 0})
    with pytest.raises(ConflictError):
        store.put("key", "k", v, {"n": 2})  # the host holds version 2 now
    with pytest.raises(IntegrityError):  # so the next read asks the host, and refuses it
        store.get("key", "k")


def test_deleted_records_are_gone_from_memory(store: RecordStore) -> None:
    v = store.put("key", "k", 0, {"n": 1})
    store.delete("key", "k", v)
    assert store.get("key", "k") is None


def test_parsed_objects_are_kept_per_version(store: RecordStore, host: Counting) -> None:
    calls: list[int] = []

    def parse(id: str, value: Any) -> tuple[str, int]:
        calls.append(value["n"])
        return id, value["n"]

    v = store.put("key", "k", 0, {"n": 1})
    assert store.get_parsed("key", "k", parse) == (v, ("k", 1))
    assert store.get_parsed("key", "k", parse) == (v, ("k", 1))
    assert calls == [1]
    v2 = store.put("key", "k", v, {"n": 2})
    assert store.get_parsed("key", "k", parse) == (v2, ("k", 2))
    assert calls == [1, 2]
    assert store.get_parsed("key", "absent", parse) is None
    assert host.gets == 1  # only the absent one: misses are not cached


def test_memory_only_refuses_what_needs_the_host(store: RecordStore) -> None:
    v = store.put("key", "k", 0, {"n": 1})
    with memory_only():
        assert store.get("key", "k") is not None  # cached: answered from memory
        for needs_host in (
            lambda: store.get("key", "other"),
            lambda: store.put("key", "k", v, {"n": 2}),
            lambda: store.delete("key", "k", v),
            lambda: store.list_ids("key"),
        ):
            with pytest.raises(WouldBlock):
                needs_host()
    require_host_access()  # outside the block: allowed again
    found = store.get("key", "k")
    assert found is not None
    assert found.value == {"n": 1}


def test_bounds_evict_the_least_recently_used() -> None:
    cache = RecordCache(max_entries=3, max_bytes=1000)
    for i in range(3):
        cache.store("key", f"k{i}", 1, bytes(10))
    assert cache.get("key", "k0") is not None  # k0 used: k1 is now the oldest
    cache.store("key", "k3", 1, bytes(10))
    assert cache.get("key", "k1") is None
    assert {i for i in range(4) if cache.get("key", f"k{i}")} == {0, 2, 3}
    cache.store("key", "big", 1, bytes(990))  # over the byte bound: older ones go
    assert cache.size_bytes <= 1000
    cache.store("key", "huge", 1, bytes(2000))  # larger than the whole cache: not kept
    assert cache.get("key", "huge") is None
    with pytest.raises(ValueError):
        RecordCache(max_entries=0)


def test_late_reads_never_overwrite_newer_state() -> None:
    cache = RecordCache()
    epoch = cache.epoch()  # a read from the host begins...
    cache.store("key", "k", 2, b"v2")  # ...meanwhile this enclave writes version 2
    cache.fill("key", "k", 1, b"v1", epoch)  # the read of version 1 arrives late
    assert cache.get("key", "k") == (2, b"v2")
    epoch = cache.epoch()
    cache.remove("key", "k")  # a delete happens while another read is in flight
    cache.fill("key", "k", 2, b"v2", epoch)
    assert cache.get("key", "k") is None
    cache.fill("key", "k", 3, b"v3", cache.epoch())
    cache.clear()
    assert len(cache) == 0
    assert cache.size_bytes == 0
