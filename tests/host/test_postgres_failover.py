"""The database's own failover, with real servers: a primary and a synchronous streaming
standby; the primary's machine dies (SIGKILL), the standby is promoted, and the storage the
enclave writes through carries on: 0 acknowledged writes lost. Also the fencing that keeps a
second server from writing beside the first."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from enclave_kms.errors import StorageError
from enclave_kms.host.storage.postgres import PostgresStorage
from tests.pg_server import PostgresServer, fresh_database, postgres_server, postgres_standby

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    with postgres_server() as primary, postgres_standby(primary) as standby:
        yield primary, standby


def _url(*servers: PostgresServer) -> str:
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return f"postgresql://kms@{hosts}/kms?target_session_attrs=read-write"


class Writer(threading.Thread):
    """Writes new records one after the other; a write counts only when put() said True."""

    def __init__(self, storage: PostgresStorage, limit: int) -> None:
        super().__init__(daemon=True)
        self.storage = storage
        self.limit = limit
        self.acked: list[str] = []
        self.failures = 0
        self.gap_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        failing_since: float | None = None
        while not self.stop.is_set() and i < self.limit:
            name = f"k{i:05d}"
            try:
                if self.storage.put("key", name, 0, name.encode()):
                    self.acked.append(name)
                if failing_since is not None:
                    self.gap_s = max(self.gap_s, time.monotonic() - failing_since)
                    failing_since = None
                i += 1  # written, or found already there after an ambiguous failure
            except StorageError:
                self.failures += 1
                failing_since = failing_since or time.monotonic()
                time.sleep(0.05)

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes acknowledged"
            assert self.is_alive(), "the writer stopped"
            time.sleep(0.02)


def test_primary_dies_standby_promoted_no_acknowledged_write_lost(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    primary, standby = pair
    storage = PostgresStorage(_url(primary, standby))
    writer = Writer(storage, limit=100_000)
    writer.start()
    try:
        writer.wait_for(100)
        primary.kill()
        standby.promote()
        before = len(writer.acked)
        writer.wait_for(before + 100)
    finally:
        writer.stop.set()
        writer.join(30)
    acked = list(writer.acked)
    assert writer.failures > 0  # the failover happened under the writer
    storage.close()
    survivor = PostgresStorage(_url(standby), exclusive=False)
    present = set(survivor.list_ids("key", "", len(acked) + 1000))
    lost = [name for name in acked if name not in present]
    assert lost == [], f"{len(lost)} acknowledged writes lost of {len(acked)}"
    survivor.close()
    print(f"failover: {len(acked)} acknowledged, 0 lost, longest write gap {writer.gap_s:.2f} s")


def test_a_server_whose_database_was_taken_stops_writing(pg: PostgresServer) -> None:
    url = fresh_database(pg)
    name = url.rsplit("/", 1)[1]
    first = PostgresStorage(url)
    assert first.put("key", "a", 0, b"1")
    # the first server's session is lost (as after a network split) and a second one starts
    pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        db=name,
    )
    second = PostgresStorage(url)
    assert second.put("key", "b", 0, b"2")
    with pytest.raises(StorageError, match="another enclave-kms server"):
        first.put("key", "c", 0, b"3")
    with pytest.raises(StorageError, match="another enclave-kms server"):
        first.audit_append([b"r"])
    assert first.get("key", "b") == (1, b"2")  # reads stay possible; writes are fenced
    second.close()
    first.close()
