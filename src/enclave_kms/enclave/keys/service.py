"""The KMS service: named, versioned keys and the operations on them (DESIGN §10, §11).

Pure Python over `RecordStore`: no HTTP, no processes, time from an injected clock. Every
method takes and returns plain types (bytes, str, dataclasses) so the HTTP layer maps them one
to one, and fails only with the typed errors of `enclave_kms.errors`.

`KMSService` is the one public face; the work is done by three parts over one `KeyRing` (the
sealed key records, keyring.py), split where the concerns are:
- lifecycle.py: create, list, read, rotate, configure, schedule/cancel deletion, purge;
- wrapping.py: BYOK import under the enclave's wrapping key, and export;
- crypto.py: encrypt, decrypt, rewrap, data keys, batches, sign/verify, HMAC, randomness,
  and the ciphertext/signature formats clients rely on.

State. One sealed record (kind "key", id = key name) holds a key's metadata and the material
of every version. Read-modify-write operations use the record's compare-and-set version and
retry on ConflictError, so concurrent workers (threads, or replicas on one database) never
lose an update. The record is re-read on every operation: a key disabled or scheduled for
deletion by another worker stops working at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from enclave_kms.enclave.keys import crypto, keytypes
from enclave_kms.enclave.keys.crypto import (
    DATA_KEY_BYTES,
    MAX_BATCH_ITEMS,
    MAX_RANDOM_BYTES,
    KeyCrypto,
)
from enclave_kms.enclave.keys.keyring import MAX_VERSIONS, Clock, KeyRing
from enclave_kms.enclave.keys.lifecycle import (
    DEFAULT_DELETION_WAIT,
    MAX_DELETION_WAIT,
    MAX_LIST_LIMIT,
    MIN_DELETION_WAIT,
    KeyLifecycle,
)
from enclave_kms.enclave.keys.types import (
    BatchItemError,
    BatchResult,
    DataKey,
    DecryptItem,
    EncryptItem,
    ExportedKey,
    KeyMetadata,
    KeyPage,
    KeyVersionInfo,
    RsaKeyPair,
    WrappingKey,
)
from enclave_kms.enclave.keys.wrapping import WRAPPING_KEY_BITS, KeyWrapping
from enclave_kms.enclave.state.store import RecordStore

__all__ = [
    "DATA_KEY_BYTES",
    "DEFAULT_DELETION_WAIT",
    "MAX_BATCH_ITEMS",
    "MAX_DELETION_WAIT",
    "MAX_LIST_LIMIT",
    "MAX_RANDOM_BYTES",
    "MAX_VERSIONS",
    "MIN_DELETION_WAIT",
    "WRAPPING_KEY_BITS",
    "BatchItemError",
    "BatchResult",
    "Clock",
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


class KMSService:
    """Key lifecycle and cryptographic operations over sealed records.

    Each method is the one of the same name on its part (documented there); the parts share
    only the `KeyRing`, never each other's state.
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
        ring = KeyRing(store, clock, cache_size)
        self._lifecycle = KeyLifecycle(ring, min_deletion_wait=min_deletion_wait)
        self._wrapping = KeyWrapping(ring)
        self._crypto = KeyCrypto(ring)

    # ----------------------------------------------------------------- lifecycle.py

    def create_key(
        self, name: str, type: str = keytypes.DEFAULT_KEY_TYPE, *, exportable: bool = False
    ) -> KeyMetadata:
        return self._lifecycle.create_key(name, type, exportable=exportable)

    def list_keys(
        self,
        *,
        after: str = "",
        limit: int = 100,
        visible: Callable[[str], bool] | None = None,
    ) -> KeyPage:
        return self._lifecycle.list_keys(after=after, limit=limit, visible=visible)

    def purge_due_keys(self) -> int:
        return self._lifecycle.purge_due_keys()

    def read_key(self, name: str) -> KeyMetadata:
        return self._lifecycle.read_key(name)

    def rotate_key(self, name: str) -> KeyMetadata:
        return self._lifecycle.rotate_key(name)

    def configure_key(
        self,
        name: str,
        *,
        min_decryption_version: int | None = None,
        enabled: bool | None = None,
    ) -> KeyMetadata:
        return self._lifecycle.configure_key(
            name, min_decryption_version=min_decryption_version, enabled=enabled
        )

    def schedule_deletion(
        self, name: str, *, waiting_period: timedelta | None = None
    ) -> KeyMetadata:
        return self._lifecycle.schedule_deletion(name, waiting_period=waiting_period)

    def cancel_deletion(self, name: str) -> KeyMetadata:
        return self._lifecycle.cancel_deletion(name)

    # ----------------------------------------------------------------- wrapping.py

    def wrapping_key(self) -> WrappingKey:
        return self._wrapping.wrapping_key()

    def import_key(
        self, name: str, type: str, wrapped_material: bytes, *, exportable: bool = False
    ) -> KeyMetadata:
        return self._wrapping.import_key(name, type, wrapped_material, exportable=exportable)

    def import_key_version(self, name: str, wrapped_material: bytes) -> KeyMetadata:
        return self._wrapping.import_key_version(name, wrapped_material)

    def export_key(self, name: str, *, version: int | None = None) -> ExportedKey:
        return self._wrapping.export_key(name, version=version)

    # ----------------------------------------------------------------- crypto.py

    def encrypt(self, name: str, plaintext: bytes, *, associated_data: bytes | None = None) -> str:
        return self._crypto.encrypt(name, plaintext, associated_data=associated_data)

    def decrypt(self, name: str, ciphertext: str, *, associated_data: bytes | None = None) -> bytes:
        return self._crypto.decrypt(name, ciphertext, associated_data=associated_data)

    def rewrap(self, name: str, ciphertext: str, *, associated_data: bytes | None = None) -> str:
        return self._crypto.rewrap(name, ciphertext, associated_data=associated_data)

    def generate_data_key(
        self, name: str, *, include_plaintext: bool = True, associated_data: bytes | None = None
    ) -> DataKey:
        return self._crypto.generate_data_key(
            name, include_plaintext=include_plaintext, associated_data=associated_data
        )

    def encrypt_batch(self, name: str, items: Sequence[EncryptItem]) -> list[BatchResult]:
        return self._crypto.encrypt_batch(name, items)

    def decrypt_batch(self, name: str, items: Sequence[DecryptItem]) -> list[BatchResult]:
        return self._crypto.decrypt_batch(name, items)

    def sign(
        self,
        name: str,
        data: bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> str:
        return self._crypto.sign(
            name,
            data,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=prehashed,
        )

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
        return self._crypto.verify(
            name,
            data,
            signature,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=prehashed,
        )

    def hmac(self, name: str, data: bytes) -> str:
        return self._crypto.hmac(name, data)

    def verify_hmac(self, name: str, data: bytes, mac: str) -> bool:
        return self._crypto.verify_hmac(name, data, mac)

    random_bytes = staticmethod(crypto.random_bytes)
    generate_aes_key = staticmethod(crypto.generate_aes_key)
    generate_rsa_key_pair = staticmethod(crypto.generate_rsa_key_pair)
