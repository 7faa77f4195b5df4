"""Hash-chained, enclave-signed audit log with group commit (DESIGN §11).

Every operation becomes a record before its response is sent (fail closed). Each record holds
the hash of the previous one and is signed by the enclave's audit key, so the host, which
stores the records, cannot drop, reorder, alter or insert one without `verify_chain` naming
the first bad record.

Records from concurrent requests are batched: one writer thread signs every queued record and
writes them in one `audit_append` OCALL, and each waiter returns once the batch holding its
record is durable. The chain is therefore never a lock held across I/O per request.

Wire form of one record: CBOR [body, signature], body = canonical CBOR map
{"seq", "prev", "time", "actor", "op", "target", "outcome", "request_id"} (plus "detail",
a short non-secret string, when a request has one: key release records the workload's
identity and the release policy that decided). One signature per batch: the batch's last
record carries ECDSA-P256-SHA256(DER) over its body, whose `prev` links it to every record
before it, so that one signature covers the chain head and with it the whole batch; the
others carry an empty signature. The host stores a batch atomically, so a log always ends on
a signed record; unsigned records after the last signature are not the enclave's. The first
record (seq 0, op "audit.genesis") carries the audit public key so a log file can be checked
on its own; `audit verify` also accepts the expected key fingerprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.errors import AuditError, EnclaveKMSError, StateRollbackError

GENESIS_PREV = bytes(32)
MAX_BATCH = 1024  # records per audit_append OCALL (the EDL allows 4096)
_REFUSED = "audit log unavailable: operation not acknowledged"
log = logging.getLogger("enclave_kms.enclave")

_ECDSA = ec.ECDSA(hashes.SHA256())
_FIELDS = ("seq", "prev", "time", "actor", "op", "target", "outcome", "request_id")
_DETAIL = "detail"  # optional: absent from records that have none (and from older logs)
MAX_DETAIL = 1024


@dataclass(frozen=True)
class AuditEvent:
    """What a request contributes; no secrets (actor is a token id, never the token)."""

    actor: str
    op: str
    target: str
    outcome: str
    request_id: str
    detail: str = ""


def _encode(body: dict[str, Any], key: ec.EllipticCurvePrivateKey | None) -> tuple[bytes, bytes]:
    """(wire record, its hash); signed when `key` is given (the last record of a batch)."""
    raw = cbor2.dumps(body, canonical=True)
    sig = key.sign(raw, _ECDSA) if key is not None else b""
    return cbor2.dumps([raw, sig]), hashlib.sha256(raw).digest()


def _signed_by(public: ec.EllipticCurvePublicKey, raw: bytes, sig: object) -> bool:
    """Whether a record carries a valid signature (False for an inner record of a batch)."""
    if not isinstance(sig, bytes) or not sig:
        return False
    try:
        public.verify(sig, raw, _ECDSA)
    except InvalidSignature:
        return False
    return True


def _decode(blob: bytes, index: int) -> tuple[bytes, bytes, dict[str, Any]]:
    """(signed body bytes, signature, body) of one wire record; AuditError if malformed."""
    try:
        raw, sig = cbor2.loads(blob)
        body = cbor2.loads(raw)
        if (
            not isinstance(body, dict)
            or set(body) - {_DETAIL} != set(_FIELDS)
            or not isinstance(body.get(_DETAIL, ""), str)
        ):
            raise ValueError("fields")
    except Exception:  # noqa: BLE001 - any undecodable record is simply "bad"
        raise AuditError(f"audit record {index} is malformed") from None
    return raw, sig, body


class AuditLog:
    """The enclave's writer. `append_fn` is the audit_append OCALL (durable when it returns);
    `commit_fn(records, seq, prev)`, when given, replaces `append_fn` + `persist_head` for a
    batch: it stores the records and the sealed head moved to (seq, prev) at once.

    One writer thread owns the chain: requests queue their events and wait (a thread on a
    condition, a coroutine on a future: `record_async` costs the event loop no thread hop),
    and the writer signs and appends everything queued so far as one batch, then the sealed
    head. So the chain never serialises requests, and a batch's OCALLs are paid once for all
    the requests in it. The writer starts with the first record and stops with `close`.

    Crash recovery: a batch is appended before the sealed head moves past it, so an enclave
    (or host) killed in between leaves records beyond the sealed head; none of them was
    acknowledged. With `tail_fn` (the audit_tail OCALL), a resumed log first adopts those that
    continue its chain under its own key, so the next record follows the last one the host
    really holds and `verify_chain` still passes over the whole log.
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        append_fn: Callable[[list[bytes]], object],
        *,
        head: tuple[int, bytes] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        persist_head: Callable[[int, bytes], None] | None = None,
        tail_fn: Callable[[int], Sequence[bytes]] | None = None,
        commit_fn: Callable[[list[bytes], int, bytes], None] | None = None,
    ) -> None:
        self._key = key
        self._append = append_fn
        self._persist_head = persist_head
        self._commit = commit_fn
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[AuditEvent] = []
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._writer: threading.Thread | None = None
        self._closed = False
        self._durable_upto = -1
        self._failed_from: int | None = None
        self._failures = 0  # how many times the chain failed closed (a waiter's generation)
        self._want_resync = False
        self._tail = tail_fn
        self._next_seq, self._prev = head if head is not None else (0, GENESIS_PREV)
        if tail_fn is not None:
            tail = list(tail_fn(max(self._next_seq - 1, 0)))
            if self._next_seq > 0:
                self._check_last(tail[0] if tail else None)
                tail = tail[1:]
            self._adopt_tail(tail)
        self._enqueued = self._next_seq
        if self._next_seq == 0:  # no genesis yet (not even one appended before a crash)
            pub = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self.record(AuditEvent("enclave", "audit.genesis", pub.hex(), "ok", "genesis"))

    def _check_last(self, blob: bytes | None) -> None:
        """The host must still hold the last record the sealed head covers, unchanged: else
        it truncated (or rewrote) the log, and continuing would hide that."""
        seq = self._next_seq - 1
        ok = False
        if blob is not None:
            try:
                raw, sig, body = _decode(blob, seq)
                ok = (
                    _signed_by(self._key.public_key(), raw, sig)
                    and body["seq"] == seq
                    and hashlib.sha256(raw).digest() == self._prev
                )
            except AuditError:
                ok = False
        if not ok:
            raise StateRollbackError(
                cause="audit-truncated",
                message=f"the audit log no longer holds record {seq} that the signed head covers: "
                "the host truncated or rewrote it",
            )

    def _adopt_tail(self, tail: Sequence[bytes]) -> None:
        """Move the head past the records the host holds beyond it, as far as they are ours:
        in sequence, each linked to the one before, up to the last one signed by our key (a
        batch's signature covers the records before it; unsigned ones after the last
        signature are nobody's)."""
        public = self._key.public_key()
        seq, prev = self._next_seq, self._prev  # the last point a signature covers
        at, link = seq, prev
        for blob in tail:
            try:
                raw, sig, body = _decode(blob, at)
            except AuditError:
                break  # not ours: the chain continues from the last one that is
            if body["seq"] != at or body["prev"] != link:
                break
            at, link = at + 1, hashlib.sha256(raw).digest()
            if sig:
                if not _signed_by(public, raw, sig):
                    break
                seq, prev = at, link
        if seq != self._next_seq:
            self._next_seq, self._prev = seq, prev
            if self._persist_head is not None:
                self._persist_head(seq, prev)

    @property
    def public_key_sha256(self) -> str:
        """Hex SHA-256 of the audit key's DER SPKI: the fingerprint `verify_chain` reports."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()

    @property
    def head(self) -> tuple[int, bytes]:
        """(next sequence number, hash of the last durable record)."""
        with self._cond:
            return self._next_seq, self._prev

    # ------------------------------------------------------------------ recording

    def _enqueue(self, event: AuditEvent) -> int:
        """Queue `event` and return its ticket (its sequence number); caller holds _cond."""
        if self._closed:
            raise AuditError("audit log closed: operation not acknowledged")
        if self._failed_from is not None:
            self._want_resync = self._tail is not None  # the writer asks the host, off this path
            self._start_writer()
            self._cond.notify_all()
            raise AuditError(_REFUSED)
        ticket = self._enqueued
        self._enqueued += 1
        self._queue.append(event)
        self._start_writer()
        self._cond.notify_all()
        return ticket

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="audit", daemon=True)
            self._writer.start()

    def record(self, event: AuditEvent) -> None:
        """Append one event; returns only when it is durable. Raises AuditError otherwise."""
        with self._cond:
            ticket = self._enqueue(event)
            failures = self._failures
            while self._durable_upto < ticket:
                if self._failures != failures:  # its batch failed (the chain may have resumed)
                    raise AuditError(_REFUSED)
                self._cond.wait()

    async def record_async(self, event: AuditEvent) -> None:
        """`record` for the event loop: waits on a future, not on a thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            ticket = self._enqueue(event)
            self._waiters.append((ticket, loop, future))
        await future

    def close(self, timeout: float | None = 10.0) -> None:
        """Refuse new events, write what is queued, stop the writer (waiting `timeout`)."""
        with self._cond:
            self._closed = True
            writer = self._writer
            self._cond.notify_all()
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout)

    # ------------------------------------------------------------------ the writer

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed and not self._want_resync:
                    self._cond.wait()
                if self._want_resync and not self._closed:
                    self._want_resync = False
                    resync = True
                elif not self._queue:
                    return  # closed and drained
                else:
                    resync = False
            if resync:
                self._resync()
                continue
            with self._cond:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                seq, prev = self._next_seq, self._prev
            try:
                seq, prev = self._write(batch, seq, prev)
            except Exception as exc:  # noqa: BLE001 - any failure refuses the batch, fail closed
                reason = exc.message if isinstance(exc, EnclaveKMSError) else type(exc).__name__
                log.error("audit batch of %d refused: %s", len(batch), reason)
                self._fail()
                continue
            with self._cond:
                self._next_seq, self._prev = seq, prev
                self._durable_upto = seq - 1
                self._cond.notify_all()
                done = [w for w in self._waiters if w[0] < seq]
                self._waiters = [w for w in self._waiters if w[0] >= seq]
            _resolve(done, None)

    def _write(self, batch: list[AuditEvent], seq: int, prev: bytes) -> tuple[int, bytes]:
        wire: list[bytes] = []
        last = len(batch) - 1
        now = self._clock().isoformat()  # one batch, one moment
        for index, queued in enumerate(batch):
            body = {"seq": seq, "prev": prev, "time": now}
            body.update({f: getattr(queued, f) for f in _FIELDS[3:]})
            if queued.detail:
                body[_DETAIL] = queued.detail[:MAX_DETAIL]
            blob, prev = _encode(body, self._key if index == last else None)
            wire.append(blob)
            seq += 1
        if self._commit is not None:  # records and sealed head in one host transaction
            self._commit(wire, seq, prev)
            return seq, prev
        self._append(wire)
        if self._persist_head is not None:
            # The sealed head lets a restarted enclave continue the chain, and shows a host
            # that truncated the log: the next record would not link to the last.
            self._persist_head(seq, prev)
        return seq, prev

    def _resync(self) -> None:
        """After a failed batch, in the writer thread (enqueueing refuses meanwhile, so the
        chain's state is this thread's alone): learn from the host where the chain really
        ends, as a restart does (the last covered record must still be there; what follows
        it is adopted as far as it is ours), and reopen from there. The failed batch's
        requests were refused whether or not the host kept their records, so nothing
        acknowledged is lost and the chain has no gap. While the host cannot answer the chain
        stays closed (the next request asks again); a truncated log keeps it closed for good,
        and the next start names it."""
        assert self._tail is not None
        try:
            tail = list(self._tail(max(self._next_seq - 1, 0)))
            if self._next_seq > 0:
                self._check_last(tail[0] if tail else None)
                tail = tail[1:]
            self._adopt_tail(tail)
        except StateRollbackError as exc:
            log.error("audit chain stays closed: %s", exc.message)
            self._tail = None  # never resume over a log the host cut
            return
        except Exception:  # noqa: BLE001 - the host is still unavailable: stay closed
            return
        with self._cond:
            self._failed_from = None
            self._enqueued = self._next_seq
            self._durable_upto = self._next_seq - 1
            self._cond.notify_all()

    def _fail(self) -> None:
        """Fail closed: the batch in flight and everything queued after it is refused (a
        later record could not link to a batch the host may or may not hold) until `_resync`
        has learnt from the host which it is."""
        with self._cond:
            self._failed_from = self._next_seq
            self._failures += 1
            self._queue.clear()
            failed, self._waiters = self._waiters, []
            self._cond.notify_all()
        _resolve(failed, AuditError(_REFUSED))


