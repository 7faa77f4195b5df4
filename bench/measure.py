"""What one measurement is, how runs are timed and interleaved, and how they are summarised.

A `Case` is one (name, system, variant) cell of the result table. Its `run` callable performs
one *run* (a bounded batch of operations) and returns a `RunSample`. `run_interleaved` calls
every selected case once per round, in a different shuffled order each round, so that a burst
of noise from the other tenants of this machine hits all systems alike instead of one system's
whole series; the summary then takes the median across runs and keeps the range.

Latency percentiles: in-process runs keep every latency (one timer read per operation, so the
loop overhead, ~0.1 µs, is counted in the operation) and percentiles are taken over all runs
pooled; a load generator (wrk) only reports its own percentiles per run, and their median
across runs is reported.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class BenchError(Exception):
    """A case cannot be measured (missing tool, peer failed to start, errors under load)."""


@dataclass(frozen=True)
class RunSample:
    """One run: `ops` operations completed in `seconds` of wall time (all workers together)."""

    ops: int
    seconds: float
    latencies_ns: array[int] | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Case:
    """One cell of the table; `extra` fields (vector, processes, ...) go into its JSON row."""

    name: str
    system: str
    group: str
    run: Callable[[], RunSample]
    extra: dict[str, Any] = field(default_factory=dict)
    warmup: Callable[[], object] | None = None
    samples: list[RunSample] = field(default_factory=list)
    failure: str | None = None
    stats: dict[str, float] = field(default_factory=dict)  # summed over runs (audit batches)

    @property
    def label(self) -> str:
        variant = ", ".join(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return f"{self.name} [{self.system}{', ' + variant if variant else ''}]"

    def matches(self, only: Sequence[str]) -> bool:
        return not only or any(token in (self.name, self.system, self.group) for token in only)


def timed_loop(
    op: Callable[[], object],
    seconds: float,
    *,
    min_ops: int = 1,
    max_ops: int | None = None,
    before: Callable[[], object] | None = None,
) -> RunSample:
    """Call `op` until `seconds` have passed (and at least `min_ops` times), timing each call.

    `before` runs ahead of every call outside the timed region (cache clearing, a fresh
    directory); without it one timer read per call is enough.
    """
    now = time.perf_counter_ns
    latencies: array[int] = array("q")
    start = now()
    deadline = start + int(seconds * 1e9)
    busy = 0
    t0 = start
    while True:
        if before is not None:
            before()
            t0 = now()
        op()
        t1 = now()
        latencies.append(t1 - t0)
        busy += t1 - t0
        t0 = t1
        count = len(latencies)
        if max_ops is not None and count >= max_ops:
            break
        if t1 >= deadline and count >= min_ops:
            break
    # With `before`, its time is excluded from the throughput too: rps = ops / busy time.
    elapsed = busy if before is not None else t0 - start
    return RunSample(ops=len(latencies), seconds=elapsed / 1e9, latencies_ns=latencies)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _sig(value: float) -> float:
    """Four significant digits: enough for a noisy machine, never rounds a positive to 0."""
    return float(f"{value:.4g}")


def summarize(case: Case) -> dict[str, Any]:
    """The JSON row of a measured case (medians and ranges across its runs)."""
    samples = case.samples
    if not samples:
        raise BenchError(f"{case.label}: no run completed")
    rates = [s.rps for s in samples]
    pooled = [s.latencies_ns for s in samples]
    if all(lat is not None and len(lat) for lat in pooled):
        values = sorted(v for lat in pooled if lat is not None for v in lat)
        p50 = percentile(values, 50) / 1e6
        p99 = percentile(values, 99) / 1e6
        low, high = values[0] / 1e6, values[-1] / 1e6
    else:
        p50 = statistics.median(s.p50_ms or 0.0 for s in samples)
        p99 = statistics.median(s.p99_ms or 0.0 for s in samples)
        low = min(s.min_ms or 0.0 for s in samples)
        high = max(s.max_ms or 0.0 for s in samples)
    row: dict[str, Any] = {
        "name": case.name,
        "system": case.system,
        "rps": _sig(statistics.median(rates)),
        "p50_ms": _sig(p50),
        "p99_ms": _sig(p99),
        "runs": len(samples),
        "rps_min": _sig(min(rates)),
        "rps_max": _sig(max(rates)),
        "min_ms": _sig(low),
        "max_ms": _sig(high),
        "ops": sum(s.ops for s in samples),
    }
    errors = sum(s.errors for s in samples)
    if errors:
        row["errors"] = errors
    row.update(case.extra)
    if case.stats.get("audit_batches"):
        row["audit_batches"] = int(case.stats["audit_batches"])
        row["audit_batch_mean"] = _sig(case.stats["audit_records"] / case.stats["audit_batches"])
        row["audit_batch_max"] = int(case.stats["audit_batch_max"])
    return row


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_interleaved(cases: Sequence[Case], rounds: int, *, seed: int = 7) -> None:
    """Warm every case once, then run each once per round in a fresh shuffled order.

    A case that raises is marked failed (with the reason) and skipped from then on: one broken
    peer must not cost the measurements of the others.
    """
    for case in cases:
        if case.warmup is None:
            continue
        try:
            case.warmup()
        except Exception as exc:  # noqa: BLE001 - any failure of one case is reported, not fatal
            case.failure = f"warm-up failed: {type(exc).__name__}: {exc}"
            log(f"  ! {case.label}: {case.failure}")
    if not cases:
        return
    for index in range(rounds):
        order = [c for c in cases if c.failure is None]
        random.Random(seed + index).shuffle(order)
        log(f"  round {index + 1}/{rounds}: {len(order)} cases")
        for case in order:
            try:
                sample = case.run()
            except Exception as exc:  # noqa: BLE001 - see above
                case.failure = f"{type(exc).__name__}: {exc}"
                log(f"  ! {case.label}: {case.failure}")
                continue
            case.samples.append(sample)
            log(f"    {case.label}: {sample.rps:,.1f}/s")
