"""`AsyncKMSClient`: the asyncio twin of `KMSClient`, sending the same `core.Call`s.

    async with AsyncKMSClient(url, token=token, policy=policy, trust_root=root) as kms:
        ciphertext = await kms.encrypt("orders", b"secret")

The attestation steps are CPU work (signature and certificate checks); they run in a worker
thread so the event loop keeps serving other tasks meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
from enclave_kms.client.sync import USER_AGENT
from enclave_kms.client.tls import Endpoint, apeer_certificate, is_pin_failure, pinned_context
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


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AsyncKMSClient:
    """Asyncio client of one enclave-kms server; same arguments as `KMSClient`."""

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
        self._lock = asyncio.Lock()
        self._server: AttestedServer | None = None
        self._http: httpx.AsyncClient | None = None
        self._retired: list[httpx.AsyncClient] = []

    # ------------------------------------------------------------------ plumbing

    def __repr__(self) -> str:
        state = "attested" if self._server is not None else "not attested"
        token = "set" if self._token else "none"
        return f"AsyncKMSClient({self._endpoint.base!r}, token={token}, {state})"

    async def __aenter__(self) -> AsyncKMSClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return self._endpoint.base

    @property
    def server(self) -> AttestedServer | None:
        return self._server

    def set_token(self, token: str | None) -> None:
        self._token = token

    async def close(self) -> None:
        clients = [*self._retired, *([self._http] if self._http is not None else [])]
        self._http, self._retired = None, []
        for http in clients:
            await http.aclose()

    async def connect(self) -> AttestedServer:
        """Attest the server now (if not yet, or if the attestation expired); idempotent."""
        async with self._lock:
            server = self._server
            if server is None or self._clock() >= server.expires_at:
                server = await self._attest()
            elif self._http is None:  # closed, then used again: same pin, new connections
                await self._install(server)
            return server

    async def reattest(self) -> AttestedServer:
        async with self._lock:
            return await self._attest()

    async def _attest(self) -> AttestedServer:
        endpoint = self._endpoint
        der = await apeer_certificate(endpoint, timeout=self._timeout)
        pending = await asyncio.to_thread(attest.begin, der, now=self._clock())
        context = pinned_context(pending.certificate_pem)
        try:
            async with httpx.AsyncClient(
                base_url=endpoint.base, verify=context, timeout=self._timeout, trust_env=False
            ) as http:
                response = await http.get(
                    attest.ATTESTATION_PATH, params={"nonce": pending.nonce_hex}
                )
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
        server = await asyncio.to_thread(
            attest.finish, pending, doc, self._settings, now=self._clock(), url=endpoint.base
        )
        await self._install(server)
        log.info("attested %s: TLS key %s", endpoint.base, server.spki_sha256.hex()[:16])
        return server

    async def _install(self, server: AttestedServer) -> None:
        if self._http is not None:
            # Not closed yet: another task may be using it; `close()` closes it.
            self._retired.append(self._http)
        self._http = httpx.AsyncClient(
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

    async def call(self, call: core.Call[T]) -> T:
        """Send one request over the pinned connection and return its typed result."""
        headers = self._headers(call)
        await self.connect()
        repinned = False
        attempt = 0
        while True:
            http, server = self._http, self._server
            if http is None:  # closed meanwhile by another caller: reopen on the pin
                await self.connect()
                continue
            try:
                response = await http.request(
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
                    log.warning("%s presented another certificate; re-attesting", self.url)
                    async with self._lock:
                        if self._server is server:
                            await self._attest()
                    repinned = True
                    continue
                if attempt < self._retries and core.retry_transport(call, exc):
                    attempt += 1
                    await asyncio.sleep(core.backoff_delay(attempt, self._backoff))
                    continue
                raise core.transport_error(call, exc, self.url) from None
            log.debug("%s %s -> %d", call.method, call.path, response.status_code)
            if attempt < self._retries and core.retry_status(
                call, response.status_code, response.content
            ):
                attempt += 1
                await asyncio.sleep(core.backoff_delay(attempt, self._backoff))
                continue
            return core.read_answer(call, response.status_code, response.content, response.headers)

    # ------------------------------------------------------------------ sys

    async def health(self) -> Health:
        return await self.call(core.health())

    async def init(self) -> IssuedToken:
        """Issue the first admin token (works once per store). The client starts using it."""
        issued = await self.call(core.init())
        if not self._token:
            self._token = issued.token
        return issued

    async def audit_head(self) -> AuditHead:
        return await self.call(core.audit_head())

    # ------------------------------------------------------------------ keys

    async def create_key(
        self, name: str, type: str = "aes256-gcm", *, exportable: bool = False
    ) -> KeyInfo:
        return await self.call(core.create_key(name, type, exportable))

    async def list_keys(self, *, after: str = "", limit: int = 100) -> KeyPage:
        return await self.call(core.list_keys(after, limit))

    async def iter_keys(self, *, page_size: int = 100) -> AsyncIterator[KeyInfo]:
        after = ""
        while True:
            page = await self.list_keys(after=after, limit=page_size)
            for key in page.keys:
                yield key
            if not page.next_after:
                return
            after = page.next_after

    async def get_key(self, name: str) -> KeyInfo:
        return await self.call(core.read_key(name))

    async def rotate_key(self, name: str) -> KeyInfo:
        return await self.call(core.rotate_key(name))

    async def configure_key(
        self,
        name: str,
        *,
        min_decryption_version: int | None = None,
        enabled: bool | None = None,
    ) -> KeyInfo:
        return await self.call(core.configure_key(name, min_decryption_version, enabled))

    async def delete_key(self, name: str, *, waiting_period_days: int = 7) -> KeyInfo:
        return await self.call(core.delete_key(name, waiting_period_days))

    async def restore_key(self, name: str) -> KeyInfo:
        return await self.call(core.restore_key(name))

    async def wrapping_key(self) -> str:
        return await self.call(core.wrapping_key())

    async def import_key(
        self, name: str, type: str, material: bytes, *, exportable: bool = False
    ) -> KeyInfo:
        """BYOK: `material` is wrapped here, to the enclave's wrapping key, before it leaves."""
        wrapped = core.wrap_material(await self.wrapping_key(), material)
        return await self.call(core.import_key(name, type, wrapped, exportable))

    async def import_key_version(self, name: str, material: bytes) -> KeyInfo:
        wrapped = core.wrap_material(await self.wrapping_key(), material)
        return await self.call(core.import_key_version(name, wrapped))

    async def export_key(self, name: str, *, version: int | None = None) -> ExportedKey:
        return await self.call(core.export_key(name, version))

    # ------------------------------------------------------------------ crypto

    async def encrypt(
        self, name: str, plaintext: bytes, *, associated_data: bytes | None = None
    ) -> str:
        return await self.call(core.encrypt(name, plaintext, associated_data))

    async def decrypt(
        self, name: str, ciphertext: str | bytes, *, associated_data: bytes | None = None
    ) -> bytes:
        return await self.call(core.decrypt(name, ciphertext, associated_data))

    async def rewrap(
        self, name: str, ciphertext: str | bytes, *, associated_data: bytes | None = None
    ) -> str:
        return await self.call(core.rewrap(name, ciphertext, associated_data))

    async def encrypt_batch(
        self, name: str, items: Sequence[bytes | BatchItem]
    ) -> list[str | EnclaveKMSError]:
        return await self.call(core.encrypt_batch(name, items))

    async def decrypt_batch(
        self, name: str, items: Sequence[str | BatchItem]
    ) -> list[bytes | EnclaveKMSError]:
        return await self.call(core.decrypt_batch(name, items))

    async def generate_data_key(
        self,
        name: str,
        *,
        include_plaintext: bool = True,
        associated_data: bytes | None = None,
    ) -> DataKey:
        return await self.call(core.datakey(name, include_plaintext, associated_data))

    async def sign(
        self,
        name: str,
        message: bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> str:
        return await self.call(
            core.sign(
                name,
                message,
                hash_algorithm=hash_algorithm,
                signature_algorithm=signature_algorithm,
                prehashed=prehashed,
            )
        )

    async def verify(
        self,
        name: str,
        message: bytes,
        signature: str | bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> bool:
        return await self.call(
            core.verify(
                name,
                message,
                signature,
                hash_algorithm=hash_algorithm,
                signature_algorithm=signature_algorithm,
                prehashed=prehashed,
            )
        )

    async def hmac(self, name: str, data: bytes) -> str:
        return await self.call(core.hmac(name, data))

    async def verify_hmac(self, name: str, data: bytes, mac: str | bytes) -> bool:
        return await self.call(core.verify_hmac(name, data, mac))

    async def random(self, length: int) -> bytes:
        return await self.call(core.random(length))

    async def generate_aes_key(self) -> bytes:
        return await self.call(core.generate_aes_key())

    async def generate_rsa_key_pair(self) -> RsaKeyPair:
        return await self.call(core.generate_rsa_key_pair())

    # ------------------------------------------------------------------ tokens

    async def create_token(
        self,
        name: str,
        policies: Sequence[TokenPolicy | Mapping[str, Sequence[str]]],
        *,
        ttl_seconds: int | None = None,
    ) -> IssuedToken:
        return await self.call(core.create_token(name, policies, ttl_seconds))

    async def list_tokens(self, *, after: str = "", limit: int = 100) -> TokenPage:
        return await self.call(core.list_tokens(after, limit))

    async def get_token(self, token_id: str) -> TokenInfo:
        return await self.call(core.read_token(token_id))

    async def revoke_token(self, token_id: str) -> TokenInfo:
        return await self.call(core.revoke_token(token_id))
