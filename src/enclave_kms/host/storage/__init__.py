"""Sealed-blob storage on the untrusted host (DESIGN §10).

The host stores opaque blobs the enclave sealed; it cannot read them, and anything it alters,
swaps or drops is caught inside the enclave (AEAD with kind, id and version as AAD). What the
host must provide is durability and compare-and-set: a write is acknowledged only once it is
on disk, and it succeeds only if the stored version is the one the enclave expects, so two
enclave workers never overwrite each other silently.
"""

from __future__ import annotations

from typing import Protocol

SCHEMA_VERSION = 1


class Storage(Protocol):
    """The small protocol every backend implements (SQLite by default, PostgreSQL for replicas)."""

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        """(version, blob) of a record, or None if absent."""

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        """Write version `expected_version + 1` iff the stored version is `expected_version`
        (0 = must not exist). Durable before returning True."""

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        """Ids of `kind` greater than `after`, ascending, at most `limit`."""

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        """Delete iff the stored version is `expected_version`."""

    def audit_append(self, records: list[bytes]) -> None:
        """Append audit records durably, in order, atomically as one batch."""

    def audit_tail(self, from_seq: int, limit: int) -> list[bytes]:
        """At most `limit` audit records from position `from_seq` (0-based) on."""

    def audit_records(self) -> list[bytes]:
        """Every audit record in append order (for `audit verify`)."""

    def close(self) -> None: ...
