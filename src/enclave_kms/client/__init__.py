"""enclave-kms client SDK: attested connections to the KMS, typed results and errors.

`KMSClient` (blocking) and `AsyncKMSClient` (asyncio) verify the server's RA-TLS evidence
against a policy before any request, pin the attested key, and raise the same exception
classes (`enclave_kms.errors`) the server uses.
"""

from __future__ import annotations

from enclave_kms.client.aio import AsyncKMSClient
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
