"""The signed state head: what makes a partial rollback of the host's store visible (DESIGN §13).

Records are sealed one by one (records.py), so the host cannot alter one, but it could serve
an older sealed version of any of them, delete one, or put back one that was deleted. The
state head closes that:

- one installation-wide **generation**, advanced by every write of every worker;
- a keyed **set hash** over every record's (kind, id, version): the sum mod 2^256 of
  HMAC-SHA256(set key, CBOR[kind, id, version]), the set key derived from the storage root
  key. A sum lets any worker apply its own change (minus the old element, plus the new one)
  on top of whatever head another worker wrote, and the key keeps the host from computing
  elements (so no generalised-birthday search for a colliding set);
- the **audit heads** (next sequence number, hash of the last record) of every worker's chain,
  so a truncated audit log no longer matches;
- **pending** writes: a write first moves the head (intent: the new version is in the sum,
  the old one still allowed for that one record), then writes the record; the next head write
  (at the latest the audit batch that precedes the acknowledgement) drops the intent. A crash
  between the two leaves the record at its old or new version, both accepted at start, and
  nothing acknowledged is lost.

The head is stored as config/state-head outside the record cipher, signed by the
installation's audit key (ECDSA P-256), so `enclave-kms audit verify` on the host can check the
audit log against it with the public key of the genesis record, and clients can be shown it.

Checked at start (`StateTracker.open`: the whole record set against the sum, every audit chain
against its head) and on every read while running (`StateTracker.check_read`: the enclave
knows every record's version; with one worker exactly, with several at least). What remains
possible is the restore of a complete, consistent older snapshot (records, audit log and head
together): clients that saw a later generation refuse it (client/state_head.py); replicas
close it with a quorum.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_kms.errors import ConflictError, IntegrityError, StateRollbackError

log = logging.getLogger("enclave_kms.enclave")

HEAD_ID = ("config", "state-head")
HeadPut = Callable[[str, str, int, bytes], bool]
"""A compare-and-set `put(kind, id, expected_version, blob)` of the head record."""
TRACKED_KINDS = ("config", "key", "token")
_MAGIC = b"EKH1"
_FORMAT = 1
_MOD = 1 << 256
_SCAN_PAGE = 1000
_SCAN_RETRIES = 8
_CAS_RETRIES = 64

Entry = tuple[str, str]  # (kind, id)


class RawBackend(Protocol):
    def get(self, kind: str, id: str) -> tuple[int, bytes] | None: ...
    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool: ...
    def list_ids(self, kind: str, after: str, limit: int) -> list[str]: ...


@dataclass(frozen=True)
class Pending:
    """A write in flight: the head already counts `new`; the record may still be at `old`."""

    worker: int
    kind: str
    id: str
    old: int
    new: int

    def to_list(self) -> list[Any]:
        return [self.worker, self.kind, self.id, self.old, self.new]


@dataclass(frozen=True)
class Head:
    """One state head (what is signed). `audit` maps worker → (next seq, last record hash)."""

    generation: int
    set_sum: int
    count: int
    audit: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    pending: tuple[Pending, ...] = ()

    def body(self) -> bytes:
        return cbor2.dumps(
            {
                "format": _FORMAT,
                "generation": self.generation,
                "set": self.set_sum.to_bytes(32, "big"),
                "count": self.count,
                "audit": {w: [s, p] for w, (s, p) in sorted(self.audit.items())},
                "pending": [p.to_list() for p in self.pending],
            },
            canonical=True,
        )

    @property
    def records_key(self) -> tuple[int, int, tuple[Pending, ...]]:
        """What changes iff the record set (or a write in flight) does: not the generation,
        not the audit heads, which move with every request."""
        return self.set_sum, self.count, self.pending

    @functools.cached_property
    def digest(self) -> bytes:
        """SHA-256 of the signed body: the hash clients remember with the generation (every
        response carries it; a head is immutable, so it is computed once)."""
        return hashlib.sha256(self.body()).digest()

    def sign(self, key: ec.EllipticCurvePrivateKey) -> bytes:
        body = self.body()
        return _MAGIC + cbor2.dumps([body, key.sign(body, ec.ECDSA(hashes.SHA256()))])


def parse_signed_head(blob: bytes, public_key: ec.EllipticCurvePublicKey) -> Head:
    """Authenticate and decode a stored head; StateRollbackError("head-invalid") if not ours."""
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("magic")
        body, sig = cbor2.loads(blob[len(_MAGIC) :])
        public_key.verify(sig, body, ec.ECDSA(hashes.SHA256()))
        raw = cbor2.loads(body)
        if raw["format"] != _FORMAT:
            raise ValueError("format")
        audit = {int(w): (int(v[0]), bytes(v[1])) for w, v in raw["audit"].items()}
        pending = tuple(
            Pending(int(p[0]), str(p[1]), str(p[2]), int(p[3]), int(p[4])) for p in raw["pending"]
        )
        head = Head(int(raw["generation"]), int.from_bytes(raw["set"], "big"), int(raw["count"]))
        return replace(head, audit=audit, pending=pending)
    except (InvalidSignature, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise StateRollbackError(
            cause="head-invalid",
            message="the stored state head is not signed by this installation's audit key",
        ) from None
    except Exception:  # noqa: BLE001 - cbor2 raises many types on garbage
        raise StateRollbackError(
            cause="head-invalid", message="the stored state head does not decode"
        ) from None


def _shift(delta: int, change: int) -> Callable[[Head], Head]:
    """Add `delta` to the set sum and `change` to the record count."""
    return lambda h: replace(h, set_sum=(h.set_sum + delta) % _MOD, count=h.count + change)


def _constant(head: Head) -> Callable[[Head], Head]:
    return lambda _: head


def public_key_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class StateTracker:
    """The enclave's side of the state head: the versions it knows, and the head it writes.

    `exact` (one worker): every record version is known exactly, so any other version the
    host returns, a record it drops, or a listing that hides or invents an id, is refused.
    With several workers, the others' writes are legitimate, so a version is refused only if
    it is older than one this worker has seen (never backwards); the start check covers the
    rest.
    """

    def __init__(
        self,
        backend: RawBackend,
        storage_root_key: bytes,
        signing_key: ec.EllipticCurvePrivateKey,
        *,
        worker: int,
        exact: bool,
    ) -> None:
        self._backend = backend
        self._set_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"enclave-kms/state-set/v1"
        ).derive(storage_root_key)
        self._key = signing_key
        self._worker = worker
        self.exact = exact
        self._lock = threading.RLock()
        self._head: Head | None = None
        self._head_version = 0
        self._signed = b""
        self._known: dict[Entry, int] = {}  # 0: known absent (deleted by us)
        self._inflight: dict[int, Pending] = {}
        self._ticket = 0
        self.foreign = 0  # heads adopted from other writers whose record set differs
        self.on_head: Callable[[Head, bytes], None] | None = None
        # Clients remember heads per installation, named by the audit key that signs them.
        self.installation = hashlib.sha256(public_key_of(signing_key)).hexdigest()[:32]

    # ------------------------------------------------------------------ elements

    def _element(self, kind: str, id: str, version: int) -> int:
        if version == 0:
            return 0
        mac = hmac.new(self._set_key, cbor2.dumps([kind, id, version]), hashlib.sha256)
        return int.from_bytes(mac.digest(), "big")

    def _sum(self, versions: Iterable[tuple[Entry, int]]) -> int:
        return sum(self._element(k, i, v) for (k, i), v in versions) % _MOD

    # ------------------------------------------------------------------ start

    def scan(self) -> dict[Entry, int]:
        """Every tracked record's version as the host holds it now."""
        found: dict[Entry, int] = {}
        for kind in TRACKED_KINDS:
            after = ""
            while True:
                ids = self._backend.list_ids(kind, after, _SCAN_PAGE)
                if any(not isinstance(i, str) for i in ids) or ids != sorted(set(ids)):
                    raise IntegrityError(f"host returned a malformed {kind} listing")
                for id in ids:
                    if (kind, id) == HEAD_ID:
                        continue
                    got = self._backend.get(kind, id)
                    if got is not None:
                        if not isinstance(got[0], int) or got[0] < 1:
                            raise IntegrityError(f"record {kind}/{id}: bad version from the host")
                        found[(kind, id)] = got[0]
                if len(ids) < _SCAN_PAGE:
                    break
                after = ids[-1]
        return found

    def read_head(self) -> tuple[int, Head] | None:
        got = self._backend.get(*HEAD_ID)
        if got is None:
            return None
        return got[0], parse_signed_head(got[1], self._key.public_key())

    def open(self, *, allow_create: Callable[[dict[Entry, int]], str | None]) -> Head:
        """Check the host's record set against the signed head and adopt it (settling pending
        writes), or create the first head if `allow_create(scan)` names why that is safe.

        StateRollbackError names the cause: head-missing, records-missing, records-added,
        records-rolled-back."""
        for _ in range(_SCAN_RETRIES):
            first = self.read_head()
            found = self.scan()
            if first is None:
                reason = allow_create(found)
                if reason is None:
                    raise StateRollbackError(
                        cause="head-missing",
                        message="the state head of this initialized installation is missing",
                    )
                head = Head(0, self._sum(found.items()), len(found))
                with self._lock:
                    self._known = dict(found)
                    try:
                        self._write(_constant(head), expect_absent=True)
                    except ConflictError:
                        continue  # another worker created it meanwhile: check against it
                log.warning("state head created (%s) at %d records", reason, len(found))
                return head
            again = self.read_head()
            if again is None or again[0] != first[0]:
                continue  # another worker wrote meanwhile: scan again
            version, head = first
            self._verify(head, found)
            with self._lock:
                self._head, self._head_version = head, version
                self._known = dict(found)
                # Settle: this worker's writes in flight before a crash are resolved by what
                # the store holds now (a record still at its old version takes its new one out
                # of the sum); the next head carries none of them.
                back, change = 0, 0
                for p in head.pending:
                    if p.worker == self._worker and found.get((p.kind, p.id), 0) == p.old:
                        back += self._element(p.kind, p.id, p.old)
                        back -= self._element(p.kind, p.id, p.new)
                        change += (p.old != 0) - (p.new != 0)
                self._write(_shift(back, change))
            return head
        raise ConflictError("the state head keeps changing under this worker's start; retry")

    def _verify(self, head: Head, found: dict[Entry, int]) -> None:
        expected, count = head.set_sum, head.count
        for p in head.pending:  # a write in flight may not have reached its record
            if found.get((p.kind, p.id), 0) == p.old:
                expected = (
                    expected
                    - self._element(p.kind, p.id, p.new)
                    + self._element(p.kind, p.id, p.old)
                ) % _MOD
                count += (p.old != 0) - (p.new != 0)
        if self._sum(found.items()) == expected and len(found) == count:
            return
        if len(found) < count:
            cause, what = "records-missing", f"{count - len(found)} record(s) it covers are gone"
        elif len(found) > count:
            cause, what = (
                "records-added",
                f"{len(found) - count} record(s) it never covered appeared",
            )
        else:
            cause, what = "records-rolled-back", "records were rolled back or replaced"
        raise StateRollbackError(
            cause=cause,
            message=f"the host's store does not match the signed state head (generation "
            f"{head.generation}): {what}",
        )

    # ------------------------------------------------------------------ while running

    @property
    def head(self) -> Head:
        with self._lock:
            if self._head is None:
                raise IntegrityError("state head not loaded")
            return self._head

    @property
    def signed(self) -> bytes:
        with self._lock:
            return self._signed

    def header(self) -> str:
        """What responses carry (the `ekms-state` header): the head clients must never see
        go back (client/state_head.py)."""
        head = self.head
        return f"v1 {self.installation} {head.generation} {head.digest.hex()}"

    def audit_head(self, worker: int) -> tuple[int, bytes] | None:
        return self.head.audit.get(worker)

    def refresh(self) -> Head:
        """Read the stored head and adopt it if another server moved it on; refuse it if it
        went back (DESIGN §13: a live replica notices a restore of an older database).

        One storage read per call; the signature is checked only when the blob is not the
        one this tracker last wrote or adopted. The read runs outside the lock (requests do
        not queue behind each other's); one that looks behind is read again under the lock,
        since a write of this server may have overtaken it in flight."""
        got = self._backend.get(*HEAD_ID)
        with self._lock:
            if got is not None and got[1] == self._signed and got[0] == self._head_version:
                return self.head
            if got is None or got[0] < self._head_version:
                got = self._backend.get(*HEAD_ID)  # confirm, with our writes held off
            if got is None:
                raise StateRollbackError(
                    cause="head-missing", message="the state head was deleted by the host"
                )
            version, blob = got
            if blob == self._signed and version == self._head_version:
                return self.head
            stored = parse_signed_head(blob, self._key.public_key())
            current = self.head
            if (
                stored.generation < current.generation
                or version < self._head_version
                or (stored.generation == current.generation and stored.digest != current.digest)
            ):
                raise StateRollbackError(
                    cause="head-rolled-back",
                    message=f"the store holds state generation {stored.generation}, but this "
                    f"server has seen generation {current.generation}: the database was "
                    "restored to an older state (or is another one); refusing to serve it",
                )
            if stored.records_key != current.records_key:
                self.foreign += 1
            self._head, self._head_version, self._signed = stored, version, blob
            return stored

    def check_read(self, kind: str, id: str, version: int | None) -> None:
        """Refuse what the host returns for (kind, id) if it goes behind what we know."""
        if kind not in TRACKED_KINDS or (kind, id) == HEAD_ID:
            return
        with self._lock:
            known = self._known.get((kind, id))
            if known is None or any(p.kind == kind and p.id == id for p in self._inflight.values()):
                if version is not None and known is None:
                    self._known[(kind, id)] = version
                return
            have = version or 0
            if have == known or (not self.exact and have > known):
                if not self.exact:
                    self._known[(kind, id)] = have
                return
            if not self.exact and version is None:
                return  # another worker may have deleted it
        if version is None:
            raise StateRollbackError(
                cause="record-deleted",
                message=f"record {kind}/{id} (version {known}) was deleted by the host",
            )
        if known == 0:
            raise StateRollbackError(
                cause="record-re-added",
                message=f"record {kind}/{id} was deleted and the host put one back",
            )
        direction = "rolled back" if version < known else "replaced"
        raise StateRollbackError(
            cause="record-rolled-back",
            message=f"record {kind}/{id} {direction}: version {version}, the enclave knows {known}",
        )

    def check_listing(self, kind: str, after: str, ids: list[str], limit: int) -> None:
        """With one worker, a listing must show exactly the ids the enclave knows."""
        if not self.exact or kind not in TRACKED_KINDS:
            return
        with self._lock:
            busy = {p.id for p in self._inflight.values() if p.kind == kind}
            live = sorted(
                i for (k, i), v in self._known.items() if k == kind and v > 0 and i > after
            )
        bound = ids[-1] if len(ids) == limit and ids else None
        expected = [i for i in live if bound is None or i <= bound]
        shown = [i for i in ids if (kind, i) != HEAD_ID]
        if [i for i in shown if i not in busy] != [i for i in expected if i not in busy]:
            raise StateRollbackError(
                cause="listing-altered",
                message=f"the host's {kind} listing hides or invents records",
            )

    def before_write(self, kind: str, id: str, old: int, new: int) -> int:
        """Move the head to count (kind, id, new), old still allowed; returns a ticket."""
        if kind not in TRACKED_KINDS or (kind, id) == HEAD_ID:
            return -1
        delta = (self._element(kind, id, new) - self._element(kind, id, old)) % _MOD
        change = (new != 0) - (old != 0)
        with self._lock:
            self._ticket += 1
            ticket = self._ticket
            self._inflight[ticket] = Pending(self._worker, kind, id, old, new)
            try:
                self._write(
                    lambda h: replace(h, set_sum=(h.set_sum + delta) % _MOD, count=h.count + change)
                )
            except BaseException:
                self._inflight.pop(ticket, None)
                raise
        return ticket

    def after_write(self, ticket: int, done: bool) -> None:
        """The record write returned: `done` if the host took it, else it was refused (CAS)."""
        if ticket < 0:
            return
        with self._lock:
            p = self._inflight[ticket]
            if done:
                del self._inflight[ticket]
                self._known[(p.kind, p.id)] = p.new
                return
            # Refused: take our element back out (the record kept another version).
            delta = (self._element(p.kind, p.id, p.old) - self._element(p.kind, p.id, p.new)) % _MOD
            change = (p.old != 0) - (p.new != 0)
            self._write(
                lambda h: replace(h, set_sum=(h.set_sum + delta) % _MOD, count=h.count + change)
            )
            del self._inflight[ticket]

    def forget(self, kind: str, id: str) -> None:
        """records_changed: a hint to re-read, never permission to go back (nothing to do
        here: the known version stays the floor)."""

    def audit_advanced(
        self, worker: int, seq: int, prev: bytes, put: HeadPut | None = None
    ) -> None:
        """The audit batch up to `seq` is durable: record it in the head (this write also
        drops the intents of the writes that completed before it). With `put`, the head is
        written by it instead of the backend's `put`: the audit_append OCALL that stores the
        batch and the head in one transaction, so a batch costs one crossing and one fsync."""
        with self._lock:
            self._write(lambda h: replace(h, audit={**h.audit, worker: (seq, prev)}), put=put)

    # ------------------------------------------------------------------ writing the head

    def _write(
        self,
        change: Callable[[Head], Head],
        *,
        expect_absent: bool = False,
        put: HeadPut | None = None,
    ) -> None:
        """Apply `change` to the current head and store it (CAS); on a conflict (another
        worker wrote), read theirs, check it is newer, and apply our change on top."""
        for _ in range(_CAS_RETRIES):
            base = self._head if self._head is not None else Head(0, 0, 0)
            mine = tuple(self._inflight.values())
            theirs = tuple(p for p in base.pending if p.worker != self._worker)
            new = change(replace(base, pending=theirs))
            new = replace(new, generation=base.generation + 1, pending=new.pending + mine)
            if expect_absent:
                new = replace(change(base), generation=1, pending=mine)
            blob = new.sign(self._key)
            version = 0 if expect_absent else self._head_version
            if (put or self._backend.put)(*HEAD_ID, version, blob):
                self._head, self._head_version, self._signed = new, version + 1, blob
                if self.on_head is not None:
                    self.on_head(new, blob)
                return
            if expect_absent:
                raise ConflictError("state head created concurrently")
            got = self.read_head()
            if got is None:
                raise StateRollbackError(
                    cause="head-missing", message="the state head was deleted by the host"
                )
            version, theirs_head = got
            if theirs_head.generation <= base.generation or version <= self._head_version:
                raise StateRollbackError(
                    cause="head-rolled-back",
                    message=f"the host presented state head generation {theirs_head.generation} "
                    f"after {base.generation}",
                )
            if theirs_head.records_key != base.records_key:
                self.foreign += 1
            self._head, self._head_version = theirs_head, version
        raise ConflictError("the state head keeps changing; retry")
