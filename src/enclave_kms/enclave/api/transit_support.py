"""What the Vault/OpenBao transit face shares: its route class, Vault's response envelope and
error shape, and the translations between Vault's vocabulary and the KMS core's (DESIGN §16).

The face is a translation, not a second KMS: every route calls `KMSService` and is
authenticated, authorized and audited by `support.AuditedRoute`, exactly as the native API.
Only the edges differ:

- credentials: ``X-Vault-Token`` (what Vault clients send), or ``Authorization: Bearer``;
  both carry an ordinary enclave-kms token and its grants;
- errors: ``{"errors": [message]}`` with Vault's status codes, mapped in `vault_error` (one
  table over the core's error codes, `errors.status_for`); a partial batch failure answers
  400 with the batch results, as Vault does;
- answers: Vault's envelope (``request_id``, ``data``, ``warnings``, ...); parameters the
  face does not know are ignored and named in ``warnings`` (Vault's behaviour);
- ciphertexts, signatures and MACs: ``vault:v<N>:`` here, ``ekms:v<N>:`` in the core, the
  same bytes after the prefix; both prefixes are accepted on input.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, MutableMapping
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from enclave_kms.enclave.api.errors import (
    INTERNAL_MESSAGE,
    describe_exception,
    error_body,
    status_for,
    validation_message,
)
from enclave_kms.enclave.api.support import AuditedRoute, bearer_token, request_slot, route_label
from enclave_kms.errors import EnclaveKMSError, InvalidRequestError, UnauthenticatedError

logger = logging.getLogger("enclave_kms.api")

DEFAULT_MOUNT: Final = "transit"
VAULT_PREFIX: Final = "vault:"
CORE_PREFIX: Final = "ekms:"
VAULT_TOKEN_HEADER: Final = "x-vault-token"  # noqa: S105 - a header name, not a credential

VAULT_STATUS: Final[Mapping[str, int]] = {
    "invalid_request": 400,
    "crypto_failed": 400,  # Vault: "cipher: message authentication failed" is a 400
    "key_state": 400,  # disabled, scheduled for deletion, below min_decryption_version
    "conflict": 400,
    "unauthenticated": 403,  # Vault answers a missing or bad token with 403 too
    "permission_denied": 403,
    "not_found": 404,
    "route_not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "integrity_violation": 502,
    "boundary_violation": 502,
    "storage_unavailable": 503,
    "audit_failed": 503,
    "attestation_unavailable": 503,
    "internal": 500,
}
"""Core error code → Vault status. The core's `ERROR_TABLE` decides the code of every typed
error; this face only re-maps the status (Vault has no 401 or 409)."""

_FRAMEWORK: Final[Mapping[int, tuple[str, str]]] = {
    404: ("route_not_found", "unsupported path"),
    405: ("method_not_allowed", "unsupported operation"),
    413: ("payload_too_large", "request body is too large"),
    400: ("invalid_request", "failed to parse JSON input"),
}


# --------------------------------------------------------------------------- answers


def vault_error(request: Request, code: str, message: str) -> JSONResponse:
    """``{"errors": [message]}`` with Vault's status for `code`; tells the audit the outcome."""
    slot = request_slot(request.scope)
    if slot is not None:
        slot.outcome = code
    status = VAULT_STATUS.get(code, 500 if code == "internal" else 400)
    short = error_body(code, message)["error"]["message"]
    return JSONResponse({"errors": [short]}, status_code=status)


def _request_id(request: Request) -> str:
    slot = request_slot(request.scope)
    if slot is None:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(hex=slot.request_id))
    except ValueError:
        return slot.request_id


def envelope(
    request: Request,
    data: Mapping[str, Any] | None,
    *,
    warnings: Iterable[str] = (),
    status: int = 200,
) -> Response:
    """Vault's answer: the request id, `data`, and warnings (None when there are none)."""
    if data is None:
        return Response(status_code=204)
    said = list(warnings)
    body = {
        "request_id": _request_id(request),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": dict(data),
        "wrap_info": None,
        "warnings": said or None,
        "auth": None,
    }
    return JSONResponse(body, status_code=status)


def ignored(body: BaseModel) -> list[str]:
    """Vault's warning for parameters the endpoint does not know (they are ignored)."""
    extra = sorted((body.model_extra or {}).keys())
    if not extra:
        return []
    return [f"Endpoint ignored these unrecognized parameters: [{' '.join(extra)}]"]


