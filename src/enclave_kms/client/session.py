"""What both clients share, without I/O: their settings, the request a `Call` becomes, when to
retry or re-attest, and how an attestation answer is read.

`KMSClient` and `AsyncKMSClient` differ only in how they move bytes (blocking httpx or asyncio
httpx) and in their lock; every decision is made here, once, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from enclave_kms.attestation.policy import DEFAULT_POLICY, Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import core
from enclave_kms.client.attest import AttestationSettings, AttestedServer
from enclave_kms.client.errors import error_for_response
from enclave_kms.client.pins import PinnedServer, PinStore, settings_digest
from enclave_kms.client.tls import Endpoint, is_pin_failure, pinned_context
from enclave_kms.errors import (
    AttestationError,
    ServerError,
    ServerUnreachableError,
    UnauthenticatedError,
)

if TYPE_CHECKING:
    from enclave_kms.attestation.sources import CollateralSource

log = logging.getLogger("enclave_kms.client")
USER_AGENT = "enclave-kms-client/1"
Attested = AttestedServer | PinnedServer
"""A server this client trusts: appraised now, or by an earlier process (`pins`)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Session:
    """Settings and attested state of one client (the base of both clients).

    `policy` and `trust_root` decide which servers are trusted (defaults: the strict default
    policy and Intel's root). `collateral_source` (e.g. `attestation.sources.PccsClient`)
    replaces the collateral the server ships with its evidence. `timeout` bounds every
    network step; `slow_timeout` the read of slow operations (RSA key generation).
    `retries` applies only to requests that are safe to repeat (see `core`).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        policy: Policy = DEFAULT_POLICY,
        trust_root: TrustRoot | None = None,
        collateral_source: CollateralSource | None = None,
        timeout: float = 30.0,
        slow_timeout: float = 300.0,
        retries: int = 2,
        backoff: float = 0.25,
        second_opinion: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        pins: PinStore | None = None,
    ) -> None:
        self._endpoint = Endpoint.parse(url)
        self._settings = AttestationSettings(policy, trust_root, collateral_source, second_opinion)
        self._token = token
        self._timeout = timeout
        self._slow_timeout = slow_timeout
        self._retries = max(0, retries)
        self._backoff = backoff
        self._clock = clock
        self._server: Attested | None = None
        self._pins = pins
        self._open()

    def _open(self) -> None:
        """The transport's own state (its lock and connection pool), set by each client."""
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "attested" if self._server is not None else "not attested"
        token = "set" if self._token else "none"
        return f"{type(self).__name__}({self._endpoint.base!r}, token={token}, {state})"

    @property
    def url(self) -> str:
        return self._endpoint.base

    @property
    def attestation_settings(self) -> AttestationSettings:
        """The policy, root and collateral this client trusts (recovery officers appraise a
        recovering enclave's session evidence with them: client/recovery.py)."""
        return self._settings

    def now(self) -> datetime:
        return self._clock()

    @property
    def server(self) -> AttestedServer | None:
        """The server attested by this client (None before `connect`, and while requests go
        over a pin an earlier process's appraisal left: see `pinned`)."""
        return self._server if isinstance(self._server, AttestedServer) else None

    @property
    def pinned(self) -> PinnedServer | None:
        """The earlier appraisal the requests rely on, when no fresh one was needed."""
        return self._server if isinstance(self._server, PinnedServer) else None

    def set_token(self, token: str | None) -> None:
        self._token = token

    def _adopt_token(self, token: str) -> None:
        """After `init`: use the first admin token unless one was given."""
        if not self._token:
            self._token = token

    def _pinned(self) -> PinnedServer | None:
        """An earlier appraisal of this server under the same trust settings, if any."""
        if self._pins is None:
            return None
        return self._pins.load(self.url, settings_digest(self._settings), self._clock())

    def _expired(self, server: Attested | None) -> bool:
        return server is None or self._clock() >= server.expires_at

    def _connection(self, server: Attested) -> dict[str, Any]:
        """Arguments of the pooled httpx client that trusts only the attested certificate."""
        return {
            "base_url": self._endpoint.base,
            "verify": pinned_context(server.certificate_pem),
            "timeout": self._timeout,
            "headers": {"user-agent": USER_AGENT},
            "trust_env": False,
        }

    def _probe(self, certificate_pem: str) -> dict[str, Any]:
        """Arguments of the one-off httpx client that fetches the evidence."""
        return {
            "base_url": self._endpoint.base,
            "verify": pinned_context(certificate_pem),
            "timeout": self._timeout,
            "trust_env": False,
        }

    def _request(self, call: core.Call[Any]) -> dict[str, Any]:
        """The httpx request a Call becomes; raises before any I/O when a token is missing."""
        headers: dict[str, str] = {}
        if call.auth:
            if not self._token:
                raise UnauthenticatedError(
                    "no bearer token: pass token=…, or set ENCLAVE_KMS_TOKEN "
                    "(run `enclave-kms init`)"
                )
            headers["authorization"] = f"Bearer {self._token}"
        read = self._slow_timeout if call.slow else self._timeout
        return {
            "method": call.method,
            "url": call.path,
            "json": dict(call.body) if call.body is not None else None,
            "params": dict(call.params) if call.params is not None else None,
            "headers": headers,
            "timeout": httpx.Timeout(self._timeout, read=read),
        }

    def _attempts(self, call: core.Call[Any]) -> Attempts:
        return Attempts(call, self._retries, self._backoff, self._endpoint.base)

    def _attested(self, server: Attested) -> None:
        self._server = server
        if isinstance(server, PinnedServer):
            log.info("pinned %s: TLS key %s (appraised before)", self.url, server.spki_sha256.hex())
            return
        log.info("attested %s: TLS key %s", self.url, server.spki_sha256.hex()[:16])
        if self._pins is not None:
            try:
                self._pins.save(server, settings_digest(self._settings))
            except OSError as exc:  # the next process attests again; this one is fine
                log.warning("could not keep the attestation pin: %s", exc)


