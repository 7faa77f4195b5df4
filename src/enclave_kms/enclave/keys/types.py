"""Plain types of the KMS service and the shape of its sealed key record.

Split from `kms.py` at the seam between data and behaviour: these are what the HTTP layer
maps to JSON (public dataclasses, the ``ekms:v<N>:<base64>`` strings) and what a key record
looks like inside its seal (`KeyRecord`), plus the cache of loaded key objects.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cbor2

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keytypes import KeyType, LoadedKey
from enclave_kms.errors import IntegrityError, InvalidRequestError
from enclave_kms.wire import DataKey, ExportedKey, KeyPage, ReleasePolicy
from enclave_kms.wire import KeyInfo as KeyMetadata
from enclave_kms.wire import KeyVersion as KeyVersionInfo

__all__ = ["DataKey", "ExportedKey", "KeyMetadata", "KeyPage", "KeyVersionInfo"]
"""What the key service returns is the wire contract's answer shapes themselves: one class
per thing, from the service to the SDK."""

KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RECORD_FORMAT = 1
_TAGGED = re.compile(r"ekms:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]*={0,2})")

# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class ReleasePolicySpec(ReleasePolicy):
    """A key's release policy as sealed in its record: the wire's `ReleasePolicy` (semantics:
    `keys/release.py`, tightening: attestation/policy_order.py) and its record value."""

    def to_value(self) -> dict[str, Any]:
        return {
            "policy_toml": self.policy_toml,
            "immutable": self.immutable,
            "revision": self.revision,
            "updated": self.updated.isoformat(),
        }

    @classmethod
    def from_value(cls, value: Any) -> ReleasePolicySpec:
        if not isinstance(value["policy_toml"], str):
            raise TypeError("policy_toml")
        return cls(
            value["policy_toml"],
            _bool(value["immutable"]),
            _int(value["revision"]),
            _time(value["updated"]),
        )


@dataclass(frozen=True)
class RsaKeyPair:
    """The tutorial's `/generate-rsa-key-pair`: PKCS#8 and SubjectPublicKeyInfo PEM."""

    private_key_pem: str = field(repr=False)
    public_key_pem: str


@dataclass(frozen=True)
class WrappingKey:
    """The published BYOK wrapping key and the schemes `import_key` accepts."""

    public_key_pem: str
    schemes: tuple[str, ...] = ("RSA-OAEP-SHA256", "RSA-OAEP-SHA256+AES-KWP")


@dataclass(frozen=True)
class EncryptItem:
    plaintext: bytes = field(repr=False)
    associated_data: bytes | None = None


@dataclass(frozen=True)
class DecryptItem:
    ciphertext: str
    associated_data: bytes | None = None


@dataclass(frozen=True)
class BatchItemError:
    code: str
    message: str


@dataclass(frozen=True)
class BatchResult:
    """One batch item: exactly one of `value` (ciphertext str or plaintext bytes) and `error`."""

    value: str | bytes | None = field(default=None, repr=False)
    error: BatchItemError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------- the sealed record


@dataclass(frozen=True)
class VersionRecord:
    version: int
    material: bytes = field(repr=False)
    created: datetime
    public_key_pem: str | None
    imported: bool


