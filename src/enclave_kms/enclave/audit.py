"""Hash-chained, enclave-signed audit log with group commit (DESIGN §11).

Every operation becomes a record before its response is sent (fail closed). Each record holds
the hash of the previous one and is signed by the enclave's audit key, so the host, which
stores the records, cannot drop, reorder, alter or insert one without `verify_chain` naming
the first bad record.

Records from concurrent requests are batched: whoever finds no flush in progress writes every
queued record in one `audit_append` OCALL, and each waiter returns once the batch holding its
record is durable. The chain is therefore never a lock held across I/O per request.

Wire form of one record: CBOR [body, signature], body = canonical CBOR map
{"seq", "prev", "time", "actor", "op", "target", "outcome", "request_id"} and
signature = ECDSA-P256-SHA256(DER) over body. The first record (seq 0, op "audit.genesis")
carries the audit public key so a log file can be checked on its own; `audit verify` also
accepts the expected key fingerprint.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.errors import AuditError

GENESIS_PREV = bytes(32)
_FIELDS = ("seq", "prev", "time", "actor", "op", "target", "outcome", "request_id")


@dataclass(frozen=True)
class AuditEvent:
    """What a request contributes; no secrets (actor is a token id, never the token)."""

    actor: str
    op: str
    target: str
    outcome: str
    request_id: str


def _encode(body: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    raw = cbor2.dumps(body, canonical=True)
    sig = key.sign(raw, ec.ECDSA(hashes.SHA256()))
    return cbor2.dumps([raw, sig]), hashlib.sha256(raw).digest()


def _decode(blob: bytes, index: int) -> tuple[bytes, bytes, dict[str, Any]]:
    """(signed body bytes, signature, body) of one wire record; AuditError if malformed."""
    try:
        raw, sig = cbor2.loads(blob)
        body = cbor2.loads(raw)
        if not isinstance(body, dict) or set(body) != set(_FIELDS):
            raise ValueError("fields")
    except Exception:  # noqa: BLE001 - any undecodable record is simply "bad"
        raise AuditError(f"audit record {index} is malformed") from None
    return raw, sig, body


class AuditLog:
    """The enclave's writer. `append_fn` is the audit_append OCALL (durable when it returns).

    Crash recovery: a batch is appended before the sealed head moves past it, so an enclave
    (or host) killed in between leaves records beyond the sealed head; none of them was
    acknowledged. With `tail_fn` (the audit_tail OCALL), a resumed log first adopts those that
    continue its chain under its own key, so the next record follows the last one the host
    really holds and `verify_chain` still passes over the whole log.
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        append_fn: Callable[[list[bytes]], None],
        *,
        head: tuple[int, bytes] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        persist_head: Callable[[int, bytes], None] | None = None,
        tail_fn: Callable[[int], Sequence[bytes]] | None = None,
    ) -> None:
        self._key = key
        self._append = append_fn
        self._persist_head = persist_head
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[AuditEvent] = []
        self._flushing = False
        self._durable_upto = -1
        self._failed_from: int | None = None
        self._next_seq, self._prev = head if head is not None else (0, GENESIS_PREV)
        if tail_fn is not None:
            self._adopt_tail(tail_fn(self._next_seq))
        self._enqueued = self._next_seq
        if self._next_seq == 0:  # no genesis yet (not even one appended before a crash)
            pub = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self.record(AuditEvent("enclave", "audit.genesis", pub.hex(), "ok", "genesis"))

    def _adopt_tail(self, tail: Sequence[bytes]) -> None:
        """Move the head past the records the host holds beyond it, as far as they are ours:
        signed by our key, in sequence, each linked to the one before."""
        public = self._key.public_key()
        seq, prev = self._next_seq, self._prev
        for blob in tail:
            try:
                raw, sig, body = _decode(blob, seq)
                public.verify(sig, raw, ec.ECDSA(hashes.SHA256()))
            except (AuditError, InvalidSignature, TypeError):
                break  # not ours: the chain continues from the last one that is
            if body["seq"] != seq or body["prev"] != prev:
                break
            seq, prev = seq + 1, hashlib.sha256(raw).digest()
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

    def record(self, event: AuditEvent) -> None:
        """Append one event; returns only when it is durable. Raises AuditError otherwise."""
        with self._cond:
            ticket = self._enqueued
            self._enqueued += 1
            self._queue.append(event)
            while True:
                if self._failed_from is not None and ticket >= self._failed_from:
                    raise AuditError("audit log unavailable: operation not acknowledged")
                if self._durable_upto >= ticket:
                    return
                if not self._flushing:
                    break
                self._cond.wait()
            self._flushing = True
            batch, self._queue = self._queue, []
            seq, prev = self._next_seq, self._prev
        try:
            wire: list[bytes] = []
            for queued in batch:
                body = {"seq": seq, "prev": prev, "time": self._clock().isoformat()}
                body.update({f: getattr(queued, f) for f in _FIELDS[3:]})
                blob, prev = _encode(body, self._key)
                wire.append(blob)
                seq += 1
            self._append(wire)
            if self._persist_head is not None:
                # The sealed head lets a restarted enclave continue the chain, and shows a
                # host that truncated the log: the next record would not link to the last.
                self._persist_head(seq, prev)
        except Exception as exc:
            with self._cond:
                self._flushing = False
                # Fail closed: this batch and everything queued after it is refused for good.
                self._failed_from = (
                    self._next_seq
                    if self._failed_from is None
                    else min(self._failed_from, self._next_seq)
                )
                self._cond.notify_all()
            if isinstance(exc, AuditError):
                raise
            raise AuditError("audit log unavailable: operation not acknowledged") from None
        with self._cond:
            self._next_seq, self._prev = seq, prev
            self._durable_upto = seq - 1
            self._flushing = False
            self._cond.notify_all()


@dataclass(frozen=True)
class VerifiedAudit:
    records: int
    public_key_sha256: str
    last_hash: bytes


def verify_chain(records: Sequence[bytes], expected_key_sha256: str | None = None) -> VerifiedAudit:
    """Check sequence, links and signatures; the error names the first bad record."""
    if not records:
        raise AuditError("audit log is empty (no genesis record)")
    prev = GENESIS_PREV
    key: ec.EllipticCurvePublicKey | None = None
    key_hash = ""
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
        try:
            key.verify(sig, raw, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, TypeError):
            raise AuditError(f"audit record {index} has an invalid signature") from None
        prev = hashlib.sha256(raw).digest()
    return VerifiedAudit(len(records), key_hash, prev)
