"""The KMS service: named, versioned keys and the operations on them (DESIGN §10, §11).

Pure Python over `RecordStore`: no HTTP, no processes, time from an injected clock. Every
method takes and returns plain types (bytes, str, dataclasses) so the HTTP layer maps them one
to one, and fails only with the typed errors of `enclave_kms.errors`.

State. One sealed record (kind "key", id = key name) holds a key's metadata and the material
of every version. Read-modify-write operations use the record's compare-and-set version and
retry on ConflictError, so concurrent workers (threads, or replicas on one database) never
lose an update. The record is re-read on every operation: a key disabled or scheduled for
deletion by another worker stops working at once.

Formats (stable, documented for clients):
- ciphertext: ``ekms:v<N>:<base64(nonce(12) || ciphertext || tag(16))>``, AES-256-GCM under
  version N. The GCM additional data is canonical CBOR
  ``["enclave-kms/encrypt/v1", key name, N, associated_data]``, so a ciphertext never opens
  under another key or version even with equal material, nor with other associated data.
- signature / MAC: ``ekms:v<N>:<base64(signature or HMAC-SHA256 tag)>``; the signature bytes
  are standard (RSA-PSS / PKCS#1 v1.5, DER ECDSA, Ed25519) so exported public keys verify
  them with any library.
- BYOK: see `KMSService.import_key`.

Decisions: `exportable` is fixed when a key is created or imported and never changes
afterwards (a key born non-exportable can never leave the enclave; once exportable, its
material may be outside already, so clearing the flag would only pretend). Deletion is
scheduled (default 7 days, at least 1 day, at most 30) and cancellable; a key scheduled for
deletion cannot be used, and it is purged lazily by the first access or listing after its
time (or by `purge_due_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_mod
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keytypes import KeyType, LoadedKey, PrivateKey
from enclave_kms.enclave.keys.types import (
    BatchItemError,
    BatchResult,
    DataKey,
    DecryptItem,
    EncryptItem,
    ExportedKey,
    KeyCache,
    KeyMetadata,
    KeyPage,
    KeyRecord,
    KeyVersionInfo,
    RsaKeyPair,
    VersionRecord,
    WrappingKey,
    format_tagged,
    gcm_aad,
    need_aad,
    need_bytes,
    need_flag,
    parse_tagged,
    validate_key_name,
)
from enclave_kms.enclave.state.store import RecordStore, all_ids, retry_on_conflict
from enclave_kms.errors import (
    ConflictError,
    CryptoOperationError,
    IntegrityError,
    InvalidRequestError,
    KeyStateError,
    KMSError,
    NotFoundError,
)

__all__ = [
    "BatchItemError",
    "BatchResult",
    "DataKey",
    "DecryptItem",
    "EncryptItem",
    "ExportedKey",
    "KMSService",
    "KeyMetadata",
    "KeyPage",
    "KeyVersionInfo",
    "RsaKeyPair",
    "WrappingKey",
]

Clock = Callable[[], datetime]
T = TypeVar("T")

MAX_VERSIONS = 1000  # keeps the largest record (RSA-4096) under the 4 MiB sealed-blob bound
MAX_RANDOM_BYTES = 1024
MAX_BATCH_ITEMS = 1000
MAX_LIST_LIMIT = 1000
DATA_KEY_BYTES = 32
DEFAULT_DELETION_WAIT = timedelta(days=7)
MIN_DELETION_WAIT = timedelta(days=1)
MAX_DELETION_WAIT = timedelta(days=30)
WRAPPING_KEY_BITS = 4096
_NONCE = 12
_TAG = 16
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


# --------------------------------------------------------------------------- the service


class KMSService:
    """Key lifecycle and cryptographic operations over sealed records.

    `clock` returns the current time (timezone-aware); tests inject a fake one.
    `min_deletion_wait` exists so tests can shorten the one-day minimum; production leaves it.
    """

    def __init__(
        self,
        store: RecordStore,
        clock: Clock | None = None,
        *,
        cache_size: int = 256,
        min_deletion_wait: timedelta = MIN_DELETION_WAIT,
    ) -> None:
        self._store = store
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._cache = KeyCache(cache_size)
        self._min_deletion_wait = min_deletion_wait
        self._wrapping: rsa.RSAPrivateKey | None = None
        self._wrapping_lock = threading.Lock()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the KMS clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    # ----------------------------------------------------------------- record access

    def _get(self, name: str) -> tuple[int, KeyRecord] | None:
        """The live record, purging it first if its deletion time has passed."""

        def attempt() -> tuple[int, KeyRecord] | None:
            found = self._store.get_parsed("key", name, KeyRecord.from_value)
            if found is None:
                return None
            version, key = found
            due = key.deletion_scheduled_at
            if due is None or due > self._now():
                return version, key
            self._store.delete("key", name, version)  # changed under us (cancelled)? again
            self._cache.evict(key.uid)
            return None

        return retry_on_conflict(attempt, f"key {name!r}")

    def _load(self, name: str) -> tuple[int, KeyRecord]:
        found = self._get(validate_key_name(name))
        if found is None:
            raise NotFoundError(f"key {name!r} not found")
        return found

    def _update(self, name: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Re-read and re-apply `change` until our write wins."""

        def attempt() -> KeyRecord:
            version, key = self._load(name)
            new = change(key)
            self._store.put("key", name, version, new.to_value())
            return new

        return retry_on_conflict(attempt, f"key {name!r}")

    def _usable(self, name: str, operation: str) -> KeyRecord:
        """The key if `operation` may run on it now; KeyStateError saying why not."""
        key = self._load(name)[1]
        self._check_usable(key)
        if not key.type.supports(operation):
            raise KeyStateError(
                f"key {name!r} of type {key.type.name} does not support {operation}"
            )
        return key

    @staticmethod
    def _check_usable(key: KeyRecord) -> None:
        if key.deletion_scheduled_at is not None:
            raise KeyStateError(f"key {key.name!r} is scheduled for deletion")
        if not key.enabled:
            raise KeyStateError(f"key {key.name!r} is disabled")

    @staticmethod
    def _not_scheduled(key: KeyRecord) -> None:
        if key.deletion_scheduled_at is not None:
            raise KeyStateError(f"key {key.name!r} is scheduled for deletion; cancel it first")

    def _version_for_use(self, key: KeyRecord, version: int) -> VersionRecord:
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

    def _loaded(self, key: KeyRecord, version: VersionRecord) -> LoadedKey:
        return self._cache.get_or_load(key, version)

    def _new_version(
        self, kt: KeyType, number: int, new: tuple[bytes, LoadedKey], imported: bool
    ) -> VersionRecord:
        material, loaded = new
        return VersionRecord(
            number, material, self._now(), keytypes.public_key_pem(kt, loaded), imported
        )

    # ----------------------------------------------------------------- lifecycle

    def create_key(
        self, name: str, type: str = keytypes.DEFAULT_KEY_TYPE, *, exportable: bool = False
    ) -> KeyMetadata:
        """Create key `name` with fresh material (version 1). ConflictError if it exists."""
        validate_key_name(name)
        need_flag(exportable, "exportable")
        kt = keytypes.key_type(type)
        return self._create(name, kt, keytypes.generate_key(kt), exportable, imported=False)

    def _create(
        self,
        name: str,
        kt: KeyType,
        new: tuple[bytes, LoadedKey],
        exportable: bool,
        *,
        imported: bool,
    ) -> KeyMetadata:
        now = self._now()
        key = KeyRecord(
            uid=os.urandom(16),
            name=name,
            type=kt,
            created=now,
            versions=(self._new_version(kt, 1, new, imported),),
            min_decryption_version=1,
            enabled=True,
            exportable=exportable,
            deletion_scheduled_at=None,
        )
        if self._get(name) is not None:  # also purges a key whose deletion is due
            raise ConflictError(f"key {name!r} already exists")
        try:
            self._store.put("key", name, 0, key.to_value())
        except ConflictError:
            raise ConflictError(f"key {name!r} already exists") from None
        self._cache.put(key.uid, 1, new[1])
        return key.metadata()

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
        for name in all_ids(self._store.list_ids, "key", after=after, page=MAX_LIST_LIMIT):
            if visible is not None and not visible(name):
                continue
            try:
                found = self._get(name)
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
        for name in all_ids(self._store.list_ids, "key", page=MAX_LIST_LIMIT):
            try:
                purged += self._get(name) is None
            except IntegrityError:
                continue
        return purged

    def read_key(self, name: str) -> KeyMetadata:
        """Metadata and public keys of `name`; never private material."""
        return self._load(name)[1].metadata()

    def rotate_key(self, name: str) -> KeyMetadata:
        """Add a version with fresh material; new operations use it, old versions still
        decrypt/verify (down to min_decryption_version)."""
        key = self._load(name)[1]
        self._not_scheduled(key)
        return self._add_version(name, key.type, keytypes.generate_key(key.type), imported=False)

    def _add_version(
        self, name: str, kt: KeyType, new: tuple[bytes, LoadedKey], *, imported: bool
    ) -> KeyMetadata:
        """Append `new` as the next version; the material is made once, outside the CAS loop."""

        def change(key: KeyRecord) -> KeyRecord:
            self._not_scheduled(key)
            if key.type != kt:
                raise ConflictError(f"key {name!r} was replaced concurrently; retry")
            if key.latest.version >= MAX_VERSIONS:
                raise KeyStateError(f"key {name!r} has reached {MAX_VERSIONS} versions")
            version = self._new_version(kt, key.latest.version + 1, new, imported)
            return replace(key, versions=(*key.versions, version))

        key = self._update(name, change)
        self._cache.put(key.uid, key.latest.version, new[1])
        return key.metadata()

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
            self._not_scheduled(key)
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

        key = self._update(name, change)
        self._cache.evict(key.uid, below=key.min_decryption_version)
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
            return replace(key, deletion_scheduled_at=self._now() + wait)

        key = self._update(name, change)
        self._cache.evict(key.uid)
        return key.metadata()

    def cancel_deletion(self, name: str) -> KeyMetadata:
        """Undo `schedule_deletion` before its time; the key works again as before."""

        def change(key: KeyRecord) -> KeyRecord:
            if key.deletion_scheduled_at is None:
                raise ConflictError(f"key {name!r} is not scheduled for deletion")
            return replace(key, deletion_scheduled_at=None)

        return self._update(name, change).metadata()

    # ----------------------------------------------------------------- BYOK and export

    def _wrapping_private(self) -> rsa.RSAPrivateKey:
        """The RSA-4096 wrapping key: generated once, sealed as config/wrapping-key."""
        with self._wrapping_lock:
            if self._wrapping is not None:
                return self._wrapping
            fresh: rsa.RSAPrivateKey | None = None

            def attempt() -> rsa.RSAPrivateKey:
                nonlocal fresh
                found = self._store.get("config", "wrapping-key")
                if found is not None:
                    try:
                        key = serialization.load_der_private_key(
                            found.value["private_key"], password=None
                        )
                    except (KeyError, TypeError, ValueError, UnsupportedAlgorithm):
                        key = None
                    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != WRAPPING_KEY_BITS:
                        raise IntegrityError("the wrapping key record is not an RSA-4096 key")
                    return key
                fresh = fresh or rsa.generate_private_key(65537, WRAPPING_KEY_BITS)
                der = fresh.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                value = {"private_key": der, "created": self._now().isoformat()}
                self._store.put("config", "wrapping-key", 0, value)  # lost: use theirs
                return fresh

            self._wrapping = retry_on_conflict(attempt, "the wrapping key")
            return self._wrapping

    def wrapping_key(self) -> WrappingKey:
        """The public BYOK wrapping key (RSA-4096, SubjectPublicKeyInfo PEM)."""
        pem = (
            self._wrapping_private()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return WrappingKey(pem.decode("ascii"))

    def _unwrap(self, wrapped: object) -> bytes:
        wrapped = need_bytes(wrapped, "wrapped key material")
        priv = self._wrapping_private()
        size = priv.key_size // 8
        if len(wrapped) < size:
            raise InvalidRequestError(f"wrapped key material is shorter than {size} bytes")
        try:
            head = priv.decrypt(wrapped[:size], _OAEP)
        except ValueError:
            raise CryptoOperationError(
                "wrapped key material does not decrypt under the wrapping key"
            ) from None
        if len(wrapped) == size:
            return head
        if len(head) != 32:
            raise CryptoOperationError("the RSA-OAEP part must carry a 32-byte AES key")
        try:
            return aes_key_unwrap_with_padding(head, wrapped[size:])
        except (InvalidUnwrap, ValueError):
            raise CryptoOperationError("AES-KWP unwrap of the key material failed") from None

    def import_key(
        self, name: str, type: str, wrapped_material: bytes, *, exportable: bool = False
    ) -> KeyMetadata:
        """BYOK: create `name` from client material wrapped to `wrapping_key()`.

        `wrapped_material` is either RSA-OAEP(SHA-256, MGF1-SHA-256, no label) of the
        material (exactly 512 bytes; material up to 446 bytes), or, for any size (RSA
        private keys), CKM_RSA_AES_KEY_WRAP: RSA-OAEP(same parameters) of a fresh 32-byte
        AES key (512 bytes) followed by AES-KWP (RFC 5649) of the material under that key.
        Material: 32 raw bytes (aes256-gcm), 32..64 raw bytes (hmac-sha256), DER private
        key (PKCS#8, or PKCS#1/SEC1) for asymmetric types; it must match `type` exactly.
        """
        validate_key_name(name)
        need_flag(exportable, "exportable")
        kt = keytypes.key_type(type)
        new = keytypes.validate_import(kt, self._unwrap(wrapped_material))
        return self._create(name, kt, new, exportable, imported=True)

    def import_key_version(self, name: str, wrapped_material: bytes) -> KeyMetadata:
        """BYOK rotation: add a version to `name` from wrapped material (as `import_key`)."""
        key = self._load(name)[1]
        if not min(key.versions, key=lambda v: v.version).imported:
            # Material the caller chose must never join a key others trust as generated
            # inside the enclave: whoever imported it could decrypt what they encrypt.
            raise KeyStateError(
                f"key {name!r} was generated in the enclave; material is imported only into "
                "keys created by import"
            )
        self._not_scheduled(key)
        new = keytypes.validate_import(key.type, self._unwrap(wrapped_material))
        return self._add_version(name, key.type, new, imported=True)

    def export_key(self, name: str, *, version: int | None = None) -> ExportedKey:
        """Material of one version (default latest), only for keys created exportable."""
        key = self._load(name)[1]
        if not key.exportable:
            raise KeyStateError(f"key {name!r} is not exportable")
        self._check_usable(key)
        number = key.latest.version if version is None else version
        if (
            not isinstance(number, int)
            or isinstance(number, bool)
            or not (1 <= number <= key.latest.version)
        ):
            raise InvalidRequestError(f"key {name!r} has no version {number!r}")
        return ExportedKey(name, key.type.name, number, key.versions[number - 1].material)

    # ----------------------------------------------------------------- encryption

    def _encrypt_with(self, key: KeyRecord, plaintext: object, associated_data: object) -> str:
        data = need_bytes(plaintext, "plaintext")
        aad = need_aad(associated_data)
        version = key.latest
        aead = self._loaded(key, version)
        assert isinstance(aead, AESGCM)
        nonce = os.urandom(_NONCE)
        sealed = aead.encrypt(nonce, data, gcm_aad(key.name, version.version, aad))
        return format_tagged(version.version, nonce + sealed)

    def _decrypt_with(self, key: KeyRecord, ciphertext: object, associated_data: object) -> bytes:
        number, raw = parse_tagged(ciphertext, "ciphertext")
        aad = need_aad(associated_data)
        if len(raw) < _NONCE + _TAG:
            raise InvalidRequestError("ciphertext is too short")
        version = self._version_for_use(key, number)
        aead = self._loaded(key, version)
        assert isinstance(aead, AESGCM)
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], gcm_aad(key.name, number, aad))
        except InvalidTag:
            raise CryptoOperationError(
                f"ciphertext does not authenticate under key {key.name!r} version {number} "
                "(altered, from another key, or other associated data)"
            ) from None

    def encrypt(self, name: str, plaintext: bytes, *, associated_data: bytes | None = None) -> str:
        """AES-256-GCM under the latest version; a fresh random 96-bit nonce every call."""
        return self._encrypt_with(self._usable(name, "encrypt"), plaintext, associated_data)

    def decrypt(self, name: str, ciphertext: str, *, associated_data: bytes | None = None) -> bytes:
        """The plaintext, only if the ciphertext authenticates under this key, the version
        it names (>= min_decryption_version) and the same associated data."""
        return self._decrypt_with(self._usable(name, "decrypt"), ciphertext, associated_data)

    def rewrap(self, name: str, ciphertext: str, *, associated_data: bytes | None = None) -> str:
        """Re-encrypt under the latest version without the plaintext leaving the enclave."""
        key = self._usable(name, "rewrap")
        plaintext = self._decrypt_with(key, ciphertext, associated_data)
        return self._encrypt_with(key, plaintext, associated_data)

    def generate_data_key(
        self, name: str, *, include_plaintext: bool = True, associated_data: bytes | None = None
    ) -> DataKey:
        """A fresh 256-bit data key encrypted under `name` (a normal ciphertext: `decrypt`
        returns the data key), with the plaintext too unless `include_plaintext` is False."""
        need_flag(include_plaintext, "include_plaintext")
        key = self._usable(name, "datakey")
        data_key = os.urandom(DATA_KEY_BYTES)
        wrapped = self._encrypt_with(key, data_key, associated_data)
        return DataKey(wrapped, data_key if include_plaintext else None)

    def encrypt_batch(self, name: str, items: Sequence[EncryptItem]) -> list[BatchResult]:
        """Encrypt each item; a bad item gets an error entry, the others still succeed.
        Key-level failures (not found, disabled, ...) raise for the whole batch."""
        key = self._usable(name, "encrypt")
        return self._batch(
            items, EncryptItem, lambda i: self._encrypt_with(key, i.plaintext, i.associated_data)
        )

    def decrypt_batch(self, name: str, items: Sequence[DecryptItem]) -> list[BatchResult]:
        """Decrypt each item, with per-item errors as `encrypt_batch`."""
        key = self._usable(name, "decrypt")
        return self._batch(
            items, DecryptItem, lambda i: self._decrypt_with(key, i.ciphertext, i.associated_data)
        )

    @staticmethod
    def _batch(
        items: Sequence[T], kind: type[T], run: Callable[[T], str | bytes]
    ) -> list[BatchResult]:
        if not isinstance(items, Sequence) or isinstance(items, str | bytes):
            raise InvalidRequestError("batch items must be a list")
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise InvalidRequestError(f"a batch holds 1..{MAX_BATCH_ITEMS} items")
        results: list[BatchResult] = []
        for item in items:
            try:
                if not isinstance(item, kind):
                    raise InvalidRequestError(f"batch item must be a {kind.__name__}")
                results.append(BatchResult(value=run(item)))
            except KMSError as exc:
                results.append(BatchResult(error=BatchItemError(exc.code, exc.message)))
        return results

    # ----------------------------------------------------------------- signatures and MACs

    def sign(
        self,
        name: str,
        data: bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> str:
        """Sign `data` (the message, or its digest if `prehashed`) with the latest version.

        RSA: "pss" (default; salt = digest length) or "pkcs1v15", sha256 (default)/384/512.
        ECDSA: DER, sha256 for P-256 and sha384 for P-384 by default. Ed25519: message only.
        """
        key = self._usable(name, "sign")
        scheme = keytypes.signature_scheme(
            key.type,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=need_flag(prehashed, "prehashed"),
        )
        version = key.latest
        private = self._loaded(key, version)
        assert not isinstance(private, AESGCM | bytes)
        return format_tagged(version.version, scheme.sign(private, need_bytes(data, "data")))

    def verify(
        self,
        name: str,
        data: bytes,
        signature: str,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> bool:
        """True iff `signature` (from `sign`, same options) is valid for `data` under the
        version it names. Versions below min_decryption_version raise KeyStateError."""
        key = self._usable(name, "verify")
        scheme = keytypes.signature_scheme(
            key.type,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=need_flag(prehashed, "prehashed"),
        )
        data = need_bytes(data, "data")
        number, raw = parse_tagged(signature, "signature")
        if number > key.latest.version:
            return False
        private = self._loaded(key, self._version_for_use(key, number))
        assert not isinstance(private, AESGCM | bytes)
        return scheme.verify(private.public_key(), data, raw)

    def hmac(self, name: str, data: bytes) -> str:
        """HMAC-SHA256 of `data` under the latest version."""
        key = self._usable(name, "hmac")
        version = key.latest
        secret = self._loaded(key, version)
        assert isinstance(secret, bytes)
        mac = hmac_mod.new(secret, need_bytes(data, "data"), hashlib.sha256).digest()
        return format_tagged(version.version, mac)

    def verify_hmac(self, name: str, data: bytes, mac: str) -> bool:
        """True iff `mac` is the HMAC of `data` under the version it names (constant-time)."""
        key = self._usable(name, "hmac")
        data = need_bytes(data, "data")
        number, raw = parse_tagged(mac, "mac")
        if number > key.latest.version:
            return False
        secret = self._loaded(key, self._version_for_use(key, number))
        assert isinstance(secret, bytes)
        expected = hmac_mod.new(secret, data, hashlib.sha256).digest()
        return hmac_mod.compare_digest(expected, raw)

    # ----------------------------------------------------------------- keyless operations

    @staticmethod
    def random_bytes(length: int) -> bytes:
        """`length` (1..1024) bytes from the OS CSPRNG."""
        if (
            not isinstance(length, int)
            or isinstance(length, bool)
            or not (1 <= length <= MAX_RANDOM_BYTES)
        ):
            raise InvalidRequestError(f"random length must be 1..{MAX_RANDOM_BYTES} bytes")
        return os.urandom(length)

    @staticmethod
    def generate_aes_key() -> str:
        """The tutorial's `/generate-aes-key`: a fresh AES-256 key, base64, never stored."""
        return base64.b64encode(os.urandom(32)).decode("ascii")

    @staticmethod
    def generate_rsa_key_pair() -> RsaKeyPair:
        """The tutorial's `/generate-rsa-key-pair`: a fresh RSA-2048 pair as PEM, never stored."""
        private: PrivateKey = rsa.generate_private_key(65537, 2048)
        return RsaKeyPair(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode("ascii"),
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii"),
        )