REATTEST = -1.0  # `Attempts` verdict: the pin refused the certificate; attest, then re-send


@dataclass
class Attempts:
    """The retry decisions for one call. Each verdict is a delay to sleep before re-sending,
    `REATTEST`, or (for an answer) None: final. Giving up raises the typed error."""

    call: core.Call[Any]
    retries: int
    backoff: float
    base: str
    attempt: int = 0
    repinned: bool = False

    def after_error(self, exc: httpx.TransportError) -> float:
        if is_pin_failure(exc):
            if self.repinned:
                raise AttestationError(
                    "the server keeps presenting an unattested certificate", step="pinning"
                ) from None
            # The handshake failed, so this request never left: re-attest, re-send.
            log.warning("%s presented another certificate; re-attesting", self.base)
            self.repinned = True
            return REATTEST
        if self.attempt < self.retries and core.retry_transport(self.call, exc):
            return self._next()
        raise core.transport_error(self.call, exc, self.base) from None

    def after_answer(self, status: int, content: bytes) -> float | None:
        log.debug("%s %s -> %d", self.call.method, self.call.path, status)
        if self.attempt < self.retries and core.retry_status(self.call, status, content):
            return self._next()
        return None

    def _next(self) -> float:
        self.attempt += 1
        return core.backoff_delay(self.attempt, self.backoff)


def attestation_fetch_error(exc: httpx.TransportError, base: str) -> Exception:
    if is_pin_failure(exc):
        return AttestationError(
            "the server changed its certificate during attestation", step="liveness"
        )
    return ServerUnreachableError(f"cannot fetch attestation from {base}")


def attestation_document(status: int, content: bytes) -> Any:
    """The JSON of an attestation answer, or the typed error the server sent."""
    if status >= 400:
        raise error_for_response(status, content)
    try:
        return json.loads(content)
    except ValueError:
        raise ServerError("the attestation answer is not JSON") from None
