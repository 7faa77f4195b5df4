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

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from enclave_kms.enclave.keys.service import MAX_BATCH_ITEMS, MAX_RANDOM_BYTES
from enclave_kms.enclave.keys.types import KEY_NAME_PATTERN
from enclave_kms.wire import B64, HashName, KeyTypeName, OperationName, SignatureAlgorithm

KEY_NAME_REGEX = f"^{KEY_NAME_PATTERN.pattern}$"
TOKEN_ID_REGEX = "^[0-9a-f]{16}$"  # noqa: S105 - a pattern, not a credential

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


# --------------------------------------------------------------------------- operations


class EncryptIn(In):
    plaintext: B64
    associated_data: B64 | None = None


class DecryptIn(In):
    ciphertext: Tagged
    associated_data: B64 | None = None


class EncryptBatchIn(In):
    items: Annotated[list[EncryptIn], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]


class DecryptBatchIn(In):
    items: Annotated[list[DecryptIn], Field(min_length=1, max_length=MAX_BATCH_ITEMS)]


class DataKeyIn(In):
    include_plaintext: bool = True
    associated_data: B64 | None = None


class SignIn(In):
    input: B64
    hash_algorithm: HashName | None = None
    signature_algorithm: SignatureAlgorithm | None = None
    prehashed: bool = False


class VerifyIn(SignIn):
    signature: Tagged


class HmacIn(In):
    input: B64


class VerifyHmacIn(In):
    input: B64
    mac: Tagged


class RandomIn(In):
    length: Annotated[int, Field(ge=1, le=MAX_RANDOM_BYTES, alias="bytes")]


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


class AttestationOut(Out):
    nonce: str = Field(description="the nonce, hex")
    quote: B64
    collateral: dict[str, Any] = Field(description="dcap-qvl QuoteCollateralV3 JSON")
    certificate_pem: str
    spki_sha256: str = Field(description="hex SHA-256 of the certificate's DER SPKI")
    report_data_formula: str
