"""Key material across the enclave boundary: BYOK import under the wrapping key, and export.

The wrapping key is RSA-4096, generated once inside the enclave and sealed as the record
config/wrapping-key; only its public half is published. `exportable` is fixed when a key is
created or imported and never changes afterwards (a key born non-exportable can never leave
the enclave; once exportable, its material may be outside already, so clearing the flag would
only pretend). Material the caller chose joins only keys created by import.
"""

from __future__ import annotations

import threading

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keyring import KeyRing, check_usable, not_scheduled
from enclave_kms.enclave.keys.types import (
    ExportedKey,
    KeyMetadata,
    WrappingKey,
    need_bytes,
    need_flag,
    validate_key_name,
)
from enclave_kms.enclave.state.store import retry_on_conflict
from enclave_kms.errors import (
    CryptoOperationError,
    IntegrityError,
    InvalidRequestError,
    KeyStateError,
)

WRAPPING_KEY_BITS = 4096
_WRAPPING_ID = ("config", "wrapping-key")
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class KeyWrapping:
    """BYOK (`wrapping_key`, `import_key`, `import_key_version`) and `export_key`."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._wrapping: rsa.RSAPrivateKey | None = None
        self._wrapping_lock = threading.Lock()

    def _wrapping_private(self) -> rsa.RSAPrivateKey:
        """The RSA-4096 wrapping key: generated once, sealed as config/wrapping-key."""
        with self._wrapping_lock:
            if self._wrapping is not None:
                return self._wrapping
            store = self._ring.store
            fresh: rsa.RSAPrivateKey | None = None

            def attempt() -> rsa.RSAPrivateKey:
                nonlocal fresh
                found = store.get(*_WRAPPING_ID)
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
                value = {"private_key": der, "created": self._ring.now().isoformat()}
                store.put(*_WRAPPING_ID, 0, value)  # lost: use theirs
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
        return self._ring.create(name, kt, new, exportable, imported=True)

    def import_key_version(self, name: str, wrapped_material: bytes) -> KeyMetadata:
        """BYOK rotation: add a version to `name` from wrapped material (as `import_key`)."""
        key = self._ring.load(name)
        if not min(key.versions, key=lambda v: v.version).imported:
            # Material the caller chose must never join a key others trust as generated
            # inside the enclave: whoever imported it could decrypt what they encrypt.
            raise KeyStateError(
                f"key {name!r} was generated in the enclave; material is imported only into "
                "keys created by import"
            )
        not_scheduled(key)
        new = keytypes.validate_import(key.type, self._unwrap(wrapped_material))
        return self._ring.add_version(name, key.type, new, imported=True)

    def export_key(self, name: str, *, version: int | None = None) -> ExportedKey:
        """Material of one version (default latest), only for keys created exportable."""
        key = self._ring.load(name)
        if not key.exportable:
            raise KeyStateError(f"key {name!r} is not exportable")
        check_usable(key)
        number = key.latest.version if version is None else version
        if (
            not isinstance(number, int)
            or isinstance(number, bool)
            or not (1 <= number <= key.latest.version)
        ):
            raise InvalidRequestError(f"key {name!r} has no version {number!r}")
        return ExportedKey(name, key.type.name, number, key.versions[number - 1].material)
