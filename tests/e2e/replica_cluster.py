"""Replicas as real processes: `enclave-kms serve --replica-id N --peer ...` on one simulated
CPU (so they all unseal the storage root key) and one PostgreSQL database, each with its own
data directory. Used by tests/e2e/test_replicas.py and bench/replicas.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client.tls import unverified_context
from enclave_kms.host.service import ensure_image, ensure_platform
from enclave_kms.platform.sim.loader import LoadedImage

CLI = str(Path(sys.executable).parent / "enclave-kms")
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Replica:
    id: int
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    platform_dir: Path | None = None  # another simulated CPU (default: the cluster's)
    join: str | None = None  # a running replica to obtain the storage root key from

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    base: Path
    storage: str
    platform_dir: Path
    image: LoadedImage
    replicas: list[Replica] = field(default_factory=list)

    def peers_of(self, replica: Replica) -> list[str]:
        return [r.url for r in self.replicas if r is not replica]

    def start(self, replica: Replica, *, wait_ready: bool = True) -> None:
        args = [
            CLI,
            "serve",
            "--listen",
            f"127.0.0.1:{replica.port}",
            "--data-dir",
            str(replica.data_dir),
            "--platform-dir",
            str(replica.platform_dir or self.platform_dir),
            "--image",
            str(self.image.directory),
            "--storage",
            self.storage,
            "--replica-id",
            str(replica.id),
        ]
        for peer in self.peers_of(replica):
            args += ["--peer", peer]
        if replica.join is not None:
            args += ["--join", replica.join]
        log = (self.base / f"replica-{replica.id}.log").open("ab")
        replica.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait_ready:
            self.wait_ready(replica)

    def wait_ready(self, replica: Replica, timeout: float = START_TIMEOUT) -> None:
        self._wait(replica, "/v1/sys/ready", timeout)

    def wait_up(self, replica: Replica, timeout: float = START_TIMEOUT) -> None:
        """Serving HTTPS (ready or not: health answers before the quorum)."""
        self._wait(replica, "/v1/health", timeout)

    def _wait(self, replica: Replica, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if replica.proc is not None and replica.proc.poll() is not None:
                raise AssertionError(f"replica {replica.id} exited: {self.log(replica)[-2000:]}")
            if self.answers(replica, path):
                return
            time.sleep(0.2)
        raise AssertionError(f"replica {replica.id}: no 200 from {path}")

    def answers(self, replica: Replica, path: str = "/v1/sys/ready") -> bool:
        try:
            answer = httpx.get(f"{replica.url}{path}", verify=unverified_context(), timeout=5)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def kill(self, replica: Replica) -> None:
        """kill -9 of the replica's host and its enclave process, at once, as a machine that
        dies (the enclave runs in its own session, so the host's group alone is not all)."""
        if replica.proc is not None:
            enclaves = _children(replica.proc.pid)
            os.killpg(replica.proc.pid, signal.SIGKILL)
            for pid in enclaves:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            replica.proc.wait(10)
            replica.proc = None

    def stop(self, replica: Replica) -> None:
        if replica.proc is not None:
            replica.proc.send_signal(signal.SIGTERM)
            try:
                replica.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(replica.proc.pid, signal.SIGKILL)
                replica.proc.wait(10)
            replica.proc = None

    def log(self, replica: Replica) -> str:
        path = self.base / f"replica-{replica.id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def trust_root(self) -> TrustRoot:
        return TrustRoot.from_pem(ensure_platform(self.platform_dir).root_pem())

    def policy(self) -> Policy:
        ident = self.image.identity
        return Policy(
            mr_enclave=(ident.mr_enclave,),
            mr_signer=ident.mr_signer,
            isv_prod_id=ident.isv_prod_id,
            min_isv_svn=ident.isv_svn,
            simulated_root=self.trust_root.spki_sha256,
        )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found += [int(p) for p in text.split()]
    return found


@contextmanager
def cluster(base: Path, storage: str, count: int) -> Iterator[Cluster]:
    """`count` replicas started together (each waits for a majority, so all start first)."""
    platform_dir = base / "platform"
    ensure_platform(platform_dir)
    image = ensure_image(base / "image", base / "signer.pem")
    found = Cluster(base, storage, platform_dir, image)
    found.replicas = [Replica(i + 1, free_port(), base / f"r{i + 1}") for i in range(count)]
    try:
        first, *others = found.replicas
        found.start(first, wait_ready=False)  # it creates the installation's records
        found.wait_up(first)
        for replica in others:
            found.start(replica, wait_ready=False)
        for replica in found.replicas:
            found.wait_ready(replica)
        yield found
    finally:
        for replica in found.replicas:
            found.stop(replica)
