"""The wire contract of the HTTP API, defined once for the server and the SDK (DESIGN §11).

Key types, operation names, error codes and the JSON shapes of the answers. The server's
routes return these dataclasses (FastAPI derives the OpenAPI schemas and the serialisation
from them, through pydantic); the SDK decodes answers into the very same classes with
`decode`. So a field added, renamed or retyped here changes both sides at once, and
tests/test_wire.py checks the SDK's decoding against the server's OpenAPI document and its
real answers.

Plain standard-library dataclasses, because the SDK's base install has no pydantic: the two
markers below (`Base64`, `Doc`) tell pydantic, on the server only, how to (de)serialise bytes
and what to put in the schema; they import pydantic_core lazily, from hooks that only pydantic
calls. Binary fields are `bytes` on both sides and standard base64 on the wire. Fields that
hold a secret are `repr=False`, so printing a result never prints it.

Request bodies are validated by the server's strict pydantic models (enclave/api/models.py),
built from the same enums; the SDK writes request bodies in client/core.py.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar, get_args

from enclave_kms.errors import (
    AttestationError,
    AuditError,
    BoundaryError,
    ConflictError,
    CryptoOperationError,
    EnclaveKMSError,
    EvidenceRefusedError,
    ImmutablePolicyError,
    IntegrityError,
    InvalidRequestError,
    JoinRefusedError,
    KeyStateError,
    NonceError,
    NoReleasePolicyError,
    NotFoundError,
    NotReadyError,
    PermissionDeniedError,
    PlatformError,
    RecoveryDuplicateError,
    RecoveryError,
    RecoveryPendingError,
    RecoveryShareError,
    ReleasePolicyNotMetError,
    ServerError,
    StateRollbackError,
    StorageError,
    UnauthenticatedError,
)

T = TypeVar("T")

# --------------------------------------------------------------------------- enums

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
KEY_TYPES: Final[tuple[str, ...]] = get_args(KeyTypeName)

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
"""The permissions a token policy can grant (docs/api.md, "Tokens")."""
OPERATIONS: Final[tuple[str, ...]] = get_args(OperationName)

HashName = Literal["sha256", "sha384", "sha512"]
SignatureAlgorithm = Literal["pss", "pkcs1v15", "ecdsa", "ed25519"]


# --------------------------------------------------------------------------- error codes


@dataclass(frozen=True)
class ErrorCode:
    """One `{"error": {"code"}}` value: its status, the exception classes the server answers
    with it (none: produced by the HTTP layer itself) and the class the SDK raises."""

    code: str
    status: int
    raised: type[EnclaveKMSError]
    answers: tuple[type[EnclaveKMSError], ...] = ()


ERROR_CODES: Final[tuple[ErrorCode, ...]] = (
    ErrorCode("invalid_request", 400, InvalidRequestError, (InvalidRequestError,)),
    ErrorCode("crypto_failed", 400, CryptoOperationError, (CryptoOperationError,)),
    ErrorCode("unauthenticated", 401, UnauthenticatedError, (UnauthenticatedError,)),
    ErrorCode("join_refused", 403, JoinRefusedError, (JoinRefusedError,)),
    ErrorCode("permission_denied", 403, PermissionDeniedError, (PermissionDeniedError,)),
    ErrorCode("not_found", 404, NotFoundError, (NotFoundError,)),
    ErrorCode("conflict", 409, ConflictError, (ConflictError,)),
    ErrorCode("key_state", 409, KeyStateError, (KeyStateError,)),
    ErrorCode("nonce_invalid", 403, NonceError, (NonceError,)),
    ErrorCode("evidence_refused", 403, EvidenceRefusedError, (EvidenceRefusedError,)),
    ErrorCode("release_policy_not_met", 403, ReleasePolicyNotMetError, (ReleasePolicyNotMetError,)),
    ErrorCode("no_release_policy", 403, NoReleasePolicyError, (NoReleasePolicyError,)),
    ErrorCode("release_policy_immutable", 409, ImmutablePolicyError, (ImmutablePolicyError,)),
    ErrorCode("recovery_share_invalid", 400, RecoveryShareError, (RecoveryShareError,)),
    ErrorCode("recovery_share_duplicate", 409, RecoveryDuplicateError, (RecoveryDuplicateError,)),
    ErrorCode("recovery_in_progress", 503, RecoveryPendingError, (RecoveryPendingError,)),
    ErrorCode("recovery_failed", 409, RecoveryError, (RecoveryError,)),
    ErrorCode("state_rollback", 502, StateRollbackError, (StateRollbackError,)),
    ErrorCode("integrity_violation", 502, IntegrityError, (IntegrityError,)),
    ErrorCode("boundary_violation", 502, BoundaryError, (BoundaryError,)),
    ErrorCode("storage_unavailable", 503, StorageError, (StorageError,)),
    ErrorCode("audit_failed", 503, AuditError, (AuditError,)),
    ErrorCode("not_ready", 503, NotReadyError, (NotReadyError,)),
    # The server could not produce evidence: a server failure for the client.
    ErrorCode("attestation_unavailable", 503, ServerError, (PlatformError, AttestationError)),
    # Produced by the HTTP layer rather than by a typed error:
    ErrorCode("route_not_found", 404, NotFoundError),
    ErrorCode("method_not_allowed", 405, InvalidRequestError),
    ErrorCode("payload_too_large", 413, InvalidRequestError),
    ErrorCode("internal", 500, ServerError),
)
RETRYABLE_CODES: Final[frozenset[str]] = frozenset({"storage_unavailable", "audit_failed"})
"""Nothing was acknowledged; an idempotent request may be sent again."""


# --------------------------------------------------------------------------- markers


def decode_b64(value: Any) -> bytes:
    """Strict, canonical standard base64: one accepted spelling for every byte string."""
    if isinstance(value, bytes):  # built by our own code (answers); JSON never has bytes
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


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Base64:
    """`Annotated[bytes, BASE64]`: bytes in Python, standard base64 in JSON."""

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            decode_b64,
            serialization=core_schema.plain_serializer_function_ser_schema(
                encode_b64, return_schema=core_schema.str_schema()
            ),
        )

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "format": "byte", "description": "standard base64"}


@dataclass(frozen=True)
class Doc:
    """`Annotated[T, Doc("…")]`: the field's description in the OpenAPI document."""

    text: str

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> Any:
        out = handler(schema)
        out["description"] = self.text
        return out


