"""The trusted process: ECALL handlers, key bootstrap and the HTTPS server (DESIGN §3, §4, §9).

`initialize` unseals (or creates) the enclave's long-lived secrets through the storage OCALLs:
  identity/storage-root-key   256-bit, sealed under MRSIGNER (upgrades keep access); a replica
                              that joined keeps its own copy (enclave/custody/joiner.py)
  identity/tls-key-<mrenclave> P-256 TLS key, sealed under MRENCLAVE (a new build, a new key)
  config/audit-key, config/audit-head   sealed records under the storage root key
`set_up_server` then serves HTTPS from this process for its whole life; requests never cross
the EDL, only storage, quotes, collateral, audit and log OCALLs do.

Lifecycle: `initialize` opens the platform and the TLS key (one frozen `Booted`), then the
store under the storage root key (one frozen `Initialized`); every ECALL that needs them asks
`booted()` / `ready()`, which raise NotInitializedError before then. In k-of-n recovery mode
(custody/) only `Booted` exists until k officers' shares restore the key. Serving
(`set_up_server`) adds the TLS identity, renewed in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import cbor2
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.types import ASGIApp

from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.ratls import OE_FORMAT_UUID_SGX_ECDSA
from enclave_kms.enclave import tls
from enclave_kms.enclave.api.app import AppContext, AttestationBundle, create_app
from enclave_kms.enclave.api.recovery_app import SwitchableApp, recovery_app
from enclave_kms.enclave.channel_ecalls import ChannelEcalls, ChannelSide
from enclave_kms.enclave.config import RuntimeConfig, here, open_backend
from enclave_kms.enclave.custody.joiner import SRK_AAD, Found, Joined
from enclave_kms.enclave.custody.recovery import RecoveryEvent, RecoverySession, start_session
from enclave_kms.enclave.custody.service import ReplicaCustody
from enclave_kms.enclave.custody.shares import RecoveryCustody, SetStore
from enclave_kms.enclave.host_calls import Call, HostCalls
from enclave_kms.enclave.keys.release import ReleaseService
from enclave_kms.enclave.keys.service import KMSService
from enclave_kms.enclave.metrics import Metrics, TimedBackend
from enclave_kms.enclave.replicas import LocalHead, ReplicaSet
from enclave_kms.enclave.state.audit import AuditEvent, AuditLog
from enclave_kms.enclave.state.cache import RecordCache
from enclave_kms.enclave.state.head import HEAD_ID, StateTracker
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import INIT_MARKER, RecordStore
from enclave_kms.enclave.state.tokens import TokenService
from enclave_kms.enclave.workload import WORKLOAD_ECALLS, refused
from enclave_kms.errors import (
    ConfigError,
    ConflictError,
    EnclaveKMSError,
    NotInitializedError,
    SealingError,
    StateRollbackError,
    UnsupportedFormatError,
    VersionConflict,
)
from enclave_kms.platform.base import KeyPolicy, TeeBackend
from enclave_kms.platform.threads import HTTP_BLOCKING_THREADS
from enclave_kms.sgx.oe import CustomClaim, OeEvidence, build_oe_report, serialize_custom_claims
from enclave_kms.sgx.quote import parse_quote

log = logging.getLogger("enclave_kms.enclave")

PEM_KEY_SIZE = 512  # the tutorial zero-pads the PEM public key to 512 bytes
_TLS_AAD = b"enclave-kms/tls-key/v1"


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


@dataclass(frozen=True)
class Booted:
    """What `initialize` opens first, in every mode: the platform and the TLS key. In
    k-of-n recovery mode (custody/) the enclave stays here, serving only recovery, until the
    storage root key is restored."""

    config: RuntimeConfig
    backend: TeeBackend
    tls_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Initialized:
    """Everything `initialize` opened: it exists only once the enclave is initialized, so
    no field is ever half set. The TLS identity is not here: it is issued when serving
    starts and renewed in place."""

    config: RuntimeConfig
    backend: TeeBackend
    tls_key: ec.EllipticCurvePrivateKey
    store: RecordStore
    state: StateTracker
    audit: AuditLog
    kms: KMSService
    tokens: TokenService
    release: ReleaseService
    custody: RecoveryCustody

    def certificate_id(self) -> str:
        """The sealed record holding this build's RA-TLS certificate (shared by workers)."""
        return self.config.scoped(
            f"tls-certificate-{self.backend.identity.mr_enclave.hex()[:32]}{here(self.config)}"
        )


