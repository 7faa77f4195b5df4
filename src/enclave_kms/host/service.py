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
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.attestation.sources import PccsClient
from enclave_kms.edl_endpoint import FrameObserver
from enclave_kms.errors import ConfigError, EnclaveKMSError, ImageError, PlatformError, UsageError
from enclave_kms.host.launcher import EnclaveProcess
from enclave_kms.host.ocalls import HostOcalls, PccsQuoting, SimQuoting
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.image import EnclaveConfig, build_image, sign_image
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
    pccs_url: str | None = None  # hardware: where collateral comes from


@dataclass
class GramineRunning:
    """A server on SGX hardware: Gramine measured and launched the enclave; no image here."""

    url: str
    enclave: EnclaveProcess
    storage: SQLiteStorage
    info_path: Path
    identity: dict[str, Any]
    server_thread: threading.Thread

    def stop(self) -> int | None:
        code = self.enclave.stop()
        self.server_thread.join(10)
        self.storage.close()
        return code


@dataclass
class Running:
    """A started server: what `serve` prints and what tests inspect."""

    url: str
    image: LoadedImage
    platform: SimPlatform
    enclave: EnclaveProcess
    storage: SQLiteStorage
    info_path: Path
    root_path: Path
    identity: dict[str, Any]
    server_thread: threading.Thread

    def stop(self) -> int | None:
        code = self.enclave.stop()
        self.server_thread.join(10)
        self.storage.close()
        return code


def _private_dir(path: Path) -> Path:
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
    image_dir: Path, signer_path: Path, config: EnclaveConfig | None = None
) -> LoadedImage:
    """Simulation convenience: an image signed by `signer_path` (created if absent), rebuilt
    and re-signed when it no longer verifies (the code changed) or its config differs."""
    config = config or EnclaveConfig()
    if (image_dir / "sigstruct.bin").exists():
        try:
            loaded = load_image(image_dir)
            if loaded.config == config:
                return loaded
        except ImageError as exc:
            log.warning("enclave image is stale (%s); rebuilding it", exc.message)
    image_dir.mkdir(parents=True, exist_ok=True)
    build_image(image_dir, config)
    sign_image(image_dir, _signer(signer_path), dt.datetime.now(dt.UTC).date())
    return load_image(image_dir)


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
    storage: SQLiteStorage,
    data_dir: Path,
    *,
    listen_host: str = "127.0.0.1",
    channel: dict[str, Any] | None = None,
    observer: FrameObserver | None = None,
    stderr_sink: Callable[[str], None] | None = None,
) -> tuple[EnclaveProcess, dict[str, Any]]:
    """Start an enclave process for `image` and run its `initialize` ECALL."""
    pycache = _private_dir(data_dir / "pycache")
    enclave = EnclaveProcess(
        enclave_argv(image, pycache_prefix=pycache),
        HostOcalls(storage, SimQuoting(platform)).handlers(),
        observer=observer,
        stderr_sink=stderr_sink,
    ).start()
    config = {
        "platform": "sim",
        "platform_dir": str(platform.path),
        "listen_host": listen_host,
        "dns_names": ["localhost", listen_host],
        "channel": channel or {},
    }
    try:
        reply = enclave.call("initialize", config=cbor2.dumps(config), timeout=120)
    except BaseException:
        enclave.stop()
        raise
    return enclave, cbor2.loads(reply["identity"])


def _publish(
    enclave: EnclaveProcess, data_dir: Path, host: str, port: int
) -> tuple[Path, threading.Thread]:
    """The tutorial's host steps: write enclave.info.json, then serve until stopped."""
    report = enclave.call("get_report", timeout=60)
    info = EnclaveInfo.from_report(report["report"], report["pem_key"])
    info_path = data_dir / "enclave.info.json"
    info_path.write_bytes(info.to_json())
    thread = threading.Thread(
        target=lambda: _serve(enclave, port), name="set_up_server", daemon=True
    )
    thread.start()
    _wait_listening(host, port, thread, timeout=60)
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
    if not options.pccs_url:
        raise UsageError("--pccs-url URL: the PCCS (or Intel PCS) that serves collateral")
    data_dir = _private_dir(options.data_dir)
    storage = SQLiteStorage(data_dir / "kms.sqlite")
    enclave = EnclaveProcess(
        ["gramine-sgx", "enclave-kms"],
        HostOcalls(storage, PccsQuoting(PccsClient(options.pccs_url))).handlers(),
        cwd=options.gramine_dir,
        observer=options.observer,
        stderr_sink=options.stderr_sink,
    )
    try:
        enclave.start()
        config = {
            "platform": "gramine",
            "listen_host": options.host,
            "dns_names": ["localhost", options.host],
            "channel": options.channel,
        }
        identity = cbor2.loads(
            enclave.call("initialize", config=cbor2.dumps(config), timeout=300)["identity"]
        )
        info_path, thread = _publish(enclave, data_dir, options.host, options.port)
    except BaseException:
        enclave.stop()
        storage.close()
        raise
    return GramineRunning(
        url=f"https://{options.host}:{options.port}",
        enclave=enclave,
        storage=storage,
        info_path=info_path,
        identity=identity,
        server_thread=thread,
    )


def start(options: ServeOptions) -> Running:
    if options.platform != "sim":
        raise ConfigError(
            f"--platform {options.platform!r}: this function starts simulation; "
            "use start_gramine for SGX hardware"
        )
    data_dir = _private_dir(options.data_dir)
    platform = ensure_platform(options.platform_dir or data_dir / "platform")
    image = (
        load_image(options.image)
        if options.image
        else ensure_image(data_dir / "image", data_dir / "signer.pem")
    )
    root_path = data_dir / "sim-root.pem"
    root_path.write_bytes(platform.root_pem())
    storage = SQLiteStorage(data_dir / "kms.sqlite")
    try:
        enclave, identity = launch_enclave(
            image,
            platform,
            storage,
            data_dir,
            listen_host=options.host,
            channel=options.channel,
            observer=options.observer,
            stderr_sink=options.stderr_sink,
        )
    except BaseException:
        storage.close()
        raise
    try:
        info_path, thread = _publish(enclave, data_dir, options.host, options.port)
    except BaseException:
        enclave.stop()
        storage.close()
        raise
    return Running(
        url=f"https://{options.host}:{options.port}",
        image=image,
        platform=platform,
        enclave=enclave,
        storage=storage,
        info_path=info_path,
        root_path=root_path,
        identity=identity,
        server_thread=thread,
    )


def _serve(enclave: EnclaveProcess, port: int) -> None:
    try:
        enclave.call("set_up_server", port=port, keep_server_up=True)
    except EnclaveKMSError as exc:
        log.error("the enclave's server stopped: %s", exc.message)