BASE64: Final = Base64()
B64 = Annotated[bytes, BASE64]


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyVersion:
    version: int
    created: datetime
    public_key_pem: str | None
    imported: bool


@dataclass(frozen=True)
class ReleasePolicy:
    """A key's release policy (DESIGN §15, docs/release.md): the appraisal policy in canonical
    TOML; `immutable` is one-way (then only tighter policies replace it); `revision` counts
    changes (1 = first set)."""

    policy_toml: Annotated[str, Doc("the appraisal policy (canonical TOML, docs/release.md)")]
    immutable: Annotated[bool, Doc("if true, only tighter policies may replace it")]
    revision: int
    updated: datetime


@dataclass(frozen=True)
class ReleasePolicyEnvelope:
    """`GET/PUT /v1/keys/{name}/release-policy`."""

    name: str
    release_policy: ReleasePolicy | None


@dataclass(frozen=True)
class ReleaseNonce:
    """`POST /v1/release/nonce`: single use, until `expires_at`."""

    nonce: B64
    expires_at: datetime


@dataclass(frozen=True)
class ReleaseOut:
    """`POST /v1/keys/{name}/release`: the secret sealed to the workload's recipient key."""

    name: str
    key_type: str
    version: int
    operation: str
    suite: str
    sealed: Annotated[bytes, BASE64, Doc("HPKE enc ‖ ciphertext, to the recipient key")] = field(
        repr=False
    )
    ciphertext: Annotated[str | None, Doc("datakey: the data key under the KMS key")] = None


@dataclass(frozen=True)
class RecoverySetInfo:
    """`POST /v1/sys/recovery/split`: the new k-of-n set (docs/replicas.md, Recovery)."""

    set_id: str
    threshold: int
    shares: int
    officers: tuple[str, ...]
    created: str


@dataclass(frozen=True)
class RecoveryStatus:
    """`GET /v1/sys/recovery`: `state` "ready" (then the set's fields) or
    "not-configured"."""

    state: str
    set_id: str | None = None
    threshold: int | None = None
    shares: int | None = None
    officers: tuple[str, ...] = ()
    created: str | None = None


@dataclass(frozen=True)
class RecoveryStep:
    """One step of a recovery in progress, kept in the recovering enclave's memory (the
    installation's audit key is out of reach until the restore, which appends them all)."""

    time: str
    op: str  # recovery.start, recovery.submit, recovery.restore
    officer: Annotated[str, Doc("officer fingerprint; empty if the share did not open")]
    outcome: Annotated[str, Doc('"ok" or an error code')]


