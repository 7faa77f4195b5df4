"""`KMSClient`: the blocking client. Attests the server before its first request, pins the
attested certificate, re-attests only when the server presents another one.

    with KMSClient("https://kms.example:8443", token=token, policy=policy) as kms:
        ciphertext = kms.encrypt("orders", b"secret")

Request shapes and answer parsing live in `core`; the attestation steps in `attest`; this
module only moves bytes and decides when to attest, retry or give up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from enclave_kms.attestation.policy import DEFAULT_POLICY, Policy
from enclave_kms.attestation.sources import CollateralSource
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import attest, core
from enclave_kms.client.attest import AttestationSettings, AttestedServer
from enclave_kms.client.errors import error_for_response
from enclave_kms.client.tls import Endpoint, is_pin_failure, peer_certificate, pinned_context
from enclave_kms.client.types import (
    AuditHead,
    BatchItem,
    DataKey,
    ExportedKey,
    Health,
    IssuedToken,
    KeyInfo,
    KeyPage,
    RsaKeyPair,
    TokenInfo,
    TokenPage,
    TokenPolicy,
)
from enclave_kms.errors import (
    AttestationError,
    EnclaveKMSError,
    ServerError,
    UnauthenticatedError,
)

T = TypeVar("T")
log = logging.getLogger("enclave_kms.client")
USER_AGENT = "enclave-kms-client/1"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class KMSClient:
    """Blocking client of one enclave-kms server (thread-safe).

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
    ) -> None:
        self._endpoint = Endpoint.parse(url)
        self._settings = AttestationSettings(policy, trust_root, collateral_source, second_opinion)
        self._token = token
        self._timeout = timeout
        self._slow_timeout = slow_timeout
        self._retries = max(0, retries)
        self._backoff = backoff
        self._clock = clock
        self._lock = threading.RLock()
        self._server: AttestedServer | None = None
        self._http: httpx.Client | None = None
        self._retired: list[httpx.Client] = []

    # ------------------------------------------------------------------ plumbing

    def __repr__(self) -> str:
        state = "attested" if self._server is not None else "not attested"
        token = "set" if self._token else "none"
        return f"KMSClient({self._endpoint.base!r}, token={token}, {state})"

    def __enter__(self) -> KMSClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self._endpoint.base

    @property
    def server(self) -> AttestedServer | None:
        """The attested server (None before `connect`)."""
        return self._server

    def set_token(self, token: str | None) -> None:
        self._token = token

    def close(self) -> None:
        with self._lock:
            clients = [*self._retired, *([self._http] if self._http is not None else [])]
            self._http, self._retired = None, []
        for http in clients:
            http.close()

    def connect(self) -> AttestedServer:
        """Attest the server now (if not yet, or if the attestation expired); idempotent."""
        with self._lock:
            server = self._server
            if server is None or self._clock() >= server.expires_at:
                server = self._attest()
            elif self._http is None:  # closed, then used again: same pin, new connections
                self._install(server)
            return server

    def reattest(self) -> AttestedServer:
        """Attest again from scratch (new certificate, new nonce, fresh collateral)."""
        with self._lock:
            return self._attest()

    def _attest(self) -> AttestedServer:
        endpoint = self._endpoint
        der = peer_certificate(endpoint, timeout=self._timeout)
        pending = attest.begin(der, now=self._clock())
        context = pinned_context(pending.certificate_pem)
        try:
            with httpx.Client(
                base_url=endpoint.base, verify=context, timeout=self._timeout, trust_env=False
            ) as http:
                response = http.get(attest.ATTESTATION_PATH, params={"nonce": pending.nonce_hex})
        except httpx.TransportError as exc:
            if is_pin_failure(exc):
                raise AttestationError(
                    "the server changed its certificate during attestation", step="liveness"
                ) from None
            raise ServerError(f"cannot fetch attestation from {endpoint.base}") from None
        if response.status_code >= 400:
            raise error_for_response(response.status_code, response.content)
        try:
            doc = response.json()
        except ValueError:
            raise ServerError("the attestation answer is not JSON") from None
        server = attest.finish(pending, doc, self._settings, now=self._clock(), url=endpoint.base)
        self._install(server)
        log.info("attested %s: TLS key %s", endpoint.base, server.spki_sha256.hex()[:16])
        return server

    def _install(self, server: AttestedServer) -> None:
        if self._http is not None:
            # Not closed yet: another thread may be using it; `close()` closes it.
            self._retired.append(self._http)
        self._http = httpx.Client(
            base_url=self._endpoint.base,
            verify=pinned_context(server.certificate_pem),
            timeout=self._timeout,
            headers={"user-agent": USER_AGENT},
            trust_env=False,
        )
        self._server = server

    def _headers(self, call: core.Call[Any]) -> dict[str, str]:
        if not call.auth:
            return {}
        if not self._token:
            raise UnauthenticatedError(
                "no bearer token: pass token=…, or set ENCLAVE_KMS_TOKEN (run `enclave-kms init`)"
            )
        return {"authorization": f"Bearer {self._token}"}

    def _timeouts(self, call: core.Call[Any]) -> httpx.Timeout:
        read = self._slow_timeout if call.slow else self._timeout
        return httpx.Timeout(self._timeout, read=read)

    def call(self, call: core.Call[T]) -> T:
        """Send one request over the pinned connection and return its typed result."""
        headers = self._headers(call)
        self.connect()
        repinned = False
        attempt = 0
        while True:
            with self._lock:
                http, server = self._http, self._server
            if http is None:  # closed meanwhile by another caller: reopen on the pin
                self.connect()
                continue
            try:
                response = http.request(
                    call.method,
                    call.path,
                    json=dict(call.body) if call.body is not None else None,
                    params=dict(call.params) if call.params is not None else None,
                    headers=headers,
                    timeout=self._timeouts(call),
                )
            except httpx.TransportError as exc:
                if is_pin_failure(exc):
                    if repinned:
                        raise AttestationError(
                            "the server keeps presenting an unattested certificate",
                            step="pinning",
                        ) from None
                    # The handshake failed, so this request never left: re-attest, re-send.
                    log.warning("%s presented another certificate; re-attesting", self.url)
                    with self._lock:
                        if self._server is server:  # not already done by another thread
                            self._attest()
                    repinned = True
                    continue
                if attempt < self._retries and core.retry_transport(call, exc):
                    attempt += 1
                    time.sleep(core.backoff_delay(attempt, self._backoff))
                    continue
                raise core.transport_error(call, exc, self.url) from None
            log.debug("%s %s -> %d", call.method, call.path, response.status_code)
            if attempt < self._retries and core.retry_status(
                call, response.status_code, response.content
            ):
                attempt += 1
                time.sleep(core.backoff_delay(attempt, self._backoff))
                continue
            return core.read_answer(call, response.status_code, response.content, response.headers)

    # ------------------------------------------------------------------ sys

    def health(self) -> Health:
        return self.call(core.health())

    def init(self) -> IssuedToken:
        """Issue the first admin token (works once per store). The client starts using it."""
        issued = self.call(core.init())
        if not self._token:
            self._token = issued.token
        return issued

    def audit_head(self) -> AuditHead:
        return self.call(core.audit_head())

    # ------------------------------------------------------------------ keys

    def create_key(
        self, name: str, type: str = "aes256-gcm", *, exportable: bool = False
    ) -> KeyInfo:
        return self.call(core.create_key(name, type, exportable))

    def list_keys(self, *, after: str = "", limit: int = 100) -> KeyPage:
        return self.call(core.list_keys(after, limit))

    def iter_keys(self, *, page_size: int = 100) -> Iterator[KeyInfo]:
        after = ""
        while True:
            page = self.list_keys(after=after, limit=page_size)
            yield from page.keys
            if not page.next_after:
                return
            after = page.next_after

    def get_key(self, name: str) -> KeyInfo:
        return self.call(core.read_key(name))

    def rotate_key(self, name: str) -> KeyInfo:
        return self.call(core.rotate_key(name))

    def configure_key(
        self,
        name: str,
        *,
        min_decryption_version: int | None = None,
        enabled: bool | None = None,
    ) -> KeyInfo:
        return self.call(core.configure_key(name, min_decryption_version, enabled))

    def delete_key(self, name: str, *, waiting_period_days: int = 7) -> KeyInfo:
        return self.call(core.delete_key(name, waiting_period_days))

    def restore_key(self, name: str) -> KeyInfo:
        return self.call(core.restore_key(name))

    def wrapping_key(self) -> str:
        return self.call(core.wrapping_key())

    def import_key(
        self, name: str, type: str, material: bytes, *, exportable: bool = False
    ) -> KeyInfo:
        """BYOK: `material` is wrapped here, to the enclave's wrapping key, before it leaves."""
        wrapped = core.wrap_material(self.wrapping_key(), material)
        return self.call(core.import_key(name, type, wrapped, exportable))

    def import_key_version(self, name: str, material: bytes) -> KeyInfo:
        wrapped = core.wrap_material(self.wrapping_key(), material)
        return self.call(core.import_key_version(name, wrapped))

    def export_key(self, name: str, *, version: int | None = None) -> ExportedKey:
        return self.call(core.export_key(name, version))

    # ------------------------------------------------------------------ crypto

    def encrypt(self, name: str, plaintext: bytes, *, associated_data: bytes | None = None) -> str:
        return self.call(core.encrypt(name, plaintext, associated_data))

    def decrypt(
        self, name: str, ciphertext: str | bytes, *, associated_data: bytes | None = None
    ) -> bytes:
        return self.call(core.decrypt(name, ciphertext, associated_data))

    def rewrap(
        self, name: str, ciphertext: str | bytes, *, associated_data: bytes | None = None
    ) -> str:
        return self.call(core.rewrap(name, ciphertext, associated_data))

    def encrypt_batch(
        self, name: str, items: Sequence[bytes | BatchItem]
    ) -> list[str | EnclaveKMSError]:
        return self.call(core.encrypt_batch(name, items))

    def decrypt_batch(
        self, name: str, items: Sequence[str | BatchItem]
    ) -> list[bytes | EnclaveKMSError]:
        return self.call(core.decrypt_batch(name, items))

    def generate_data_key(
        self,
        name: str,
        *,
        include_plaintext: bool = True,
        associated_data: bytes | None = None,
    ) -> DataKey:
        return self.call(core.datakey(name, include_plaintext, associated_data))

    def sign(
        self,
        name: str,
        message: bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> str:
        return self.call(
            core.sign(
                name,
                message,
                hash_algorithm=hash_algorithm,
                signature_algorithm=signature_algorithm,
                prehashed=prehashed,
            )
        )

    def verify(
        self,
        name: str,
        message: bytes,
        signature: str | bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> bool:
        return self.call(
            core.verify(
                name,
                message,
                signature,
                hash_algorithm=hash_algorithm,
                signature_algorithm=signature_algorithm,
                prehashed=prehashed,
            )
        )

    def hmac(self, name: str, data: bytes) -> str:
        return self.call(core.hmac(name, data))

    def verify_hmac(self, name: str, data: bytes, mac: str | bytes) -> bool:
        return self.call(core.verify_hmac(name, data, mac))

    def random(self, length: int) -> bytes:
        return self.call(core.random(length))

    def generate_aes_key(self) -> bytes:
        return self.call(core.generate_aes_key())

    def generate_rsa_key_pair(self) -> RsaKeyPair:
        return self.call(core.generate_rsa_key_pair())

    # ------------------------------------------------------------------ tokens

    def create_token(
        self,
        name: str,
        policies: Sequence[TokenPolicy | Mapping[str, Sequence[str]]],
        *,
        ttl_seconds: int | None = None,
    ) -> IssuedToken:
        return self.call(core.create_token(name, policies, ttl_seconds))

    def list_tokens(self, *, after: str = "", limit: int = 100) -> TokenPage:
        return self.call(core.list_tokens(after, limit))

    def get_token(self, token_id: str) -> TokenInfo:
        return self.call(core.read_token(token_id))

    def revoke_token(self, token_id: str) -> TokenInfo:
        return self.call(core.revoke_token(token_id))
