"""`make soak` (`python -m bench.soak`): enclave-kms under steady load for SOAK_SECONDS.

The real `enclave-kms serve --workers 2` (simulation, token auth, durable audit, sealed
SQLite; bench/peers/enclave_kms.py) first gets a capacity run (wrk, closed loop, encrypt),
then SOAK_SECONDS (default 600) of load offered at SOAK_LOAD (default 0.8) of that capacity,
in windows of SOAK_WINDOW seconds (default 30). Each connection waits before each request
(wrk's `delay()`), so the offered rate is bounded: the server has headroom and its latency
is that of a server that keeps up, not of a queue.

Pass criteria (exit code 1 otherwise, each failure named): no error in any window; the
server's resident memory (the host process and every process under it: the enclave workers) grows by
less than 5 % from the end of the first window to the end of the last; p99 stable: no
window's p99 above 3x the median window p99 (on a shared machine a neighbour's burst shows
as one window, a leak or a growing queue as a trend). Not part of `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import BenchError, log
from bench.peers.base import HttpTarget
from bench.wrk import find_wrk, run_wrk

CONNECTIONS = 64
CAPACITY_SECONDS = 15.0
RSS_GROWTH_LIMIT = 0.05
P99_SPREAD_LIMIT = 3.0


def tree_rss_bytes(leader: int) -> int:
    """Resident memory of `leader` and every process descending from it (the host and its
    enclave workers, which run in sessions of their own)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            pid = int(entry.name)
            parent[pid] = int(fields[1])  # field 4 of stat: the parent
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile

    def descends(pid: int) -> bool:
        for _ in range(64):
            if pid == leader:
                return True
            pid = parent.get(pid, 0)
            if pid <= 1:
                return False
        return False

    return sum(size for pid, size in rss.items() if descends(pid))


def verdict(windows: list[dict[str, Any]]) -> list[str]:
    """The pass criteria over the windows; an empty list is a pass."""
    failures = []
    errors = sum(w["errors"] for w in windows)
    if errors:
        failures.append(f"{errors} errors")
    first, last = windows[0]["rss_mib"], windows[-1]["rss_mib"]
    if last > first * (1 + RSS_GROWTH_LIMIT):
        failures.append(f"RSS grew {100 * (last / first - 1):.1f} % ({first} -> {last} MiB)")
    median = statistics.median(w["p99_ms"] for w in windows)
    worst = max(windows, key=lambda w: w["p99_ms"])
    if worst["p99_ms"] > P99_SPREAD_LIMIT * median:
        failures.append(
            f"p99 unstable: {worst['p99_ms']} ms in window {worst['window']} vs median {median} ms"
        )
    return failures


def soak(target: HttpTarget, wrk: str, seconds: float, load: float, window: float) -> int:
    op = target.ops["encrypt"]
    assert target.pid is not None
    capacity = run_wrk(
        wrk, target.base_url, op, seconds=CAPACITY_SECONDS, connections=CONNECTIONS, tag="cap"
    )
    rate = capacity.rps * load
    # Closed loop with think time: each connection sends one request per delay + latency.
    delay_ms = max(0.0, CONNECTIONS / rate * 1000 - (capacity.p50_ms or 0.0) * load)
    log(f"capacity {capacity.rps:.0f} req/s (p99 {capacity.p99_ms} ms); offering {rate:.0f}")
    windows: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        length = min(window, max(1.0, end - time.monotonic()))
        try:
            run = run_wrk(
                wrk,
                target.base_url,
                op,
                seconds=length,
                connections=CONNECTIONS,
                tag=f"soak{len(windows)}",
                delay_ms=delay_ms,
            )
            errors = run.errors
        except BenchError as exc:  # more than 1 % errors: still a window, all failed
            log(f"  window {len(windows)}: {exc}")
            windows.append({"window": len(windows), "errors": 1, "rps": 0.0, "p99_ms": 0.0})
            break
        row = {
            "window": len(windows),
            "rps": round(run.rps, 1),
            "p50_ms": run.p50_ms,
            "p99_ms": run.p99_ms,
            "errors": errors,
            "rss_mib": round(tree_rss_bytes(target.pid) / 2**20, 1),
        }
        log(f"  {json.dumps(row)}")
        windows.append(row)
        if run.rps > 0:  # steer the think time towards the offered rate (cycle = C / rate)
            delay_ms = max(0.0, delay_ms + CONNECTIONS * 1000 * (1 / rate - 1 / run.rps))
    failures = verdict(windows) if all("rss_mib" in w for w in windows) else ["load failed"]
    summary = {
        "capacity_rps": round(capacity.rps, 1),
        "offered_fraction": load,
        "offered_rps": round(rate, 1),
        "seconds": seconds,
        "windows": windows,
        "mean_rps": round(statistics.mean(w["rps"] for w in windows), 1),
        "failures": failures,
    }
    print(json.dumps(summary, indent=2))
    print("soak: PASS" if not failures else "soak: FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


def main() -> int:
    from bench.peers.enclave_kms import enclave_kms_target

    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    load = float(os.environ.get("SOAK_LOAD", "0.8"))
    window = float(os.environ.get("SOAK_WINDOW", "30"))
    wrk = find_wrk(install=True)
    workdir = Path(tempfile.mkdtemp(prefix="enclave-kms-soak-"))
    target = None
    try:
        target = enclave_kms_target(workdir, workers=2)
        if target is None:
            raise BenchError("enclave-kms target unavailable")
        return soak(target, wrk, seconds, load, window)
    finally:
        if target is not None:
            target.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
