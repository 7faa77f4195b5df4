"""The hot routes without FastAPI: a thin ASGI dispatcher in front of the FastAPI app.

Measured (docs/performance.md, "The HTTP layer"): FastAPI's routing, dependency solving and
response handling cost more than the cryptography of a request, so `POST
/v1/keys/{name}/{encrypt,decrypt,rewrap,datakey,sign,verify,hmac,verify-hmac}` is served
here, and every other route (and /openapi.json, /docs) by FastAPI. Nothing is defined twice:
the request and response models, the operations (`routes_crypto.HOT_OPERATIONS`), the audit
operation and permission of each route (`routes_crypto._ROUTES`), authentication
(`support.bearer_from_headers`, `TokenService`), the error mapping (`errors.py`) and the audit
record, request id, state head and body limit (`app.AuditMiddleware`, which wraps both).

Only the well-formed request is answered here. Whatever deviates — a key name outside the
pattern, a content type other than exactly `application/json`, a body that is not JSON or
fails validation, a client that disconnects mid-body — is handed to the FastAPI route with
the body replayed, so every such answer is FastAPI's own, by construction. The differential
test (tests/enclave/test_hot_path.py) sends every documented example and error case to both.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave_kms.enclave.api.errors import typed_error_response
from enclave_kms.enclave.api.routes_crypto import HOT_OPERATIONS, hot_routes
from enclave_kms.enclave.api.support import (
    AppContext,
    bearer_from_headers,
    request_slot,
    run_inline,
)
from enclave_kms.enclave.keys.types import KEY_NAME_PATTERN
from enclave_kms.enclave.state.tokens import TokenService
from enclave_kms.errors import EnclaveKMSError

_PATH = re.compile(r"/v1/keys/([^/]+)/([a-z-]+)")
_JSON = "application/json"


class _Route:
    """One hot route; `path` is the template FastAPI's route has (log lines name it)."""

    __slots__ = ("answer", "model", "op", "path", "permission", "run")

    def __init__(self, suffix: str, op: str, permission: str) -> None:
        self.model, self.run, shape = HOT_OPERATIONS[suffix]
        self.answer: TypeAdapter[Any] = TypeAdapter(shape)  # FastAPI serialises with the same
        self.op, self.permission = op, permission
        self.path = f"/v1/keys/{{name}}/{suffix}"


def _content_type_is_json(scope: Scope) -> bool:
    values = [v for k, v in scope["headers"] if k == b"content-type"]
    return len(values) == 1 and values[0].strip().lower() == b"application/json"


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands out the messages already read, then the connection's own."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class HotPath:
    """ASGI middleware inside `AuditMiddleware`, outside FastAPI's exception middleware."""

    def __init__(self, app: ASGIApp, *, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx
        self.table = {
            suffix: _Route(suffix, op, permission)
            for suffix, (op, permission) in hot_routes().items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = _PATH.fullmatch(scope["path"])
        entry = self.table.get(match.group(2)) if match is not None else None
        if match is None or entry is None or not KEY_NAME_PATTERN.fullmatch(match.group(1)):
            await self.app(scope, receive, send)
            return
        name = match.group(1)
        slot = request_slot(scope)
        assert slot is not None, "the audit middleware must wrap the hot path"
        scope["route"] = entry  # as FastAPI's router does: log lines name the template
        slot.op = entry.op
        slot.set_target(name)
        try:
            self.ctx.require_ready(entry.op)  # as AuditedRoute: a replica serves once ready
            authorization = [
                v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"
            ]
            principal = await run_inline(
                self.ctx.tokens.authenticate, bearer_from_headers(authorization)
            )
            slot.principal, slot.actor = principal, principal.token_id
            TokenService.authorize(principal, entry.permission, name)
        except EnclaveKMSError as exc:
            await typed_error_response(scope, exc)(scope, receive, send)
            return
        if slot.declared_too_large:  # as AuditedRoute: answered by AuditMiddleware
            raise StarletteHTTPException(413)
        messages: list[Message] = []
        while True:
            message = await receive()  # over the limit: 413 from AuditMiddleware
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = self._parse(scope, messages, entry.model)
        if body is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        try:
            out = await run_inline(entry.run, self.ctx.kms, name, body)
        except EnclaveKMSError as exc:
            response: Response = typed_error_response(scope, exc)
        else:
            response = Response(entry.answer.dump_json(out, by_alias=True), media_type=_JSON)
        await response(scope, receive, send)

    @staticmethod
    def _parse(scope: Scope, messages: list[Message], model: type[BaseModel]) -> BaseModel | None:
        """The validated body, or None for anything FastAPI must answer itself."""
        if messages[-1]["type"] != "http.request" or not _content_type_is_json(scope):
            return None
        raw = b"".join(m.get("body", b"") for m in messages)
        try:
            return model.model_validate(json.loads(raw))
        except (ValueError, ValidationError):  # JSONDecodeError, UnicodeDecodeError
            return None
