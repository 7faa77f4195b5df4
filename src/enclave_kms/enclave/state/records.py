"""Sealed records: how every piece of KMS state leaves the enclave (DESIGN §10).

A record is a CBOR map encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the
storage root key and the record kind. The additional data binds the record's kind, id and
version, so the host can neither read a record, alter it, move it to another id, nor present
version N's bytes as version N+1. (It can still withhold a newer version and serve an older
one as a whole: rollback of a single record is out of reach without a trusted monotonic
counter; see docs/concepts.md.)

Blob layout: b"EKR1" || nonce (12) || ciphertext+tag.
"""

from __future__ import annotations

import os
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_kms.errors import IntegrityError

_MAGIC = b"EKR1"
_NONCE = 12
_KINDS = frozenset({"key", "token", "config", "identity"})


def _aad(kind: str, id: str, version: int) -> bytes:
    return cbor2.dumps(["enclave-kms/record/v1", kind, id, version])


class RecordCipher:
    """Seals and opens records under the storage root key; one AEAD instance per kind."""

    def __init__(self, storage_root_key: bytes) -> None:
        if len(storage_root_key) != 32:
            raise ValueError("storage root key must be 256 bits")
        self._root = storage_root_key
        self._aead = {
            kind: AESGCM(
                HKDF(
                    algorithm=hashes.SHA256(),
                    length=32,
                    salt=None,
                    info=b"enclave-kms/record-key/" + kind.encode(),
                ).derive(storage_root_key)
            )
            for kind in _KINDS
        }

    def for_installation(self, installation: bytes) -> RecordCipher:
        """The cipher of one installation's key and token records (see `RecordStore`):
        keys derived from the storage root key and the installation id drawn at init."""
        if len(installation) != 32:
            raise ValueError("installation id must be 256 bits")
        return RecordCipher(
            HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=installation,
                info=b"enclave-kms/installation-root",
            ).derive(self._root)
        )

    def _for(self, kind: str) -> AESGCM:
        aead = self._aead.get(kind)
        if aead is None:
            raise ValueError(f"unknown record kind {kind!r}")
        return aead

    def seal(self, kind: str, id: str, version: int, value: Any) -> bytes:
        """Encrypt `value` as version `version` of record (kind, id)."""
        nonce = os.urandom(_NONCE)
        body = cbor2.dumps(value, canonical=True)
        return _MAGIC + nonce + self._for(kind).encrypt(nonce, body, _aad(kind, id, version))

    def open(self, kind: str, id: str, version: int, blob: bytes) -> Any:
        """Decrypt and authenticate; any mismatch is an IntegrityError naming the record."""
        where = f"record {kind}/{id} (version {version})"
        if len(blob) < len(_MAGIC) + _NONCE + 16 or not blob.startswith(_MAGIC):
            raise IntegrityError(f"{where} is not a sealed record")
        nonce = blob[len(_MAGIC) : len(_MAGIC) + _NONCE]
        try:
            body = self._for(kind).decrypt(
                nonce, blob[len(_MAGIC) + _NONCE :], _aad(kind, id, version)
            )
        except InvalidTag:
            raise IntegrityError(
                f"{where} failed authentication: altered, swapped or replayed by the host"
            ) from None
        try:
            return cbor2.loads(body)
        except Exception:  # noqa: BLE001 - authenticated but undecodable: treat as corruption
            raise IntegrityError(f"{where} does not decode") from None
