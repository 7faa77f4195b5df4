"""Typed results of the client SDK: frozen, plain Python values, secrets hidden from repr.

Binary values are `bytes` (decoded from the API's base64). Ciphertexts, signatures and MACs
stay the service's ``ekms:v<N>:<base64>`` strings, because the version tag is part of them.
Fields that hold a secret (bearer tokens, data-key plaintexts, exported material, private
keys) are `repr=False`, so printing or logging a result never prints a secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KEY_TYPES = (
    "aes256-gcm",
    "hmac-sha256",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
    "ec-p256",
    "ec-p384",
    "ed25519",
)
OPERATIONS = (
    "audit.read",
    "datakey",
    "decrypt",
    "encrypt",
    "hmac",
    "keys.delete",
    "keys.export",
    "keys.import",
    "keys.read",
    "keys.write",
    "random",
    "rewrap",
    "sign",
    "sys",
    "tokens.manage",
    "verify",
)


@dataclass(frozen=True)
class KeyVersion:
    version: int
    created: datetime
    public_key_pem: str | None
    imported: bool


@dataclass(frozen=True)
class KeyInfo:
    """Metadata of a key (never its material)."""

    name: str
    type: str
    created: datetime
    latest_version: int
    min_decryption_version: int
    enabled: bool
    exportable: bool
    deletion_scheduled_at: datetime | None
    operations: tuple[str, ...]
    public_key_pem: str | None
    versions: tuple[KeyVersion, ...]


@dataclass(frozen=True)
class KeyPage:
    keys: tuple[KeyInfo, ...]
    next_after: str | None
    unreadable: tuple[str, ...]  # keys whose stored records failed authentication


@dataclass(frozen=True)
class ExportedKey:
    name: str
    type: str
    version: int
    material: bytes = field(repr=False)  # raw bytes or PKCS#8 DER


@dataclass(frozen=True)
class DataKey:
    """A fresh 256-bit data key: `ciphertext` to store, `plaintext` to use and forget."""

    ciphertext: str
    plaintext: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RsaKeyPair:
    """The tutorial's `/generate-rsa-key-pair` answer (never stored by the service)."""

    public_key_pem: str
    private_key_pem: str = field(repr=False)


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch: the data and its optional associated data."""

    data: bytes | str = field(repr=False)
    associated_data: bytes | None = None


@dataclass(frozen=True)
class TokenPolicy:
    """Which keys (glob patterns) a token may use, for which operations."""

    operations: tuple[str, ...]
    keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"keys": list(self.keys), "operations": list(self.operations)}

    @classmethod
    def coerce(cls, value: TokenPolicy | Mapping[str, Sequence[str]]) -> TokenPolicy:
        if isinstance(value, TokenPolicy):
            return value
        return cls(
            operations=tuple(value.get("operations", ())),
            keys=tuple(value.get("keys", ())),
        )


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    policies: tuple[TokenPolicy, ...]
    created: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class IssuedToken:
    """A new bearer token: shown once by the server, stored there only hashed."""

    info: TokenInfo
    token: str = field(repr=False)


@dataclass(frozen=True)
class TokenPage:
    tokens: tuple[TokenInfo, ...]
    next_after: str | None


@dataclass(frozen=True)
class AuditHead:
    chain: int  # the audit chain of the worker that answered
    records: int
    head_seq: int
    head_hash: str
    public_key_sha256: str


@dataclass(frozen=True)
class ReplicaPolicy:
    """Which enclave builds may join the installation and hold its storage root key
    (`mr_enclave` empty: any build of the signer and product at or above `min_isv_svn`)."""

    mr_signer: str
    isv_prod_id: int
    min_isv_svn: int
    mr_enclave: tuple[str, ...]
    accepted_tcb_statuses: tuple[str, ...] = ("UpToDate",)


@dataclass(frozen=True)
class Health:
    status: str
    initialized: bool
    identity: Mapping[str, Any]
    worker: int = 0