@dataclass(frozen=True)
class RecoveryProgress:
    """`GET /v1/sys/recovery` of an enclave in recovery mode (`serve --recovery`), and the
    answer to each `POST /v1/sys/recovery/submit`: `state` "recovering", "restored" once the
    k-th share rebuilt the storage root key. An officer seals its share to `session_key`
    after appraising `quote` (the status carries the evidence; a submit answer does not)."""

    state: str
    set_id: str
    threshold: int
    shares: int
    officers: tuple[str, ...]
    created: str
    accepted: Annotated[tuple[str, ...], Doc("fingerprints of the officers whose share is in")]
    needed: int
    session_id: Annotated[str, Doc("hex")]
    session_key: Annotated[bytes, BASE64, Doc("X25519 public key of this session, raw")]
    events: tuple[RecoveryStep, ...]
    audited: str
    quote: Annotated[
        B64 | None, Doc("report_data[0:32] binds session_id and session_key (formula below)")
    ] = None
    collateral: Annotated[str | None, Doc("dcap-qvl collateral JSON for the quote")] = None
    report_data_formula: str | None = None


@dataclass(frozen=True)
class RecoveryShare:
    """One officer's sealed share as served and as the officer's share file keeps it."""

    format: str
    set_id: str
    index: int
    threshold: int
    shares: int
    commitment: str
    digest: str
    officer: str
    sealed: Annotated[str, Doc("HPKE ciphertext to the officer's key, base64")]
    verified_by_enclave: bool


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
class ReplicaChallenge:
    """`POST /v1/sys/replicas/challenge`: single use, 120 s; the joiner's quote binds it."""

    challenge: str


@dataclass(frozen=True)
class ReplicaJoin:
    """`POST /v1/sys/replicas/join`: the storage root key sealed to the key the joiner's quote
    binds, and the answering replica's quote over the answer (custody/handover.py)."""

    sealed_key: str
    quote: str


@dataclass(frozen=True)
class Readiness:
    """`GET /v1/sys/ready` (200 only once this server may serve)."""

    ready: bool
    replica: Annotated[int | None, Doc("this server's replica id (None: a lone server)")]
    generation: Annotated[int, Doc("the state generation the database holds now")]


@dataclass(frozen=True)
class StateConfirmation:
    """`POST /v1/sys/replicas/confirm`: a replica's state head, signed over the asker's nonce."""

    replica: int
    generation: int
    head: Annotated[str, Doc("hex SHA-256 of the signed state head body")]
    signature: Annotated[str, Doc("hex ECDSA P-256 (audit key) over the confirmation")]


@dataclass(frozen=True)
class PeerView:
    url: str
    replica: int | None
    generation: Annotated[int | None, Doc("highest state generation it has seen")]
    lag: Annotated[int | None, Doc("this replica's generation minus the peer's")]
    reachable: bool
    error: str | None = None


@dataclass(frozen=True)
class ReplicaSetView:
    """`GET /v1/sys/replicas` (admin): this replica and each peer as it answers now."""

    replica: int | None
    generation: int
    ready: bool
    reason: Annotated[str, Doc("why not ready (empty when ready)")]
    needed: Annotated[int, Doc("peer confirmations needed to serve")]
    peers: tuple[PeerView, ...]


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
    release_policy: Annotated[
        ReleasePolicy | None, Doc("absent: the key is released to no workload")
    ] = None


@dataclass(frozen=True)
class KeyPage:
    keys: tuple[KeyInfo, ...]
    next_after: Annotated[str | None, Doc("pass as `after` for the next page")]
    unreadable: Annotated[tuple[str, ...], Doc("keys whose records failed authentication")]


@dataclass(frozen=True)
class WrappingKey:
    public_key_pem: str
    schemes: tuple[str, ...]


@dataclass(frozen=True)
class ExportedKey:
    name: str
    type: str
    version: int
    material: B64 = field(repr=False)  # raw bytes or PKCS#8 DER


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Ciphertext:
    ciphertext: str


@dataclass(frozen=True)
class Plaintext:
    plaintext: B64 = field(repr=False)


@dataclass(frozen=True)
class Signature:
    signature: str


@dataclass(frozen=True)
class Valid:
    valid: bool


@dataclass(frozen=True)
class Mac:
    mac: str


@dataclass(frozen=True)
class RandomBytes:
    random: B64 = field(repr=False)


@dataclass(frozen=True)
class DataKey:
    """A fresh 256-bit data key: `ciphertext` to store, `plaintext` to use and forget."""

    ciphertext: str
    plaintext: B64 | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AesKey:
    aes_key: Annotated[str, Doc("32 random bytes, standard base64")] = field(repr=False)


@dataclass(frozen=True)
class RsaKeyPair:
    """The tutorial's `/generate-rsa-key-pair` answer (never stored by the service)."""

    public_key: str
    private_key: str = field(repr=False)

    @property
    def public_key_pem(self) -> str:
        return self.public_key

    @property
    def private_key_pem(self) -> str:
        return self.private_key


