"""What every route of the HTTP API shares: the application context, the per-request audit
slot, authentication before anything else, and the helper that declares a route.

Split from `api.py` so the route modules can import it without importing the app factory.

Order of checks for an authenticated route (done by `AuditedRoute` before FastAPI reads or
validates the body): bearer token (401), then permission on the key named in the path, or
the global permission (403). Routes that name their key in the body (create, import)
authorize in the route function once the body is valid. So an anonymous caller learns
nothing about the shape of requests it may not make.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, ParamSpec, Protocol, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.datastructures import Default
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope

from enclave_kms.enclave.custody.service import ReplicaCustody
from enclave_kms.enclave.custody.shares import RecoveryCustody
from enclave_kms.enclave.keys.release import ReleaseService
from enclave_kms.enclave.keys.service import KMSService
from enclave_kms.enclave.metrics import Metrics
from enclave_kms.enclave.replicas import ReplicaSet
from enclave_kms.enclave.state.audit import AuditLog
from enclave_kms.enclave.state.cache import WouldBlock, memory_only
from enclave_kms.enclave.state.tokens import Principal, TokenService
from enclave_kms.errors import UnauthenticatedError

P = ParamSpec("P")
R = TypeVar("R")

SLOT_KEY: Final = "enclave_kms.request"
X_OPERATION: Final = "x-operation"
X_PERMISSION: Final = "x-permission"
MAX_TARGET = 128
BODY_KEYED: Final = frozenset({"keys.create", "keys.import"})
"""Audit operations whose key name is in the body: authorized by the route function."""
BEFORE_READY: Final = frozenset(
    {"sys.health", "sys.ready", "sys.attestation", "sys.metrics", "sys.replicas.confirm"}
)
"""What a replica answers before a majority has confirmed its state (enclave/replicas.py):
nothing that reads or writes keys or tokens."""


# --------------------------------------------------------------------------- the context


@dataclass
class AttestationBundle:
    """Fresh evidence for `GET /v1/attestation`."""

    quote: bytes  # DCAP quote whose report_data[0:32] == SHA-256(spki_sha256 || nonce)
    collateral: bytes  # dcap-qvl collateral JSON bytes for that quote
    certificate_pem: bytes  # the server's current RA-TLS certificate


class AttestationProvider(Protocol):
    def attest(self, nonce: bytes) -> AttestationBundle: ...


@dataclass
class AppContext:
    """Everything the API needs; built by the enclave runtime (or by tests)."""

    kms: KMSService
    tokens: TokenService
    audit: AuditLog
    attestation: AttestationProvider
    identity: Mapping[str, object]  # mr_enclave, mr_signer (hex), isv_prod_id, isv_svn, ...
    max_body_bytes: int = 1 << 20
    worker: int = 0  # which enclave worker this is; its audit chain has the same number
    state_head: Callable[[], str] | None = None  # the signed state head, as clients see it
    release: ReleaseService | None = None  # key release to attested workloads (DESIGN §15)
    custody: RecoveryCustody | None = None  # k-of-n recovery of the SRK (routes_recovery)
    joins: ReplicaCustody | None = None  # the replica policy and the peer side of joins
    replicas: ReplicaSet | None = None  # replicas only: readiness and the peers' answers
    metrics: Metrics | None = None
    refresh_state: Callable[[], object] | None = None  # readiness: the store answers, not behind

    def require_ready(self, op: str) -> None:
        """The readiness gate of every route and the hot path: a replica serves `op` only once
        a majority confirmed its state head (except what readiness itself needs)."""
        if self.replicas is not None and op not in BEFORE_READY:
            self.replicas.require_ready()


def app_context(request: Request) -> AppContext:
    ctx = request.app.state.enclave_kms
    assert isinstance(ctx, AppContext)
    return ctx


# --------------------------------------------------------------------------- the audit slot


@dataclass
class RequestSlot:
    """What the audit record of one request says; filled in as the request is understood."""

    request_id: str
    actor: str = "anonymous"
    op: str | None = None
    target: str = ""
    outcome: str | None = None  # an error code; None means "derive from the status"
    principal: Principal | None = None
    declared_too_large: bool = False  # Content-Length above the limit
    detail: str = ""  # non-secret audit detail (key release: workload identity and policy)

    def set_target(self, value: object) -> None:
        if isinstance(value, str):
            self.target = value[:MAX_TARGET]


def content_length(scope: Scope) -> int | None:
    """The request's declared Content-Length, None if absent or not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def body_limited(receive: Receive, limit: int, *, refuse: bool = False) -> Receive:
    """The body-size limit, the one definition both apps (full API and recovery mode) use:
    `receive` counting request bytes as they arrive and raising Starlette's 413 (which the
    apps answer as 413 `payload_too_large`) once more than `limit` arrived, or at the first
    read with `refuse` (a declared Content-Length above the limit)."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        if refuse:
            raise StarletteHTTPException(413)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise StarletteHTTPException(413)
        return message

    return limited


def request_slot(scope: Mapping[str, Any]) -> RequestSlot | None:
    slot = scope.get(SLOT_KEY)
    return slot if isinstance(slot, RequestSlot) else None


def _slot(request: Request) -> RequestSlot:
    slot = request_slot(request.scope)
    assert slot is not None, "the audit middleware must wrap the API"
    return slot


def route_operation(route: object) -> str | None:
    """The audit operation declared on a route (also for a 405 on its path)."""
    extra = getattr(route, "openapi_extra", None)
    op = extra.get(X_OPERATION) if isinstance(extra, dict) else None
    return op if isinstance(op, str) else None


def route_label(scope: Mapping[str, Any]) -> str:
    """Method and route template for log lines: never the concrete path, which carries
    client-chosen values."""
    template = getattr(scope.get("route"), "path", None)
    return f"{scope.get('method', '?')} {template if isinstance(template, str) else '-'}"


# --------------------------------------------------------------------------- auth


def bearer_token(request: Request) -> str:
    return bearer_from_headers(request.headers.getlist("authorization"))


def bearer_from_headers(headers: list[str]) -> str:
    """The token of the request's Authorization header values (both HTTP layers)."""
    if not headers:
        raise UnauthenticatedError("missing bearer token (Authorization: Bearer <token>)")
    if len(headers) > 1:
        # Proxies and servers disagree on which of several wins: refuse to guess.
        raise UnauthenticatedError("more than one Authorization header")
    header = headers[0]
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthenticatedError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class AuditedRoute(APIRoute):
    """An APIRoute that records its operation and target and authenticates (and, for keys
    named in the path, authorizes) before FastAPI reads the body.

    Subclasses (the transit face) choose where the token is read (`token`) and which
    operations authorize in the route function (`body_authorized`)."""

    body_authorized: frozenset[str] = BODY_KEYED

    def token(self, request: Request) -> str:
        return bearer_token(request)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        extra = self.openapi_extra or {}
        op = str(extra[X_OPERATION])
        permission = extra.get(X_PERMISSION)

        async def handler(request: Request) -> Response:
            slot = _slot(request)
            slot.op = op
            path_key = request.path_params.get("name")
            slot.set_target(path_key if path_key is not None else request.path_params.get("id"))
            app_context(request).require_ready(op)
            if permission is not None:
                tokens = app_context(request).tokens
                principal = await run_inline(tokens.authenticate, self.token(request))
                slot.principal, slot.actor = principal, principal.token_id
                if op not in self.body_authorized:
                    key = path_key if isinstance(path_key, str) else None
                    TokenService.authorize(principal, str(permission), key)
            if slot.declared_too_large:  # refused even by routes that never read a body
                raise StarletteHTTPException(413)
            return await inner(request)

        return handler


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of a route (injected with `Depends(caller)`)."""

    slot: RequestSlot

    @property
    def principal(self) -> Principal:
        assert self.slot.principal is not None
        return self.slot.principal

    def authorize(self, permission: str, key: str | None) -> None:
        """For routes whose key is in the body: record it as the target, then check."""
        self.slot.set_target(key)
        TokenService.authorize(self.principal, permission, key)

    def allowed(self, permission: str, key: str) -> bool:
        return TokenService.allowed(self.principal, permission, key)

    def set_target(self, value: str) -> None:
        self.slot.set_target(value)


async def caller(request: Request) -> Caller:
    """The caller of this request (principal None on anonymous routes)."""
    return Caller(_slot(request))


BEARER_SCHEME: Final = "HTTPBearer"
BEARER_SCHEME_DOC: Final = {
    "type": "http",
    "scheme": "bearer",
    "description": "ekms_<id>_<secret> bearer token",
}
"""Declared in the OpenAPI document only (`api._openapi`): authentication is done by
`AuditedRoute`, and a FastAPI security dependency would run again on every request."""


def add_route(
    router: APIRouter,
    method: str,
    path: str,
    endpoint: Callable[..., Any],
    *,
    op: str,
    permission: str | None,
    status_code: int = 200,
    summary: str | None = None,
    exclude_none: bool = False,
    inline: bool = False,
    response_class: type[Response] | None = None,
    include_in_schema: bool = True,
) -> None:
    """Declare one route with its audit operation and the token permission it needs.

    `inline` routes run on the event loop (see `run_inline`); only for endpoints whose work
    is a bounded amount of CPU once their records are cached (no key generation)."""
    if inline:
        endpoint = _inline_endpoint(endpoint)
    extra: dict[str, Any] = {X_OPERATION: op}
    if permission is not None:
        extra[X_PERMISSION] = permission
        extra["security"] = [{BEARER_SCHEME: []}]
    router.add_api_route(
        path,
        endpoint,
        methods=[method],
        status_code=status_code,
        summary=summary,
        openapi_extra=extra,
        response_model_exclude_none=exclude_none,
        include_in_schema=include_in_schema,
        response_class=Default(JSONResponse) if response_class is None else response_class,
    )


async def run_inline(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run `fn` on the event loop if it needs no OCALL, else on a worker thread.

    A thread-pool hop costs more than an encryption under a cached key (measured: three hops
    per request halved the rate). So `fn` first runs inside `memory_only()`; a store access
    that would wait on the host raises `WouldBlock` before anything was written, and `fn`
    runs again from the start on a worker thread, where it may call the host.
    """
    try:
        with memory_only():
            return fn(*args, **kwargs)
    except WouldBlock:
        return await run_in_threadpool(fn, *args, **kwargs)


def _inline_endpoint(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """An `async def` twin of a plain endpoint that runs it through `run_inline`. FastAPI
    reads the parameters through `__wrapped__`, so validation and OpenAPI are unchanged."""

    @functools.wraps(endpoint)
    async def inline(*args: Any, **kwargs: Any) -> Any:
        return await run_inline(endpoint, *args, **kwargs)

    return inline


def new_router() -> APIRouter:
    return APIRouter(route_class=AuditedRoute)
