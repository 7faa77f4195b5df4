"""The trusted process: ECALL handlers, key bootstrap and the HTTPS server (DESIGN §3, §4, §9).

`initialize` unseals (or creates) the enclave's long-lived secrets through the storage OCALLs:
  identity/storage-root-key   256-bit, sealed under MRSIGNER (upgrades keep access)
  identity/tls-key-<mrenclave> P-256 TLS key, sealed under MRENCLAVE (a new build, a new key)
  config/audit-key, config/audit-head   sealed records under the storage root key
`set_up_server` then serves HTTPS from this process for its whole life; requests never cross
the EDL, only storage, quotes, collateral, audit and log OCALLs do.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import cbor2
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.attestation.ratls import OE_FORMAT_UUID_SGX_ECDSA
from enclave_kms.enclave import tls
from enclave_kms.enclave.api.app import AppContext, AttestationBundle, create_app
from enclave_kms.enclave.channel_ecalls import ChannelEcalls
from enclave_kms.enclave.host_calls import Call, HostCalls
from enclave_kms.enclave.keys.service import KMSService
from enclave_kms.enclave.state.audit import AuditLog
from enclave_kms.enclave.state.cache import RecordCache
from enclave_kms.enclave.state.head import HEAD_ID, StateTracker
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import INIT_MARKER, RecordStore
from enclave_kms.enclave.state.tokens import TokenService
from enclave_kms.errors import (
    ConfigError,
    ConflictError,
    EnclaveKMSError,
    SealingError,
    StateRollbackError,
    UnsupportedFormatError,
)
from enclave_kms.platform.base import KeyPolicy, TeeBackend
from enclave_kms.platform.threads import HTTP_BLOCKING_THREADS
from enclave_kms.sgx.oe import CustomClaim, OeEvidence, build_oe_report, serialize_custom_claims
from enclave_kms.sgx.quote import parse_quote

log = logging.getLogger("enclave_kms.enclave")

PEM_KEY_SIZE = 512  # the tutorial zero-pads the PEM public key to 512 bytes
_SRK_AAD = b"enclave-kms/storage-root-key/v1"
_TLS_AAD = b"enclave-kms/tls-key/v1"


@dataclass(frozen=True)
class RuntimeConfig:
    """Non-secret settings the host passes to `initialize` (CBOR map)."""

    platform: str
    platform_dir: str = ""
    listen_host: str = "127.0.0.1"
    dns_names: tuple[str, ...] = ("localhost",)
    channel: dict[str, Any] = field(default_factory=dict)
    worker: int = 0  # several workers serve one store and port: this one's number
    workers: int = 1
    transit_mount: str = "transit"  # where the Vault/OpenBao transit face is mounted
    cert_lifetime: timedelta = tls.CERT_LIFETIME  # bounded: tls.MIN_/MAX_CERT_LIFETIME

    @classmethod
    def parse(cls, data: bytes) -> RuntimeConfig:
        try:
            raw = cbor2.loads(data)
        except Exception:  # noqa: BLE001 - cbor2 raises many types on garbage
            raise ConfigError("initialize: config is not CBOR") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("platform"), str):
            raise ConfigError("initialize: config must be a map with a platform name")
        try:
            return cls(
                platform=raw["platform"],
                platform_dir=str(raw.get("platform_dir", "")),
                listen_host=str(raw.get("listen_host", "127.0.0.1")),
                dns_names=tuple(str(n) for n in raw.get("dns_names", ("localhost",))),
                channel=dict(raw.get("channel") or {}),
                worker=int(raw.get("worker", 0)),
                workers=int(raw.get("workers", 1)),
                transit_mount=str(raw.get("transit_mount", "transit")),
                cert_lifetime=tls.bounded_lifetime(
                    float(raw.get("cert_lifetime_seconds", tls.CERT_LIFETIME.total_seconds()))
                ),
            )
        except (TypeError, ValueError):
            raise ConfigError("initialize: config fields have the wrong types") from None


def _shared_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket other workers can bind too (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


async def _serve_bounded(server: uvicorn.Server, sockets: list[socket.socket] | None) -> None:
    """uvicorn's `Server.run`, with anyio's worker pool bounded first (Starlette's default
    of 40 threads would exceed the enclave's thread slots: platform/threads.py)."""
    anyio.to_thread.current_default_thread_limiter().total_tokens = HTTP_BLOCKING_THREADS
    await server.serve(sockets=sockets)


def open_backend(config: RuntimeConfig) -> TeeBackend:
    """The TEE this process runs in. Simulation: the platform directory is the 'CPU'."""
    if config.platform == "sim":
        from enclave_kms.platform.sim.loader import running_identity
        from enclave_kms.platform.sim.platform import SimPlatform

        return SimPlatform.open(config.platform_dir).enclave(running_identity())
    if config.platform == "gramine":
        from enclave_kms.platform.gramine import GramineBackend

        return GramineBackend()
    raise ConfigError(f"initialize: unknown platform {config.platform!r}")


class EnclaveRuntime:
    """Holds the enclave's state between ECALLs; `handlers()` is the EDL ECALL table."""

    def __init__(self, call: Call, *, backend: TeeBackend | None = None) -> None:
        self._call = call
        self.host = HostCalls(call)
        self._backend = backend
        self._config: RuntimeConfig | None = None
        self._server: uvicorn.Server | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._state_lock = threading.Lock()
        self.stopped = threading.Event()
        self.server_done = threading.Event()
        self.store: RecordStore | None = None
        self.kms: KMSService | None = None
        self.tokens: TokenService | None = None
        self.audit: AuditLog | None = None
        self.state: StateTracker | None = None
        self.tls_key: ec.EllipticCurvePrivateKey | None = None
        self.identity: tls.TlsIdentity | None = None
        self.channel = ChannelEcalls(self)

    # ------------------------------------------------------------------ plumbing

    @property
    def backend(self) -> TeeBackend:
        if self._backend is None:
            raise EnclaveKMSError("enclave is not initialized")
        return self._backend

    @property
    def config(self) -> RuntimeConfig:
        if self._config is None:
            raise EnclaveKMSError("enclave is not initialized")
        return self._config

    def quote_for(self, report_data: bytes) -> bytes:
        """A quote over our report data. Simulation models Open Enclave's path (EREPORT to the
        QE, the host quotes it); Gramine quotes inside the library OS via /dev/attestation."""
        if self.config.platform == "gramine":
            return self.backend.get_quote(report_data)
        return self.host.quote_for(self.backend, report_data)

    def handlers(self) -> dict[str, Any]:
        return {
            "initialize": self.initialize,
            "set_up_server": self.set_up_server,
            "get_report": self.get_report,
            "get_evidence_with_pub_key": self.get_evidence_with_pub_key,
            "shutdown": self.shutdown,
            "records_changed": self.records_changed,
            **self.channel.handlers(),
        }

    # ------------------------------------------------------------------ secrets

    def _sealed_secret(self, id: str, policy: KeyPolicy, aad: bytes, make: Any) -> bytes:
        """Unseal identity/<id>, or create it with `make()` and store it sealed (CAS)."""
        for _ in range(3):
            found = self.host.get("identity", id)
            if found is not None:
                version, blob = found
                try:
                    return self.backend.unseal(blob, aad)
                except SealingError:
                    if policy is KeyPolicy.MRSIGNER:
                        raise  # never silently replace the storage root key
                    log.warning("sealed %s belongs to another build; issuing a new one", id)
            else:
                version = 0
            secret: bytes = make()
            if self.host.put("identity", id, version, self.backend.seal(secret, policy, aad)):
                return secret
        raise ConflictError(f"identity/{id} keeps changing under us; refusing to start")

    def _open_state(
        self, store: RecordStore, srk: bytes, cfg: RuntimeConfig
    ) -> tuple[ec.EllipticCurvePrivateKey, StateTracker, tuple[int, bytes] | None]:
        """Load the audit key and check the store against the signed state head (head.py);
        fail closed, naming the cause, if the host rolled back, deleted or re-added anything."""
        head_present = self.host.get(*HEAD_ID) is not None
        marker = store.get(*INIT_MARKER)
        found = store.get("config", "audit-key")
        if found is None:
            if head_present or marker is not None:
                raise StateRollbackError(
                    cause="audit-key-missing",
                    message="the audit key of this initialized installation is missing",
                )
            store.put("config", "audit-key", 0, tls.key_to_der(tls.generate_tls_key()))
            found = store.get("config", "audit-key")
            if found is None:
                raise StateRollbackError(
                    cause="audit-key-missing", message="the host dropped the audit key"
                )
        audit_key = tls.key_from_der(found.value)
        tracker = StateTracker(self.host, srk, audit_key, worker=cfg.worker, exact=cfg.workers == 1)
        marker_value = None if marker is None else marker.value
        legacy = isinstance(marker_value, dict) and not marker_value.get("state_head")

        def allow_create(records: dict[tuple[str, str], int]) -> str | None:
            if legacy:
                return "upgrade of an installation initialized before state heads"
            if marker is None and not any(kind != "config" for kind, _ in records):
                return "a store with no installation yet"
            return None

        tracker.open(allow_create=allow_create)
        store.track(tracker)
        head_id = "audit-head" if cfg.worker == 0 else f"audit-head-{cfg.worker}"
        legacy_head = None
        old = store.get("config", head_id)
        if old is not None and old.value is not None and tracker.audit_head(cfg.worker) is None:
            legacy_head = (int(old.value[0]), bytes(old.value[1]))
        if legacy and marker is not None and isinstance(marker_value, dict):
            store.put(*INIT_MARKER, marker.version, {**marker_value, "state_head": 1})
        return audit_key, tracker, legacy_head

    # ------------------------------------------------------------------ ECALLs

    def initialize(self, config: bytes) -> dict[str, Any]:
        with self._state_lock:
            if self._config is not None:
                raise ConflictError("enclave is already initialized")
            cfg = RuntimeConfig.parse(config)
            if self._backend is None:
                self._backend = open_backend(cfg)
            self._config = cfg
            srk = self._sealed_secret(
                "storage-root-key", KeyPolicy.MRSIGNER, _SRK_AAD, lambda: os.urandom(32)
            )
            ident = self.backend.identity
            tls_der = self._sealed_secret(
                f"tls-key-{ident.mr_enclave.hex()[:32]}",
                KeyPolicy.MRENCLAVE,
                _TLS_AAD,
                lambda: tls.key_to_der(tls.generate_tls_key()),
            )
            self.tls_key = tls.key_from_der(tls_der)
            store = RecordStore(self.host, RecordCipher(srk), cache=RecordCache())
            audit_key, tracker, legacy_head = self._open_state(store, srk, cfg)
            self.state = tracker
            worker = cfg.worker

            def persist_head(seq: int, prev: bytes) -> None:
                tracker.audit_advanced(worker, seq, prev)

            def commit(records: list[bytes], seq: int, prev: bytes) -> None:
                """One batch = one audit_append OCALL carrying the sealed head too (one
                transaction, one fsync); a head conflict with another worker resends it."""
                host = self.host
                tracker.audit_advanced(
                    worker,
                    seq,
                    prev,
                    put=lambda k, i, v, b: host.audit_append_with(records, k, i, v, b),
                )

            self.audit = AuditLog(
                audit_key,
                self.host.audit_append,
                head=tracker.audit_head(worker) or legacy_head,
                persist_head=persist_head,
                tail_fn=self.host.audit_tail,  # crash recovery and truncation: see AuditLog
                commit_fn=commit,
            )
            self.store = store
            self.kms = KMSService(store)
            self.tokens = TokenService(store)
            log.info("enclave initialized: mr_enclave %s", ident.mr_enclave.hex())
            return {"identity": cbor2.dumps(self.identity_claims())}

    def identity_claims(self) -> dict[str, Any]:
        ident = self.backend.identity
        return {
            "mr_enclave": ident.mr_enclave.hex(),
            "mr_signer": ident.mr_signer.hex(),
            "isv_prod_id": ident.isv_prod_id,
            "isv_svn": ident.isv_svn,
            "debug": ident.attributes.debug,
            "simulated": self.config.platform == "sim",
        }

    def attest(self, nonce: bytes) -> AttestationBundle:
        """Fresh evidence for /v1/attestation: report_data = SHA-256(SHA-256(SPKI) ‖ nonce)."""
        identity = self.identity
        if identity is None:
            raise EnclaveKMSError("server identity not issued yet")
        quote = self.quote_for(tls.report_data_for_spki(tls.spki_der(identity.key), nonce))
        return AttestationBundle(
            quote=quote,
            collateral=self.host.collateral_for(quote),
            certificate_pem=identity.certificate_pem,
        )

    def set_up_server(self, port: int, keep_server_up: bool) -> dict[str, Any]:
        """Serve HTTPS from inside the enclave until `shutdown` (or one request if not kept up)."""
        kms, tokens, audit, tls_key = self.kms, self.tokens, self.audit, self.tls_key
        if kms is None or tokens is None or audit is None or tls_key is None:
            raise EnclaveKMSError("enclave is not initialized")
        with self._state_lock:
            if self._server is not None:
                raise ConflictError("the server is already running")
            self.identity = self._server_identity(tls_key)
            app = create_app(
                AppContext(
                    kms=kms,
                    tokens=tokens,
                    audit=audit,
                    attestation=self,
                    identity=self.identity_claims(),
                    worker=self.config.worker,
                    state_head=None if self.state is None else self.state.header,
                ),
                transit_mount=self.config.transit_mount,
            )
            # Several workers share the port: the kernel spreads connections over them.
            sockets = (
                [_shared_port_socket(self.config.listen_host, port)]
                if self.config.workers > 1
                else None
            )
            self._tls_context = tls.ssl_context(self.identity)
            context = self._tls_context
            server_config = uvicorn.Config(
                app,
                host=self.config.listen_host,
                port=port,
                ssl_context_factory=lambda _cfg, _default: context,
                log_config=None,
                access_log=False,
                lifespan="off",
                loop="uvloop",  # both measured: docs/performance.md
                http="httptools",
                limit_max_requests=None if keep_server_up else 1,
                timeout_keep_alive=30,
                timeout_graceful_shutdown=2,  # in-flight requests finish; idle keep-alives close
            )
            self._server = uvicorn.Server(server_config)
        log.info("serving HTTPS on %s:%d", self.config.listen_host, port)
        threading.Thread(target=self._renew_loop, name="tls-renewal", daemon=True).start()
        try:
            server = self._server
            with asyncio.Runner(loop_factory=server_config.get_loop_factory()) as runner:
                runner.run(_serve_bounded(server, sockets))
        finally:
            self.server_done.set()
        return {}

    def _renew_loop(self) -> None:
        """Issue a fresh certificate (new evidence, same key) before the current one expires,
        without a restart: new connections get it; pinned clients keep their pin (the key is
        the same) and fresh evidence passes the same policy or they refuse it."""
        while not self.stopped.is_set():
            identity = self.identity
            if identity is None or self._tls_context is None:
                return
            expires = identity.certificate.not_valid_after_utc
            issued = identity.certificate.not_valid_before_utc + tls.NOT_BEFORE_SLACK
            due = issued + (expires - issued) * tls.RENEW_AT
            wait = max((due - datetime.now(UTC)).total_seconds(), 1.0)
            if self.stopped.wait(wait):
                return
            try:
                renewed = tls.issue_identity(
                    identity.key,
                    self.quote_for,
                    datetime.now(UTC),
                    dns_names=self.config.dns_names,
                    lifetime=self.config.cert_lifetime,
                )
                tls.load_identity(self._tls_context, renewed)
            except EnclaveKMSError as exc:
                log.error("certificate renewal failed (%s); retrying in a minute", exc.message)
                self.stopped.wait(60)
                continue
            self.identity = renewed
            self._share_certificate(renewed)
            log.info(
                "server certificate renewed; valid until %s",
                renewed.certificate.not_valid_after_utc,
            )

    def _share_certificate(self, identity: tls.TlsIdentity) -> None:
        store = self.store
        if store is None or self.config.worker != 0:
            return
        cert_id = f"tls-certificate-{self.backend.identity.mr_enclave.hex()[:32]}"
        value = {"certificate": identity.certificate_pem, "quote": identity.quote}
        try:
            found = store.get("config", cert_id)
            store.put("config", cert_id, 0 if found is None else found.version, value)
        except EnclaveKMSError as exc:
            log.warning("renewed certificate not shared with other workers: %s", exc.message)

    def _server_identity(self, key: ec.EllipticCurvePrivateKey) -> tls.TlsIdentity:
        """Worker 0 issues the RA-TLS certificate and keeps it in the sealed store; the other
        workers serve that same certificate (same build, hence the same sealed TLS key), so a
        client that pinned it sees one server whichever worker its connection reaches."""
        store = self.store
        if store is None:
            raise EnclaveKMSError("enclave is not initialized")
        cert_id = f"tls-certificate-{self.backend.identity.mr_enclave.hex()[:32]}"
        found = store.get("config", cert_id)
        if self.config.worker > 0 and found is not None:
            shared = tls.identity_for(key, found.value["certificate"], found.value["quote"])
            if shared is not None:
                return shared
            log.warning("the shared server certificate is not for this key; issuing one")
        identity = tls.issue_identity(
            key,
            self.quote_for,
            datetime.now(UTC),
            dns_names=self.config.dns_names,
            lifetime=self.config.cert_lifetime,
        )
        if self.config.worker == 0:
            value = {"certificate": identity.certificate_pem, "quote": identity.quote}
            store.put("config", cert_id, 0 if found is None else found.version, value)
        return identity

    def records_changed(self, kind: str, id: str) -> dict[str, Any]:
        """Another worker wrote or deleted (kind, id): drop this worker's copy."""
        if self.store is not None:
            self.store.forget(kind, id)
        return {}

    def _pem_key(self) -> bytes:
        if self.tls_key is None:
            raise EnclaveKMSError("enclave is not initialized")
        pem = self.tls_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem.ljust(PEM_KEY_SIZE, b"\0")

    def get_report(self) -> dict[str, Any]:
        """The tutorial's report: OE header + quote binding SHA-256 of the padded PEM key."""
        pem_key = self._pem_key()
        quote = self.quote_for(hashlib.sha256(pem_key).digest() + bytes(32))
        return {"pem_key": pem_key, "report": build_oe_report(quote)}

    def get_evidence_with_pub_key(
        self, format_id: bytes, format_settings: bytes | None
    ) -> dict[str, Any]:
        """OE evidence whose custom claims are the tutorial's "Event" and "Public key hash"."""
        if format_id != OE_FORMAT_UUID_SGX_ECDSA:
            raise UnsupportedFormatError(f"evidence format {format_id.hex()} is not SGX_ECDSA")
        pem_key = self._pem_key()
        claims = serialize_custom_claims(
            [
                CustomClaim("Event", b"enclave-kms: evidence with public key"),
                CustomClaim("Public key hash", hashlib.sha256(pem_key).digest()),
            ]
        )
        quote = self.quote_for(hashlib.sha256(claims).digest() + bytes(32))
        evidence = OeEvidence(parse_quote(quote), claims).to_bytes()
        return {"pem_key": pem_key, "evidence": evidence}

    def shutdown(self) -> dict[str, Any]:
        if self._server is not None:
            self._server.should_exit = True
        self.stopped.set()
        return {}

    def wait_server_stopped(self, timeout: float) -> None:
        """Give in-flight requests a moment to finish (uvicorn drains them on should_exit)."""
        if self._server is not None:
            self.server_done.wait(timeout)
