"""The key records in the sealed store: the one place that reads, writes and checks them.

Every part of the KMS service (lifecycle, BYOK and export, cryptographic use) reaches key
records through one `KeyRing`, so the rules that must hold for all of them live here once:
a record is re-read on every operation (a key disabled or scheduled for deletion by another
worker stops working at once), a key whose deletion time has passed is purged on the way,
and read-modify-write goes through the store's compare-and-set (`retry_on_conflict`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keytypes import KeyType, LoadedKey
from enclave_kms.enclave.keys.types import (
    KeyCache,
    KeyMetadata,
    KeyRecord,
    VersionRecord,
    validate_key_name,
)
from enclave_kms.enclave.state.store import RecordStore, all_ids, retry_on_conflict
from enclave_kms.errors import ConflictError, CryptoOperationError, KeyStateError, NotFoundError

Clock = Callable[[], datetime]

MAX_VERSIONS = 1000  # keeps the largest record (RSA-4096) under the 4 MiB sealed-blob bound
ID_PAGE = 1000  # ids read from the store per page when walking every key


class KeyRing:
    """Key records of one store, with the loaded-key cache and the service's clock."""

    def __init__(self, store: RecordStore, clock: Clock | None, cache_size: int) -> None:
        self.store = store
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._cache = KeyCache(cache_size)

    def now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the KMS clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    # ----------------------------------------------------------------- reading

    def get(self, name: str) -> tuple[int, KeyRecord] | None:
        """The live record, purging it first if its deletion time has passed."""

        def attempt() -> tuple[int, KeyRecord] | None:
            found = self.store.get_parsed("key", name, KeyRecord.from_value)
            if found is None:
                return None
            version, key = found
            due = key.deletion_scheduled_at
            if due is None or due > self.now():
                return version, key
            self.store.delete("key", name, version)  # changed under us (cancelled)? again
            self._cache.evict(key.uid)
            return None

        return retry_on_conflict(attempt, f"key {name!r}")

    def load(self, name: str) -> KeyRecord:
        """The live record of `name`; NotFoundError if there is none."""
        return self._found(name)[1]

    def names(self, *, after: str = "") -> Iterator[str]:
        """Every key name after `after`, ascending (records not read: some may be due)."""
        return all_ids(self.store.list_ids, "key", after=after, page=ID_PAGE)

    def usable(self, name: str, operation: str) -> KeyRecord:
        """The key if `operation` may run on it now; KeyStateError saying why not."""
        key = self.load(name)
        check_usable(key)
        if not key.type.supports(operation):
            raise KeyStateError(
                f"key {name!r} of type {key.type.name} does not support {operation}"
            )
        return key

    def version_for_use(self, key: KeyRecord, version: int) -> VersionRecord:
        """Version `version` for decrypt/verify: refused below min_decryption_version."""
        if version > key.latest.version:
            raise CryptoOperationError(
                f"key {key.name!r} has no version {version}: not produced by this key"
            )
        if version < key.min_decryption_version:
            raise KeyStateError(
                f"key {key.name!r} version {version} is below min_decryption_version "
                f"{key.min_decryption_version}"
            )
        return key.versions[version - 1]

    def loaded(self, key: KeyRecord, version: VersionRecord) -> LoadedKey:
        """The key object of one version (cached: loading RSA material is slow)."""
        return self._cache.get_or_load(key, version)

    def evict(self, uid: bytes, below: int | None = None) -> None:
        self._cache.evict(uid, below)

    # ----------------------------------------------------------------- writing

    def update(self, name: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Re-read and re-apply `change` until our write wins."""

        def attempt() -> KeyRecord:
            version, key = self._found(name)
            new = change(key)
            self.store.put("key", name, version, new.to_value())
            return new

        return retry_on_conflict(attempt, f"key {name!r}")

    def _found(self, name: str) -> tuple[int, KeyRecord]:
        """(store version, record) of `name`; NotFoundError if there is none."""
        found = self.get(validate_key_name(name))
        if found is None:
            raise NotFoundError(f"key {name!r} not found")
        return found

    def create(
        self,
        name: str,
        kt: KeyType,
        new: tuple[bytes, LoadedKey],
        exportable: bool,
        *,
        imported: bool,
    ) -> KeyMetadata:
        """Write a new key record `name` with `new` as version 1; ConflictError if it exists."""
        key = KeyRecord(
            uid=os.urandom(16),
            name=name,
            type=kt,
            created=self.now(),
            versions=(self._new_version(kt, 1, new, imported),),
            min_decryption_version=1,
            enabled=True,
            exportable=exportable,
            deletion_scheduled_at=None,
        )
        if self.get(name) is not None:  # also purges a key whose deletion is due
            raise ConflictError(f"key {name!r} already exists")
        try:
            self.store.put("key", name, 0, key.to_value())
        except ConflictError:
            raise ConflictError(f"key {name!r} already exists") from None
        self._cache.put(key.uid, 1, new[1])
        return key.metadata()

    def add_version(
        self, name: str, kt: KeyType, new: tuple[bytes, LoadedKey], *, imported: bool
    ) -> KeyMetadata:
        """Append `new` as the next version; the material is made once, outside the CAS loop."""

        def change(key: KeyRecord) -> KeyRecord:
            not_scheduled(key)
            if key.type != kt:
                raise ConflictError(f"key {name!r} was replaced concurrently; retry")
            if key.latest.version >= MAX_VERSIONS:
                raise KeyStateError(f"key {name!r} has reached {MAX_VERSIONS} versions")
            version = self._new_version(kt, key.latest.version + 1, new, imported)
            return replace(key, versions=(*key.versions, version))

        key = self.update(name, change)
        self._cache.put(key.uid, key.latest.version, new[1])
        return key.metadata()

    def _new_version(
        self, kt: KeyType, number: int, new: tuple[bytes, LoadedKey], imported: bool
    ) -> VersionRecord:
        material, loaded = new
        return VersionRecord(
            number, material, self.now(), keytypes.public_key_pem(kt, loaded), imported
        )


def check_usable(key: KeyRecord) -> None:
    """KeyStateError unless the key may be used now (enabled, not scheduled for deletion)."""
    if key.deletion_scheduled_at is not None:
        raise KeyStateError(f"key {key.name!r} is scheduled for deletion")
    if not key.enabled:
        raise KeyStateError(f"key {key.name!r} is disabled")


def not_scheduled(key: KeyRecord) -> None:
    """The one rule for changes: a key scheduled for deletion takes none (rotate, import,
    configure) until the deletion is cancelled; a disabled key still does (docs/api.md)."""
    if key.deletion_scheduled_at is not None:
        raise KeyStateError(f"key {key.name!r} is scheduled for deletion; cancel it first")
