"""Enclave process entry point: the EDL channel is this process's stdin/stdout.

Started by the host (simulation: through the loader's guarded bootstrap; Gramine: as the
manifest's entrypoint). Anything else written to stdout would corrupt the frames, so stdout
is moved to stderr before any other code runs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from enclave_kms.edl_endpoint import Endpoint
from enclave_kms.enclave.host_calls import OcallLogHandler
from enclave_kms.enclave.runtime import EnclaveRuntime


def main() -> None:
    frames_in = os.fdopen(os.dup(0), "rb", buffering=0)
    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints go to stderr, never into the frame stream
    sys.stdout = sys.stderr

    holder: list[Endpoint] = []

    def call(name: str, /, **args: Any) -> dict[str, Any]:
        return holder[0].call(name, **args)

    runtime = EnclaveRuntime(call)
    endpoint = Endpoint(frames_in, frames_out, serves="ecall", handlers=runtime.handlers())
    holder.append(endpoint)

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = OcallLogHandler(call)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)

    endpoint.start()
    # Live until the host asks us to stop or the channel to the host goes away. Without the
    # host there is no storage and no audit, so nothing could be acknowledged: stop serving.
    while not runtime.stopped.wait(0.5):
        if endpoint.closed:
            runtime.shutdown()
            break
    runtime.wait_server_stopped(10)
    time.sleep(0.2)  # let the last replies (shutdown, set_up_server) reach the host
    endpoint.close()
    os._exit(0)  # the server's worker threads must not keep a host-less enclave alive


if __name__ == "__main__":
    main()
