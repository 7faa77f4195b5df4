"""The enclave's view of storage: typed values in, sealed blobs out, versions checked.

`RecordStore` seals every value with `RecordCipher` before it reaches the backend (in the
running enclave the backend is the storage OCALL proxy; in tests it can be any object with
the host storage protocol's methods) and authenticates every blob it reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from enclave_kms.enclave.records import RecordCipher
from enclave_kms.errors import ConflictError, IntegrityError


class Backend(Protocol):
    """What the enclave needs from the host (mirrors the storage OCALLs one to one)."""

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None: ...
    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool: ...
    def list_ids(self, kind: str, after: str, limit: int) -> list[str]: ...
    def delete(self, kind: str, id: str, expected_version: int) -> bool: ...


@dataclass(frozen=True)
class Versioned:
    version: int
    value: Any


class RecordStore:
    def __init__(self, backend: Backend, cipher: RecordCipher) -> None:
        self._backend = backend
        self._cipher = cipher

    def get(self, kind: str, id: str) -> Versioned | None:
        found = self._backend.get(kind, id)
        if found is None:
            return None
        version, blob = found
        if not isinstance(version, int) or version < 1:
            raise IntegrityError(f"record {kind}/{id}: host returned version {version!r}")
        return Versioned(version, self._cipher.open(kind, id, version, blob))

    def put(self, kind: str, id: str, expected_version: int, value: Any) -> int:
        """Write the next version; ConflictError if someone else wrote first."""
        new_version = expected_version + 1
        blob = self._cipher.seal(kind, id, new_version, value)
        if not self._backend.put(kind, id, expected_version, blob):
            raise ConflictError(f"record {kind}/{id} changed concurrently; retry")
        return new_version

    def delete(self, kind: str, id: str, expected_version: int) -> None:
        if not self._backend.delete(kind, id, expected_version):
            raise ConflictError(f"record {kind}/{id} changed concurrently; retry")

    def list_ids(self, kind: str, *, after: str = "", limit: int = 1000) -> list[str]:
        ids = self._backend.list_ids(kind, after, limit)
        if any(not isinstance(i, str) for i in ids) or ids != sorted(set(ids)):
            raise IntegrityError(f"host returned a malformed {kind} listing")
        return ids
