"""Sealed-blob storage on the untrusted host (DESIGN §10).

The host stores opaque blobs the enclave sealed; it cannot read them, and anything it alters,
swaps or drops is caught inside the enclave (AEAD with kind, id and version as AAD). What the
host must provide is durability and compare-and-set: a write is acknowledged only once it is
on disk, and it succeeds only if the stored version is the one the enclave expects, so two
enclave workers never overwrite each other silently.
"""

from __future__ import annotations

from typing import Protocol

RecordPut = tuple[str, str, int, bytes]
"""(kind, id, expected_version, blob): a compare-and-set `put` riding on an audit append."""

SCHEMA_VERSION = 2
"""1: records + one audit chain. 2: the audit table gains a `chain` column (one chain per
enclave worker); a version-1 database is migrated on open (its records are chain 0)."""


class Storage(Protocol):
    """The small protocol every storage backend implements (SQLite by default, PostgreSQL)."""

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        """(version, blob) of a record, or None if absent."""

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        """Write version `expected_version + 1` iff the stored version is `expected_version`
        (0 = must not exist). Durable before returning True."""

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        """Ids of `kind` greater than `after`, ascending, at most `limit`."""

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        """Delete iff the stored version is `expected_version`."""

    def audit_append(
        self, records: list[bytes], chain: int = 0, put: RecordPut | None = None
    ) -> bool:
        """Append records to audit chain `chain` durably, in order, atomically as one batch.
        With `put` (kind, id, expected_version, blob), also `put` that record in the same
        transaction; False, and nothing written, if its compare-and-set fails."""

    def audit_tail(self, from_seq: int, limit: int, chain: int = 0) -> list[bytes]:
        """At most `limit` records of chain `chain` from position `from_seq` (0-based) on."""

    def audit_records(self, chain: int = 0) -> list[bytes]:
        """Every record of one audit chain in append order (for `audit verify`)."""

    def audit_chains(self) -> list[int]:
        """The chains that hold records, ascending (one per enclave worker that wrote)."""

    def close(self) -> None: ...


STORAGE_ENV = "ENCLAVE_KMS_STORAGE"
"""Environment variable naming the storage when `--storage` is not given."""


def open_storage(spec: str, *, exclusive: bool = True, replica: int | None = None) -> Storage:
    """`postgresql://USER@HOST:PORT/DB` opens PostgreSQL (psycopg, the `postgres` extra);
    anything else is a SQLite file path. Each backend is imported only when chosen.
    `replica`: this server is replica number `replica` of several on one PostgreSQL
    database (docs/replicas.md); a SQLite file has one server. `exclusive=False`:
    PostgreSQL without the server lock, for a process that only reads and seals its own
    records (`replicas join`), never serves."""
    if spec.startswith(("postgresql://", "postgres://")):
        try:
            from enclave_kms.host.storage.postgres import PostgresStorage
        except ImportError:
            from enclave_kms.errors import ConfigError

            raise ConfigError(
                "PostgreSQL storage needs psycopg: pip install 'enclave-kms[postgres]'"
            ) from None
        return PostgresStorage(spec, exclusive=exclusive, replica=replica)
    if replica is not None:
        from enclave_kms.errors import ConfigError

        raise ConfigError(
            "--replica-id: replicas share one PostgreSQL database (--storage postgresql://...); "
            "a SQLite file serves one server"
        )
    if "://" in spec:
        from enclave_kms.errors import ConfigError

        raise ConfigError(f"--storage {spec!r}: expected postgresql://... or a SQLite file path")
    from enclave_kms.host.storage.sqlite import SQLiteStorage

    return SQLiteStorage(spec)