def _resolve(
    waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]],
    error: AuditError | None,
) -> None:
    """Wake the coroutines waiting on `waiters`: one call into each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for _, loop, future in waiters:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: AuditError | None) -> None:
    for future in futures:
        if future.done():  # the request was cancelled (client gone); its record stands
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(AuditError(error.message))


@dataclass(frozen=True)
class VerifiedAudit:
    records: int
    public_key_sha256: str
    last_hash: bytes
    batches: int = 0
    """Signed records: one per group-committed batch."""


def verify_chain(records: Sequence[bytes], expected_key_sha256: str | None = None) -> VerifiedAudit:
    """Check sequence, links and each batch's signature; the error names the first bad record.

    A record is covered by the next signed record at or after it (its batch's last), so a
    log whose last records carry no signature fails: nothing vouches for them."""
    if not records:
        raise AuditError("audit log is empty (no genesis record)")
    prev = GENESIS_PREV
    key: ec.EllipticCurvePublicKey | None = None
    key_hash = ""
    batches = 0
    unsigned_from: int | None = None
    for index, blob in enumerate(records):
        raw, sig, body = _decode(blob, index)
        if body["seq"] != index:
            raise AuditError(f"audit record {index} has sequence {body['seq']}: records missing")
        if body["prev"] != prev:
            raise AuditError(f"audit record {index} does not link to record {index - 1}")
        if index == 0:
            if body["op"] != "audit.genesis":
                raise AuditError("audit record 0 is not a genesis record")
            try:
                der = bytes.fromhex(body["target"])
                loaded = serialization.load_der_public_key(der)
            except (ValueError, TypeError):
                raise AuditError("audit genesis record carries no valid public key") from None
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise AuditError("audit genesis key is not an EC key")
            key, key_hash = loaded, hashlib.sha256(der).hexdigest()
            if expected_key_sha256 is not None and key_hash != expected_key_sha256.lower():
                raise AuditError("audit log is signed by another key than expected")
        assert key is not None
        if sig == b"":
            unsigned_from = index if unsigned_from is None else unsigned_from
        elif _signed_by(key, raw, sig):
            unsigned_from, batches = None, batches + 1
        else:
            raise AuditError(f"audit record {index} has an invalid signature")
        prev = hashlib.sha256(raw).digest()
    if unsigned_from is not None:
        raise AuditError(
            f"audit records {unsigned_from}-{len(records) - 1} are covered by no signature "
            "(their batch's signed last record is missing)"
        )
    return VerifiedAudit(len(records), key_hash, prev, batches)
