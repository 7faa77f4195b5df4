"""The one place where failures become HTTP responses (DESIGN §11, §12).

Every error leaves the API as ``{"error": {"code": ..., "message": ...}}``. The status and
code come from `ERROR_TABLE` (exception classes of `enclave_kms.errors`, from the wire
contract's `ERROR_CODES`) or, for failures the
framework detects before our code runs (unknown route, wrong method, malformed JSON, request
validation, oversized body), from `HTTP_CODES`. Messages of typed errors are passed through
(the error tree promises they carry no secrets) and truncated; anything unexpected becomes an
opaque 500 whose details go only to the log.

Status choices that are not obvious:
- `KeyStateError` → 409: the request is well formed but the key's current state (disabled,
  scheduled for deletion, version below `min_decryption_version`) forbids it.
- `CryptoOperationError` → 400: a ciphertext, signature or wrapped key the client sent is not
  valid for this key; retrying the same request can never succeed.
- `IntegrityError` and `BoundaryError` → 502: the untrusted host returned a record or frame
  that failed authentication or bounds checks. The client did nothing wrong and the enclave
  is not broken: the upstream it depends on misbehaved.
- `StorageError`, `AuditError` → 503: nothing was acknowledged; a retry may succeed.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from enclave_kms.enclave.api.support import request_slot, route_label
from enclave_kms.errors import EnclaveKMSError
from enclave_kms.wire import ERROR_CODES

logger = logging.getLogger("enclave_kms.api")

MAX_MESSAGE = 300
INTERNAL_MESSAGE = "internal error; the request id identifies it in the enclave log"

ERROR_TABLE: Final[tuple[tuple[type[EnclaveKMSError], int, str], ...]] = tuple(
    (cls, entry.status, entry.code) for entry in ERROR_CODES for cls in entry.answers
)
"""Exception class → (status, code). Looked up along the MRO, so subclasses inherit a row.
Any other `EnclaveKMSError` is unexpected here and becomes the opaque 500 "internal"."""

HTTP_CODES: Final[dict[int, str]] = {
    400: "invalid_request",  # malformed JSON, failed request validation, unreadable body
    404: "route_not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
"""Status → code for failures detected by the framework or the ASGI middleware."""

_TABLE: Final[dict[type[EnclaveKMSError], tuple[int, str]]] = {
    cls: (status, code) for cls, status, code in ERROR_TABLE
}


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    message: str


class ErrorOut(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    "4XX": {"model": ErrorOut, "description": "Client error (see docs/api.md for codes)"},
    "5XX": {"model": ErrorOut, "description": "Server or upstream (host) failure"},
}


def status_for(exc: EnclaveKMSError) -> tuple[int, str]:
    """(status, code) of a typed error: the first table row along its class hierarchy."""
    for cls in type(exc).__mro__:
        found = _TABLE.get(cls)
        if found is not None:
            return found
    return 500, "internal"


def code_for_status(status: int) -> str:
    """The code used when only a status is known (framework errors, audit fallbacks)."""
    if status in HTTP_CODES:
        return HTTP_CODES[status]
    if status >= 500:
        return "internal"
    return f"http_{status}"


def _short(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": _short(message)}}


def error_response(
    scope: Mapping[str, Any],
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error response; also tells the audit middleware the outcome (the code)."""
    slot = request_slot(scope)
    if slot is not None:
        slot.outcome = code
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def describe_exception(exc: BaseException) -> str:
    """Type and innermost frames of an unexpected exception, without its message: a message
    may quote a value, and no value may reach the log."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    where = " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"
        for frame in reversed(frames)
    )
    return f"{type(exc).__name__} at {where or 'unknown'}"


def validation_message(errors: Sequence[Any]) -> str:
    """One short line from pydantic/FastAPI errors: where and what, never the input value."""
    if not errors:
        return "invalid request"
    first = errors[0] if isinstance(errors[0], dict) else {}
    loc = ".".join(str(part) for part in first.get("loc", ()))
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        text = f"malformed JSON body{': ' + str(detail) if detail else ''}"
    else:
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        text = f"{loc}: {msg}" if loc else msg
    more = len(errors) - 1
    return text + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


# --------------------------------------------------------------------------- handlers


def typed_error_response(scope: Mapping[str, Any], exc: EnclaveKMSError) -> JSONResponse:
    """The response for a typed error (both HTTP layers: FastAPI's handler and api/hot.py)."""
    status, code = status_for(exc)
    if status >= 500 and code == "internal":
        slot = request_slot(scope)
        logger.error(
            "unexpected %s on %s (request %s)",
            describe_exception(exc),
            route_label(scope),
            slot.request_id if slot is not None else "-",
        )
        message = INTERNAL_MESSAGE
    else:
        message = exc.message
        if status >= 500:
            logger.warning("%s (%s) on %s", code, type(exc).__name__, route_label(scope))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(scope, status, code, message, headers)


async def _typed_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EnclaveKMSError)
    return typed_error_response(request.scope, exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request.scope, 400, "invalid_request", validation_message(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = code_for_status(status)
    messages = {
        404: "no such endpoint",
        405: f"method {request.method} is not allowed here",
        413: "request body is too large",
        400: "request body could not be read as JSON",
    }
    message = messages.get(status, "request failed")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(request.scope, status, code, message, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; unexpected exceptions are handled by the audit middleware."""
    app.add_exception_handler(EnclaveKMSError, _typed_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Last resort of an app with Starlette's outer error middleware (the recovery app; the
    # KMS app's AuditMiddleware answers unexpected exceptions itself): never a text/plain 500.
    app.add_exception_handler(Exception, _unexpected)


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("unexpected %s on %s", describe_exception(exc), request.url.path)
    return error_response(request.scope, 500, "internal", INTERNAL_MESSAGE)
