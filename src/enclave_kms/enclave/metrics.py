"""Prometheus metrics, kept inside the enclave and served at `/metrics` (text format 0.0.4).

Only counts, durations and public state: route *templates* (never a concrete path, which
carries key names), status codes, audit batch sizes, storage call latencies, the state
generation and the replica's readiness. No key name, token id, or request content.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from enclave_kms.enclave.state.store import Backend

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> Iterator[str]:
        sep = "," if labels else ""
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            yield f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}'
        yield f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}'
        yield f"{name}_sum{{{labels}}} {self.total:.6f}"
        yield f"{name}_count{{{labels}}} {self.n}"


class Metrics:
    """Thread-safe counters and histograms; `gauges` are read when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, Histogram] = {}
        self._storage: dict[str, Histogram] = {}
        self._batches = Histogram(BATCH_BUCKETS)
        self.gauges: dict[str, Callable[[], float]] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(route, status)] = self._requests.get((route, status), 0) + 1
            self._latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def audit_batch(self, size: int) -> None:
        with self._lock:
            self._batches.observe(size)

    @contextmanager
    def storage_call(self, op: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._storage.setdefault(op, Histogram(LATENCY_BUCKETS)).observe(elapsed)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            out.append("# TYPE ekms_requests_total counter")
            for (route, status), count in sorted(self._requests.items()):
                out.append(
                    f'ekms_requests_total{{route="{_esc(route)}",status="{status}"}} {count}'
                )
            out.append("# TYPE ekms_request_duration_seconds histogram")
            for route, hist in sorted(self._latency.items()):
                out.extend(hist.lines("ekms_request_duration_seconds", f'route="{_esc(route)}"'))
            out.append("# TYPE ekms_storage_call_seconds histogram")
            for op, hist in sorted(self._storage.items()):
                out.extend(hist.lines("ekms_storage_call_seconds", f'op="{op}"'))
            out.append("# TYPE ekms_audit_batch_records histogram")
            out.extend(self._batches.lines("ekms_audit_batch_records", ""))
        for name, read in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # noqa: BLE001, S112 - a gauge that cannot be read is left out
                continue
            out.append(f"# TYPE {name} gauge")
            out.append(f"{name} {value:g}")
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class TimedBackend:
    """The storage OCALLs with their latency recorded (what the enclave waits on the host)."""

    def __init__(self, inner: Backend, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        with self._metrics.storage_call("get"):
            return self._inner.get(kind, id)

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        with self._metrics.storage_call("put"):
            return self._inner.put(kind, id, expected_version, blob)

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        with self._metrics.storage_call("list"):
            return self._inner.list_ids(kind, after, limit)

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        with self._metrics.storage_call("delete"):
            return self._inner.delete(kind, id, expected_version)
