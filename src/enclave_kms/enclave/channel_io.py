"""The enclave side of the EDL channel: this process's stdin/stdout, and only its.

Started by the host (simulation: through the loader's guarded bootstrap; Gramine: as the
manifest's entrypoint). Under Gramine descriptor 2 is a duplicate of descriptor 1 (the LibOS
opens stdout on the PAL console and makes stderr its copy; the console writes to the host's
stdout), so "move stdout to stderr" would still put every traceback into the frame stream.
Instead, before anything else runs, the channel takes private copies of 0 and 1, and 0, 1, 2
are re-pointed: stdin at /dev/null, stdout and stderr at a pipe whose lines a forwarder
thread sends through the `log` OCALL. Only then is `CHANNEL_PREAMBLE` written: after it, no
write by any code in this process (print, a traceback, a C library writing fd 2) can reach
the frames. The forwarder is one of the enclave's counted threads (see platform/threads.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, Protocol, TypeVar

from enclave_kms.edl_endpoint import CHANNEL_PREAMBLE, Endpoint
from enclave_kms.enclave.host_calls import OcallLogHandler
from enclave_kms.platform.threads import EDL_ECALL_WORKERS

_LINE_LIMIT = 4000  # the `log` OCALL's message bound is 4 KiB


def isolate_channel() -> tuple[IO[bytes], IO[bytes], IO[bytes]]:
    """(frames in, frames out, stray output): private stream ends for the EDL; 0/1/2 now lead
    elsewhere. Python's sys.std* objects are rebuilt on the new descriptors."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    frames_in = os.fdopen(os.dup(0), "rb", buffering=0)
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    stray_r, stray_w = os.pipe()
    os.dup2(stray_w, 1)
    os.dup2(stray_w, 2)
    os.close(stray_w)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stdin, for its life
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    frames_out.write(CHANNEL_PREAMBLE)
    return frames_in, frames_out, os.fdopen(stray_r, "rb", buffering=0)


def forward_stray_output(stream: IO[bytes], call: Callable[..., Any]) -> threading.Thread:
    """Send every line written to fd 1/2 through the `log` OCALL (level "warning", tagged
    "stray output"). A failing OCALL drops the line: writing it anywhere would loop."""

    def pump() -> None:
        pending = b""
        while chunk := stream.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > _LINE_LIMIT:
                lines.append(pending)
                pending = b""
            for raw in lines:
                text = raw.decode("utf-8", "replace").rstrip()
                if text:
                    with contextlib.suppress(Exception):
                        call("log", level="warning", message=f"stray output: {text}"[:_LINE_LIMIT])

    thread = threading.Thread(target=pump, name="enclave-stray-output", daemon=True)
    thread.start()
    return thread


class _Serves(Protocol):
    def handlers(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=_Serves)


def open_channel(make_runtime: Callable[[Callable[..., dict[str, Any]]], R]) -> tuple[R, Endpoint]:
    """Isolate the channel, build the runtime around its OCALL function, serve the runtime's
    ECALLs, and send logs and stray output through the `log` OCALL (every enclave image's
    entrypoint starts this way: the KMS and the key-release workload)."""
    frames_in, frames_out, stray = isolate_channel()
    holder: list[Endpoint] = []

    def call(name: str, /, **args: Any) -> dict[str, Any]:
        return holder[0].call(name, **args)

    runtime = make_runtime(call)
    endpoint = Endpoint(
        frames_in,
        frames_out,
        serves="ecall",
        handlers=runtime.handlers(),
        workers=EDL_ECALL_WORKERS,
    )
    holder.append(endpoint)

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = OcallLogHandler(call)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)

    endpoint.start()
    forward_stray_output(stray, call)
    return runtime, endpoint
