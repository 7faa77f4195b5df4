"""enclave-kms client SDK: attested connections to the KMS, typed results and errors.

`KMSClient` (blocking) and `AsyncKMSClient` (asyncio) verify the server's RA-TLS evidence
against a policy before any request, pin the attested key, and raise the same exception
classes (`enclave_kms.errors`) the server uses.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

# httpx imports its own command line (click, rich, pygments) whenever those are installed,
# as they are next to the enclave-kms CLI: a third of a new process's first answer, for a
# module the SDK never uses. Marked absent, httpx falls back to its stub `httpx.main`.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from enclave_kms.client.attest import AttestationSettings, AttestedServer
from enclave_kms.client.failover import FailoverKMSClient
from enclave_kms.client.sync import KMSClient
from enclave_kms.client.types import (
    AuditHead,
    BatchItem,
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
    "AsyncKMSClient",
    "AttestationSettings",
    "AttestedServer",
    "AuditHead",
    "BatchItem",
    "DataKey",
    "ExportedKey",
    "FailoverKMSClient",
    "Health",
    "IssuedToken",
    "KMSClient",
    "KeyInfo",
    "KeyPage",
    "KeyVersion",
    "ReplicaPolicy",
    "RsaKeyPair",
    "TokenInfo",
    "TokenPage",
    "TokenPolicy",
]


if TYPE_CHECKING:
    from enclave_kms.client.aio import AsyncKMSClient


def __getattr__(name: str) -> Any:
    """`AsyncKMSClient` on first use: asyncio is most of its import cost, and a blocking
    caller never needs it."""
    if name == "AsyncKMSClient":
        from enclave_kms.client.aio import AsyncKMSClient

        return AsyncKMSClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
