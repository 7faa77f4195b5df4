"""PostgreSQL backend (psycopg 3): the same `Storage` protocol as SQLite, on a database server.

What the host owes the enclave is the same as with SQLite: compare-and-set on row versions and
durability before acknowledging. Here durability is PostgreSQL's: every session runs with
`synchronous_commit = on`, so a commit returns only once the WAL is flushed locally and, when
the cluster names synchronous standbys, once a standby has it too. A failed or ambiguous
commit raises `StorageError`, which the enclave never acknowledges.

Who may use the database (held for the server's lifetime by session advisory locks):

- a lone server (no replica id) holds the server lock exclusively, as `serve.lock` does for a
  data directory: its enclave keeps the records it uses in memory as the only writer;
- replicas (DESIGN §14, docs/replicas.md) hold the server lock *shared* and, each, the lock of
  its own replica id exclusively. So a lone server and replicas refuse each other, and two
  processes started with the same replica id (one audit chain written by two, a fork) refuse
  each other too. Their enclaves check every cached record against the signed state head on
  each request (enclave/state/store.py), which is what makes sharing safe.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from enclave_kms.errors import ConfigError, StorageError
from enclave_kms.host.storage import SCHEMA_VERSION, RecordPut

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS enclave_kms_meta (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    kind    TEXT   NOT NULL,
    id      TEXT   COLLATE "C" NOT NULL,
    version BIGINT NOT NULL CHECK (version > 0),
    blob    BYTEA  NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS audit (
    seq    BIGSERIAL PRIMARY KEY,
    chain  INTEGER NOT NULL,
    record BYTEA   NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_chain ON audit (chain, seq);
"""

_MIGRATIONS: dict[int, str] = {}
"""From version N to N+1, each run in the transaction that bumps the version. The first
PostgreSQL schema is version 2 (SQLite's current one), so there is nothing to migrate yet."""

_SCHEMA_LOCK = 0x656B_6D73_0001  # pg_advisory_xact_lock key: one replica migrates at a time
_SERVER_LOCK = (
    0x656B_6D73_0002  # pg_advisory_lock key: exclusive (lone server) or shared (replicas)
)
_REPLICA_LOCKS = 0x656B_6D73  # pg_advisory_lock(int4, int4) class: one process per replica id
MAX_REPLICA_ID = 1023
_CONNECT_TIMEOUT_S = 10  # unless the URL sets libpq's connect_timeout (seconds, >= 2)


