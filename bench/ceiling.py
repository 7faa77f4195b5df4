"""Ceilings: the same operations done directly with `cryptography`, in 1 and 2 processes.

No KMS can beat the library it calls in the same process; these rows say how close a server
gets (`ratio_to_ceiling`). The 2-process figure is the machine's ceiling (2 cores): each worker
owns its key and runs the operation in a tight loop, both starting at the same instant.

Workers are spawned (not forked) once and reused for every run, so key generation and imports
stay outside the timed region.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import time
from array import array
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.measure import Case, RunSample, timed_loop

PLAINTEXT_SIZE = 32
OPERATIONS: tuple[str, ...] = (
    "encrypt",
    "decrypt",
    "datakey",
    "sign-ecdsa-p256",
    "sign-ed25519",
    "sign-rsa-2048",
)
PROCESS_COUNTS = (1, 2)


def make_operation(name: str) -> Callable[[], object]:
    """One operation as a KMS performs it (fresh nonce per encryption, SHA-256 signatures)."""
    message = os.urandom(PLAINTEXT_SIZE)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    if name == "encrypt":
        return lambda: aead.encrypt(os.urandom(12), message, None)
    if name == "decrypt":
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, message, None)
        return lambda: aead.decrypt(nonce, sealed, None)
    if name == "datakey":  # a new 256-bit key, returned in plaintext and wrapped
        return lambda: aead.encrypt(os.urandom(12), os.urandom(32), None)
    if name == "sign-ecdsa-p256":
        p256 = ec.generate_private_key(ec.SECP256R1())
        return lambda: p256.sign(message, ec.ECDSA(hashes.SHA256()))
    if name == "sign-ed25519":
        ed = ed25519.Ed25519PrivateKey.generate()
        return lambda: ed.sign(message)
    if name == "sign-rsa-2048":
        key = rsa.generate_private_key(65537, 2048)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        return lambda: key.sign(message, pss, hashes.SHA256())
    raise ValueError(f"unknown ceiling operation {name!r}")


_WORKER_OPS: dict[str, Callable[[], object]] = {}


def worker_run(name: str, seconds: float, start_at: float) -> tuple[int, float, array[int]]:
    """In a pool worker: set up once, wait for the common start instant, run for `seconds`."""
    op = _WORKER_OPS.get(name)
    if op is None:
        op = _WORKER_OPS[name] = make_operation(name)
        op()
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    sample = timed_loop(op, seconds)
    assert sample.latencies_ns is not None
    return sample.ops, sample.seconds, sample.latencies_ns


class WorkerPool:
    """Two spawned processes, created on first use and closed by the harness."""

    def __init__(self, size: int = max(PROCESS_COUNTS)) -> None:
        self.size = size
        self._pool: multiprocessing.pool.Pool | None = None

    def pool(self) -> multiprocessing.pool.Pool:
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.size)
        return self._pool

    def run(self, name: str, processes: int, seconds: float) -> RunSample:
        start_at = time.time() + 0.05
        results = self.pool().starmap(worker_run, [(name, seconds, start_at)] * processes)
        latencies: array[int] = array("q")
        for _, _, lat in results:
            latencies.extend(lat)
        return RunSample(
            ops=sum(r[0] for r in results),
            seconds=max(r[1] for r in results),
            latencies_ns=latencies,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def cases(pool: WorkerPool, seconds: float) -> list[Case]:
    out = []
    for name in OPERATIONS:
        for processes in PROCESS_COUNTS:

            def run(name: str = name, processes: int = processes) -> RunSample:
                return pool.run(name, processes, seconds)

            def warm(name: str = name, processes: int = processes) -> RunSample:
                return pool.run(name, processes, min(seconds, 0.05))

            out.append(
                Case(
                    name,
                    "ceiling",
                    "crypto",
                    run,
                    extra={"processes": processes, "bytes": PLAINTEXT_SIZE}
                    if name in ("encrypt", "decrypt")
                    else {"processes": processes},
                    warmup=warm,
                )
            )
    return out
