"""Starts the enclave as a separate process and drives it only through the EDL (DESIGN §3).

The enclave's stdin/stdout carry EDL frames once the enclave has written `CHANNEL_PREAMBLE`;
whatever it printed before (an interpreter that cannot start, a loader refusing the image)
and everything on its stderr (Gramine's own log, which the PAL writes to the host's fd 2) is
read line by line into the host's log. Under Gramine the enclave's stderr is merged into its
stdout, so this start-up output arrives on the frame stream: skipping to the preamble is what
keeps it out of the frame decoder, and the enclave itself makes sure nothing follows it but
frames (enclave/__main__.py). Stopping asks politely (`shutdown` ECALL), then terminates,
then kills.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from enclave_kms.edl_endpoint import CHANNEL_PREAMBLE, Endpoint, FrameObserver
from enclave_kms.errors import BoundaryError, EnclaveKMSError, PlatformError

log = logging.getLogger("enclave_kms.host")

#: Start-up output accepted before the preamble; a process printing more is not an enclave.
MAX_STARTUP_OUTPUT = 1 << 20


class EnclaveProcess:
    def __init__(
        self,
        argv: Sequence[str],
        ocalls: Mapping[str, Callable[..., Any]],
        *,
        cwd: Path | None = None,
        observer: FrameObserver | None = None,
        stderr_sink: Callable[[str], None] | None = None,
        startup_timeout: float = 600.0,
    ) -> None:
        self._argv = list(argv)
        self._ocalls = dict(ocalls)
        self._cwd = cwd
        self._observer = observer
        self._stderr_sink = stderr_sink or (lambda line: log.info("enclave: %s", line))
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoint: Endpoint | None = None
        self._startup_timeout = startup_timeout
        self._recent: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> EnclaveProcess:
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - argv comes from the loaded image
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self._cwd,
                close_fds=True,
                start_new_session=True,  # Ctrl-C goes to the host, which stops the enclave
            )
        except OSError as exc:
            raise PlatformError(f"cannot start the enclave: {exc.strerror}") from None
        stdin, stdout, stderr = self._proc.stdin, self._proc.stdout, self._proc.stderr
        if stdin is None or stdout is None or stderr is None:  # pragma: no cover - PIPE given
            raise PlatformError("cannot open the enclave's standard streams")
        threading.Thread(
            target=self._pump_stderr, args=(stderr,), daemon=True, name="enclave-stderr"
        ).start()
        self._await_preamble(stdout)
        self._endpoint = Endpoint(
            stdout,
            stdin,
            serves="ocall",
            handlers=self._ocalls,
            observer=self._observer,
        ).start()
        return self

    def _await_preamble(self, stdout: IO[bytes]) -> None:
        """Forward start-up lines to the log until the preamble; fail with the last lines if
        the enclave exits, floods or stays silent instead."""
        outcome: list[str] = []  # empty: still waiting; "": preamble seen; else the failure
        done = threading.Event()

        def scan() -> None:
            seen = 0
            try:
                while seen <= MAX_STARTUP_OUTPUT:
                    line = stdout.readline(8192)
                    if not line:
                        outcome.append("exited before opening its EDL channel")
                        return
                    if line.endswith(CHANNEL_PREAMBLE):
                        line = line[: -len(CHANNEL_PREAMBLE)]
                        if line:
                            self._output(line)
                        outcome.append("")
                        return
                    seen += len(line)
                    self._output(line)
                outcome.append(f"wrote over {MAX_STARTUP_OUTPUT} bytes before its EDL channel")
            except (OSError, ValueError):
                outcome.append("closed its output before opening its EDL channel")
            finally:
                done.set()

        threading.Thread(target=scan, daemon=True, name="enclave-startup").start()
        if not done.wait(self._startup_timeout):
            outcome.append(f"did not open its EDL channel within {self._startup_timeout:.0f} s")
        if outcome and outcome[0] == "":
            return
        self.stop(timeout=5)
        status = "" if self._proc is None else f" (status {self._proc.returncode})"
        last = " | ".join(self._recent) or "no output"
        raise PlatformError(f"the enclave {outcome[0]}{status}; its last output: {last}")

    def _output(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            self._recent.append(line[:300])
            self._stderr_sink(line)

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._output(raw)

    def call(self, name: str, /, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        if self._endpoint is None:
            raise PlatformError("the enclave is not running")
        try:
            return self._endpoint.call(name, timeout=timeout, **args)
        except BoundaryError:
            if self._proc is not None and self._proc.poll() is not None:
                raise PlatformError(
                    f"the enclave process exited with status {self._proc.returncode}"
                ) from None
            raise

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """Ask the enclave to shut down, then make sure the process is gone."""
        if self._proc is None:
            return None
        if self._proc.poll() is None and self._endpoint is not None and not self._endpoint.closed:
            with contextlib.suppress(EnclaveKMSError, TimeoutError):
                self._endpoint.call("shutdown", timeout=timeout)
        code = self.wait(timeout)
        if code is None:
            self._proc.terminate()
            code = self.wait(5)
        if code is None:
            self._proc.kill()
            code = self.wait(5)
        if self._endpoint is not None:
            self._endpoint.close()
        return code
