"""Shared plumbing for peers: HTTP operations, managed server processes, loopback ports, TLS.

Servers are started in their own session (process group) so that stopping one also stops
whatever it spawned (uvicorn workers, PyKMIP's policy monitor), first with SIGTERM, then
SIGKILL after a bound. `atexit` stops anything still running if the harness dies midway.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.measure import BenchError

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class HttpOp:
    """One request kind. `{n}` in `path` or `body` becomes a value unique to each request."""

    method: str
    path: str
    body: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def unique(self) -> bool:
        return "{n}" in self.path or (self.body is not None and "{n}" in self.body)


@dataclass
class HttpTarget:
    """A running HTTPS server and the operations to load it with (name → request)."""

    system: str
    base_url: str
    ops: dict[str, HttpOp]
    stop: Callable[[], None]
    extra: dict[str, Any] = field(default_factory=dict)
    # Per-operation fields for the JSON rows (e.g. the key type behind a sign row).
    op_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    # After each run: figures about the server side of it (enclave-kms: audit batch sizes).
    probe: Callable[[], Callable[[], dict[str, float]]] | None = None
    pid: int | None = None  # the server's session leader (the soak sums its session's RSS)


def free_port(count: int = 1) -> int:
    """A loopback port p such that p .. p+count-1 are free right now."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        if port + count > 65535:
            continue
        try:
            for offset in range(1, count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as extra:
                    extra.bind((LOOPBACK, port + offset))
        except OSError:
            continue
        return port
    raise BenchError("no free loopback port")


def wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise BenchError(f"{what}: not ready after {timeout:.0f} s")


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


_RUNNING: list[ManagedProcess] = []


class ManagedProcess:
    """A server subprocess with its log in `log_path`, stopped with its whole process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        _RUNNING.append(self)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def wait_ready(self, check: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.alive():
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            return check()

        wait_until(ready, self.name, timeout)

    def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """SIGTERM to the group, SIGKILL after `grace` seconds (a benchmark peer's state is
        scratch: nothing is lost by not waiting for a graceful exit)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT)
        # Workers of a server that exited on its own may still hold the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        if self in _RUNNING:
            _RUNNING.remove(self)


@atexit.register
def _stop_all() -> None:
    for proc in list(_RUNNING):
        proc.stop()


# --------------------------------------------------------------------------- TLS material


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(directory: Path, *, client_cn: str = "bench-client") -> TlsFiles:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("enclave-kms bench CA"))
        .issuer_name(_name("enclave-kms bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        pem_key = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key

    files = TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for (cert_path, key_path), (cert, key) in (
        (
            (files.server_cert, files.server_key),
            leaf(LOOPBACK, ExtendedKeyUsageOID.SERVER_AUTH, True),
        ),
        (
            (files.client_cert, files.client_key),
            leaf(client_cn, ExtendedKeyUsageOID.CLIENT_AUTH, False),
        ),
    ):
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
    return files
