"""The attesting local proxy: unmodified clients (hvac, OpenBao's transit seal, SOPS, curl)
get the SDK's attestation without knowing of it (DESIGN §16).

    enclave-kms proxy --listen 127.0.0.1:8200 --policy policy.toml https://kms:8443

At start the proxy attests the server exactly as the SDK does (`AsyncKMSClient.connect`:
RA-TLS evidence, collateral, policy, liveness nonce) and pins the attested certificate. It
then serves plain HTTP on a loopback address only and forwards each request, unchanged, over
a connection whose only trust anchor is that certificate. Tokens pass through; the proxy
holds none.

Identity. The pinned identity is the attested TLS key (SHA-256 of its SPKI) and the enclave's
identity (MRENCLAVE, MRSIGNER, ISVPRODID). When the server presents another certificate, or
the attestation expires (certificate or collateral), the proxy attests again from scratch; if
the new attestation fails, or names another key or another enclave, the proxy refuses every
request from then on (502, ``{"errors": [...]}``) until an operator restarts it: a changed
identity is a decision for a person, not for a proxy. Nothing is forwarded to a server that
has not passed attestation under the pinned identity.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.sources import CollateralSource
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client.aio import AsyncKMSClient
from enclave_kms.client.attest import AttestedServer
from enclave_kms.client.tls import is_pin_failure, pinned_context
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    ConfigError,
    EnclaveKMSError,
    ServerError,
)

log = logging.getLogger("enclave_kms.proxy")

MAX_BODY: Final = 32 * 1024 * 1024  # OpenBao's default request limit
PINNED_HEADER: Final = "x-enclave-kms-pinned-key"
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def loopback_listen(value: str) -> tuple[str, int]:
    """HOST:PORT with HOST a loopback address: the proxy speaks plain HTTP, so it must be
    reachable only from this machine."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8200")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--listen {value!r}: the proxy serves plain HTTP and listens on loopback only "
            "(127.0.0.1, ::1 or localhost)"
        )
    return host, int(port)


@dataclass(frozen=True)
class PinnedIdentity:
    """What must not change while the proxy runs."""

    spki_sha256: bytes
    enclave: tuple[str, str, int]  # mr_enclave hex, mr_signer hex, isv_prod_id

    @classmethod
    def of(cls, server: AttestedServer) -> PinnedIdentity:
        v = server.verified
        return cls(server.spki_sha256, (v.mr_enclave.hex(), v.mr_signer.hex(), v.isv_prod_id))


@dataclass(frozen=True)
class Forwarded:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _refusal(reason: str) -> BindingError:
    """The server no longer proves the pinned identity: nothing more is forwarded."""
    return BindingError(reason, step="pinned identity")