@dataclass(frozen=True)
class KeyRecord:
    uid: bytes  # random per key life: a re-created name never hits a stale cache entry
    name: str
    type: KeyType
    created: datetime
    versions: tuple[VersionRecord, ...]
    min_decryption_version: int
    enabled: bool
    exportable: bool
    deletion_scheduled_at: datetime | None
    release_policy: ReleasePolicySpec | None = None  # absent: nothing is ever released

    @property
    def latest(self) -> VersionRecord:
        return self.versions[-1]

    def to_value(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "uid": self.uid,
            "name": self.name,
            "type": self.type.name,
            "created": self.created.isoformat(),
            "versions": [
                {
                    "version": v.version,
                    "material": v.material,
                    "created": v.created.isoformat(),
                    "public_key_pem": v.public_key_pem,
                    "imported": v.imported,
                }
                for v in self.versions
            ],
            "min_decryption_version": self.min_decryption_version,
            "enabled": self.enabled,
            "exportable": self.exportable,
            "deletion_scheduled_at": (
                None
                if self.deletion_scheduled_at is None
                else self.deletion_scheduled_at.isoformat()
            ),
            **(
                {}
                if self.release_policy is None
                else {"release_policy": self.release_policy.to_value()}
            ),
        }

    @classmethod
    def from_value(cls, name: str, value: Any) -> KeyRecord:
        """Rebuild from an authenticated record; a shape this code never wrote is IntegrityError."""
        try:
            if value["format"] != RECORD_FORMAT or value["name"] != name:
                raise ValueError("format or name")
            versions = tuple(
                VersionRecord(
                    _int(v["version"]),
                    _bytes(v["material"]),
                    _time(v["created"]),
                    _opt_str(v["public_key_pem"]),
                    _bool(v["imported"]),
                )
                for v in value["versions"]
            )
            if not versions or [v.version for v in versions] != list(range(1, len(versions) + 1)):
                raise ValueError("versions")
            scheduled = value["deletion_scheduled_at"]
            key = cls(
                uid=_bytes(value["uid"]),
                name=name,
                type=keytypes.KEY_TYPES[value["type"]],
                created=_time(value["created"]),
                versions=versions,
                min_decryption_version=_int(value["min_decryption_version"]),
                enabled=_bool(value["enabled"]),
                exportable=_bool(value["exportable"]),
                deletion_scheduled_at=None if scheduled is None else _time(scheduled),
                release_policy=(
                    None
                    if value.get("release_policy") is None
                    else ReleasePolicySpec.from_value(value["release_policy"])
                ),
            )
            if not 1 <= key.min_decryption_version <= key.latest.version:
                raise ValueError("min_decryption_version")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IntegrityError(f"key record {name!r} does not have the expected shape") from None
        return key

    def metadata(self) -> KeyMetadata:
        return KeyMetadata(
            name=self.name,
            type=self.type.name,
            created=self.created,
            latest_version=self.latest.version,
            min_decryption_version=self.min_decryption_version,
            enabled=self.enabled,
            exportable=self.exportable,
            deletion_scheduled_at=self.deletion_scheduled_at,
            operations=tuple(sorted(self.type.operations)),
            public_key_pem=self.latest.public_key_pem,
            versions=tuple(
                KeyVersionInfo(v.version, v.created, v.public_key_pem, v.imported)
                for v in self.versions
            ),
            release_policy=self.release_policy,
        )


def _int(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise TypeError("int")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError("bool")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise TypeError("bytes")
    return v


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError("str")
    return v


def _time(v: Any) -> datetime:
    t = datetime.fromisoformat(v)
    if t.tzinfo is None:
        raise ValueError("naive time")
    return t


# --------------------------------------------------------------------------- helpers


def validate_key_name(name: object) -> str:
    """The name if it matches `KEY_NAME_PATTERN` in full; InvalidRequestError otherwise."""
    if not isinstance(name, str) or KEY_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidRequestError(
            "key name must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return name


def need_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidRequestError(f"{what} must be bytes")
    return value


def need_aad(value: object) -> bytes:
    return b"" if value is None else need_bytes(value, "associated data")


def need_flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{what} must be a boolean")
    return value


def format_tagged(version: int, data: bytes) -> str:
    """``ekms:v<N>:<base64>``: the shape of every ciphertext, signature and MAC."""
    return f"ekms:v{version}:{base64.b64encode(data).decode('ascii')}"


def parse_tagged(value: object, what: str) -> tuple[int, bytes]:
    """(version, bytes) of an ``ekms:v<N>:<base64>`` string; InvalidRequestError if malformed."""
    match = _TAGGED.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequestError(f"{what} is not of the form ekms:v<N>:<base64>")
    try:
        data = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise InvalidRequestError(f"{what} has invalid base64") from None
    # One string per value: refuse encodings whose unused padding bits are set, so a
    # ciphertext, signature or MAC has exactly one accepted spelling.
    if base64.b64encode(data).decode("ascii") != match.group(2):
        raise InvalidRequestError(f"{what} has non-canonical base64")
    return int(match.group(1)), data


def gcm_aad(name: str, version: int, associated_data: bytes) -> bytes:
    return cbor2.dumps(["enclave-kms/encrypt/v1", name, version, associated_data], canonical=True)


class KeyCache:
    """Bounded LRU of loaded key objects, keyed by (key uid, version).

    Material of a (uid, version) never changes, so an entry can only be stale by being
    unused; eviction on delete/config just frees memory early.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[bytes, int], LoadedKey] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: KeyRecord, version: VersionRecord) -> LoadedKey:
        slot = (key.uid, version.version)
        with self._lock:
            found = self._entries.get(slot)
            if found is not None:
                self._entries.move_to_end(slot)
                return found
        loaded = keytypes.load_key(key.type, version.material)  # slow for RSA: outside the lock
        self.put(key.uid, version.version, loaded)
        return loaded

    def put(self, uid: bytes, version: int, loaded: LoadedKey) -> None:
        with self._lock:
            self._entries[(uid, version)] = loaded
            self._entries.move_to_end((uid, version))
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def evict(self, uid: bytes, below: int | None = None) -> None:
        """Drop every version of `uid`, or only versions below `below`."""
        with self._lock:
            for slot in [s for s in self._entries if s[0] == uid]:
                if below is None or slot[1] < below:
                    del self._entries[slot]

    def __len__(self) -> int:
        return len(self._entries)
