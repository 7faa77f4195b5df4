"""The client's one mapping from the server's error codes back to the exception tree.

The server answers every failure as ``{"error": {"code", "message"}}`` with the code of an
`enclave_kms.errors` class (its own table lives in `enclave/api/errors.py`). The client turns
that code back into the *same* class, so `except NotFoundError` works identically against the
service in process and over HTTPS. Codes the framework produces before any route runs
(unknown route, wrong method, oversized body) map to the closest class.

Messages are the server's (one line, no secrets by the server's own contract), truncated.
"""

from __future__ import annotations

import json
from typing import Any, Final

from enclave_kms.errors import (
    AuditError,
    BoundaryError,
    ConflictError,
    CryptoOperationError,
    EnclaveKMSError,
    IntegrityError,
    InvalidRequestError,
    KeyStateError,
    NotFoundError,
    NotReadyError,
    PermissionDeniedError,
    ServerError,
    StateRollbackError,
    StorageError,
    UnauthenticatedError,
)

MAX_MESSAGE = 300

ERROR_CODES: Final[dict[str, type[EnclaveKMSError]]] = {
    "invalid_request": InvalidRequestError,
    "crypto_failed": CryptoOperationError,
    "unauthenticated": UnauthenticatedError,
    "permission_denied": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "key_state": KeyStateError,
    "state_rollback": StateRollbackError,
    "integrity_violation": IntegrityError,
    "boundary_violation": BoundaryError,
    "storage_unavailable": StorageError,
    "audit_failed": AuditError,
    "not_ready": NotReadyError,
    # Codes produced by the framework rather than by a typed error:
    "route_not_found": NotFoundError,
    "method_not_allowed": InvalidRequestError,
    "payload_too_large": InvalidRequestError,
    # The server could not produce evidence, or failed unexpectedly: a server failure.
    "attestation_unavailable": ServerError,
    "internal": ServerError,
}
"""Server error code → exception class (the inverse of the server's ERROR_TABLE)."""

RETRYABLE_CODES: Final[frozenset[str]] = frozenset({"storage_unavailable", "audit_failed"})
"""Nothing was acknowledged; an idempotent request may be sent again."""


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."


def parse_error_body(body: bytes) -> tuple[str, str] | None:
    """(code, message) of an error body, or None when it is not the documented shape."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None
    code, message = error.get("code"), error.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    return code, message


def error_for_response(status: int, body: bytes) -> EnclaveKMSError:
    """The typed exception for an error response (status >= 400)."""
    parsed = parse_error_body(body)
    if parsed is None:
        return ServerError(f"the server answered HTTP {status} without an error body")
    code, message = parsed
    cls = ERROR_CODES.get(code)
    if cls is None:
        return ServerError(f"server error {_short(code)!r} (HTTP {status}): {_short(message)}")
    return cls(_short(message))


def error_for_item(item: Any) -> EnclaveKMSError:
    """The typed exception for one failed item of a batch answer."""
    if not isinstance(item, dict):
        return ServerError("a batch result carries a malformed error")
    code, message = item.get("code"), item.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return ServerError("a batch result carries a malformed error")
    return ERROR_CODES.get(code, ServerError)(_short(message))
