"""Typed results of the client SDK: the wire contract's own classes (`enclave_kms.wire`).

The server answers with these very dataclasses and the SDK decodes into them, so the two
cannot drift. Frozen, plain Python values; binary values are `bytes` (the API's base64,
decoded). Ciphertexts, signatures and MACs stay the service's ``ekms:v<N>:<base64>``
strings, because the version tag is part of them. Fields that hold a secret (bearer tokens,
data-key plaintexts, exported material, private keys) are `repr=False`, so printing or
logging a result never prints a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from enclave_kms.wire import (
    KEY_TYPES,
    OPERATIONS,
    AuditHead,
    DataKey,
    ExportedKey,
    Health,
    IssuedToken,
    KeyInfo,
    KeyPage,
    KeyVersion,
    ReplicaPolicy,
    RsaKeyPair,
    TokenInfo,
    TokenPage,
    TokenPolicy,
)

__all__ = [
    "KEY_TYPES",
    "OPERATIONS",
    "AuditHead",
    "BatchItem",
    "DataKey",
    "ExportedKey",
    "Health",
    "IssuedToken",
    "KeyInfo",
    "KeyPage",
    "KeyVersion",
    "ReplicaPolicy",
    "RsaKeyPair",
    "TokenInfo",
    "TokenPage",
    "TokenPolicy",
]


@dataclass(frozen=True)
class BatchItem:
    """One input of a batch: the data and its optional associated data."""

    data: bytes | str = field(repr=False)
    associated_data: bytes | None = None
