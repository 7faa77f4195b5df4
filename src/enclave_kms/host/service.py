"""`enclave-kms serve`, minus the printing: prepare, launch, initialize, serve, stop.

Data directory layout (mode 0700):
  platform/          the simulated SGX platform (simulation only; see `platform init`)
  signer.pem         the enclave signing key (RSA-3072, e=3), created on first run in simulation
  image/             the signed enclave image; rebuilt in simulation when the code changed
  kms.sqlite         sealed records and the audit log
  enclave.info.json  the tutorial's enclave info (report binding the enclave's public key)
  sim-root.pem       the simulated root CA, for verifiers that choose to trust it
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.attestation.sources import collateral_service
from enclave_kms.edl_endpoint import FrameObserver
from enclave_kms.errors import ConfigError, EnclaveKMSError, ImageError, PlatformError, UsageError
from enclave_kms.host.launcher import EnclaveProcess
from enclave_kms.host.ocalls import HostOcalls, PccsQuoting, SimQuoting
from enclave_kms.host.storage import STORAGE_ENV, Storage, open_storage
from enclave_kms.host.workers import MAX_WORKERS, ChangeRelay
from enclave_kms.platform.image import (
    DEFAULT_ENTRYPOINT,
    EnclaveConfig,
    build_image,
    sign_image,
)
from enclave_kms.platform.sim.loader import LoadedImage, enclave_argv, load_image
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.sigstruct import generate_signing_key
from enclave_kms.sgx.tutorial import EnclaveInfo

log = logging.getLogger("enclave_kms.host")


@dataclass
class ServeOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    platform: str = "sim"
    image: Path | None = None
    platform_dir: Path | None = None
    observer: FrameObserver | None = None
    stderr_sink: Callable[[str], None] | None = None
    channel: dict[str, Any] = field(default_factory=dict)
    gramine_dir: Path | None = None  # hardware: where enclave-kms.manifest.sgx lives
    pccs_url: str | None = None  # hardware: the collateral service's URL (its default if None)
    collateral_service: str = "pccs"  # hardware: intel-pcs, pccs or azure-thim (sources.py)
    collateral_ca_bundle: Path | None = None  # hardware: CAs for the service's TLS certificate
    workers: int = 1  # enclave processes sharing the store and the port (host/workers.py)
    storage: str | None = None  # postgresql://... or a SQLite path; default DATA_DIR/kms.sqlite
    transit_mount: str = "transit"  # the Vault/OpenBao transit face: /v1/<transit_mount>/
    cert_lifetime_seconds: float | None = None  # RA-TLS certificate; the enclave bounds it
    recovery: bool = False  # k-of-n recovery if this CPU cannot unseal the storage root key
    join_url: str | None = None  # a running replica to get the storage root key from
    replica_id: int | None = None  # one of several replicas on one PostgreSQL database
    peers: tuple[str, ...] = ()  # the other replicas' URLs (they confirm the state head)

    def chain(self, worker: int) -> int:
        """Worker `worker`'s audit chain: unique across every replica of the installation."""
        return worker if self.replica_id is None else self.replica_id * MAX_WORKERS + worker

    def replica_config(self, worker: int) -> dict[str, Any]:
        """What `initialize` learns about replication (nothing for a lone server)."""
        if self.replica_id is None:
            return {}
        return {
            "replica_id": self.replica_id,
            "chain": self.chain(worker),
            "peers": list(self.peers),
        }


