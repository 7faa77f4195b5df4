"""`enclave-kms replicas join`: a one-shot enclave run that obtains the storage root key from a
running replica (enclave/custody/) and seals it to this CPU, then stops without serving."""

from __future__ import annotations

from typing import Any

from enclave_kms.errors import UsageError
from enclave_kms.host.service import (
    DataDirLock,
    ServeOptions,
    launch_enclave,
    open_configured_storage,
    private_dir,
    sim_platform_and_image,
)


def join_once(options: ServeOptions) -> dict[str, Any]:
    """`enclave-kms replicas join`: get the storage root key from `options.join_url`, seal
    it to this CPU, and stop (no server: the database stays another server's until replicas
    share it). Returns the enclave's identity claims."""
    if options.join_url is None:
        raise UsageError("--peer URL: the running replica to join")
    data_dir = private_dir(options.data_dir)
    lock = DataDirLock(data_dir)
    try:
        platform, image = sim_platform_and_image(options, data_dir)
        storage = open_configured_storage(options, data_dir, exclusive=False)
        try:
            enclave, claims = launch_enclave(
                image,
                platform,
                storage,
                data_dir,
                observer=options.observer,
                stderr_sink=options.stderr_sink,
                join_url=options.join_url,
                join_only=True,
            )
            enclave.stop()
        finally:
            storage.close()
    finally:
        lock.release()
    return claims
