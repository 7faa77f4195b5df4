"""Defect 1 of issue 18: under Gramine the enclave's stderr is its stdout, so any stray write
would land inside the EDL frame stream. Through a stand-in with Gramine's descriptor
behaviour (tests/gramine/gramine_sgx_standin.py), a real simulated enclave that writes to fd 1,
fd 2, print() and raises tracebacks in threads, before and while serving ECALLs, keeps a
working channel; its stray output reaches the host as `log` OCALLs, never as frames."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from enclave_kms.errors import PlatformError
from enclave_kms.host.launcher import EnclaveProcess
from enclave_kms.host.ocalls import HostOcalls, SimQuoting
from enclave_kms.host.service import ensure_image, ensure_platform
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.sim.loader import LoadedImage, enclave_argv
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.quote import parse_quote

STANDIN = Path(__file__).with_name("gramine_sgx_standin.py")

# Runs inside the enclave process before the bootstrap: noise on every path a stray write
# can take (raw fds, Python streams, an uncaught exception in a thread → threading.excepthook).
NOISE = (
    "import os,sys,threading,time\n"
    "def _noise():\n"
    "    n = 0\n"
    "    while True:\n"
    "        n += 1\n"
    "        os.write(1, b'raw-fd1-noise %d\\n' % n)\n"
    "        os.write(2, b'raw-fd2-noise\\n')\n"
    "        print('print-noise', flush=True)\n"
    "        sys.stderr.write('stderr-noise\\n'); sys.stderr.flush()\n"
    "        if n % 10 == 0:\n"
    "            threading.Thread(target=lambda: 1 / 0, name='boom').start()\n"
    "        time.sleep(0.01)\n"
    "threading.Thread(target=_noise, daemon=True).start()\n"
)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedImage, SimPlatform]:
    root = tmp_path_factory.mktemp("gramine-channel")
    image = ensure_image(root / "image", root / "signer.pem")
    return root, image, ensure_platform(root / "platform")


def _noisy_argv(image: LoadedImage, pycache: Path) -> list[str]:
    argv = enclave_argv(image, pycache_prefix=pycache)
    assert argv[-2] == "-c"
    return [sys.executable, str(STANDIN), *argv[:-1], NOISE + argv[-1]]


@pytest.fixture
def enclave(
    world: tuple[Path, LoadedImage, SimPlatform], tmp_path: Path
) -> Iterator[tuple[EnclaveProcess, Lines, SimPlatform]]:
    _, image, platform = world
    storage = SQLiteStorage(tmp_path / "kms.sqlite")
    sink = Lines()
    (tmp_path / "pycache").mkdir(mode=0o700)
    proc = EnclaveProcess(
        _noisy_argv(image, tmp_path / "pycache"),
        HostOcalls(storage, SimQuoting(platform)).handlers(),
        stderr_sink=sink.add,
    )
    recorder = _LogCapture(sink)
    try:
        proc.start()
        yield proc, sink, platform
    finally:
        proc.stop()
        recorder.close()
        storage.close()


class _LogCapture:
    """The host logs `log` OCALLs under enclave_kms.host.*; collect them into `sink`."""

    def __init__(self, sink: Lines) -> None:
        import logging

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                sink.add(record.getMessage())

        self._handler = Handler(level=logging.DEBUG)
        self._logger = logging.getLogger("enclave_kms")
        self._old = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self._handler)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._old)


def _initialize(proc: EnclaveProcess, platform: SimPlatform) -> dict[str, Any]:
    config = {"platform": "sim", "platform_dir": str(platform.path), "worker": 0, "workers": 1}
    reply = proc.call("initialize", config=cbor2.dumps(config), timeout=180)
    claims: dict[str, Any] = cbor2.loads(reply["identity"])
    return claims


def test_stray_output_in_the_enclave_never_reaches_the_frames(
    enclave: tuple[EnclaveProcess, Lines, SimPlatform],
) -> None:
    proc, sink, platform = enclave
    claims = _initialize(proc, platform)
    assert claims
    for _ in range(15):  # ECALLs while the noise goes on (≈100 writes a second on 4 paths)
        report = proc.call("get_report", timeout=60)
        quote = parse_quote(report["report"][16:])  # OE header, then the DCAP quote
        pem = report["pem_key"].ljust(512, b"\0")
        assert quote.body.report_data[:32] == hashlib.sha256(pem).digest()
    assert proc.alive()
    wanted = "stray output: ZeroDivisionError: division by zero"
    deadline = time.monotonic() + 30  # a loaded machine: the forwarder may lag the ECALLs
    while wanted not in sink.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = sink.text()
    # Start-up output (before the enclave owned its stdout) went to the host log as such …
    assert "Gramine is starting" in text
    # … and everything written afterwards crossed as `log` OCALLs, on every path.
    for marker in ("raw-fd1-noise", "raw-fd2-noise", "print-noise", "stderr-noise"):
        assert f"stray output: {marker}" in text, marker
    assert wanted in text
    assert proc.stop() == 0


def test_an_enclave_that_dies_before_its_channel_is_reported_with_its_output(
    tmp_path: Path,
) -> None:
    script = "import sys\nprint('Traceback (most recent call last):')\nsys.exit(70)\n"
    proc = EnclaveProcess(
        [sys.executable, str(STANDIN), sys.executable, "-I", "-c", script],
        {},
        startup_timeout=60,
    )
    with pytest.raises(PlatformError, match=r"exited before opening its EDL channel.*Traceback"):
        proc.start()


def test_a_silent_enclave_is_stopped_after_the_startup_timeout() -> None:
    proc = EnclaveProcess(
        [sys.executable, str(STANDIN), sys.executable, "-I", "-c", "import time; time.sleep(60)"],
        {},
        startup_timeout=1,
    )
    with pytest.raises(PlatformError, match="did not open its EDL channel within 1 s"):
        proc.start()
    assert not proc.alive()