class DataDirLock:
    """One server per data directory, for as long as it runs.

    The enclave keeps the records it uses in memory and relies on being the only writer of
    its store (enclave/state/cache.py); two servers on one directory would also fork the
    audit chain. An advisory lock (flock) on `DATA_DIR/serve.lock`, released by the kernel
    if the host dies, so a crash never leaves the directory locked."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / "serve.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{data_dir} is in use by another enclave-kms server (stop it first)"
            ) from None
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


@dataclass(kw_only=True)
class Served:
    """A started server, on either platform: what `serve` prints and what tests inspect."""

    url: str
    enclave: EnclaveProcess  # worker 0
    storage: Storage
    info_path: Path
    identity: dict[str, Any]
    server_thread: threading.Thread
    lock: DataDirLock | None = None
    others: list[EnclaveProcess] = field(default_factory=list)  # workers 1..N-1

    def stop(self) -> int | None:
        for worker in self.others:
            worker.stop()
        code = self.enclave.stop()
        self.server_thread.join(10)
        self.storage.close()
        if self.lock is not None:
            self.lock.release()
        return code


@dataclass(kw_only=True)
class GramineRunning(Served):
    """A server on SGX hardware: Gramine measured and launched the enclave; no image here."""


@dataclass(kw_only=True)
class Running(Served):
    """A server in simulation, with the image, the simulated platform and its root."""

    image: LoadedImage
    platform: SimPlatform
    root_path: Path


Launch = Callable[[int, ChangeRelay], tuple[EnclaveProcess, dict[str, Any]]]
"""Start worker N (its writes relayed through the relay) and run `initialize`: the process and
its identity claims. Stops the process itself if `initialize` fails."""
S = TypeVar("S", bound=Served)


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def ensure_platform(path: Path) -> SimPlatform:
    if not (path / "platform.toml").exists():
        log.info("creating the simulated SGX platform in %s", path)
        return SimPlatform.init(path)
    return SimPlatform.open(path)


def _signer(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{path} is not an RSA private key")
        return key
    key = generate_signing_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return key


def ensure_image(
    image_dir: Path,
    signer_path: Path,
    config: EnclaveConfig | None = None,
    *,
    entrypoint: str = DEFAULT_ENTRYPOINT,
) -> LoadedImage:
    """Simulation convenience: an image signed by `signer_path` (created if absent), rebuilt
    and re-signed when it no longer verifies (the code changed) or its config or entrypoint
    differs (another entrypoint is another enclave: the key-release demo's workload)."""
    config = config or EnclaveConfig()
    if (image_dir / "sigstruct.bin").exists():
        try:
            loaded = load_image(image_dir)
            if loaded.config == config and loaded.manifest.entrypoint == entrypoint:
                return loaded
        except ImageError as exc:
            log.warning("enclave image is stale (%s); rebuilding it", exc.message)
    image_dir.mkdir(parents=True, exist_ok=True)
    build_image(image_dir, config, entrypoint=entrypoint)
    sign_image(image_dir, _signer(signer_path), dt.datetime.now(dt.UTC).date())
    return load_image(image_dir)


def ensure_port_free(host: str, port: int) -> None:
    """Refuse to start when something already listens on the address: otherwise the start-up
    probe below would reach *that* server, and every client after it. The enclave binds with
    SO_REUSEPORT (workers share the port), so this probe binds without it: another listener,
    enclave-kms or not, makes it fail; a closing socket in TIME_WAIT (SO_REUSEADDR) does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UsageError(f"--listen {host}:{port}: cannot resolve {host!r} ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UsageError(
                f"cannot serve on {host}:{port}: {reason} (another server, perhaps another "
                "enclave-kms serve, is listening there; stop it or pass --listen HOST:PORT)"
            ) from None


def _wait_listening(host: str, port: int, thread: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise PlatformError("the enclave's server stopped during start-up")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise PlatformError(f"the enclave did not start listening on {host}:{port}")


def launch_enclave(
    image: LoadedImage,
    platform: SimPlatform,
    storage: Storage,
    data_dir: Path,
    *,
    listen_host: str = "127.0.0.1",
    channel: dict[str, Any] | None = None,
    observer: FrameObserver | None = None,
    stderr_sink: Callable[[str], None] | None = None,
    worker: int = 0,
    workers: int = 1,
    relay: ChangeRelay | None = None,
    transit_mount: str = "transit",
    cert_lifetime_seconds: float | None = None,
    recovery: bool = False,
    join_url: str | None = None,
    join_only: bool = False,
    replication: dict[str, Any] | None = None,
) -> tuple[EnclaveProcess, dict[str, Any]]:
    """Start an enclave process for `image` and run its `initialize` ECALL (as worker
    `worker` of `workers`, its writes relayed to the others through `relay`)."""
    pycache = private_dir(data_dir / "pycache")
    replication = replication or {}
    ocalls = HostOcalls(
        storage,
        SimQuoting(platform),
        chain=int(replication.get("chain", worker)),
        on_change=None if relay is None else relay.on_change_for(worker),
        join_url=join_url,
    )
    enclave = EnclaveProcess(
        enclave_argv(image, pycache_prefix=pycache),
        ocalls.handlers(),
        observer=observer,
        stderr_sink=stderr_sink,
    ).start()
    config = {
        "platform": "sim",
        "platform_dir": str(platform.path),
        "listen_host": listen_host,
        "dns_names": ["localhost", listen_host],
        "channel": channel or {},
        "worker": worker,
        "workers": workers,
        "transit_mount": transit_mount,
        "recovery": recovery,
        "replica": replica_settings(
            platform.config.platform_instance_id.hex()[:16], join_url, join_only
        ),
        **replication,
    }
    if cert_lifetime_seconds is not None:
        config["cert_lifetime_seconds"] = float(cert_lifetime_seconds)
    try:
        reply = enclave.call("initialize", config=cbor2.dumps(config), timeout=120)
    except BaseException:
        enclave.stop()
        raise
    return enclave, cbor2.loads(reply["identity"])


def replica_settings(platform_id: str, join_url: str | None, join_only: bool) -> dict[str, Any]:
    """The enclave's replica settings: which per-CPU sealed copy is its own (a name, not a
    trust anchor: the name is in the sealed blob's AAD) and whether it may join a peer."""
    return {"platform_id": platform_id, "join": join_url is not None, "join_only": join_only}


def gramine_platform_id() -> str:
    """Hardware: this machine's name for its per-CPU records (from /etc/machine-id)."""
    import hashlib

    try:
        machine = Path("/etc/machine-id").read_bytes().strip()
    except OSError:
        machine = socket.gethostname().encode()
    return hashlib.sha256(b"enclave-kms platform id " + machine).hexdigest()[:16]


def _publish(
    enclave: EnclaveProcess,
    data_dir: Path,
    host: str,
    port: int,
    others: Sequence[EnclaveProcess] = (),
) -> tuple[Path, threading.Thread]:
    """The tutorial's host steps: write enclave.info.json, then serve until stopped.
    Worker 0 first (it issues the certificate the other workers then serve), then the
    others on the same port."""
    report = enclave.call("get_report", timeout=60)
    info = EnclaveInfo.from_report(report["report"], report["pem_key"])
    info_path = data_dir / "enclave.info.json"
    info_path.write_bytes(info.to_json())
    thread = threading.Thread(
        target=lambda: _serve(enclave, port), name="set_up_server", daemon=True
    )
    thread.start()
    _wait_listening(host, port, thread, timeout=60)
    for index, worker in enumerate(others, start=1):
        threading.Thread(
            target=lambda w=worker: _serve(w, port), name=f"set_up_server-{index}", daemon=True
        ).start()
    return info_path, thread


def start_gramine(options: ServeOptions) -> GramineRunning:
    """SGX hardware: `gramine-sgx enclave-kms` in the deployment directory (deploy/gramine
    says how to build and sign it); quoting happens inside Gramine, collateral comes from a
    PCCS; the OCALL table and everything else is the same as in simulation."""
    if (
        options.gramine_dir is None
        or not (options.gramine_dir / "enclave-kms.manifest.sgx").is_file()
    ):
        raise UsageError(
            "--gramine-dir DIR: the directory holding the signed enclave-kms.manifest.sgx "
            "(see deploy/gramine)"
        )
    if options.collateral_service == "pccs" and not options.pccs_url:
        raise UsageError(
            "--pccs-url URL: the PCCS that serves collateral (or --collateral-service "
            "intel-pcs / azure-thim)"
        )
    if not 1 <= options.workers <= MAX_WORKERS:
        raise UsageError(f"--workers: between 1 and {MAX_WORKERS}")
    check_replication(options)
    ensure_port_free(options.host, options.port)
    data_dir = private_dir(options.data_dir)
    lock = DataDirLock(data_dir)
    try:
        return _start_gramine(options, data_dir, lock)
    except BaseException:
        lock.release()
        raise


def _start_gramine(options: ServeOptions, data_dir: Path, lock: DataDirLock) -> GramineRunning:
    source = collateral_service(
        options.collateral_service, options.pccs_url, ca_bundle=options.collateral_ca_bundle
    )
    storage = open_configured_storage(options, data_dir)
    quoting = PccsQuoting(source)

    def launch(worker: int, relay: ChangeRelay) -> tuple[EnclaveProcess, dict[str, Any]]:
        ocalls = HostOcalls(
            storage,
            quoting,
            chain=options.chain(worker),
            on_change=relay.on_change_for(worker),
            join_url=options.join_url,
        )
        enclave = EnclaveProcess(
            ["gramine-sgx", "enclave-kms"],
            ocalls.handlers(),
            cwd=options.gramine_dir,
            observer=options.observer,
            stderr_sink=options.stderr_sink,
        ).start()
        config = {
            "platform": "gramine",
            "listen_host": options.host,
            "dns_names": ["localhost", options.host],
            "channel": options.channel,
            "worker": worker,
            "workers": options.workers,
            "transit_mount": options.transit_mount,
            "recovery": options.recovery,
            "replica": replica_settings(gramine_platform_id(), options.join_url, False),
            **options.replica_config(worker),
        }
        try:
            reply = enclave.call("initialize", config=cbor2.dumps(config), timeout=300)
        except BaseException:
            enclave.stop()
            raise
        return enclave, cbor2.loads(reply["identity"])

    return _serve_workers(
        GramineRunning, options, data_dir, storage=storage, lock=lock, launch=launch
    )


def open_configured_storage(
    options: ServeOptions, data_dir: Path, *, exclusive: bool = True
) -> Storage:
    """`--storage`, else $ENCLAVE_KMS_STORAGE, else the data directory's SQLite file."""
    spec = options.storage or os.environ.get(STORAGE_ENV) or str(data_dir / "kms.sqlite")
    return open_storage(spec, exclusive=exclusive, replica=options.replica_id)


def _serve_workers(
    kind: type[S],
    options: ServeOptions,
    data_dir: Path,
    *,
    storage: Storage,
    lock: DataDirLock,
    launch: Launch,
    **extra: Any,
) -> S:
    """Launch `options.workers` enclaves one after the other (worker 0 creates the sealed
    secrets the others unseal), then serve them all on one port (host/workers.py)."""
    relay = ChangeRelay()
    launched: list[EnclaveProcess] = []
    identity: dict[str, Any] = {}
    try:
        for worker in range(options.workers):
            enclave, claims = launch(worker, relay)
            launched.append(enclave)
            relay.add(enclave)
            identity = identity or claims
        enclave, others = launched[0], launched[1:]
        info_path, thread = _publish(enclave, data_dir, options.host, options.port, others)
    except BaseException:
        for started in launched:
            started.stop()
        storage.close()
        raise
    return kind(
        url=f"https://{options.host}:{options.port}",
        enclave=enclave,
        others=others,
        storage=storage,
        info_path=info_path,
        identity=identity,
        server_thread=thread,
        lock=lock,
        **extra,
    )


def check_replication(options: ServeOptions) -> None:
    """Replicas name each other: a replica without peers could never have its state head
    confirmed, and peers without a replica id mean nothing."""
    if options.replica_id is None:
        if options.peers:
            raise UsageError("--peer is for replicas: give this server a --replica-id too")
        return
    if not options.peers:
        raise UsageError(
            "--replica-id: name the other replicas with --peer URL (at least one; a majority "
            "of all replicas must confirm the state before this one serves)"
        )
    for url in options.peers:
        if not url.startswith("https://"):
            raise UsageError(f"--peer {url!r}: expected https://HOST:PORT")


def start(options: ServeOptions) -> Running:
    if options.platform != "sim":
        raise ConfigError(
            f"--platform {options.platform!r}: this function starts simulation; "
            "use start_gramine for SGX hardware"
        )
    check_replication(options)
    if not 1 <= options.workers <= MAX_WORKERS:
        raise UsageError(f"--workers: between 1 and {MAX_WORKERS}")
    ensure_port_free(options.host, options.port)
    data_dir = private_dir(options.data_dir)
    lock = DataDirLock(data_dir)
    try:
        return _start_sim(options, data_dir, lock)
    except BaseException:
        lock.release()
        raise


def sim_platform_and_image(
    options: ServeOptions, data_dir: Path
) -> tuple[SimPlatform, LoadedImage]:
    """The simulated CPU and the signed image a server (or a one-shot join) runs."""
    platform = ensure_platform(options.platform_dir or data_dir / "platform")
    image = (
        load_image(options.image)
        if options.image
        else ensure_image(data_dir / "image", data_dir / "signer.pem")
    )
    return platform, image


def _start_sim(options: ServeOptions, data_dir: Path, lock: DataDirLock) -> Running:
    platform, image = sim_platform_and_image(options, data_dir)
    root_path = data_dir / "sim-root.pem"
    root_path.write_bytes(platform.root_pem())
    storage = open_configured_storage(options, data_dir)

    def launch(worker: int, relay: ChangeRelay) -> tuple[EnclaveProcess, dict[str, Any]]:
        return launch_enclave(
            image,
            platform,
            storage,
            data_dir,
            listen_host=options.host,
            channel=options.channel,
            observer=options.observer,
            stderr_sink=options.stderr_sink,
            worker=worker,
            workers=options.workers,
            relay=relay,
            transit_mount=options.transit_mount,
            cert_lifetime_seconds=options.cert_lifetime_seconds,
            recovery=options.recovery,
            join_url=options.join_url,
            replication=options.replica_config(worker),
        )

    return _serve_workers(
        Running,
        options,
        data_dir,
        storage=storage,
        lock=lock,
        launch=launch,
        image=image,
        platform=platform,
        root_path=root_path,
    )


def _serve(enclave: EnclaveProcess, port: int) -> None:
    try:
        enclave.call("set_up_server", port=port, keep_server_up=True)
    except EnclaveKMSError as exc:
        log.error("the enclave's server stopped: %s", exc.message)
