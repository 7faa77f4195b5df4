"""Request bodies of the transit face, parameter for parameter as OpenAPI/Vault name them.

Every parameter Vault documents for an endpoint is declared here, also those the face refuses
(a value other than Vault's default for `derived`, `context`, `nonce`, ...), so a refusal is
explicit rather than an "ignored parameter" warning. Types are lax as in Vault: ``"2"`` is 2
and ``"true"`` is true. Binary values are base64 strings, decoded by the routes so the error
names the field (`transit_support.unb64`). docs/compatibility.md is the table.
"""

from __future__ import annotations

from pydantic import Field

from enclave_kms.enclave.api.transit_support import VaultBody
from enclave_kms.enclave.keys.service import MAX_BATCH_ITEMS


class CreateKeyIn(VaultBody):
    type: str = "aes256-gcm96"
    exportable: bool = False
    derived: bool = False
    convergent_encryption: bool = False
    allow_plaintext_backup: bool = False
    auto_rotate_period: str | int = 0
    key_size: int = 0
    managed_key_name: str | None = None
    managed_key_id: str | None = None
    parameter_set: str | None = None


class ConfigKeyIn(VaultBody):
    min_decryption_version: int | None = None
    min_encryption_version: int | None = None
    deletion_allowed: bool | None = None
    exportable: bool | None = None
    allow_plaintext_backup: bool | None = None
    auto_rotate_period: str | int | None = None


class ImportKeyIn(VaultBody):
    ciphertext: str | None = None
    hash_function: str = "SHA256"
    type: str = "aes256-gcm96"
    public_key: str | None = None
    allow_rotation: bool = False
    derived: bool = False
    context: str | None = None
    exportable: bool = False
    allow_plaintext_backup: bool = False
    auto_rotate_period: str | int = 0


class ImportVersionIn(VaultBody):
    ciphertext: str | None = None
    hash_function: str = "SHA256"
    public_key: str | None = None
    version: int | None = None


class _Item(VaultBody):
    context: str | None = None
    nonce: str | None = None
    reference: str = ""
    associated_data: str | None = None


class EncryptItemIn(_Item):
    plaintext: str | None = None
    key_version: int | None = None


class CiphertextItemIn(_Item):
    ciphertext: str | None = None
    key_version: int | None = None


class EncryptIn(EncryptItemIn):
    batch_input: list[EncryptItemIn] | None = Field(default=None, max_length=MAX_BATCH_ITEMS)
    type: str | None = None  # only used by Vault's upsert, which enclave-kms does not do
    convergent_encryption: bool | None = None
    partial_failure_response_code: int | None = None


class CiphertextIn(CiphertextItemIn):
    batch_input: list[CiphertextItemIn] | None = Field(default=None, max_length=MAX_BATCH_ITEMS)
    partial_failure_response_code: int | None = None


class DataKeyIn(VaultBody):
    associated_data: str | None = None
    context: str | None = None
    nonce: str | None = None
    bits: int = 256


class RandomIn(VaultBody):
    bytes: int | None = None
    format: str = "base64"
    source: str | None = None


class HashIn(VaultBody):
    input: str | None = None
    algorithm: str | None = None
    format: str = "hex"


class InputItemIn(VaultBody):
    input: str | None = None
    context: str | None = None
    reference: str = ""


class HmacIn(InputItemIn):
    key_version: int | None = None
    algorithm: str | None = None
    batch_input: list[InputItemIn] | None = Field(default=None, max_length=MAX_BATCH_ITEMS)


class _SignOptions(VaultBody):
    hash_algorithm: str | None = None
    prehashed: bool = False
    signature_algorithm: str | None = None
    marshaling_algorithm: str = "asn1"
    salt_length: str | int = "auto"
    context: str | None = None


class SignIn(_SignOptions):
    input: str | None = None
    key_version: int | None = None
    reference: str = ""
    batch_input: list[InputItemIn] | None = Field(default=None, max_length=MAX_BATCH_ITEMS)


class VerifyItemIn(InputItemIn):
    signature: str | None = None
    hmac: str | None = None


class VerifyIn(_SignOptions):
    input: str | None = None
    signature: str | None = None
    hmac: str | None = None
    reference: str = ""
    batch_input: list[VerifyItemIn] | None = Field(default=None, max_length=MAX_BATCH_ITEMS)