class EnclaveRuntime:
    """Holds the enclave's state between ECALLs; `handlers()` is the EDL ECALL table."""

    def __init__(self, call: Call, *, backend: TeeBackend | None = None) -> None:
        self._call = call
        self.host = HostCalls(call)
        self._given_backend = backend  # tests and embedders pass one; else from the config
        self._booted: Booted | None = None
        self._initialized: Initialized | None = None
        self.recovery: RecoverySession | None = None  # k-of-n recovery mode (custody/)
        self._app: SwitchableApp | None = None
        self._initialize_called = False
        self._server: uvicorn.Server | None = None
        self._tls_context: ssl.SSLContext | None = None
        self._state_lock = threading.Lock()
        self.stopped = threading.Event()
        self.server_done = threading.Event()
        self.metrics = Metrics()
        self.quorum: ReplicaSet | None = None  # replicas: the peers confirm the state head
        self._storage = TimedBackend(self.host, self.metrics)
        self.identity: tls.TlsIdentity | None = None
        self.channel = ChannelEcalls(self._channel_side)
        self.joins = ReplicaCustody(self.host)  # the replica policy and joins (custody/)

    # ------------------------------------------------------------------ plumbing

    def ready(self) -> Initialized:
        """The initialized state; NotInitializedError before `initialize` has succeeded."""
        state = self._initialized
        if state is None:
            raise NotInitializedError("enclave is not initialized")
        return state

    def booted(self) -> Booted:
        """Platform and TLS key (also in recovery mode); NotInitializedError before."""
        booted = self._booted
        if booted is None:
            raise NotInitializedError("enclave is not initialized")
        return booted

    def quote_for(self, report_data: bytes) -> bytes:
        """A quote over our report data. Simulation models Open Enclave's path (EREPORT to the
        QE, the host quotes it); Gramine quotes inside the library OS via /dev/attestation."""
        booted = self.booted()
        if booted.config.platform == "gramine":
            return booted.backend.get_quote(report_data)
        return self.host.quote_for(booted.backend, report_data)

    def _channel_side(self) -> ChannelSide:
        ready = self.ready()
        return ChannelSide(
            settings=ready.config.channel,
            mr_enclave=ready.backend.identity.mr_enclave,
            quote_for=self.quote_for,
            collateral_for=self.host.collateral_for,
        )

    def handlers(self) -> dict[str, Any]:
        return {
            "initialize": self.initialize,
            "set_up_server": self.set_up_server,
            "get_report": self.get_report,
            "get_evidence_with_pub_key": self.get_evidence_with_pub_key,
            "shutdown": self.shutdown,
            "records_changed": self.records_changed,
            **self.channel.handlers(),
            **{
                name: refused(name, "the KMS, not a key-release workload")
                for name in WORKLOAD_ECALLS
            },
        }

    # ------------------------------------------------------------------ secrets

    def _sealed_secret(
        self, backend: TeeBackend, id: str, policy: KeyPolicy, aad: bytes, make: Any
    ) -> bytes:
        """Unseal identity/<id>, or create it with `make()` and store it sealed (CAS)."""
        for _ in range(3):
            found = self.host.get("identity", id)
            if found is not None:
                version, blob = found
                try:
                    return backend.unseal(blob, aad)
                except SealingError:
                    if policy is KeyPolicy.MRSIGNER:
                        raise  # never silently replace the storage root key
                    log.warning("sealed %s belongs to another build; issuing a new one", id)
            else:
                version = 0
            secret: bytes = make()
            if self.host.put("identity", id, version, backend.seal(secret, policy, aad)):
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
            # Another worker or replica of this new installation may have created it first.
            with contextlib.suppress(VersionConflict):
                store.put("config", "audit-key", 0, tls.key_to_der(tls.generate_tls_key()))
            found = store.get("config", "audit-key")
            if found is None:
                raise StateRollbackError(
                    cause="audit-key-missing", message="the host dropped the audit key"
                )
        audit_key = tls.key_from_der(found.value)
        tracker = StateTracker(
            self._storage,
            srk,
            audit_key,
            worker=cfg.chain,
            exact=cfg.workers == 1 and not cfg.replicated,
        )
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
        head_id = "audit-head" if cfg.chain == 0 else f"audit-head-{cfg.chain}"
        legacy_head = None
        old = store.get("config", head_id)
        if old is not None and old.value is not None and tracker.audit_head(cfg.chain) is None:
            legacy_head = (int(old.value[0]), bytes(old.value[1]))
        if legacy and marker is not None and isinstance(marker_value, dict):
            store.put(*INIT_MARKER, marker.version, {**marker_value, "state_head": 1})
        return audit_key, tracker, legacy_head

    # ------------------------------------------------------------------ ECALLs

    def initialize(self, config: bytes) -> dict[str, Any]:
        with self._state_lock:
            if self._initialize_called:  # once per process, even after a failed attempt
                raise ConflictError("enclave is already initialized")
            cfg = RuntimeConfig.parse(config)  # a config it cannot read may be sent again
            self._initialize_called = True
            backend = self._given_backend or open_backend(cfg)
            ident = backend.identity
            tls_der = self._sealed_secret(
                backend,
                cfg.scoped(f"tls-key-{ident.mr_enclave.hex()[:32]}{here(cfg)}"),
                KeyPolicy.MRENCLAVE,
                _TLS_AAD,
                lambda: tls.key_to_der(tls.generate_tls_key()),
            )
            booted = self._booted = Booted(cfg, backend, tls.key_from_der(tls_der))
            found = self._storage_root_key(booted)
            if found is None:
                log.warning("enclave in recovery mode: mr_enclave %s", ident.mr_enclave.hex())
                return {"identity": cbor2.dumps({**self.identity_claims(), "recovery": True})}
            self._initialized = self._open(booted, found)
            if self._initialized is None:  # `enclave-kms replicas join`: sealed here, now stop
                return {"identity": cbor2.dumps(self.identity_claims())}
            log.info("enclave initialized: mr_enclave %s", ident.mr_enclave.hex())
            return {"identity": cbor2.dumps(self.identity_claims())}

    def _storage_root_key(self, booted: Booted) -> Found | Joined | None:
        """The storage root key: this CPU's own sealed copy, the shared one, a new one for a new
        installation, or one a running replica hands over (`--join`, custody/joiner.py);
        None after entering k-of-n recovery mode (only with `cfg.recovery`, when nothing here
        unseals it: every replica of the installation is lost). Never a new key over an
        existing installation or recovery set."""
        cfg, backend = booted.config, booted.backend
        sealed = self.host.get("identity", "storage-root-key")
        if cfg.recovery and (sealed is None and SetStore(self.host).load() is not None):
            self.recovery = self._start_recovery(booted)
            return None
        try:
            return self.joins.storage_root_key(
                backend,
                cfg.replica,
                platform=cfg.platform,
                platform_dir=cfg.platform_dir,
                quote_for=self.quote_for,
                create=lambda: self._sealed_secret(
                    backend, "storage-root-key", KeyPolicy.MRSIGNER, SRK_AAD, lambda: os.urandom(32)
                ),
            )
        except SealingError as exc:
            if not cfg.recovery:
                raise type(exc)(
                    f"{exc.message}; if every replica of this installation is lost, start "
                    "this machine with `serve --recovery` and k recovery officers restore "
                    "the key (docs/replicas.md, Recovery)"
                ) from None
        self.recovery = self._start_recovery(booted)
        return None

    def _start_recovery(self, booted: Booted) -> RecoverySession:
        cfg = booted.config
        return start_session(
            self.host,
            own=booted.backend.identity,
            platform=(cfg.platform, cfg.platform_dir, cfg.workers),
            quote_for=self.quote_for,
            restore=self._restore,
        )

    def _open(self, booted: Booted, found: Found | Joined) -> Initialized | None:
        """Open the store under the storage root key: authenticated against the state head, or
        an error (nothing is kept half set up). None for a one-shot join (`replicas join`):
        the key is sealed here, nothing is served."""
        cfg, srk = booted.config, found.srk
        # Replicas share the store with other servers: each request checks what it uses
        # against the state head first (store.py, `RecordStore.shared`).
        if cfg.replicated and not cfg.peers:
            raise ConfigError("initialize: a replica needs the URLs of its peers")
        cache = RecordCache()
        store = RecordStore(self._storage, RecordCipher(srk), cache=cache, shared=cfg.replicated)
        audit_key, tracker, legacy_head = self._open_state(store, srk, cfg)
        self.joins.open(found, store, booted.backend, cfg.replica, self.quote_for)
        if cfg.replica.join_only:
            return None
        worker = cfg.chain
        if cfg.replica_id is not None:
            self.quorum = ReplicaSet(
                replica=cfg.replica_id,
                peers=cfg.peers,
                installation=tracker.installation,
                signing_key=audit_key,
                local_head=lambda: _local_head(tracker),
            )
        self._gauges(tracker, cache)
        metrics, append = self.metrics, self.host.audit_append

        def audit_append(records: list[bytes]) -> None:
            metrics.audit_batch(len(records))
            append(records)

        def persist_head(seq: int, prev: bytes) -> None:
            tracker.audit_advanced(worker, seq, prev)

        host = self.host

        def commit(records: list[bytes], seq: int, prev: bytes) -> None:
            """One batch = one audit_append OCALL carrying the sealed head too (one
            transaction, one fsync); a head conflict with another worker resends it."""
            metrics.audit_batch(len(records))
            tracker.audit_advanced(
                worker,
                seq,
                prev,
                put=lambda k, i, v, b: host.audit_append_with(records, k, i, v, b),
            )

        audit = AuditLog(
            audit_key,
            audit_append,
            head=tracker.audit_head(worker) or legacy_head,
            persist_head=persist_head,
            tail_fn=self.host.audit_tail,  # crash recovery and truncation: see AuditLog
            commit_fn=commit,
        )
        self.joins.audit_join(audit)
        kms = KMSService(store)
        return Initialized(
            config=cfg,
            backend=booted.backend,
            tls_key=booted.tls_key,
            store=store,
            state=tracker,
            audit=audit,
            kms=kms,
            tokens=TokenService(store),
            release=ReleaseService(
                store, kms, lambda quote: load_collateral(host.collateral_for(quote))
            ),
            custody=RecoveryCustody(self.host, srk, self.quote_for),
        )

    def _restore(self, srk: bytes, events: list[RecoveryEvent]) -> None:
        """k shares gave `srk` (commitment and MAC checked): open the store with it, seal it
        to this CPU, audit every recovery step, then serve the full API."""
        with self._state_lock:
            booted, session = self.booted(), self.recovery
            ready = self._open(booted, Found(srk, "recovered"))
            if ready is None:
                raise ConflictError("a one-shot join cannot recover")
            found = self.host.get("identity", "storage-root-key")
            blob = booted.backend.seal(srk, KeyPolicy.MRSIGNER, SRK_AAD)
            if not self.host.put("identity", "storage-root-key", found[0] if found else 0, blob):
                raise ConflictError("the sealed storage root key changed during recovery")
            self._initialized = ready  # still recovering until here: nothing served from it
            assert session is not None
            target = session.set.set_id.hex()[:16]
            for n, event in enumerate([*events, RecoveryEvent.now("recovery.restore", "", "ok")]):
                actor = f"officer:{event.officer[:16]}" if event.officer else "anonymous"
                ready.audit.record(
                    AuditEvent(actor, event.op, f"{target}@{event.time}", event.outcome, f"r{n}")
                )
            if self._app is not None:
                self._app.app = self._api()
        log.warning("storage root key restored by k-of-n recovery and sealed to this CPU")

    def _gauges(self, tracker: StateTracker, cache: RecordCache) -> None:
        gauges = self.metrics.gauges
        gauges["ekms_state_generation"] = lambda: tracker.head.generation
        gauges["ekms_record_cache_entries"] = lambda: len(cache)
        replicas = self.quorum
        gauges["ekms_ready"] = lambda: 1 if replicas is None or replicas.ready else 0
        if replicas is not None:
            gauges["ekms_replica_id"] = lambda: replicas.replica
            gauges["ekms_replica_peers_answering"] = lambda: sum(
                v.generation is not None for v in replicas.views()
            )

    def identity_claims(self) -> dict[str, Any]:
        ready = self.booted()
        ident = ready.backend.identity
        return {
            "mr_enclave": ident.mr_enclave.hex(),
            "mr_signer": ident.mr_signer.hex(),
            "isv_prod_id": ident.isv_prod_id,
            "isv_svn": ident.isv_svn,
            "debug": ident.attributes.debug,
            "simulated": ready.config.platform == "sim",
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
        booted = self.booted()
        cfg = booted.config
        if self._initialized is None and self.recovery is None:
            raise NotInitializedError("enclave is not initialized")
        with self._state_lock:
            if self._server is not None:
                raise ConflictError("the server is already running")
            self.identity = self._server_identity(booted)
            app: ASGIApp
            if self._initialized is None and self.recovery is not None:
                app = recovery_app(self.recovery, self, self.identity_claims())
            else:
                app = self._api()
            self._app = SwitchableApp(app)
            # Several workers share the port: the kernel spreads connections over them.
            sockets = [_shared_port_socket(cfg.listen_host, port)] if cfg.workers > 1 else None
            self._tls_context = tls.ssl_context(self.identity)
            context = self._tls_context
            server_config = uvicorn.Config(
                self._app,
                host=cfg.listen_host,
                port=port,
                ssl_context_factory=lambda _cfg, _default: context,
                log_config=None,
                access_log=False,
                lifespan="off",
                loop="uvloop",  # both measured: docs/performance.md
                http="httptools",
                # Clients connect to the enclave directly: no proxy's X-Forwarded-For is
                # trusted (uvicorn trusts loopback's by default), and the layer is gone.
                proxy_headers=False,
                limit_max_requests=None if keep_server_up else 1,
                timeout_keep_alive=30,
                timeout_graceful_shutdown=2,  # in-flight requests finish; idle keep-alives close
            )
            self._server = uvicorn.Server(server_config)
        log.info("serving HTTPS on %s:%d", cfg.listen_host, port)
        threading.Thread(target=self._renew_loop, name="tls-renewal", daemon=True).start()
        if self.quorum is not None:
            replicas = self.quorum
            threading.Thread(
                target=lambda: replicas.run(self.stopped), name="replica-quorum", daemon=True
            ).start()
        try:
            server = self._server
            with asyncio.Runner(loop_factory=server_config.get_loop_factory()) as runner:
                runner.run(_serve_bounded(server, sockets))
        finally:
            self.server_done.set()
        return {}

    def _api(self) -> ASGIApp:
        ready = self.ready()
        cfg = ready.config
        context = AppContext(
            kms=ready.kms,
            tokens=ready.tokens,
            audit=ready.audit,
            attestation=self,
            identity=self.identity_claims(),
            worker=cfg.chain,
            state_head=ready.state.header,
            release=ready.release,
            custody=ready.custody,
            joins=self.joins,
            replicas=self.quorum,
            metrics=self.metrics,
            refresh_state=ready.state.refresh,
        )
        return create_app(context, transit_mount=cfg.transit_mount)

    def _renew_loop(self) -> None:
        """Issue a fresh certificate (new evidence, same key) before the current one expires,
        without a restart: new connections get it; pinned clients keep their pin (the key is
        the same) and fresh evidence passes the same policy or they refuse it."""
        booted = self.booted()
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
                    dns_names=booted.config.dns_names,
                    lifetime=booted.config.cert_lifetime,
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
        ready = self._initialized  # None in recovery mode: nothing to share with yet
        if ready is None or ready.config.worker != 0:
            return
        cert_id = ready.certificate_id()
        value = {"certificate": identity.certificate_pem, "quote": identity.quote}
        try:
            found = ready.store.get("config", cert_id)
            ready.store.put("config", cert_id, 0 if found is None else found.version, value)
        except EnclaveKMSError as exc:
            log.warning("renewed certificate not shared with other workers: %s", exc.message)

    def _server_identity(self, booted: Booted) -> tls.TlsIdentity:
        """Worker 0 issues the RA-TLS certificate and keeps it in the sealed store; the other
        workers serve that same certificate (same build, hence the same sealed TLS key), so a
        client that pinned it sees one server whichever worker its connection reaches."""
        key, cfg, ready = booted.tls_key, booted.config, self._initialized
        cert_id = cfg.scoped(
            f"tls-certificate-{booted.backend.identity.mr_enclave.hex()[:32]}{here(cfg)}"
        )
        found = None if ready is None else ready.store.get("config", cert_id)  # None: recovery
        if cfg.worker > 0 and found is not None:
            shared = tls.identity_for(key, found.value["certificate"], found.value["quote"])
            if shared is not None:
                return shared
            log.warning("the shared server certificate is not for this key; issuing one")
        identity = tls.issue_identity(
            key,
            self.quote_for,
            datetime.now(UTC),
            dns_names=cfg.dns_names,
            lifetime=cfg.cert_lifetime,
        )
        if cfg.worker == 0 and ready is not None:
            value = {"certificate": identity.certificate_pem, "quote": identity.quote}
            ready.store.put("config", cert_id, 0 if found is None else found.version, value)
        return identity

    def records_changed(self, kind: str, id: str) -> dict[str, Any]:
        """Another worker wrote or deleted (kind, id): drop this worker's copy."""
        if self._initialized is not None:  # before initialize there is nothing to forget
            self._initialized.store.forget(kind, id)
        return {}

    def _pem_key(self) -> bytes:
        pem = (
            self.booted()
            .tls_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
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


def _local_head(tracker: StateTracker) -> LocalHead:
    """The head as the database holds it now (refusing one older than we have seen)."""
    head = tracker.refresh()
    return LocalHead(head.generation, head.digest)
