"""SQLite backend: WAL journal, synchronous=FULL, so an acknowledged write survives a crash."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from enclave_kms.errors import StorageError
from enclave_kms.host.storage import SCHEMA_VERSION, RecordPut

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    blob    BLOB    NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    record BLOB NOT NULL,
    chain  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS audit_by_chain ON audit(chain, seq);
"""

_MIGRATIONS = {
    1: """
ALTER TABLE audit ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS audit_by_chain ON audit(chain, seq);
""",
}
"""From version N to N+1, run in one transaction with the version bump."""


class SQLiteStorage:
    """One writer connection guarded by a lock (SQLite serialises writers anyway, and one
    connection keeps durability settings in one place), and a reader connection per thread:
    in WAL mode readers see the last committed state without waiting for a writer's fsync,
    so a key lookup never queues behind an audit commit."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version == 0:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                version = SCHEMA_VERSION
            while version in _MIGRATIONS:
                version = self._migrate(version)
            if version != SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: schema version {version}, this build uses {SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open storage {self.path}: {exc}") from None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # never the writer's lock: reads must not wait

    def _migrate(self, version: int) -> int:
        """One schema step, atomically: a crash leaves the old version, never half of one."""
        try:
            self._db.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[version]} PRAGMA user_version={version + 1};"
                " COMMIT;"
            )
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        (new_version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(new_version)

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, check_same_thread=False, isolation_level=None, timeout=30
                )
                conn.execute("PRAGMA query_only=ON")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open storage {self.path}: {exc}") from None
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"storage failure: {exc}") from None

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"storage failure: {exc}") from None

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        rows = self._read("SELECT version, blob FROM records WHERE kind=? AND id=?", (kind, id))
        return None if not rows else (int(rows[0][0]), bytes(rows[0][1]))

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        try:
            with self._lock:
                return self._put(kind, id, expected_version, blob)
        except sqlite3.Error as exc:
            raise StorageError(f"storage failure: {exc}") from None

    def _put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        """The compare-and-set itself; caller holds the writer lock."""
        if expected_version == 0:
            cur = self._db.execute(
                "INSERT INTO records(kind, id, version, blob) VALUES (?, ?, 1, ?) "
                "ON CONFLICT(kind, id) DO NOTHING",
                (kind, id, blob),
            )
        else:
            cur = self._db.execute(
                "UPDATE records SET version=version+1, blob=? WHERE kind=? AND id=? AND version=?",
                (blob, kind, id, expected_version),
            )
        return cur.rowcount == 1

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        rows = self._read(
            "SELECT id FROM records WHERE kind=? AND id>? ORDER BY id LIMIT ?",
            (kind, after, limit),
        )
        return [str(r[0]) for r in rows]

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        cur = self._run(
            "DELETE FROM records WHERE kind=? AND id=? AND version=?", (kind, id, expected_version)
        )
        return cur.rowcount == 1

    def audit_append(
        self, records: list[bytes], chain: int = 0, put: RecordPut | None = None
    ) -> bool:
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if put is not None and not self._put(*put):
                        self._db.execute("ROLLBACK")
                        return False
                    self._db.executemany(
                        "INSERT INTO audit(record, chain) VALUES (?, ?)",
                        [(r, chain) for r in records],
                    )
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return True
        except sqlite3.Error as exc:
            raise StorageError(f"audit append failed: {exc}") from None

    def audit_tail(self, from_seq: int, limit: int, chain: int = 0) -> list[bytes]:
        rows = self._read(
            "SELECT record FROM audit WHERE chain=? ORDER BY seq LIMIT ? OFFSET ?",
            (chain, limit, from_seq),
        )
        return [bytes(r[0]) for r in rows]

    def audit_records(self, chain: int = 0) -> list[bytes]:
        rows = self._read("SELECT record FROM audit WHERE chain=? ORDER BY seq", (chain,))
        return [bytes(r[0]) for r in rows]

    def audit_chains(self) -> list[int]:
        return [int(r[0]) for r in self._read("SELECT DISTINCT chain FROM audit ORDER BY chain")]

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._lock:
            self._db.close()
