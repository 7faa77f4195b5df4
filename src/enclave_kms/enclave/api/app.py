"""The KMS HTTP API (`/v1`, JSON, OpenAPI at /docs and /openapi.json) — DESIGN §11.

`create_app(ctx)` builds a FastAPI app over the services in `AppContext`. The runtime serves
it over RA-TLS inside the enclave; tests drive it in process.

Audit placement. `AuditMiddleware` is a pure ASGI middleware around the whole app (the
outermost layer: `KMSApp` leaves out FastAPI's own outer layers, see there; outside routing
and the exception handlers). It gives
every request a request id and an audit slot; routes fill in the operation, target and actor
(`api_support.AuditedRoute`), error handlers fill in the outcome (`http_errors`). When the app
sends `http.response.start`, the middleware holds it, waits until the `AuditEvent` is durable
(`AuditLog.record_async`: a future on the event loop, no thread per request) and only then
lets the response out. If
the record cannot be made durable, the client gets 503 `audit_failed` and never the original
body (fail closed): nothing is acknowledged that is not audited. Because the hook is the
response itself, requests that never reach a route — unknown path, wrong method, malformed or
oversized body, invalid token — are audited like any other.

Body limit. The same middleware counts request bytes as they are received and refuses more
than `ctx.max_body_bytes` with 413 `payload_too_large`. A declared Content-Length above the
limit is refused by every route right after authentication, before any byte is read; a body
streamed without (or beyond) its Content-Length is refused as soon as the count passes the
limit. An anonymous caller of an authenticated route gets 401 either way.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave_kms.enclave.api import (
    docs_page,
    routes_crypto,
    routes_keys,
    routes_ops,
    routes_recovery,
    routes_release,
    routes_replicas,
    routes_sys,
)
from enclave_kms.enclave.api.errors import (
    ERROR_RESPONSES,
    INTERNAL_MESSAGE,
    code_for_status,
    describe_exception,
    error_body,
    error_response,
    install_error_handlers,
)
from enclave_kms.enclave.api.hot import HotPath
from enclave_kms.enclave.api.support import (
    BEARER_SCHEME,
    BEARER_SCHEME_DOC,
    SLOT_KEY,
    AppContext,
    AttestationBundle,
    AttestationProvider,
    RequestSlot,
    body_limited,
    content_length,
    route_label,
    route_operation,
)
from enclave_kms.enclave.api.transit import DEFAULT_MOUNT, include_transit
from enclave_kms.enclave.metrics import Metrics
from enclave_kms.enclave.state.audit import AuditEvent, AuditLog
from enclave_kms.enclave.state.cache import request_scope

__all__ = ["AppContext", "AttestationBundle", "AttestationProvider", "create_app"]

logger = logging.getLogger("enclave_kms.api")

API_TITLE = "enclave-kms"
API_VERSION = "1"
AUDIT_FAILED_MESSAGE = "audit log unavailable: operation not acknowledged"
_JSON = (b"content-type", b"application/json")
STATE_HEADER = b"ekms-state"  # "v1 <installation> <generation> <head hash>": client/state_head.py
_DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json"})


def _refused_rollback(slot: RequestSlot) -> bool:
    """A refusal because the store went back behind the state head cannot be audited into
    that store (its head refuses the write): the refusal itself still goes out, since it
    acknowledges nothing, and is logged."""
    if slot.outcome != "state_rollback":
        return False
    logger.error("request %s refused: the store was rolled back (not audited)", slot.request_id)
    return True


def _operation(scope: Scope, slot: RequestSlot) -> str:
    if slot.op is not None:
        return slot.op
    op = route_operation(scope.get("route"))
    if op is not None:
        return op
    return "docs" if scope.get("path") in _DOC_PATHS else "unknown"


def _answer_failure(exc: Exception, scope: Scope, slot: RequestSlot) -> Response:
    """What a request that raised before answering gets: 413 for the body limit, else the
    opaque 500 (the details go to the log only)."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 413:
        return error_response(scope, 413, "payload_too_large", "request body is too large")
    logger.error(
        "unexpected %s on %s (request %s)",
        describe_exception(exc),
        route_label(scope),
        slot.request_id,
    )
    return error_response(scope, 500, "internal", INTERNAL_MESSAGE)


async def _last_resort(
    exc: Exception, scope: Scope, receive: Receive, send: Send, slot: RequestSlot
) -> None:
    """Answering the failure failed too (the host gone mid-answer, say), and there is no
    outer error middleware (KMSApp): the opaque typed 500, unaudited since auditing is what
    failed; never a text/plain one."""
    logger.error("unexpected %s answering request %s", describe_exception(exc), slot.request_id)
    await error_response(scope, 500, "internal", INTERNAL_MESSAGE)(scope, receive, send)


