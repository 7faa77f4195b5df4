"""`KMSClient`: the blocking client. Attests the server before its first request, pins the
attested certificate, re-attests only when the server presents another one.

    with KMSClient("https://kms.example:8443", token=token, policy=policy) as kms:
        ciphertext = kms.encrypt("orders", b"secret")

The operations are declared once in `operations`, request shapes in `core`, retry decisions
in `session`, attestation steps in `attest`; this module only moves bytes (blocking httpx).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from enclave_kms.client import attest, core, session
from enclave_kms.client.attest import AttestedServer
from enclave_kms.client.operations import Operations, Step, run_flow
from enclave_kms.client.session import REATTEST, USER_AGENT, Attested
from enclave_kms.client.tls import peer_certificate
from enclave_kms.client.types import KeyInfo, KeyPage

__all__ = ["USER_AGENT", "KMSClient"]

T = TypeVar("T")


class KMSClient(Operations):
    """Blocking client of one enclave-kms server (thread-safe); arguments in `Session`."""

    _lock: threading.RLock
    _http: httpx.Client | None
    _retired: list[httpx.Client]

    def _open(self) -> None:
        self._lock, self._http, self._retired = threading.RLock(), None, []

    def _bind(self, build: Callable[..., Step[T]]) -> Callable[..., T]:
        def operation(*args: Any, **kwargs: Any) -> T:
            return run_flow(build(self, *args, **kwargs), self.call)

        return operation

    def __enter__(self) -> Self:
        self._ensure()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            clients = [*self._retired, *([self._http] if self._http is not None else [])]
            self._http, self._retired = None, []
        for http in clients:
            http.close()

    def connect(self) -> AttestedServer:
        """Attest the server now (if not yet in this client, or if the attestation expired;
        a pin from an earlier process is appraised afresh here); idempotent."""
        with self._lock:
            server = self._server
            if not isinstance(server, AttestedServer) or self._expired(server):
                server = self._attest()
            elif self._http is None:  # closed, then used again: same pin, new connections
                self._install(server)
            return server

    def _ensure(self) -> None:
        """Before a request: the server attested in this client, else a pin an earlier
        process left for the same TLS key and trust settings, else a fresh appraisal."""
        with self._lock:
            server = self._server
            if server is None:
                server = self._pinned()
                if server is not None:
                    self._install(server)
                    return
            if server is None or self._expired(server):
                self._attest()
            elif self._http is None:
                self._install(server)

    def reattest(self) -> AttestedServer:
        """Attest again from scratch (new certificate, new nonce, fresh collateral)."""
        with self._lock:
            return self._attest()

    def _attest(self) -> AttestedServer:
        der = peer_certificate(self._endpoint, timeout=self._timeout)
        pending = attest.begin(der, now=self._clock())
        try:
            with httpx.Client(**self._probe(pending.certificate_pem)) as http:
                answer = http.get(attest.ATTESTATION_PATH, params={"nonce": pending.nonce_hex})
        except httpx.TransportError as exc:
            raise session.attestation_fetch_error(exc, self.url) from None
        doc = session.attestation_document(answer.status_code, answer.content)
        server = attest.finish(pending, doc, self._settings, now=self._clock(), url=self.url)
        self._install(server)
        return server

    def _install(self, server: Attested) -> None:
        if self._http is not None:
            # Not closed yet: another thread may be using it; `close()` closes it.
            self._retired.append(self._http)
        self._http = httpx.Client(**self._connection(server))
        self._attested(server)

    def call(self, call: core.Call[T]) -> T:
        """Send one request over the pinned connection and return its typed result."""
        request = self._request(call)
        self._ensure()
        attempts = self._attempts(call)
        while True:
            http, server = self._pool()
            try:
                response = http.request(**request)
            except httpx.TransportError as exc:
                self._recover(attempts.after_error(exc), server)
                continue
            retry = attempts.after_answer(response.status_code, response.content)
            if retry is None:
                return core.read_answer(
                    call, response.status_code, response.content, response.headers
                )
            time.sleep(retry)

    def _pool(self) -> tuple[httpx.Client, Attested | None]:
        """The pinned pool, reopened on the pin if another caller closed it meanwhile."""
        while True:
            with self._lock:
                http, server = self._http, self._server
            if http is not None:
                return http, server
            self._ensure()

    def _recover(self, delay: float, server: Attested | None) -> None:
        if delay != REATTEST:
            time.sleep(delay)
            return
        with self._lock:
            if self._server is server:  # not already done by another thread
                self._attest()

    def iter_keys(self, *, page_size: int = 100) -> Iterator[KeyInfo]:
        """Every key the token may read. Records that failed authentication (altered by the
        host) are not keys and are not yielded: each page names them in `unreadable`
        (`every_page(client.list_keys, n)`, as `enclave-kms key list` reports them)."""
        return every_key(self.list_keys, page_size)


def every_page(list_keys: Callable[..., KeyPage], page_size: int) -> Iterator[KeyPage]:
    """Every page of the key listing through a blocking `list_keys` (one replica or several):
    each page's `unreadable` names are only that page's."""
    after = ""
    while True:
        page = list_keys(after=after, limit=page_size)
        yield page
        if not page.next_after:
            return
        after = page.next_after


def every_key(list_keys: Callable[..., KeyPage], page_size: int) -> Iterator[KeyInfo]:
    """Every key, page by page (`every_page`)."""
    for page in every_page(list_keys, page_size):
        yield from page.keys
