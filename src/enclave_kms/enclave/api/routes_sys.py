"""System routes (init, health, attestation), token management and the audit head.

`POST /v1/sys/init` is anonymous by necessity: it mints the first admin token, once per store
(across restarts and replicas), and the only copy of that token goes back over the attested
TLS connection. The host never sees it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

from cryptography import x509
from fastapi import APIRouter, Depends, Path, Query, Request

from enclave_kms.attestation.types import spki_sha256
from enclave_kms.enclave.api.models import (
    TOKEN_ID_REGEX,
    AttestationOut,
    TokenCreateIn,
)
from enclave_kms.enclave.api.support import (
    AttestationBundle,
    Caller,
    add_route,
    app_context,
    caller,
    new_router,
)
from enclave_kms.enclave.state.tokens import IssuedToken, TokenInfo
from enclave_kms.errors import AttestationError, CollateralError
from enclave_kms.wire import (
    AuditHead,
    Health,
    TokenPage,
    TokenPolicy,
)
from enclave_kms.wire import (
    IssuedToken as WireIssuedToken,
)
from enclave_kms.wire import (
    TokenInfo as WireTokenInfo,
)

NONCE_REGEX = "^(?:[0-9a-fA-F]{2}){16,64}$"
REPORT_DATA_FORMULA = (
    "report_data[0:32] = SHA-256(SHA-256(DER SubjectPublicKeyInfo of certificate_pem) || nonce)"
    ", both as raw bytes"
)

TokenId = Annotated[str, Path(alias="id", pattern=TOKEN_ID_REGEX, description="token id")]


def token_out(info: TokenInfo) -> WireTokenInfo:
    return WireTokenInfo(
        id=info.id,
        name=info.name,
        policies=tuple(
            TokenPolicy(operations=tuple(p.operations), keys=tuple(p.keys)) for p in info.policies
        ),
        created=info.created,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        issuer=info.issuer,
    )


def _issued(issued: IssuedToken, who: Caller) -> WireIssuedToken:
    who.set_target(issued.info.id)
    return WireIssuedToken(token=issued.token, info=token_out(issued.info))


def _json_value(value: object) -> Any:
    """Identity values as JSON: bytes become hex, everything else must already be JSON."""
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# --------------------------------------------------------------------------- sys


def init(request: Request, who: Caller = Depends(caller)) -> WireIssuedToken:
    """Issue the first admin token. Works once; afterwards 409 conflict."""
    return _issued(app_context(request).tokens.init_admin(), who)


def health(request: Request) -> Health:
    """Liveness, whether `init` has run, and the enclave identity (unauthenticated)."""
    ctx = app_context(request)
    return Health(
        status="ok",
        initialized=ctx.tokens.is_initialised(),
        identity={str(k): _json_value(v) for k, v in ctx.identity.items()},
        worker=ctx.worker,
    )


def attestation(
    request: Request,
    nonce: Annotated[str, Query(pattern=NONCE_REGEX, description="16-64 bytes, hex")],
) -> AttestationOut:
    """Fresh evidence bound to the TLS key and the caller's nonce, with its collateral."""
    return attestation_out(app_context(request).attestation.attest(bytes.fromhex(nonce)), nonce)


def attestation_out(bundle: AttestationBundle, nonce: str) -> AttestationOut:
    """The `GET /v1/attestation` answer (also served by an enclave in recovery mode)."""
    try:
        collateral = json.loads(bundle.collateral)
    except (ValueError, UnicodeDecodeError):
        collateral = None
    if not isinstance(collateral, dict):
        raise CollateralError("the collateral for the attestation is not a JSON object")
    try:
        certificate = x509.load_pem_x509_certificate(bundle.certificate_pem)
    except ValueError:
        raise AttestationError("the server certificate does not parse") from None
    return AttestationOut(
        nonce=nonce.lower(),
        quote=bundle.quote,
        collateral=collateral,
        certificate_pem=bundle.certificate_pem.decode("ascii"),
        spki_sha256=spki_sha256(certificate),
        report_data_formula=REPORT_DATA_FORMULA,
    )


# --------------------------------------------------------------------------- tokens


def create_token(
    request: Request, body: TokenCreateIn, who: Caller = Depends(caller)
) -> WireIssuedToken:
    """Issue a token with policies no wider than the caller's own."""
    ttl = None if body.ttl_seconds is None else timedelta(seconds=body.ttl_seconds)
    issued = app_context(request).tokens.create_token(
        body.name,
        [p.model_dump() for p in body.policies],
        ttl=ttl,
        issuer=who.principal,
    )
    return _issued(issued, who)


def list_tokens(
    request: Request,
    after: Annotated[str, Query(max_length=16, description="last id of the previous page")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    who: Caller = Depends(caller),
) -> TokenPage:
    """The caller's own token and those it issued (and theirs), by id, revoked ones
    included; never a secret, never a token outside the caller's lineage."""
    page = app_context(request).tokens.list_tokens(after=after, limit=limit, caller=who.principal)
    return TokenPage(tokens=tuple(token_out(t) for t in page.tokens), next_after=page.next_after)


def read_token(request: Request, token_id: TokenId, who: Caller = Depends(caller)) -> WireTokenInfo:
    """Metadata of one token the caller governs (itself or a descendant)."""
    return token_out(app_context(request).tokens.read_token(token_id, who.principal))


def revoke_token(
    request: Request, token_id: TokenId, who: Caller = Depends(caller)
) -> WireTokenInfo:
    """Revoke for good, with every token it issued (idempotent); the last full admin that
    never expires cannot be revoked."""
    return token_out(app_context(request).tokens.revoke_token(token_id, who.principal))


# --------------------------------------------------------------------------- audit


def audit_head(request: Request) -> AuditHead:
    """The head of the audit chain and the audit key's fingerprint; the records themselves
    are stored by the host (check them with `enclave-kms audit verify`)."""
    ctx = app_context(request)
    audit = ctx.audit
    next_seq, last_hash = audit.head
    return AuditHead(
        chain=ctx.worker,
        records=next_seq,
        head_seq=next_seq - 1,
        head_hash=last_hash.hex(),
        public_key_sha256=audit.public_key_sha256,
    )


_ROUTES = (
    ("POST", "/v1/sys/init", init, "sys.init", None, 201),
    ("GET", "/v1/health", health, "sys.health", None, 200),
    ("GET", "/v1/attestation", attestation, "sys.attestation", None, 200),
    ("POST", "/v1/tokens", create_token, "tokens.create", "tokens.manage", 201),
    ("GET", "/v1/tokens", list_tokens, "tokens.list", "tokens.manage", 200),
    ("GET", "/v1/tokens/{id}", read_token, "tokens.read", "tokens.manage", 200),
    ("DELETE", "/v1/tokens/{id}", revoke_token, "tokens.revoke", "tokens.manage", 200),
    ("GET", "/v1/audit", audit_head, "audit.read", "audit.read", 200),
)
"""(method, path, endpoint, audit operation, token permission or None, success status)."""


def router() -> APIRouter:
    r = new_router()
    for method, path, endpoint, op, permission, status in _ROUTES:
        add_route(r, method, path, endpoint, op=op, permission=permission, status_code=status)
    return r
