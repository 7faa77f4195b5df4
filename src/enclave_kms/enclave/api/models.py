"""Request and response bodies of the HTTP API (Pydantic, strict, unknown fields refused).

Binary values travel as standard base64 (RFC 4648 §4, with padding). Decoding is strict and
canonical: characters outside the alphabet, missing padding, or non-zero unused bits are
refused, so every byte string has exactly one accepted spelling. Ciphertexts, signatures and
MACs are the service's ``ekms:v<N>:<base64>`` strings, parsed (equally strictly) by the
service itself.

Models are strict: a number is not a string, 1 is not true. Limits that the service enforces
are repeated here so the OpenAPI document states them.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from enclave_kms.enclave.keys.service import MAX_BATCH_ITEMS, MAX_RANDOM_BYTES
from enclave_kms.enclave.keys.types import KEY_NAME_PATTERN

KEY_NAME_REGEX = f"^{KEY_NAME_PATTERN.pattern}$"
TOKEN_ID_REGEX = "^[0-9a-f]{16}$"  # noqa: S105 - a pattern, not a credential

KeyTypeName = Literal[
    "aes256-gcm",
    "hmac-sha256",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
    "ec-p256",
    "ec-p384",
    "ed25519",
]
OperationName = Literal[
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
    "release",
    "rewrap",
    "sign",
    "sys",
    "tokens.manage",
    "verify",
]
HashName = Literal["sha256", "sha384", "sha512"]
SignatureAlgorithm = Literal["pss", "pkcs1v15", "ecdsa", "ed25519"]


def _decode_b64(value: Any) -> bytes:
    if isinstance(value, bytes):  # built by our own code (responses); JSON never has bytes
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid standard base64") from None
    if base64.b64encode(data).decode("ascii") != value:
        raise ValueError("is not canonical base64")
    return data


def _encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


B64 = Annotated[
    bytes,
    PlainValidator(_decode_b64),
    PlainSerializer(_encode_b64, return_type=str),
    WithJsonSchema({"type": "string", "format": "byte", "description": "standard base64"}),
]
KeyName = Annotated[str, Field(pattern=KEY_NAME_REGEX, description="key name")]
Tagged = Annotated[str, Field(description="ekms:v<N>:<base64>, as returned by the service")]
"""Checked by the service (not by a schema pattern), so in a batch a malformed ciphertext
is an error of that item, not of the whole request."""


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- keys


class KeyCreateIn(In):
    name: KeyName
    type: KeyTypeName = "aes256-gcm"
    exportable: bool = False


class KeyConfigIn(In):
    min_decryption_version: Annotated[int, Field(ge=1)] | None = None
    enabled: bool | None = None


class KeyImportIn(In):
    name: KeyName
    type: KeyTypeName
    wrapped_material: B64
    exportable: bool = False


class KeyImportVersionIn(In):
    wrapped_material: B64


class KeyVersionOut(Out):
    version: int
    created: datetime
    public_key_pem: str | None
    imported: bool


class ReleasePolicyOut(Out):
    policy_toml: str = Field(description="the appraisal policy (canonical TOML, docs/release.md)")
    immutable: bool = Field(description="if true, only tighter policies may replace it")
    revision: int
    updated: datetime


class KeyOut(Out):
    name: str
    type: str
    created: datetime
    latest_version: int
    min_decryption_version: int
    enabled: bool
    exportable: bool
    deletion_scheduled_at: datetime | None
    operations: list[str]
    public_key_pem: str | None
    versions: list[KeyVersionOut]
    release_policy: ReleasePolicyOut | None = Field(
        default=None, description="absent: the key is released to no workload"
    )


class KeyListOut(Out):
    keys: list[KeyOut]
    next_after: str | None = Field(description="pass as `after` for the next page")
    unreadable: list[str] = Field(description="keys whose records failed authentication")


class WrappingKeyOut(Out):
    public_key_pem: str
    schemes: list[str]


class ExportOut(Out):
    name: str
    type: str
    version: int
    material: B64


# --------------------------------------------------------------------------- operations


class EncryptIn(In):
    plaintext: B64
    associated_data: B64 | None = None


class DecryptIn(In):
    ciphertext: Tagged
    associated_data: B64 | None = None


class CiphertextOut(Out):
    ciphertext: str


class PlaintextOut(Out):
    plaintext: B64


class EncryptBatchIn(In):
    items: Annotated[list[EncryptIn], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]


class DecryptBatchIn(In):
    items: Annotated[list[DecryptIn], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]


class ItemError(Out):
    code: str
    message: str


class EncryptResult(Out):
    ciphertext: str | None = None
    error: ItemError | None = None


class DecryptResult(Out):
    plaintext: B64 | None = None
    error: ItemError | None = None


class EncryptBatchOut(Out):
    results: list[EncryptResult]


class DecryptBatchOut(Out):
    results: list[DecryptResult]


class DataKeyIn(In):
    include_plaintext: bool = True
    associated_data: B64 | None = None


class DataKeyOut(Out):
    ciphertext: str
    plaintext: B64 | None = None


class SignIn(In):
    input: B64
    hash_algorithm: HashName | None = None
    signature_algorithm: SignatureAlgorithm | None = None
    prehashed: bool = False


class SignatureOut(Out):
    signature: str


class VerifyIn(SignIn):
    signature: Tagged


class ValidOut(Out):
    valid: bool


class HmacIn(In):
    input: B64


class MacOut(Out):
    mac: str


class VerifyHmacIn(In):
    input: B64
    mac: Tagged


class RandomIn(In):
    length: Annotated[int, Field(ge=1, le=MAX_RANDOM_BYTES, alias="bytes")]


class RandomOut(Out):
    random: B64


class AesKeyOut(Out):
    aes_key: str = Field(description="32 random bytes, standard base64")


class RsaKeyPairOut(Out):
    private_key: str
    public_key: str


# --------------------------------------------------------------------------- tokens, sys


class PolicyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    keys: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-*?\[\]!]{1,128}$")]] = Field(
        default_factory=list, max_length=64, description="key-name glob patterns"
    )
    operations: Annotated[list[OperationName], Field(min_length=1)]


class TokenCreateIn(In):
    name: Annotated[str, Field(pattern=KEY_NAME_REGEX)]
    policies: Annotated[list[PolicyModel], Field(min_length=1, max_length=64)]
    ttl_seconds: Annotated[int, Field(ge=1, le=3650 * 86400)] | None = None


class TokenOut(Out):
    id: str
    name: str
    policies: list[PolicyModel]
    created: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    issuer: str | None = Field(default=None, description="id of the token that issued it")


class IssuedTokenOut(Out):
    token: str = Field(description="the bearer token; shown once, stored only hashed")
    info: TokenOut


class TokenListOut(Out):
    tokens: list[TokenOut]
    next_after: str | None


class AuditHeadOut(Out):
    chain: int = Field(
        description="the audit chain of the worker that answered (one chain per worker)"
    )
    records: int = Field(description="records in the chain (the next sequence number)")
    head_seq: int = Field(description="sequence number of the last durable record")
    head_hash: str = Field(description="hex SHA-256 of the last durable record's body")
    public_key_sha256: str = Field(description="hex SHA-256 of the audit key's SPKI")


class HealthOut(Out):
    status: Literal["ok"]
    initialized: bool
    identity: dict[str, Any]
    worker: int = Field(description="the enclave worker that answered (`serve --workers`)")


class AttestationOut(Out):
    nonce: str = Field(description="the nonce, hex")
    quote: B64
    collateral: dict[str, Any] = Field(description="dcap-qvl QuoteCollateralV3 JSON")
    certificate_pem: str
    spki_sha256: str = Field(description="hex SHA-256 of the certificate's DER SPKI")
    report_data_formula: str
