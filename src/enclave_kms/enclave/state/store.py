"""The enclave's view of storage: typed values in, sealed blobs out, versions checked.

`RecordStore` seals every value with `RecordCipher` before it reaches the backend (in the
running enclave the backend is the storage OCALL proxy; in tests it can be any object with
the host storage protocol's methods) and authenticates every blob it reads back.

Installation binding. `POST /v1/sys/init` is anonymous and the host can always reach the
port, so "initialised" must not be a fact the host can erase: if the init marker were all,
deleting it (or rolling it back) would let the host mint itself an admin token over every
existing key. So the marker carries a random installation id drawn at init, and key and
token records are sealed under keys derived from it (`RecordCipher.for_installation`). A
host that removes the marker can at most start a new, empty installation: the records of
the real one do not open under another id. An enclave that has seen the marker keeps its
binding for its whole life; before any init (unit tests, a fresh store) key and token
records use the storage root key's own derivation.

Shared stores (replicas, DESIGN §14). When other servers write the same database, a change
acknowledged by one must be in force on every other for requests that start after that
acknowledgement (a rotation, a disable, a revoked token, a tightened policy, a deletion).
The mechanism: the first store access of each request reads the signed state head (one
storage read; its signature is checked only when it changed) before anything else. Every
write of every server moves that head before it is acknowledged (head.py), so a head whose
record set differs from the last one this server saw means "something changed elsewhere":
every cached record becomes stale (`RecordCache.new_stamp`) and is confirmed against the host
on its next use (same version: kept, with its parsed key; newer: replaced). The same read
refuses a head older than one this server has seen (a restored older database).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from enclave_kms.enclave.state.cache import RecordCache, current_request, require_host_access
from enclave_kms.enclave.state.head import StateTracker
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.errors import ConflictError, IntegrityError, VersionConflict

T = TypeVar("T")

INIT_MARKER = ("config", "tokens-initialized")
"""Written once by `TokenService.init_admin`; its "installation" field binds the store."""
_BOUND_KINDS = frozenset({"key", "token"})


class Backend(Protocol):
    """What the enclave needs from the host (mirrors the storage OCALLs one to one)."""

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None: ...
    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool: ...
    def list_ids(self, kind: str, after: str, limit: int) -> list[str]: ...
    def delete(self, kind: str, id: str, expected_version: int) -> bool: ...


@dataclass(frozen=True)
class Versioned:
    version: int
    value: Any


class RecordStore:
    """Sealed, versioned records over `backend`; with `cache`, the enclave's own memory of
    them comes first (see `record_cache` for why that is exact and what it means)."""

    def __init__(
        self,
        backend: Backend,
        cipher: RecordCipher,
        *,
        cache: RecordCache | None = None,
        shared: bool = False,
    ) -> None:
        self._backend = backend
        self._cipher = cipher
        self._cache = cache
        self._installation: bytes | None = None
        self._bound: RecordCipher | None = None
        self._tracker: StateTracker | None = None
        self.shared = shared
        self._foreign_seen = 0

    def track(self, tracker: StateTracker) -> None:
        """From now on every read is checked against, and every write moves, the state head
        (head.py): the host can no longer take a record back behind the enclave's back."""
        self._tracker = tracker

    # ------------------------------------------------------------------ installation

    @property
    def bound(self) -> bool:
        return self._bound is not None

    def bind(self, installation: bytes) -> None:
        """Seal and open key and token records as those of `installation`, for good."""
        if self._installation is not None:
            if self._installation != installation:
                raise ConflictError("the store is already bound to another installation")
            return
        self._bound = self._cipher.for_installation(installation)
        self._installation = installation

    def bound_to(self, installation: bytes) -> RecordStore:
        """A view of the same backend bound to `installation` (init writes its admin token
        through it before the marker makes the installation official)."""
        view = RecordStore(self._backend, self._cipher, cache=self._cache, shared=self.shared)
        view._tracker = self._tracker
        view._foreign_seen = self._foreign_seen
        view.bind(installation)
        return view

    def _cipher_for(self, kind: str) -> RecordCipher:
        if kind not in _BOUND_KINDS:
            return self._cipher
        if self._bound is None:
            # Another worker (or an earlier run) may have initialised since: look once more.
            found = self.get(*INIT_MARKER)
            value = None if found is None else found.value
            installation = value.get("installation") if isinstance(value, dict) else None
            if isinstance(installation, bytes) and len(installation) == 32:
                self.bind(installation)
        return self._bound or self._cipher

    # ------------------------------------------------------------------ records

    def check_fresh(self) -> None:
        """Shared store: once per request (every call outside one), read the state head and
        make the cache stale if another server changed records since (module docstring)."""
        tracker = self._tracker
        if not self.shared or tracker is None:
            return
        scope = current_request()
        if scope is not None and scope.checked:
            return
        require_host_access()
        tracker.refresh()
        if tracker.foreign != self._foreign_seen:
            self._foreign_seen = tracker.foreign
            if self._cache is not None:
                self._cache.new_stamp()
        if scope is not None:
            scope.checked = True

    def get(self, kind: str, id: str) -> Versioned | None:
        self.check_fresh()
        cache = self._cache
        cached = None if cache is None else cache.get(kind, id)
        if cached is not None:
            version, blob = cached
            return Versioned(version, self._cipher_for(kind).open(kind, id, version, blob))
        require_host_access()
        epoch = 0 if cache is None else cache.epoch()
        found = self._backend.get(kind, id)
        if found is not None and (not isinstance(found[0], int) or found[0] < 1):
            raise IntegrityError(f"record {kind}/{id}: host returned version {found[0]!r}")
        if self._tracker is not None:
            self._tracker.check_read(kind, id, None if found is None else found[0])
        if found is None:
            return None
        version, blob = found
        value = self._cipher_for(kind).open(kind, id, version, blob)
        if cache is not None:  # only once it has authenticated
            cache.fill(kind, id, version, blob, epoch)
        return Versioned(version, value)

    def get_parsed(
        self, kind: str, id: str, parse: Callable[[str, Any], T]
    ) -> tuple[int, T] | None:
        """(version, parse(id, value)) of a record; with a cache, the parsed object is kept
        with the cached version, so `parse` must return an immutable object."""
        self.check_fresh()
        cache = self._cache
        if cache is not None:
            hit = cache.parsed(kind, id, parse)
            if hit is not None:
                return hit[0], cast(T, hit[1])
        found = self.get(kind, id)
        if found is None:
            return None
        if cache is not None:  # a stale entry the host just confirmed keeps its parsed object
            hit = cache.parsed(kind, id, parse)
            if hit is not None and hit[0] == found.version:
                return hit[0], cast(T, hit[1])
        parsed = parse(id, found.value)
        if cache is not None:
            cache.remember(kind, id, found.version, parse, parsed)
        return found.version, parsed

    def put(self, kind: str, id: str, expected_version: int, value: Any) -> int:
        """Write the next version; VersionConflict if someone else wrote first."""
        require_host_access()
        new_version = expected_version + 1
        blob = self._cipher_for(kind).seal(kind, id, new_version, value)
        tracker = self._tracker
        ticket = (
            -1 if tracker is None else tracker.before_write(kind, id, expected_version, new_version)
        )
        done = self._backend.put(kind, id, expected_version, blob)
        if tracker is not None:
            tracker.after_write(ticket, done)
        if not done:
            if self._cache is not None:
                self._cache.remove(kind, id)  # the host holds another version: ask it next time
            raise VersionConflict(f"record {kind}/{id} changed concurrently; retry")
        if self._cache is not None:
            self._cache.store(kind, id, new_version, blob)
        return new_version

    def forget(self, kind: str, id: str) -> None:
        """Another worker changed this record: the next read asks the host."""
        if self._cache is not None:
            self._cache.remove(kind, id)

    def delete(self, kind: str, id: str, expected_version: int) -> None:
        require_host_access()
        tracker = self._tracker
        ticket = -1 if tracker is None else tracker.before_write(kind, id, expected_version, 0)
        try:
            deleted = self._backend.delete(kind, id, expected_version)
            if tracker is not None:
                tracker.after_write(ticket, deleted)
        finally:
            if self._cache is not None:  # after the host answered: no read in flight refills it
                self._cache.remove(kind, id)
        if not deleted:
            raise VersionConflict(f"record {kind}/{id} changed concurrently; retry")

    def list_ids(self, kind: str, *, after: str = "", limit: int = 1000) -> list[str]:
        require_host_access()
        self.check_fresh()
        ids = self._backend.list_ids(kind, after, limit)
        if any(not isinstance(i, str) for i in ids) or ids != sorted(set(ids)):
            raise IntegrityError(f"host returned a malformed {kind} listing")
        if self._tracker is not None:
            self._tracker.check_listing(kind, after, ids, limit)
        return ids


CAS_RETRIES = 16


def retry_on_conflict(attempt: Callable[[], T], what: str, retries: int = CAS_RETRIES) -> T:
    """The one compare-and-set loop: run `attempt` (read, decide, write) until its write wins.
    A VersionConflict means another writer (thread, worker) got there first, so `attempt`
    reads again; any other error, ConflictError included, is its answer. After `retries`
    lost races: ConflictError naming `what`."""
    for _ in range(retries):
        try:
            return attempt()
        except VersionConflict:
            continue
    raise ConflictError(f"{what} is being changed concurrently; retry")


def all_ids(
    list_page: Callable[..., list[str]], kind: str, *, after: str = "", page: int = 1000
) -> Iterator[str]:
    """Every id of `kind` after `after`, page by page (`list_page(kind, after=, limit=)`),
    stopping on a short page or on a host that does not move forward."""
    while True:
        ids = list_page(kind, after=after, limit=page)
        yield from ids
        if len(ids) < page or ids[-1] <= after:
            return
        after = ids[-1]
