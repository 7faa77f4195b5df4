"""An explicit, bounded memo for the pure checks of a verification (DESIGN §8: no hidden caches).

Every quote of a platform shares its collateral, PCK chain and QE report, so re-appraising
costs only the quote's own signature and grading once those checks are remembered. The cache
is an object the caller owns and passes in (an SDK client keeps one, `quote verify` makes one
per run); the trust core keeps no module-level state.

What may be cached is what does not depend on `now`: parsed collateral, a chain whose
signatures, constraints and root pin were checked, a CRL whose issuer and signature were
checked, a raw ECDSA signature check. Validity windows (certificates, CRLs, TCB Info, QE
Identity) are re-checked at the caller's `now` on every use, so a hit can never make stale
evidence pass. Only successes are stored: a failure raises and is recomputed next time.
Keys are the full inputs (exact bytes), so one changed byte is a miss.

`stats()` reports hits and misses per kind; the benchmark and tests read them.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_MAXSIZE = 512


class VerificationCache:
    """A thread-safe LRU memo of successful pure checks, keyed by (kind, exact inputs)."""

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
            raise ValueError("maxsize must be a non-negative integer")
        self._maxsize = maxsize
        self._entries: OrderedDict[tuple[str, Hashable], Any] = OrderedDict()
        self._hits: Counter[str] = Counter()
        self._misses: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def disabled(cls) -> VerificationCache:
        """A cache that remembers nothing (every lookup is a miss): one-shot verifications."""
        return cls(maxsize=0)

    def get(self, kind: str, key: Hashable, compute: Callable[[], T]) -> T:
        """The remembered result for (kind, key), or `compute()` remembered if it returns."""
        full = (kind, key)
        with self._lock:
            if full in self._entries:
                self._entries.move_to_end(full)
                self._hits[kind] += 1
                return self._entries[full]  # type: ignore[no-any-return]
            self._misses[kind] += 1
        value = compute()  # outside the lock: checks may take milliseconds
        if self._maxsize:
            with self._lock:
                self._entries[full] = value
                self._entries.move_to_end(full)
                while len(self._entries) > self._maxsize:
                    self._entries.popitem(last=False)
        return value

    def stats(self) -> dict[str, dict[str, int]]:
        """Hits and misses per kind, e.g. ``{"crl": {"hits": 3, "misses": 1}}``."""
        with self._lock:
            kinds = sorted(set(self._hits) | set(self._misses))
            return {k: {"hits": self._hits[k], "misses": self._misses[k]} for k in kinds}

    @property
    def hits(self) -> int:
        with self._lock:
            return sum(self._hits.values())

    @property
    def misses(self) -> int:
        with self._lock:
            return sum(self._misses.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hits.clear()
            self._misses.clear()
