"""Group commit: one signature per batch over its last record (the chain head), every record
still hash-chained, and what a host can and cannot do with the unsigned records inside a batch."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.enclave.state.audit import AuditEvent, AuditLog, verify_chain
from enclave_kms.errors import AuditError
from enclave_kms.host.storage.sqlite import SQLiteStorage


def _event(i: int) -> AuditEvent:
    return AuditEvent(actor="tok", op="encrypt", target="k1", outcome="ok", request_id=str(i))


def _signatures(records: list[bytes]) -> list[bool]:
    return [bool(cbor2.loads(r)[1]) for r in records]


class GateSink:
    """Holds the second append until `queued` more requests wait, so the third append is
    one batch of exactly that many records."""

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.gate = threading.Event()
        self.held = threading.Event()

    def __call__(self, batch: list[bytes]) -> None:
        if len(self.batches) == 1:
            self.held.set()
            assert self.gate.wait(30)
        self.batches.append(list(batch))

    @property
    def records(self) -> list[bytes]:
        return [r for b in self.batches for r in b]


def _batched_log(
    waiting: int,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    head: tuple[int, bytes] | None = None,
) -> tuple[GateSink, list[threading.Thread]]:
    sink = GateSink()
    if head is not None:  # a resumed log writes no genesis: its first batch is the held one
        sink.batches.append([])
    log = AuditLog(key or ec.generate_private_key(ec.SECP256R1()), sink, head=head)
    first = threading.Thread(target=log.record, args=(_event(0),))  # batch 1, held
    first.start()
    assert sink.held.wait(30)  # the writer is inside the held append, with `first` alone
    threads = [threading.Thread(target=log.record, args=(_event(i),)) for i in range(1, waiting)]
    for t in threads:
        t.start()
    while True:  # every request of batch 2 is queued behind the held append
        with log._cond:
            if len(log._queue) == waiting - 1:
                break
        threading.Event().wait(0.005)
    sink.gate.set()
    for t in [first, *threads]:
        t.join(30)
    if head is not None:
        del sink.batches[0]
    return sink, threads


def test_concurrent_requests_share_one_signature() -> None:
    sink, _ = _batched_log(10)
    assert [len(b) for b in sink.batches] == [1, 1, 9]
    for batch in sink.batches:  # only each batch's last record is signed
        assert _signatures(batch) == [False] * (len(batch) - 1) + [True]
    result = verify_chain(sink.records)
    assert (result.records, result.batches) == (11, 3)


def test_a_log_must_end_on_a_signature() -> None:
    """Dropping a batch's signed last record (or stripping its signature) leaves records no
    signature covers: refused, naming them."""
    sink, _ = _batched_log(6)
    records = sink.records
    with pytest.raises(AuditError, match="records 2-5 are covered by no signature"):
        verify_chain(records[:-1])
    stripped = cbor2.dumps([cbor2.loads(records[-1])[0], b""])  # its signature removed
    with pytest.raises(AuditError, match="covered by no signature"):
        verify_chain([*records[:-1], stripped])


def test_an_altered_unsigned_record_breaks_the_link_to_the_signed_one() -> None:
    sink, _ = _batched_log(6)
    records = list(sink.records)
    raw, sig = cbor2.loads(records[3])
    body = cbor2.loads(raw)
    body["outcome"] = "denied"
    records[3] = cbor2.dumps([cbor2.dumps(body, canonical=True), sig])
    with pytest.raises(AuditError, match="audit record 4 does not link to record 3"):
        verify_chain(records)
    # A signature moved onto another record of the batch does not verify there.
    records = list(sink.records)
    last_sig = cbor2.loads(records[-1])[1]
    records[3] = cbor2.dumps([cbor2.loads(records[3])[0], last_sig])
    with pytest.raises(AuditError, match="audit record 3 has an invalid signature"):
        verify_chain(records)


def test_resume_adopts_stored_batches_only_up_to_a_signature(tmp_path: Path) -> None:
    """The enclave died after the host stored its batches but before the sealed head moved:
    the restarted log adopts them (each ends signed). A record the host appended after them,
    linking perfectly but unsigned, is not adopted, and `verify_chain` names it."""
    storage = SQLiteStorage(tmp_path / "kms.sqlite")
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        heads: list[tuple[int, bytes]] = []
        log = AuditLog(key, storage.audit_append, persist_head=lambda s, p: heads.append((s, p)))
        log.record(_event(1))
        log.close()
        covered = heads[-1]
        sink, _ = _batched_log(5, key=key, head=covered)  # the next life's batches [1, 4]
        assert [len(b) for b in sink.batches] == [1, 4]
        for batch in sink.batches:
            storage.audit_append(batch)
        last_raw = cbor2.loads(sink.records[-1])[0]
        junk = {**cbor2.loads(last_raw), "seq": covered[0] + 5, "request_id": "host-made"}
        junk["prev"] = hashlib.sha256(last_raw).digest()
        storage.audit_append([cbor2.dumps([cbor2.dumps(junk, canonical=True), b""])])
        resumed = AuditLog(
            key, storage.audit_append, head=covered, tail_fn=lambda n: storage.audit_tail(n, 99)
        )
        assert resumed.head[0] == covered[0] + 5
        assert verify_chain(storage.audit_records()[:-1]).batches == 4  # genesis, 1, and 2
        with pytest.raises(AuditError, match="records 7-7 are covered by no signature"):
            verify_chain(storage.audit_records())
    finally:
        storage.close()
