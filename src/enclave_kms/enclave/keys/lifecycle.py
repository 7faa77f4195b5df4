"""Key lifecycle: create, list, read, rotate, configure, schedule and cancel deletion, purge.

Deletion is scheduled (default 7 days, at least 1 day, at most 30) and cancellable; a key
scheduled for deletion cannot be used or changed, and it is purged lazily by the first access
or listing after its time (or by `purge_due_keys`). A disabled key cannot be used but can
still be rotated and configured (re-enabling is a configuration): one rule, in
`keyring.not_scheduled`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keyring import KeyRing, not_scheduled
from enclave_kms.enclave.keys.types import (
    KeyMetadata,
    KeyPage,
    KeyRecord,
    need_flag,
    validate_key_name,
)
from enclave_kms.errors import ConflictError, IntegrityError, InvalidRequestError

MAX_LIST_LIMIT = 1000
DEFAULT_DELETION_WAIT = timedelta(days=7)
MIN_DELETION_WAIT = timedelta(days=1)
MAX_DELETION_WAIT = timedelta(days=30)


class KeyLifecycle:
    """The operations that make, change and remove key records (no key material leaves)."""

    def __init__(self, ring: KeyRing, *, min_deletion_wait: timedelta = MIN_DELETION_WAIT):
        self._ring = ring
        self._min_deletion_wait = min_deletion_wait

    def create_key(
        self, name: str, type: str = keytypes.DEFAULT_KEY_TYPE, *, exportable: bool = False
    ) -> KeyMetadata:
        """Create key `name` with fresh material (version 1). ConflictError if it exists."""
        validate_key_name(name)
        need_flag(exportable, "exportable")
        kt = keytypes.key_type(type)
        return self._ring.create(name, kt, keytypes.generate_key(kt), exportable, imported=False)

    def list_keys(
        self,
        *,
        after: str = "",
        limit: int = 100,
        visible: Callable[[str], bool] | None = None,
    ) -> KeyPage:
        """Keys with names after `after`, ascending; purges due keys on the way.

        A record that fails authentication does not break the listing: its name is
        reported in `unreadable`. `next_after` is None on the last page. With `visible`,
        only names it accepts are read, counted and shown, and `next_after` is always one of
        them: a page never reveals a name outside the caller's grants.
        """
        if not isinstance(after, str) or len(after) > 128:
            raise InvalidRequestError("after must be a key name")
        if (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise InvalidRequestError(f"limit must be 1..{MAX_LIST_LIMIT}")
        keys: list[KeyMetadata] = []
        unreadable: list[str] = []
        shown: list[str] = []
        more = False
        for name in self._ring.names(after=after):
            if visible is not None and not visible(name):
                continue
            try:
                found = self._ring.get(name)
            except IntegrityError:
                found, bad = None, True
            else:
                bad = False
            if found is None and not bad:
                continue  # purged on the way
            if len(shown) == limit:
                more = True
                break
            shown.append(name)
            if found is None:
                unreadable.append(name)
            else:
                keys.append(found[1].metadata())
        return KeyPage(tuple(keys), shown[-1] if more else None, tuple(unreadable))

    def purge_due_keys(self) -> int:
        """Purge every key whose deletion time has passed; returns how many were purged."""
        purged = 0
        for name in self._ring.names():
            try:
                purged += self._ring.get(name) is None
            except IntegrityError:
                continue
        return purged

    def read_key(self, name: str) -> KeyMetadata:
        """Metadata and public keys of `name`; never private material."""
        return self._ring.load(name).metadata()

    def rotate_key(self, name: str) -> KeyMetadata:
        """Add a version with fresh material; new operations use it, old versions still
        decrypt/verify (down to min_decryption_version)."""
        key = self._ring.load(name)
        not_scheduled(key)
        new = keytypes.generate_key(key.type)
        return self._ring.add_version(name, key.type, new, imported=False)

    def configure_key(
        self,
        name: str,
        *,
        min_decryption_version: int | None = None,
        enabled: bool | None = None,
    ) -> KeyMetadata:
        """Set min_decryption_version (1..latest) and/or enable or disable the key."""
        if min_decryption_version is not None and (
            not isinstance(min_decryption_version, int)
            or isinstance(min_decryption_version, bool)
            or min_decryption_version < 1
        ):
            raise InvalidRequestError("min_decryption_version must be a positive integer")
        if enabled is not None and not isinstance(enabled, bool):
            raise InvalidRequestError("enabled must be a boolean")
        if min_decryption_version is None and enabled is None:
            return self.read_key(name)

        def change(key: KeyRecord) -> KeyRecord:
            not_scheduled(key)
            new = key
            if min_decryption_version is not None:
                if min_decryption_version > key.latest.version:
                    raise InvalidRequestError(
                        f"min_decryption_version {min_decryption_version} exceeds the latest "
                        f"version {key.latest.version}"
                    )
                new = replace(new, min_decryption_version=min_decryption_version)
            if enabled is not None:
                new = replace(new, enabled=enabled)
            return new

        key = self._ring.update(name, change)
        self._ring.evict(key.uid, below=key.min_decryption_version)
        return key.metadata()

    def schedule_deletion(
        self, name: str, *, waiting_period: timedelta | None = None
    ) -> KeyMetadata:
        """Make the key unusable now and purge it after `waiting_period` (default 7 days)."""
        wait = DEFAULT_DELETION_WAIT if waiting_period is None else waiting_period
        if not isinstance(wait, timedelta) or not (
            self._min_deletion_wait <= wait <= MAX_DELETION_WAIT
        ):
            raise InvalidRequestError(
                f"waiting period must be between {self._min_deletion_wait} and {MAX_DELETION_WAIT}"
            )

        def change(key: KeyRecord) -> KeyRecord:
            if key.deletion_scheduled_at is not None:
                raise ConflictError(f"key {name!r} is already scheduled for deletion")
            return replace(key, deletion_scheduled_at=self._ring.now() + wait)

        key = self._ring.update(name, change)
        self._ring.evict(key.uid)
        return key.metadata()

    def cancel_deletion(self, name: str) -> KeyMetadata:
        """Undo `schedule_deletion` before its time; the key works again as before."""

        def change(key: KeyRecord) -> KeyRecord:
            if key.deletion_scheduled_at is None:
                raise ConflictError(f"key {name!r} is not scheduled for deletion")
            return replace(key, deletion_scheduled_at=None)

        return self._ring.update(name, change).metadata()
