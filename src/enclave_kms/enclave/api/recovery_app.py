"""The HTTP face of an enclave in k-of-n recovery mode (custody/recovery.py holds the
session): health, attestation and `/v1/sys/recovery*` only, everything else 503
`recovery_in_progress`; and the switch uvicorn serves, from this app to the full API once
the storage root key is restored."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave_kms.enclave.api.errors import error_response, install_error_handlers
from enclave_kms.enclave.api.routes_sys import NONCE_REGEX, attestation_out
from enclave_kms.enclave.api.support import AttestationProvider, body_limited
from enclave_kms.enclave.custody.recovery import SESSION_FORMULA, RecoverySession
from enclave_kms.enclave.custody.shares import share_answer
from enclave_kms.errors import (
    RecoveryPendingError,
)
from enclave_kms.wire import RecoveryProgress, RecoveryShare, decode
from enclave_kms.wire import custody as wire

MAX_BODY = 64 * 1024  # a submission is a few hundred bytes


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: str = Field(pattern="^[0-9a-fA-F]{32}$")
    sealed: str = Field(max_length=8192, description="HPKE ciphertext, base64")


class BodyLimit:
    """The recovery app's request-size limit (`support.body_limited`, the full API's too, there
    inside its audit middleware): a declared Content-Length above `limit` is refused with 413
    before the app runs, a streamed body once it passes `limit`."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            response = error_response(scope, 413, "payload_too_large", "request body is too large")
            await response(scope, receive, send)
            return
        await self.app(scope, body_limited(receive, self.limit), send)


class SwitchableApp:
    """The ASGI app uvicorn serves: the recovery app, then (once restored) the full API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def recovery_app(
    session: RecoverySession, attestation: AttestationProvider, identity: dict[str, Any]
) -> FastAPI:
    """The API of an enclave in recovery mode: recovery only; everything else is 503."""
    app = FastAPI(title="enclave-kms (recovery mode)", docs_url=None, redoc_url=None)
    install_error_handlers(app)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"status": "recovering", "initialized": True, "identity": identity, "worker": 0}

    @app.get("/v1/attestation")
    def attest(nonce: Annotated[str, Query(pattern=NONCE_REGEX)]) -> Any:
        return attestation_out(attestation.attest(bytes.fromhex(nonce)), nonce)

    @app.get("/v1/sys/recovery")
    def status() -> RecoveryProgress:
        quote, collateral = session.evidence()
        progress = {
            **session.status(),
            "quote": quote,
            "collateral": collateral.decode("utf-8"),
            "report_data_formula": SESSION_FORMULA,
        }
        return decode(RecoveryProgress, progress)

    @app.get("/v1/sys/recovery/shares/{fingerprint}")
    def share(fingerprint: Annotated[str, Path(pattern=wire.FINGERPRINT_REGEX)]) -> RecoveryShare:
        found = session.set.share_for(fingerprint)
        return decode(RecoveryShare, share_answer(session.set, found, verified=False))

    @app.post("/v1/sys/recovery/submit")
    def submit(body: SubmitIn) -> RecoveryProgress:
        answer = session.submit(bytes.fromhex(body.session_id), wire.unb64(body.sealed))
        return decode(RecoveryProgress, answer)

    @app.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    def elsewhere(request: Request) -> None:
        raise RecoveryPendingError(
            f"this enclave is in recovery mode: {session.set.threshold} officers' shares "
            "restore the storage root key; until then only /v1/sys/recovery is served"
        )

    app.add_middleware(BodyLimit)
    return app