class VaultBody(BaseModel):
    """Base of the face's request bodies: lax types (Vault accepts "2" and "true"), unknown
    parameters kept aside for `ignored`."""

    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- translations


def unb64(value: str | None, what: str) -> bytes:
    """Standard base64 as Vault clients send it ("" is the empty string; absent is an
    error naming the field)."""
    if value is None:
        raise InvalidRequestError(f"missing {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{what} is not valid base64") from None


def opt_b64(value: str | None, what: str) -> bytes | None:
    """An optional base64 parameter (absent or "" is None)."""
    return None if not value else unb64(value, what)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_vault(tagged: str) -> str:
    """``ekms:v<N>:…`` → ``vault:v<N>:…`` (same bytes)."""
    assert tagged.startswith(CORE_PREFIX)
    return VAULT_PREFIX + tagged[len(CORE_PREFIX) :]


def to_core(tagged: object, what: str) -> str:
    """``vault:v<N>:…`` (or the core's own ``ekms:v<N>:…``) → the core's spelling."""
    if not isinstance(tagged, str) or not tagged:
        raise InvalidRequestError(f"missing {what}")
    if tagged.startswith(VAULT_PREFIX):
        return CORE_PREFIX + tagged[len(VAULT_PREFIX) :]
    if tagged.startswith(CORE_PREFIX):
        return tagged
    raise InvalidRequestError(f"invalid {what}: no vault:v<N>: prefix")


def version_of(tagged: str) -> int:
    """N of a ``<prefix>:v<N>:…`` string the core produced."""
    return int(tagged.split(":", 2)[1][1:])


def no_derivation(context: str | None, nonce: str | None) -> None:
    """Key derivation and caller-chosen nonces are not offered (docs/compatibility.md)."""
    if context:
        raise InvalidRequestError("key derivation (context) is not supported by enclave-kms")
    if nonce:
        raise InvalidRequestError(
            "caller-supplied nonces are not supported: enclave-kms draws every nonce itself"
        )


def latest_only(key_version: int | None, latest: Callable[[], int]) -> None:
    """Vault's `key_version`: only 0 (latest) or the latest version's number is accepted."""
    if key_version is None or key_version == 0:
        return
    if key_version != latest():
        raise InvalidRequestError(
            "enclave-kms encrypts and signs only with the latest key version "
            "(key_version must be 0 or the latest version)"
        )


# --------------------------------------------------------------------------- the route class


class TransitRoute(AuditedRoute):
    """`AuditedRoute` (authentication, authorization, audit: unchanged) that reads Vault's
    token header and answers every failure in Vault's shape."""

    body_authorized: frozenset[str] = frozenset({"transit.verify", "transit.keys.export"})

    def token(self, request: Request) -> str:
        vault = request.headers.get(VAULT_TOKEN_HEADER)
        if vault is not None and vault.strip():
            return vault.strip()
        if request.headers.get("authorization") is None:
            raise UnauthenticatedError("missing client token (X-Vault-Token or Bearer)")
        return bearer_token(request)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            _body_is_json(request.scope)
            try:
                return await inner(request)
            except EnclaveKMSError as exc:
                status, code = status_for(exc)
                if status >= 500 and code == "internal":
                    return _internal(request, exc)
                if status >= 500:
                    logger.warning(
                        "%s (%s) on %s", code, type(exc).__name__, route_label(request.scope)
                    )
                return vault_error(request, code, exc.message)
            except RequestValidationError as exc:
                return vault_error(request, "invalid_request", validation_message(exc.errors()))
            except StarletteHTTPException as exc:
                code, message = _FRAMEWORK.get(exc.status_code, ("internal", INTERNAL_MESSAGE))
                return vault_error(request, code, message)
            except Exception as exc:  # noqa: BLE001 - opaque to the client, logged inside
                return _internal(request, exc)

        return handler


def _body_is_json(scope: MutableMapping[str, Any]) -> None:
    """Vault reads every body as JSON whatever its Content-Type (Vault's Go client sends
    none), so the face does too. Runs before anything reads the request's headers."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    scope["headers"] = [*headers, (b"content-type", b"application/json")]


def _internal(request: Request, exc: BaseException) -> JSONResponse:
    slot = request_slot(request.scope)
    logger.error(
        "unexpected %s on %s (request %s)",
        describe_exception(exc),
        route_label(request.scope),
        slot.request_id if slot is not None else "-",
    )
    return vault_error(request, "internal", INTERNAL_MESSAGE)


def new_transit_router() -> APIRouter:
    return APIRouter(route_class=TransitRoute)