@dataclass(frozen=True)
class ItemError:
    code: str
    message: str


@dataclass(frozen=True)
class EncryptResult:
    ciphertext: str | None = None
    error: ItemError | None = None


@dataclass(frozen=True)
class DecryptResult:
    plaintext: B64 | None = field(default=None, repr=False)
    error: ItemError | None = None


@dataclass(frozen=True)
class EncryptBatch:
    results: tuple[EncryptResult, ...]


@dataclass(frozen=True)
class DecryptBatch:
    results: tuple[DecryptResult, ...]


# --------------------------------------------------------------------------- tokens, sys


@dataclass(frozen=True)
class TokenPolicy:
    """Which keys (glob patterns) a token may use, for which operations."""

    operations: tuple[str, ...]
    keys: Annotated[tuple[str, ...], Doc("key-name glob patterns")] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {"keys": list(self.keys), "operations": list(self.operations)}

    @classmethod
    def coerce(cls, value: TokenPolicy | Mapping[str, Sequence[str]]) -> TokenPolicy:
        if isinstance(value, TokenPolicy):
            return value
        return cls(operations=tuple(value.get("operations", ())), keys=tuple(value.get("keys", ())))


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    policies: tuple[TokenPolicy, ...]
    created: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    issuer: Annotated[str | None, Doc("id of the token that issued it")] = None


@dataclass(frozen=True)
class IssuedToken:
    """A new bearer token: shown once by the server, stored there only hashed."""

    info: TokenInfo
    token: Annotated[str, Doc("the bearer token; shown once, stored only hashed")] = field(
        repr=False
    )


@dataclass(frozen=True)
class TokenPage:
    tokens: tuple[TokenInfo, ...]
    next_after: str | None


@dataclass(frozen=True)
class AuditHead:
    chain: Annotated[int, Doc("the audit chain of the worker that answered (one per worker)")]
    records: Annotated[int, Doc("records in the chain (the next sequence number)")]
    head_seq: Annotated[int, Doc("sequence number of the last durable record")]
    head_hash: Annotated[str, Doc("hex SHA-256 of the last durable record's body")]
    public_key_sha256: Annotated[str, Doc("hex SHA-256 of the audit key's SPKI")]


@dataclass(frozen=True)
class Health:
    status: str
    initialized: bool
    identity: dict[str, Any]
    worker: Annotated[int, Doc("the enclave worker that answered (`serve --workers`)")] = 0


# --------------------------------------------------------------------------- decoding (SDK)


def to_json(value: Any) -> Any:
    """A wire value as the JSON the server sends for it (the inverse of `decode`, without
    pydantic, for clients that print answers): bytes as standard base64, timestamps in ISO
    8601, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return encode_b64(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")  # as the server (pydantic) spells UTC
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def decode(cls: type[T], doc: Any) -> T:
    """An answer's JSON as `cls`; ServerError naming the field when it does not fit. Fields
    the answer has and `cls` lacks are ignored (a newer server may add some)."""
    return typing.cast(T, _value(cls, doc, cls.__name__))


def _fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    cached = _HINTS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        cached = _HINTS[cls] = [(f, hints[f.name]) for f in dataclasses.fields(cls)]
    return cached


_HINTS: dict[type[Any], list[tuple[dataclasses.Field[Any], Any]]] = {}


def _value(hint: Any, value: Any, where: str) -> Any:
    b64 = False
    if typing.get_origin(hint) is Annotated:
        hint, *extras = get_args(hint)
        b64 = any(isinstance(e, Base64) for e in extras)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _value(Annotated[inner, BASE64] if b64 else inner, value, where)
    if b64:
        try:
            return decode_b64(value)
        except ValueError:
            raise ServerError(f"answer field {where} is not valid base64") from None
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ServerError(f"answer field {where} is not an object")
        args = {}
        for f, f_hint in _fields(hint):
            if f.name in value:
                args[f.name] = _value(f_hint, value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ServerError(f"the server's answer has no field {where}.{f.name}")
        return hint(**args)
    if origin is tuple:
        if not isinstance(value, list):
            raise ServerError(f"answer field {where} is not a list")
        item = get_args(hint)[0]
        return tuple(_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ServerError(f"answer field {where} is not an object")
        return value
    if hint is datetime:
        if not isinstance(value, str):
            raise ServerError(f"answer field {where} is not a timestamp")
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ServerError(f"answer field {where} is not a timestamp") from None
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ServerError(f"answer field {where} is not an integer")
    if hint in (str, bool) and not isinstance(value, hint):
        raise ServerError(f"answer field {where} is not a {hint.__name__}")
    return value