class AttestingProxy:
    """Attest once, pin, forward; re-attest on a new certificate or expiry, refuse on a new
    identity. Safe for concurrent requests on one event loop."""

    def __init__(
        self,
        url: str,
        *,
        policy: Policy,
        trust_root: TrustRoot | None = None,
        collateral_source: CollateralSource | None = None,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._kms = AsyncKMSClient(
            url,
            policy=policy,
            trust_root=trust_root,
            collateral_source=collateral_source,
            timeout=timeout,
            clock=clock,
        )
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._pinned: PinnedIdentity | None = None
        self._server: AttestedServer | None = None
        self._http: httpx.AsyncClient | None = None
        self._retired: list[httpx.AsyncClient] = []
        self._refused: str | None = None

    @property
    def server(self) -> AttestedServer | None:
        return self._server

    @property
    def refused(self) -> str | None:
        """Why the proxy stopped forwarding (None while it forwards)."""
        return self._refused

    async def start(self) -> AttestedServer:
        """Attest the server and pin it; raises the SDK's typed error if it does not pass."""
        async with self._lock:
            server = await self._kms.connect()
            self._pinned = PinnedIdentity.of(server)
            await self._install(server)
            log.info("attested %s: pinned TLS key %s", server.url, server.spki_sha256.hex())
            return server

    async def close(self) -> None:
        clients = [*self._retired, *([self._http] if self._http is not None else [])]
        self._http, self._retired = None, []
        for http in clients:
            await http.aclose()
        await self._kms.close()

    async def _install(self, server: AttestedServer) -> None:
        if self._http is not None:
            self._retired.append(self._http)  # requests in flight may still use it
        self._http = httpx.AsyncClient(
            base_url=server.url,
            verify=pinned_context(server.certificate_pem),
            timeout=self._timeout,
            trust_env=False,
        )
        self._server = server

    async def _reattest(self, why: str, seen: AttestedServer | None) -> None:
        """Attest again (unless another request already did); refuse for good on failure or
        on another identity."""
        async with self._lock:
            if self._refused is not None:
                raise _refusal(self._refused)
            if self._server is not seen:
                return  # another request re-attested meanwhile
            try:
                server = await self._kms.reattest()
            except EnclaveKMSError as exc:
                self._refused = f"re-attestation after {why} failed: {exc.message}"
                log.error("refusing to forward: %s", self._refused)
                raise _refusal(self._refused) from None
            found = PinnedIdentity.of(server)
            if found != self._pinned:
                assert self._pinned is not None
                self._refused = (
                    f"the server's identity changed after {why} (TLS key "
                    f"{self._pinned.spki_sha256.hex()[:16]}… → {found.spki_sha256.hex()[:16]}…, "
                    f"enclave {found.enclave[0][:16]}…); restart the proxy once you trust it"
                )
                log.error("refusing to forward: %s", self._refused)
                raise _refusal(self._refused)
            await self._install(server)
            log.info("re-attested %s after %s: same identity", server.url, why)

    async def forward(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Forwarded:
        """Send one request over the pinned connection (re-attesting first if needed)."""
        if self._refused is not None:
            raise _refusal(self._refused)
        server = self._server
        if server is None:
            raise ServerError("the proxy has not attested the server yet")
        if self._clock() >= server.expires_at:
            await self._reattest("the attestation expired", server)
        sent = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
        sent.append(("accept-encoding", "identity"))
        for attempt in range(2):
            http, server = self._http, self._server
            assert http is not None
            try:
                response = await http.request(method, target, headers=sent, content=body)
            except httpx.TransportError as exc:
                if is_pin_failure(exc) and attempt == 0:
                    await self._reattest("the server presented another certificate", server)
                    continue
                raise ServerError(f"cannot reach the server: {type(exc).__name__}") from None
            kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP]
            assert self._pinned is not None
            kept.append((PINNED_HEADER, self._pinned.spki_sha256.hex()))
            return Forwarded(response.status_code, kept, response.content)
        raise AttestationError("the server's certificate changed twice in a row", step="tls")


# --------------------------------------------------------------------------- local server


def _error(status: int, message: str) -> Forwarded:
    body = json.dumps({"errors": [message], "error": {"code": "proxy", "message": message}})
    return Forwarded(status, [("content-type", "application/json")], body.encode())


class ProxyApp:
    """The local ASGI application: every request is forwarded; the proxy's own failures
    answer in Vault's error shape (502 identity or upstream, 413 body too large)."""

    def __init__(self, proxy: AttestingProxy, *, max_body: int = MAX_BODY) -> None:
        self.proxy = proxy
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._send(send, _error(413, "request body is too large"))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"").decode("latin-1")
        method = scope["method"]
        if method == "LIST":  # Vault's LIST is GET ?list=true (the enclave's parser has no LIST)
            method, query = "GET", "&".join(q for q in (query, "list=true") if q)
        target = raw_path.decode("latin-1") + (("?" + query) if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            answer = await self.proxy.forward(method, target, headers, b"".join(chunks))
        except EnclaveKMSError as exc:
            answer = _error(502, f"enclave-kms proxy: {exc.message}")
        await self._send(send, answer)

    @staticmethod
    async def _send(send: Any, answer: Forwarded) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.proxy.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def server_config(app: ProxyApp, host: str, port: int) -> Any:
    """A uvicorn config for the local side (h11: it passes Vault's LIST method through)."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http="h11", log_config=None, access_log=False, lifespan="on"
    )


__all__ = [
    "AttestingProxy",
    "Forwarded",
    "PinnedIdentity",
    "ProxyApp",
    "loopback_listen",
    "server_config",
]
