"""Real processes for the end-to-end tests: a host that launches the enclave process, with
every EDL frame, every enclave stderr line and every host log line recorded.

Starting a server costs seconds (image check, enclave process, unsealing, RA-TLS), so the
flow tests share one server for the session; the hostile-host and crash tests run their own
on their own data directories. Every server is stopped whatever happens.

TLS: these tests talk plain httpx with `verify=False`; verifying the RA-TLS evidence is the
client SDK's subject (tests/client), and `test_kms_flow` checks once that the served
certificate's evidence verifies.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclave_kms.host.service import Running, ServeOptions, start

HTTP_TIMEOUT = 180.0  # generous: the machine is shared, and RSA-4096 generation takes seconds
REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "enclave-kms"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def ok(resp: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have `status`."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:500]}"
    )
    return resp.json()


def fails(resp: httpx.Response, status: int, code: str) -> str:
    """The error message of a response that must fail with `status` and `code`."""
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.request.url.path}: expected {status} {code}, got "
        f"{resp.status_code} {resp.text[:500]}"
    )
    error = resp.json()["error"]
    assert error["code"] == code, error
    message: str = error["message"]
    return message


class Recorder(logging.Handler):
    """Everything that leaves the enclave other than TLS: EDL frames (both directions, on the
    wire as the host's endpoint sees them), the enclave's stderr, and host log lines."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self._lock = threading.Lock()
        self.frames: list[tuple[str, bytes]] = []
        self.stderr: list[str] = []
        self.logs: list[str] = []

    def frame(self, direction: str, wire: bytes) -> None:
        with self._lock:
            self.frames.append((direction, bytes(wire)))

    def stderr_line(self, line: str) -> None:
        with self._lock:
            self.stderr.append(line)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a logging handler must never raise
            line = repr(record.msg)
        with self._lock:
            self.logs.append(line)

    def snapshot(self) -> tuple[list[tuple[str, bytes]], list[str]]:
        """(frames, text lines) recorded so far."""
        with self._lock:
            return list(self.frames), [*self.stderr, *self.logs]


@contextmanager
def recording_logs(recorder: Recorder) -> Iterator[Recorder]:
    """Attach `recorder` to the root logger, with enclave_kms loggers at DEBUG."""
    root, ours = logging.getLogger(), logging.getLogger("enclave_kms")
    level = ours.level
    ours.setLevel(logging.DEBUG)
    root.addHandler(recorder)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        ours.setLevel(level)


@dataclass
class Server:
    """One data directory and the server currently running on it (if any)."""

    data_dir: Path
    recorder: Recorder | None = None
    running: Running | None = None
    token: str = field(default="", repr=False)
    workers: int = 1
    storage: str | None = None  # postgresql://... (default: the data directory's SQLite)
    cert_lifetime_seconds: float | None = None

    def start(self) -> Running:
        assert self.running is None, "already running"
        rec = self.recorder
        self.running = start(
            ServeOptions(
                data_dir=self.data_dir,
                port=free_port(),
                observer=None if rec is None else rec.frame,
                stderr_sink=None if rec is None else rec.stderr_line,
                workers=self.workers,
                storage=self.storage,
                cert_lifetime_seconds=self.cert_lifetime_seconds,
            )
        )
        return self.running

    def stop(self) -> None:
        running, self.running = self.running, None
        if running is not None:
            running.stop()

    def restart(self) -> Running:
        self.stop()
        return self.start()

    @property
    def live(self) -> Running:
        assert self.running is not None, "not running"
        return self.running

    @property
    def url(self) -> str:
        return self.live.url

    def client(self, token: str | None = None, *, anonymous: bool = False) -> httpx.Client:
        """An httpx client for the running server, with the admin token unless told."""
        bearer = None if anonymous else (token or self.token)
        headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
        return httpx.Client(base_url=self.url, verify=False, timeout=HTTP_TIMEOUT, headers=headers)

    def init(self) -> str:
        with self.client(anonymous=True) as c:
            self.token = ok(c.post("/v1/sys/init"), 201)["token"]
        return self.token


@contextmanager
def served(
    data_dir: Path,
    recorder: Recorder | None = None,
    *,
    init: bool = True,
    workers: int = 1,
    storage: str | None = None,
    cert_lifetime_seconds: float | None = None,
) -> Iterator[Server]:
    """A started (and initialised) server on `data_dir`, stopped on exit whatever happens."""
    server = Server(
        data_dir,
        recorder,
        workers=workers,
        storage=storage,
        cert_lifetime_seconds=cert_lifetime_seconds,
    )
    try:
        server.start()
        if init:
            server.init()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def flow_recorder() -> Iterator[Recorder]:
    with recording_logs(Recorder()) as recorder:
        yield recorder


@pytest.fixture(scope="session")
def kms(tmp_path_factory: pytest.TempPathFactory, flow_recorder: Recorder) -> Iterator[Server]:
    """The flow server shared by test_kms_flow and test_no_secrets: everything it does is
    recorded from its first frame, across restarts."""
    with served(tmp_path_factory.mktemp("e2e-flow") / "data", flow_recorder) as server:
        yield server
