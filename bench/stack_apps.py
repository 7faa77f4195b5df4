"""The same two endpoints on every HTTP layer that `bench/stacks.py` compares.

`GET /v1/hello` answers `{"hello": "world"}`; `POST /v1/keys/k/encrypt` does what the KMS's
encrypt route does minus auth, audit and the key store: read the body, validate it with the
server's own pydantic model (`EncryptIn`: strict, canonical base64), AES-256-GCM under a fixed
key, answer `{"ciphertext": "ekms:v1:<base64>"}`. So the rows differ only in the layer: what
FastAPI, Starlette or the server costs around the same work.

Apps: `fastapi_app`, `starlette_app`, `asgi_app` (a raw ASGI callable, the shape of the
enclave's hot-path dispatcher), `rsgi_app` (granian's own interface).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from enclave_kms.enclave.api.models import EncryptIn
from enclave_kms.wire import Ciphertext

_AEAD = AESGCM(bytes(32))
HELLO = b'{"hello":"world"}'
ENCRYPT_PATH = "/v1/keys/k/encrypt"


def _encrypt(plaintext: bytes) -> str:
    nonce = os.urandom(12)
    sealed = nonce + _AEAD.encrypt(nonce, plaintext, None)
    return "ekms:v1:" + base64.b64encode(sealed).decode("ascii")


# --------------------------------------------------------------------------- FastAPI

fastapi_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@fastapi_app.get("/v1/hello")
async def _fa_hello() -> dict[str, str]:
    return {"hello": "world"}


@fastapi_app.post(ENCRYPT_PATH)
async def _fa_encrypt(body: EncryptIn) -> Ciphertext:
    return Ciphertext(ciphertext=_encrypt(body.plaintext))


# --------------------------------------------------------------------------- Starlette


async def _st_hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def _st_encrypt(request: Request) -> JSONResponse:
    body = EncryptIn.model_validate(json.loads(await request.body()))
    return JSONResponse({"ciphertext": _encrypt(body.plaintext)})


starlette_app = Starlette(
    routes=[
        Route("/v1/hello", _st_hello, methods=["GET"]),
        Route(ENCRYPT_PATH, _st_encrypt, methods=["POST"]),
    ]
)


# --------------------------------------------------------------------------- raw ASGI


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/v1/hello":
        body = HELLO
    else:
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        request = EncryptIn.model_validate(json.loads(b"".join(chunks)))
        body = json.dumps({"ciphertext": _encrypt(request.plaintext)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": _headers(body)})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- RSGI (granian)


class RsgiApp:
    """granian's RSGI: `__rsgi__(scope, protocol)`; the body is one awaited bytes value."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        headers = [("content-type", "application/json")]
        if scope.path == "/v1/hello":
            protocol.response_bytes(200, headers, HELLO)
            return
        request = EncryptIn.model_validate(json.loads(await protocol()))
        body = json.dumps({"ciphertext": _encrypt(request.plaintext)}).encode()
        protocol.response_bytes(200, headers, body)


rsgi_app = RsgiApp()
