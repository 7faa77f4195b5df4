"""The enclave's memory of recently used records, and the "no host call here" guard.

Why a cache. Every request names a token and a key; reading both from the host costs two
OCALL round trips, which measured as the largest fixed cost of a request after the audit
(docs/performance.md). One server owns its store (`serve` locks the data directory) and every
change to a record goes through one of its enclave workers, so the cache can be exact: it is
written through on every put, emptied on every delete and on every refused write, and, with
several workers, emptied of a record another worker changed (the `records_changed` ECALL,
relayed by the host before that worker answers: host/workers.py). It never expires. A host
that withholds a relay, or runs two servers over one store anyway, gains a worker answering
from an older version of a record: what it can already get by serving an old sealed version.

What it holds: the sealed blob and its version, exactly as the host returned or accepted it,
only after the blob has been authenticated once. A plain read opens the blob again (AES-GCM and
CBOR), so callers get fresh objects they may change freely. The hot paths (a token, a key)
read through `RecordStore.get_parsed`, which also keeps the immutable object their parser
built from the authenticated value, so a request pays neither the AEAD nor the parse again
(measured: a quarter of the enclave's own work per request).

Replicas (several servers on one PostgreSQL database, docs/replicas.md) break the premise:
another server's writes never pass through this one. There the cache is *stamped*: every
entry carries the stamp it was last confirmed under, and `new_stamp()` (called when the
signed state head shows that records changed elsewhere: store.py `RecordStore.shared`)
makes every entry stale at once. A stale entry is never served; the next read asks the host,
and if the host still holds the same version and blob, the entry (with its parsed object, an
RSA key loaded once) is confirmed under the new stamp instead of being rebuilt.

What it changes for a hostile host: altering, swapping, deleting or rolling back a record in
the host's files while the enclave runs has no effect on a record the enclave holds; the
change is seen (and refused, if it is an alteration) when the record is next read from the
host: after a restart, or once it has been evicted (least recently used, bounded in entries
and bytes).

`memory_only()` marks a block that must not wait on the host: the API runs the cheap,
read-only operations on the event loop inside it, and a store access that would need an
OCALL raises `WouldBlock` instead; the route then runs again on a worker thread. This is
internal control flow between the store and the API, never an error a client sees.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 << 20

_MEMORY_ONLY: ContextVar[bool] = ContextVar("enclave_kms_memory_only", default=False)


class RequestScope:
    """One request: whether the shared store has already checked the state head for it."""

    __slots__ = ("checked",)

    def __init__(self) -> None:
        self.checked = False


_REQUEST: ContextVar[RequestScope | None] = ContextVar("enclave_kms_request", default=None)


@contextmanager
def request_scope() -> Iterator[RequestScope]:
    """Everything inside (the thread-pool hops of one request too: they copy the context) is
    one request for the shared store's per-request head check."""
    scope = RequestScope()
    token = _REQUEST.set(scope)
    try:
        yield scope
    finally:
        _REQUEST.reset(token)


def current_request() -> RequestScope | None:
    return _REQUEST.get()


class WouldBlock(Exception):
    """An access inside `memory_only()` needs the host. Deliberately outside the
    EnclaveKMSError tree: it is caught by the API's inline runner and never crosses a
    boundary (if it ever did, the boundary would answer 500, a bug worth seeing)."""


@contextmanager
def memory_only() -> Iterator[None]:
    """Within the block, store accesses that need an OCALL raise `WouldBlock`."""
    token = _MEMORY_ONLY.set(True)
    try:
        yield
    finally:
        _MEMORY_ONLY.reset(token)


def require_host_access() -> None:
    """Called by the store before any OCALL."""
    if _MEMORY_ONLY.get():
        raise WouldBlock


class _Entry:
    __slots__ = ("blob", "parsed", "parser", "stamp", "version")

    def __init__(self, version: int, blob: bytes, stamp: int) -> None:
        self.version = version
        self.blob = blob
        self.stamp = stamp
        self.parser: object = None
        self.parsed: object = None


class RecordCache:
    """(kind, id) -> (version, sealed blob [, parsed value]), least recently used first out.
    Thread-safe."""

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._bytes = 0
        self._epoch = 0
        self._stamp = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        key = (kind, id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.stamp != self._stamp:
                return None
            self._entries.move_to_end(key)
            return entry.version, entry.blob

    def parsed(self, kind: str, id: str, parser: object) -> tuple[int, object] | None:
        """(version, value) that `parser` built from the cached version, if it did."""
        key = (kind, id)
        with self._lock:
            entry = self._entries.get(key)
            if (
                entry is None
                or entry.stamp != self._stamp
                or entry.parser is None
                or entry.parser != parser
            ):
                return None
            self._entries.move_to_end(key)
            return entry.version, entry.parsed

    def remember(self, kind: str, id: str, version: int, parser: object, value: object) -> None:
        """Keep what `parser` built from version `version`, if that is still the cached one.
        `value` must be immutable: every later reader shares it."""
        with self._lock:
            entry = self._entries.get((kind, id))
            if entry is not None and entry.version == version:
                entry.parser, entry.parsed = parser, value

    def new_stamp(self) -> None:
        """Records changed elsewhere: every entry is stale until the host confirms it (and a
        read in flight, begun before, is too old to cache)."""
        with self._lock:
            self._epoch += 1
            self._stamp += 1

    def epoch(self) -> int:
        """Taken before a read from the host, handed back to `fill`: a removal in between
        (a delete, a refused write, a new stamp) makes that read too old to cache."""
        with self._lock:
            return self._epoch

    def fill(self, kind: str, id: str, version: int, blob: bytes, epoch: int) -> None:
        """Remember an authenticated record read from the host, unless something newer
        (or a removal) happened since the read began."""
        with self._lock:
            if epoch != self._epoch:
                return
            self._set((kind, id), version, blob)

    def store(self, kind: str, id: str, version: int, blob: bytes) -> None:
        """Remember a record this enclave has just written (the host accepted it)."""
        with self._lock:
            self._set((kind, id), version, blob)

    def remove(self, kind: str, id: str) -> None:
        with self._lock:
            self._epoch += 1
            entry = self._entries.pop((kind, id), None)
            if entry is not None:
                self._bytes -= len(entry.blob)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._bytes = 0

    def _set(self, key: tuple[str, str], version: int, blob: bytes) -> None:
        current = self._entries.get(key)
        if current is not None:
            if current.version == version and current.blob == blob:
                current.stamp = self._stamp  # confirmed as is: keep what was parsed from it
                return
            if current.version > version and current.stamp == self._stamp:
                return  # a concurrent reader is late; keep the newer one
            self._bytes -= len(current.blob)
        if len(blob) > self._max_bytes:
            self._entries.pop(key, None)
            return
        self._entries[key] = _Entry(version, blob, self._stamp)
        self._entries.move_to_end(key)
        self._bytes += len(blob)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= len(old.blob)
