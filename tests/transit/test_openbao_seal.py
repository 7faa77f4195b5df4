"""OpenBao's own server with `seal "transit"` pointing at enclave-kms: it initializes,
auto-unseals, auto-unseals again after a restart, and stays sealed while the key is
disabled. Once directly (TLS, the attested certificate as `tls_ca_cert`) and once through
`enclave-kms proxy` (the recommended set-up)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.client.real_server import free_port
from tests.transit.conftest import WAIT, Proxy, Transit, bao_binary, bao_env, stop

pytestmark = pytest.mark.slow


@dataclass
class SealedBao:
    """One OpenBao installation (raft storage, one node); its process starts again and again."""

    home: Path
    seal: str  # the HCL seal stanza
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "bao.log"

    def start(self) -> None:
        self._spawn()
        assert self.process is not None
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                httpx.get(self.url + "/v1/sys/seal-status", timeout=2.0)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(self.log.read_text()[-3000:])

    def _spawn(self) -> None:
        config = self.home / "config.hcl"
        data = self.home / "data"
        data.mkdir(exist_ok=True)
        config.write_text(
            f"""
storage "raft" {{
  path = "{data}"
  node_id = "enclave-kms-test"
}}
listener "tcp" {{
  address = "127.0.0.1:{self.port}"
  tls_disable = true
}}
{self.seal}
api_addr = "{self.url}"
cluster_addr = "https://127.0.0.1:{self.port + 1}"
"""
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(bao_binary()), "server", f"-config={config}", "-log-level=info"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=bao_env(self.home),
                cwd=self.home,
            )

    def start_refused(self) -> int:
        """Start, expecting OpenBao to give up; its exit code."""
        self._spawn()
        assert self.process is not None
        try:
            code = self.process.wait(timeout=WAIT)
        finally:
            self.stop()
        return code

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def seal_status(self) -> dict[str, object]:
        doc: dict[str, object] = httpx.get(self.url + "/v1/sys/seal-status", timeout=10).json()
        return doc

    def wait_unsealed(self) -> dict[str, object]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            status = self.seal_status()
            if status.get("initialized") and not status.get("sealed"):
                return status
            time.sleep(0.3)
        raise AssertionError(f"{self.seal_status()}\n{self.log.read_text()[-3000:]}")


def _seal_stanza(address: str, token: str, key: str, extra: str = "") -> str:
    return f"""
seal "transit" {{
  address = "{address}"
  token = "{token}"
  key_name = "{key}"
  mount_path = "transit/"
  disable_renewal = "true"
  {extra}
}}"""


@pytest.fixture
def bao_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "bao"
    home.mkdir()
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _cycle(transit: Transit, bao: SealedBao, key: str) -> None:
    """init → unsealed; restart → unsealed; key disabled → OpenBao cannot set up its seal
    and exits sealed; key enabled again → unseals."""
    try:
        bao.start()
        assert bao.seal_status()["initialized"] is False
        init = httpx.put(
            bao.url + "/v1/sys/init",
            json={"recovery_shares": 1, "recovery_threshold": 1},
            timeout=WAIT,
        )
        assert init.status_code == 200, init.text
        assert json.loads(init.text)["root_token"]
        assert bao.wait_unsealed()["type"] == "transit"

        bao.stop()
        bao.start()
        bao.wait_unsealed()  # auto-unseal after a restart: the root key came back from the KMS

        with transit.sdk() as kms:
            kms.configure_key(key, enabled=False)
        bao.stop()
        assert bao.start_refused() != 0  # OpenBao cannot configure its seal, so never unseals
        assert f"key '{key}' is disabled" in bao.log.read_text()  # our error, in its log

        with transit.sdk() as kms:
            kms.configure_key(key, enabled=True)
        bao.stop()
        bao.start()
        bao.wait_unsealed()
    finally:
        bao.stop()


def test_openbao_auto_unseals_directly(transit: Transit, bao_home: Path) -> None:
    key = "bao-unseal-direct"
    with transit.sdk() as kms:
        kms.create_key(key)
        token = kms.create_token(
            "openbao-seal", [{"keys": [key], "operations": ["encrypt", "decrypt"]}]
        ).token
    ca = f'tls_ca_cert = "{transit.ca_file}"'
    bao = SealedBao(bao_home, _seal_stanza(transit.url, token, key, ca), free_port())
    _cycle(transit, bao, key)


def test_openbao_auto_unseals_through_the_proxy(
    transit: Transit, proxy: Proxy, bao_home: Path
) -> None:
    key = "bao-unseal-proxied"
    with transit.sdk() as kms:
        kms.create_key(key)
        token = kms.create_token(
            "openbao-seal", [{"keys": [key], "operations": ["encrypt", "decrypt"]}]
        ).token
    bao = SealedBao(bao_home, _seal_stanza(proxy.url, token, key), free_port())
    _cycle(transit, bao, key)