def is_database_url(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


def connect_timeout(url: str) -> int:
    """How long a call waits for a connection: the URL's `connect_timeout` (libpq's own
    parameter, which it then also applies to each connection attempt) or 10 s. Like libpq,
    values below 2 s are raised to 2."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url).get("connect_timeout")
    except psycopg.ProgrammingError:
        raise ConfigError(f"--storage {redact(url)!r}: not a valid PostgreSQL URL") from None
    if given is None:
        return _CONNECT_TIMEOUT_S
    try:
        seconds = int(str(given))
    except ValueError:
        raise ConfigError("--storage: connect_timeout must be whole seconds") from None
    return _CONNECT_TIMEOUT_S if seconds <= 0 else max(seconds, 2)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PostgresStorage:
    """A small connection pool (every protocol call takes one connection for one transaction),
    plus, for a server, ownership of the database:

    - session advisory locks held on a dedicated connection (see the module docstring), so a
      conflicting server refuses to start while the first one's session lives;
    - fencing epochs: a lone server bumps `owner_epoch` when it takes the database, a replica
      bumps `replica_epoch_<id>` and remembers `owner_epoch`; every write transaction checks
      both, so a server whose session was lost (a database failover) and whose database (or
      replica id) was then taken by another process cannot write any more. On a lost session
      the locks are taken again on the next write, or the write is refused.

    `exclusive=False` takes no lock at all (host-side tools that only read)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 8,
        exclusive: bool = True,
        replica: int | None = None,
    ) -> None:
        if not is_database_url(url):
            raise ConfigError(f"--storage {url!r}: expected postgresql://USER@HOST:PORT/DB")
        if replica is not None and not 0 <= replica <= MAX_REPLICA_ID:
            raise ConfigError(f"--replica-id {replica}: between 0 and {MAX_REPLICA_ID}")
        self.url = redact(url)
        self._url = url
        self._timeout = connect_timeout(url)
        self._exclusive = exclusive
        self.replica = replica
        self._replica_epoch: int | None = None
        self._closed = threading.Event()
        self._owner: psycopg.Connection[Any] | None = None
        self._owner_lock = threading.Lock()
        self._epoch: int | None = None
        self._owner_suspect = False  # a database error was seen: check the session on write
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={"connect_timeout": self._timeout, "autocommit": True},
            configure=_configure,
            timeout=self._timeout,
            open=False,
            name="enclave-kms",
        )
        try:
            if exclusive:
                self._owner = self._take_server_lock()
            self._pool.open(wait=True, timeout=self._timeout)
            self._transaction(self._create_or_migrate)
            if exclusive:
                self._epoch, self._replica_epoch = self._transaction(self._take_epochs)
        except BaseException as exc:
            self._pool.close()
            self._close_owner()
            if isinstance(exc, PoolTimeout):
                raise StorageError(f"cannot reach the database {self.url}") from None
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"cannot open storage {self.url}: {_one_line(exc)}") from None
            raise

    # ------------------------------------------------------------------ ownership

    def _take_server_lock(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._url, connect_timeout=self._timeout, autocommit=True)
        if self.replica is None:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_SERVER_LOCK,)).fetchone()
            refusal = (
                f"{self.url} is in use by other enclave-kms servers (a lone server needs the "
                "database to itself; stop them first, or start this one as a replica with "
                "--replica-id)"
            )
        else:
            row = conn.execute(
                "SELECT pg_try_advisory_lock_shared(%s) AND pg_try_advisory_lock(%s, %s)",
                (_SERVER_LOCK, _REPLICA_LOCKS, self.replica),
            ).fetchone()
            refusal = (
                f"{self.url}: replica id {self.replica} is already serving, or a lone "
                "(non-replica) server holds the database; each replica needs its own --replica-id"
            )
        if not row or not row[0]:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock_all()")
            conn.close()
            raise ConfigError(refusal)
        return conn

    def _ensure_owner(self) -> None:
        """Before a write: the server's session (and its lock) still lives, or is taken anew
        (after a failover the new primary has no session of ours); refused if another server
        holds it now."""
        with self._owner_lock:
            owner = self._owner
            if owner is not None and not owner.closed and not self._owner_suspect:
                return  # no error seen since the session was last known good: no round trip
            try:
                if owner is not None and not owner.closed:
                    owner.execute("SELECT 1")
                    self._owner_suspect = False
                    return
            except psycopg.Error:
                pass  # the session is gone: take the lock again below
            if owner is not None:
                owner.close()
            self._owner = None
            try:
                self._owner = self._take_server_lock()
                self._owner_suspect = False
            except psycopg.Error as exc:
                raise StorageError(f"database {self.url} unreachable: {_one_line(exc)}") from None
            except ConfigError:
                raise StorageError(
                    f"{self.url}: another enclave-kms server holds the database; this one "
                    "stops writing"
                ) from None

    def _replica_row(self) -> str:
        return f"replica_epoch_{self.replica}"

    def _take_epochs(self, conn: psycopg.Connection[Any]) -> tuple[int, int | None]:
        """A lone server bumps the owner epoch (fencing every earlier holder, replicas too);
        a replica keeps it and bumps its own id's epoch (fencing an earlier process of that
        id)."""
        if self.replica is None:
            return _bump(conn, "owner_epoch"), None
        conn.execute(
            "INSERT INTO enclave_kms_meta(name, value) VALUES ('owner_epoch', 1) "
            "ON CONFLICT (name) DO NOTHING"
        )
        row = conn.execute(
            "SELECT value FROM enclave_kms_meta WHERE name = 'owner_epoch'"
        ).fetchone()
        assert row is not None
        return int(row[0]), _bump(conn, self._replica_row())

    def _check_epoch(self, conn: psycopg.Connection[Any]) -> None:
        names = ["owner_epoch"] if self.replica is None else ["owner_epoch", self._replica_row()]
        rows = dict(
            conn.execute(
                "SELECT name, value FROM enclave_kms_meta WHERE name = ANY(%s) FOR SHARE",
                (names,),
            ).fetchall()
        )
        if rows.get("owner_epoch") != self._epoch or (
            self.replica is not None and rows.get(self._replica_row()) != self._replica_epoch
        ):
            raise StorageError(
                f"{self.url}: another enclave-kms server took over the database (or this "
                "replica id); this one stops writing (restart it once the other is stopped)"
            )

    def _close_owner(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            # Release explicitly: the server ends a closed session's backend (and its locks)
            # only some time after the client has gone, and a successor must not see it held.
            with contextlib.suppress(psycopg.Error):
                owner.execute("SELECT pg_advisory_unlock_all()")
            owner.close()

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed.is_set():
            raise StorageError("storage is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            self._owner_suspect = True
            raise StorageError(f"database {self.url} unreachable (no connection)") from None
        except psycopg.Error as exc:
            self._owner_suspect = True
            raise StorageError(f"storage failure: {_one_line(exc)}") from None

    def _transaction(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `body` in one transaction; it commits (durably) or raises, never half."""
        with self._conn() as conn, conn.transaction():
            return body(conn)

    def _write(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
        """A write transaction of the server that owns the database (fenced by its epoch)."""
        if self._exclusive:
            self._ensure_owner()

        def fenced(conn: psycopg.Connection[Any]) -> T:
            if self._exclusive:
                self._check_epoch(conn)
            return body(conn)

        return self._transaction(fenced)

    def _create_or_migrate(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_SCHEMA)
        row = conn.execute(
            "SELECT value FROM enclave_kms_meta WHERE name = 'schema_version'"
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO enclave_kms_meta(name, value) VALUES ('schema_version', %s)",
                (SCHEMA_VERSION,),
            )
            return
        version = int(row[0])
        while version in _MIGRATIONS:
            conn.execute(_MIGRATIONS[version])
            version += 1
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"{self.url}: schema version {version}, this build uses {SCHEMA_VERSION}"
            )
        conn.execute(
            "UPDATE enclave_kms_meta SET value = %s WHERE name = 'schema_version'", (version,)
        )

    # ------------------------------------------------------------------ the protocol

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT version, blob FROM records WHERE kind = %s AND id = %s", (kind, id)
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        return self._write(lambda conn: _put(conn, (kind, id, expected_version, blob)))

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id FROM records WHERE kind = %s AND id > %s ORDER BY id LIMIT %s",
                (kind, after, limit),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        return self._write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM records WHERE kind = %s AND id = %s AND version = %s",
                    (kind, id, expected_version),
                ).rowcount
                == 1
            )
        )

    def audit_append(
        self, records: list[bytes], chain: int = 0, put: RecordPut | None = None
    ) -> bool:
        def append(conn: psycopg.Connection[Any]) -> None:
            if put is not None and not _put(conn, put):
                raise _PutRefused  # rolls the transaction back: nothing of the batch is kept
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit(chain, record) VALUES (%s, %s)",
                    [(chain, r) for r in records],
                )

        try:
            self._write(append)
        except _PutRefused:
            return False
        except StorageError as exc:
            raise StorageError(f"audit append failed: {exc.message}") from None
        return True

    def audit_tail(self, from_seq: int, limit: int, chain: int = 0) -> list[bytes]:
        return self._audit(
            "SELECT record FROM audit WHERE chain = %s ORDER BY seq LIMIT %s OFFSET %s",
            (chain, limit, from_seq),
        )

    def audit_records(self, chain: int = 0) -> list[bytes]:
        return self._audit("SELECT record FROM audit WHERE chain = %s ORDER BY seq", (chain,))

    def audit_chains(self) -> list[int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT DISTINCT chain FROM audit ORDER BY chain").fetchall()
        return [int(r[0]) for r in rows]

    def _audit(self, sql: str, args: tuple[object, ...]) -> list[bytes]:
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [bytes(r[0]) for r in rows]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._pool.close()
        self._close_owner()


def _bump(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute(
        "INSERT INTO enclave_kms_meta(name, value) VALUES (%s, 1) "
        "ON CONFLICT (name) DO UPDATE SET value = enclave_kms_meta.value + 1 RETURNING value",
        (name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Per session: durable commits whatever the server's default says. Connections run in
    autocommit; a write opens its own transaction (`conn.transaction()`)."""
    conn.execute("SET synchronous_commit = on")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _PutRefused(Exception):
    """The compare-and-set riding on an audit append lost: roll the whole batch back."""


def _put(conn: psycopg.Connection[Any], put: RecordPut) -> bool:
    """Compare-and-set one record inside the caller's transaction."""
    kind, id, expected_version, blob = put
    if expected_version == 0:
        cur = conn.execute(
            "INSERT INTO records(kind, id, version, blob) VALUES (%s, %s, 1, %s) "
            "ON CONFLICT (kind, id) DO NOTHING",
            (kind, id, blob),
        )
    else:
        cur = conn.execute(
            "UPDATE records SET version = version + 1, blob = %s "
            "WHERE kind = %s AND id = %s AND version = %s",
            (blob, kind, id, expected_version),
        )
    return cur.rowcount == 1
