"""Defect 3 of issue 18: without EDMM `sgx.max_threads` is a hard limit, and the old manifest
gave 8 (from `num_tcs`). Here the threads of a real simulated enclave process are counted
(/proc/PID/task: Python and native threads alike) while more clients than any pool has threads
send requests that must wait on the host; the peak must stay within the budget
(platform/threads.py), and the manifest's `sgx.max_threads` must cover it plus Gramine's own."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from enclave_kms.platform import threads
from tests.e2e.conftest import ok, served

CLIENTS = 48  # more than the HTTP pool (16) and Starlette's unbounded default (40)
ROUNDS = 4


def _count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


class Peak:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _count(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measured_peak(tmp_path: Path) -> tuple[int, int]:
    """(threads when idle, peak under load) of one enclave worker."""
    with served(tmp_path / "data") as server:
        pid = server.live.enclave.pid
        assert pid is not None
        idle = _count(pid)
        barrier = threading.Barrier(CLIENTS)
        failures: list[str] = []

        def client(n: int) -> None:
            with server.client() as c:
                barrier.wait()
                for r in range(ROUNDS):
                    resp = c.post("/v1/keys", json={"name": f"load-{n}-{r}"})
                    if resp.status_code != 201:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")

        with Peak(pid) as peak:
            workers = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        assert not failures, failures[:3]
        with server.client() as c:  # still serving after the burst
            ok(c.get("/v1/keys"))
        return idle, peak.peak


def test_measured_peak_stays_within_the_budget_and_the_manifest_covers_it(
    tmp_path: Path,
) -> None:
    idle, peak = measured_peak(tmp_path)
    print(
        f"enclave threads: idle {idle}, peak {peak} under {CLIENTS} clients; budget "
        f"{threads.enclave_threads()}, sgx.max_threads {threads.gramine_max_threads()}"
    )
    # The load reached the HTTP pool: many more threads than at rest …
    assert peak >= idle + threads.HTTP_BLOCKING_THREADS // 2
    # … and every pool stayed within its bound.
    assert peak <= threads.enclave_threads()
    assert peak + threads.GRAMINE_HELPER_THREADS <= threads.gramine_max_threads()
