"""Enclave process entry point of the KMS (the channel set-up is channel_io.py's, shared with
the key-release workload's entry point)."""

from __future__ import annotations

import os
import time

from enclave_kms.enclave.channel_io import open_channel
from enclave_kms.enclave.runtime import EnclaveRuntime


def main() -> None:
    runtime, endpoint = open_channel(EnclaveRuntime)
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
