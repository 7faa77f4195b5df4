"""`AsyncKMSClient`: the asyncio twin of `KMSClient`, with the same operations (declared once
in `operations`) and the same decisions (in `session`); only the transport differs.

    async with AsyncKMSClient(url, token=token, policy=policy, trust_root=root) as kms:
        ciphertext = await kms.encrypt("orders", b"secret")

The attestation steps are CPU work (signature and certificate checks); they run in a worker
thread so the event loop keeps serving other tasks meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from enclave_kms.client import attest, core, session
from enclave_kms.client.attest import AttestedServer
from enclave_kms.client.operations import Operations, Step
from enclave_kms.client.session import REATTEST, Attested
from enclave_kms.client.tls import apeer_certificate
from enclave_kms.client.types import KeyInfo

__all__ = ["AsyncKMSClient"]

T = TypeVar("T")


class AsyncKMSClient(Operations):
    """Asyncio client of one enclave-kms server; same arguments as `KMSClient`."""

    _lock: asyncio.Lock
    _http: httpx.AsyncClient | None
    _retired: list[httpx.AsyncClient]

    def _open(self) -> None:
        self._lock, self._http, self._retired = asyncio.Lock(), None, []

    def _bind(self, build: Callable[..., Step[T]]) -> Callable[..., Coroutine[Any, Any, T]]:
        async def operation(*args: Any, **kwargs: Any) -> T:
            step = build(self, *args, **kwargs)
            if isinstance(step, core.Call):
                return await self.call(step)
            try:
                call = next(step)
                while True:
                    call = step.send(await self.call(call))
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

        return operation

    async def __aenter__(self) -> Self:
        await self._ensure()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        clients = [*self._retired, *([self._http] if self._http is not None else [])]
        self._http, self._retired = None, []
        for http in clients:
            await http.aclose()

    async def connect(self) -> AttestedServer:
        """Attest the server now (if not yet in this client, or if the attestation expired;
        a pin from an earlier process is appraised afresh here); idempotent."""
        async with self._lock:
            server = self._server
            if not isinstance(server, AttestedServer) or self._expired(server):
                server = await self._attest()
            elif self._http is None:  # closed, then used again: same pin, new connections
                self._install(server)
            return server

    async def _ensure(self) -> None:
        """Before a request: the server attested in this client, else a pin an earlier
        process left for the same TLS key and trust settings, else a fresh appraisal."""
        async with self._lock:
            server = self._server
            if server is None:
                server = self._pinned()
                if server is not None:
                    self._install(server)
                    return
            if server is None or self._expired(server):
                await self._attest()
            elif self._http is None:
                self._install(server)

    async def reattest(self) -> AttestedServer:
        """Attest again from scratch (new certificate, new nonce, fresh collateral)."""
        async with self._lock:
            return await self._attest()

    async def _attest(self) -> AttestedServer:
        der = await apeer_certificate(self._endpoint, timeout=self._timeout)
        pending = await asyncio.to_thread(attest.begin, der, now=self._clock())
        try:
            async with httpx.AsyncClient(**self._probe(pending.certificate_pem)) as http:
                answer = await http.get(
                    attest.ATTESTATION_PATH, params={"nonce": pending.nonce_hex}
                )
        except httpx.TransportError as exc:
            raise session.attestation_fetch_error(exc, self.url) from None
        doc = session.attestation_document(answer.status_code, answer.content)
        server = await asyncio.to_thread(
            attest.finish, pending, doc, self._settings, now=self._clock(), url=self.url
        )
        self._install(server)
        return server

    def _install(self, server: Attested) -> None:
        if self._http is not None:
            # Not closed yet: another task may be using it; `close()` closes it.
            self._retired.append(self._http)
        self._http = httpx.AsyncClient(**self._connection(server))
        self._attested(server)

    async def call(self, call: core.Call[T]) -> T:
        """Send one request over the pinned connection and return its typed result."""
        request = self._request(call)
        await self._ensure()
        attempts = self._attempts(call)
        while True:
            http, server = await self._pool()
            try:
                response = await http.request(**request)
            except httpx.TransportError as exc:
                await self._recover(attempts.after_error(exc), server)
                continue
            retry = attempts.after_answer(response.status_code, response.content)
            if retry is None:
                return core.read_answer(
                    call, response.status_code, response.content, response.headers
                )
            await asyncio.sleep(retry)

    async def _pool(self) -> tuple[httpx.AsyncClient, Attested | None]:
        """The pinned pool, reopened on the pin if another caller closed it meanwhile."""
        while self._http is None:
            await self._ensure()
        return self._http, self._server

    async def _recover(self, delay: float, server: Attested | None) -> None:
        if delay != REATTEST:
            await asyncio.sleep(delay)
            return
        async with self._lock:
            if self._server is server:  # not already done by another task
                await self._attest()

    async def iter_keys(self, *, page_size: int = 100) -> AsyncIterator[KeyInfo]:
        after = ""
        while True:
            page = await self.list_keys(after=after, limit=page_size)
            for key in page.keys:
                yield key
            if not page.next_after:
                return
            after = page.next_after
