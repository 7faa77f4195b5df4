"""`enclave-kms serve` as a newcomer meets it: a port already taken fails at once and says so;
the printed next steps are one copy-pasteable line each, and after a restart of an
initialized store they no longer suggest `init`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.cli.serve import next_steps
from enclave_kms.client import KMSClient
from tests.client.real_server import free_port

CLI = Path(sys.executable).with_name("enclave-kms")


@pytest.fixture
def listener() -> Iterator[int]:
    """Another server holding a port, bound the way enclave-kms workers bind (SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use_fails_fast_and_says_why(tmp_path: Path, listener: int) -> None:
    data = tmp_path / "data"
    result = subprocess.run(
        [str(CLI), "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{listener}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"cannot serve on 127.0.0.1:{listener}" in result.stderr
    assert "in use" in result.stderr
    assert "is serving" not in result.stdout
    assert "Traceback" not in result.stderr
    assert not data.exists()  # refused before anything was created


def test_next_steps_are_whole_commands_and_skip_init_once_initialized(tmp_path: Path) -> None:
    root = tmp_path / "a dir" / "sim-root.pem"
    fresh = next_steps("https://127.0.0.1:8443", root, initialized=False)
    quoted = f"'{root.resolve()}'"
    assert f"  enclave-kms policy from-server https://127.0.0.1:8443 --trust-root {quoted} " in (
        fresh[1] + " "
    )
    assert fresh[2] == (
        f"  enclave-kms init https://127.0.0.1:8443 --trust-root {quoted} --policy policy.toml"
    )
    done = next_steps("https://127.0.0.1:8443", root, initialized=True)
    assert not any("enclave-kms init " in line for line in done)
    assert "  enclave-kms key list" in done
    unknown = next_steps("https://127.0.0.1:8443", None, initialized=None)
    assert "only if" in unknown[0]
    assert "--trust-root" not in unknown[1]


def _serve(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(CLI), "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "40"},  # narrow: nothing may be hard-wrapped
        )


def _wait_for(log: Path, proc: subprocess.Popen[bytes], text: str) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shown = log.read_text(errors="replace")
        if text in shown:
            return shown
        assert proc.poll() is None, shown
        time.sleep(0.3)
    pytest.fail(f"serve never printed {text!r}:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.mark.slow
def test_serve_prints_the_right_next_steps_before_and_after_init(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    url = f"https://127.0.0.1:{port}"
    first = _serve(data, port, tmp_path / "first.log")
    try:
        shown = _wait_for(tmp_path / "first.log", first, "--policy policy.toml")
        root_path = (data / "sim-root.pem").resolve()
        assert (
            f"enclave-kms policy from-server {url} --trust-root {root_path} --out policy.toml"
        ) in shown.splitlines()[-2]
        root = TrustRoot.from_pem(root_path.read_bytes())
        mr_enclave = next(
            line.split()[-1] for line in shown.splitlines() if line.strip().startswith("MRENCLAVE")
        )
        policy = Policy(simulated_root=root.spki_sha256, mr_enclave=(bytes.fromhex(mr_enclave),))
        with KMSClient(url, trust_root=root, policy=policy) as k:
            k.init()
    finally:
        _stop(first)
    second = _serve(data, port, tmp_path / "second.log")
    try:
        shown = _wait_for(tmp_path / "second.log", second, "enclave-kms key list")
        assert "already initialized" in shown
        assert "enclave-kms init " not in shown
    finally:
        _stop(second)