class AuditMiddleware:
    """Request ids, the body-size limit, and the audit record of every response (see the
    module docstring). Pure ASGI so it adds no per-request task or body copy."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        audit: AuditLog,
        max_body_bytes: int,
        state_head: Callable[[], str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.audit = audit
        self.max_body_bytes = max_body_bytes
        self.state_head = state_head
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        began = time.perf_counter()
        declared = content_length(scope)
        slot = RequestSlot(uuid.uuid4().hex)
        slot.declared_too_large = declared is not None and declared > limit
        scope[SLOT_KEY] = slot
        started = False
        refused = False  # the audit failed: swallow the rest of the original response
        # Refused at the first read, after authentication (module docstring).
        limited_receive = body_limited(receive, limit, refuse=slot.declared_too_large)

        async def audited_send(message: Message) -> None:
            nonlocal started, refused
            if refused:
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if self.metrics is not None:
                    self.metrics.request(route_label(scope), status, time.perf_counter() - began)
                if not await self._record(scope, slot, status) and not _refused_rollback(slot):
                    refused = True
                    started = True
                    await self._send_audit_failure(send, slot)
                    return
                headers = [*message.get("headers", ()), (b"x-request-id", slot.request_id.encode())]
                if self.state_head is not None:
                    # Read after this request's audit batch (and so its head) is durable.
                    headers.append((STATE_HEADER, self.state_head().encode("ascii")))
                message = {**message, "headers": headers}
                started = True
            await send(message)

        try:
            with request_scope():  # one state-head check per request on a shared store
                await self.app(scope, limited_receive, audited_send)
        except Exception as exc:
            if started:
                raise
            try:
                await _answer_failure(exc, scope, slot)(scope, receive, audited_send)
            except Exception as again:
                if started:
                    raise
                # The last resort (no outer error middleware: KMSApp): the opaque typed 500,
                # unaudited since auditing is what failed; never a text/plain one.
                logger.error(
                    "unexpected %s answering request %s",
                    describe_exception(again),
                    slot.request_id,
                )
                await error_response(scope, 500, "internal", INTERNAL_MESSAGE)(scope, receive, send)

    async def _record(self, scope: Scope, slot: RequestSlot, status: int) -> bool:
        outcome = slot.outcome or ("ok" if status < 400 else code_for_status(status))
        event = AuditEvent(
            actor=slot.actor,
            op=_operation(scope, slot),
            target=slot.target,
            outcome=outcome,
            request_id=slot.request_id,
            detail=slot.detail,
        )
        try:
            await self.audit.record_async(event)
        except Exception as exc:  # noqa: BLE001 - any failure to audit refuses the response
            logger.error(
                "audit record failed (%s); request %s refused", type(exc).__name__, slot.request_id
            )
            return False
        return True

    @staticmethod
    async def _send_audit_failure(send: Send, slot: RequestSlot) -> None:
        body = json.dumps(error_body("audit_failed", AUDIT_FAILED_MESSAGE)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    _JSON,
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", slot.request_id.encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document without FastAPI's default 422 (we answer 400 invalid_request)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = BEARER_SCHEME_DOC
    schemas = components.get("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    app.openapi_schema = schema
    return schema


class KMSApp(FastAPI):
    """FastAPI with our middleware (`AuditMiddleware`, then `HotPath`) as the outermost layers.

    FastAPI's own outer layers are left out because `AuditMiddleware` already does their
    work, and each costs every request a coroutine and a wrapped `send` (measured:
    docs/performance.md, "The request path"): Starlette's `ServerErrorMiddleware` (the audit
    middleware answers an unexpected exception with the one typed 500 and never re-raises
    it), FastAPI's body-size limit (ours counts the bytes and answers 413 in the typed error
    shape) and FastAPI's OpenTelemetry middleware (telemetry is off: an enclave exports no traces;
    the metrics are `/v1/metrics`). What stays inside, as in FastAPI, is the exception handling
    of the routes (the typed errors) and the exit stack of their dependencies."""

    def __init__(self, **kwargs: Any) -> None:
        # No OpenTelemetry from inside the enclave, whatever the environment says (FastAPI
        # checks its providers on every request otherwise, and may export from env settings).
        off = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
        super().__init__(telemetry=off, **kwargs)  # type: ignore[arg-type]

    def build_middleware_stack(self) -> ASGIApp:
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        app: ASGIApp = AsyncExitStackMiddleware(self.router)
        app = ExceptionMiddleware(app, handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


def create_app(
    ctx: AppContext, *, transit_mount: str = DEFAULT_MOUNT, hot_path: bool = True
) -> FastAPI:
    """The API over `ctx`, with the transit face at /v1/`transit_mount`. Every request is
    audited; see the module docstring. `hot_path` serves the cryptographic key routes with
    the thin dispatcher of api/hot.py (False: FastAPI serves every route, the reference the
    differential test compares it with)."""
    app = KMSApp(
        title=API_TITLE,
        version=API_VERSION,
        description=(
            "Key management inside an SGX enclave. Verify the server's RA-TLS evidence "
            'before sending anything; errors are {"error": {"code", "message"}}.'
        ),
        docs_url=None,  # our own page: no third-party scripts (docs_page.py)
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,
    )
    app.state.enclave_kms = ctx
    install_error_handlers(app)
    # Routes are matched in order: the cryptographic operations, most of the traffic, first.
    for module in (
        routes_crypto,
        routes_keys,
        routes_release,
        routes_sys,
        routes_recovery,
        routes_replicas,
        routes_ops,
    ):
        app.include_router(module.router(), responses=ERROR_RESPONSES)
    include_transit(app, transit_mount)  # DESIGN §16: the Vault/OpenBao transit face
    if hot_path:  # added first, so it runs inside AuditMiddleware (the last added is outermost)
        app.add_middleware(HotPath, ctx=ctx)
    app.add_middleware(
        AuditMiddleware,
        audit=ctx.audit,
        max_body_bytes=ctx.max_body_bytes,
        state_head=ctx.state_head,
        metrics=ctx.metrics,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_route("/docs", docs_page.endpoint(app.openapi), include_in_schema=False)
    return app
