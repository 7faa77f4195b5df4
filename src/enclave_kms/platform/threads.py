"""The enclave's thread budget: every thread one enclave worker can run, bounded and counted.

Without EDMM, SGX needs a thread slot (TCS) per thread fixed at signing time, and Gramine's
`sgx.max_threads` is a hard limit: one thread more and `pthread_create` fails, which Python
reports as "can't start new thread" and libuv answers by aborting the process. So every pool
inside the enclave has a fixed size, named here, and the manifest's `sgx.max_threads` is
derived from the sum (tests/gramine/test_thread_budget.py measures the real peak under
concurrent load in simulation and checks it stays within `ENCLAVE_THREADS`).

Each worker (`serve --workers N`) is its own enclave process with its own budget; the EPC it
needs is `enclave_size` per worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

#: Size of the enclave's EDL pool (ECALLs served concurrently); `set_up_server` holds one slot
#: for the life of the server (its thread runs the HTTP event loop).
EDL_ECALL_WORKERS = 8
#: anyio's worker threads for request handlers that must wait on the host (store misses,
#: writes): Starlette's default is 40; requests beyond the bound wait for a free thread.
HTTP_BLOCKING_THREADS = 16
#: libuv's pool (uvloop: getaddrinfo and file work); set explicitly in the manifest's
#: environment (`UV_THREADPOOL_SIZE`), libuv's default is the same 4.
LIBUV_THREADPOOL_SIZE = 4

#: Threads of one enclave-kms enclave process, by who starts them.
ENCLAVE_THREADS: Mapping[str, int] = MappingProxyType(
    {
        "main": 1,  # enclave/__main__.py: waits for shutdown
        "edl-reader": 1,  # edl_endpoint.Endpoint: reads frames
        "edl-ecall": EDL_ECALL_WORKERS,  # edl_endpoint.Endpoint pool
        "stray-output": 1,  # enclave/channel_io.py: fd 1/2 lines → log OCALL
        "audit": 1,  # enclave/state/audit.py: batches and appends the audit chain
        "anyio-worker": HTTP_BLOCKING_THREADS,  # enclave/runtime.py bounds anyio's limiter
        "libuv": LIBUV_THREADPOOL_SIZE,
    }
)

#: Gramine's own threads inside the enclave (Documentation/manifest-syntax.rst, "Number of
#: threads"): the IPC helper (always), the Async helper (timers, on demand) and one TLS-handshake
#: thread per pipe being created (the stray-output pipe at start).
GRAMINE_HELPER_THREADS = 3
#: Slack for what cannot be measured here (a library version that starts one more thread).
HEADROOM = 8


def enclave_threads() -> int:
    """Peak threads of one enclave process, by construction."""
    return sum(ENCLAVE_THREADS.values())


def gramine_max_threads() -> int:
    """`sgx.max_threads` for one worker: the process's threads, Gramine's, and headroom."""
    return enclave_threads() + GRAMINE_HELPER_THREADS + HEADROOM
