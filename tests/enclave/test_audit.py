"""Audit chain: group commit under concurrency, fail closed, and tamper evidence."""

from __future__ import annotations

import asyncio
import threading
import time

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.enclave.state.audit import AuditEvent, AuditLog, verify_chain
from enclave_kms.errors import AuditError, StateRollbackError


class Sink:
    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.calls = 0
        self.fail = False

    def __call__(self, batch: list[bytes]) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("disk gone")
        self.records.extend(batch)


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"tok-{i % 3}", op="encrypt", target="k1", outcome="ok", request_id=str(i)
    )


def test_chain_verifies_and_names_its_key() -> None:
    sink = Sink()
    key = ec.generate_private_key(ec.SECP256R1())
    log = AuditLog(key, sink)
    for i in range(10):
        log.record(_event(i))
    result = verify_chain(sink.records)
    assert result.records == 11  # genesis + 10
    assert log.head[0] == 11


def test_concurrent_records_share_appends() -> None:
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)

    def worker(i: int) -> None:
        for j in range(50):
            log.record(_event(i * 50 + j))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sink.records) == 401
    verify_chain(sink.records)
    assert sink.calls < 401  # batching happened: fewer appends than records


def test_failed_append_fails_closed() -> None:
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)
    sink.fail = True
    with pytest.raises(AuditError, match="not acknowledged"):
        log.record(_event(1))
    sink.fail = False
    with pytest.raises(AuditError):
        log.record(_event(2))  # stays closed: no silent gap in the chain


def test_coroutines_wait_without_threads_and_share_batches() -> None:
    """`record_async` (the API's path): every coroutine returns once its record is durable,
    the chain holds them all in order, and one append carries many requests."""
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)

    async def main() -> int:
        async def one(i: int) -> None:
            await log.record_async(_event(i))

        before = threading.active_count()
        await asyncio.gather(*(one(i) for i in range(300)))
        return threading.active_count() - before

    assert asyncio.run(main()) == 0  # no thread per request (the one writer already runs)
    assert len(sink.records) == 301
    assert verify_chain(sink.records).records == 301
    assert sink.calls < 100
    assert log.head[0] == 301


def test_async_and_thread_callers_share_one_chain() -> None:
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)
    threads = [threading.Thread(target=log.record, args=(_event(i),)) for i in range(20)]

    async def main() -> None:
        for t in threads:
            t.start()
        await asyncio.gather(*(log.record_async(_event(100 + i)) for i in range(20)))

    asyncio.run(main())
    for t in threads:
        t.join()
    assert verify_chain(sink.records).records == 41


def test_failed_append_refuses_every_waiting_coroutine() -> None:
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)
    sink.fail = True

    async def main() -> list[BaseException | None]:
        results = await asyncio.gather(
            *(log.record_async(_event(i)) for i in range(10)), return_exceptions=True
        )
        return list(results)

    results = asyncio.run(main())
    assert all(isinstance(r, AuditError) for r in results), results
    sink.fail = False
    with pytest.raises(AuditError):
        asyncio.run(log.record_async(_event(11)))  # closed for good
    assert len(sink.records) == 1  # the genesis only


def test_closed_log_refuses_new_records() -> None:
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)
    log.record(_event(1))
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.record(_event(2))
    assert verify_chain(sink.records).records == 2


def _chain(n: int) -> list[bytes]:
    sink = Sink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink)
    for i in range(n):
        log.record(_event(i))
    return sink.records


def test_altered_record_is_named() -> None:
    records = _chain(5)
    raw, sig = cbor2.loads(records[3])
    body = cbor2.loads(raw)
    body["outcome"] = "denied"
    records[3] = cbor2.dumps([cbor2.dumps(body, canonical=True), sig])
    with pytest.raises(AuditError, match="record 3 has an invalid signature"):
        verify_chain(records)


def test_dropped_reordered_and_inserted_records_are_found() -> None:
    records = _chain(5)
    with pytest.raises(AuditError, match="record 2 has sequence 3"):
        verify_chain(records[:2] + records[3:])
    swapped = records[:]
    swapped[2], swapped[3] = swapped[3], swapped[2]
    with pytest.raises(AuditError, match="record 2"):
        verify_chain(swapped)
    foreign = _chain(5)
    with pytest.raises(AuditError, match="record 2"):
        verify_chain(records[:2] + foreign[2:])


def test_expected_key_is_enforced_and_garbage_is_malformed() -> None:
    records = _chain(2)
    with pytest.raises(AuditError, match="another key"):
        verify_chain(records, expected_key_sha256="00" * 32)
    with pytest.raises(AuditError, match="record 1 is malformed"):
        verify_chain([records[0], b"\xff\x00garbage"])
    with pytest.raises(AuditError, match="empty"):
        verify_chain([])


def test_resumed_log_adopts_its_own_unrecorded_tail() -> None:
    """A crash between the audit append and the sealed-head update: the restarted enclave
    continues after the records it can prove are its own, so the chain still verifies."""
    sink = Sink()
    key = ec.generate_private_key(ec.SECP256R1())
    heads: list[tuple[int, bytes]] = []
    log = AuditLog(key, sink, persist_head=lambda s, p: heads.append((s, p)))
    log.record(_event(1))
    stale_head = heads[-1]  # what the sealed head said before the crash
    log.record(_event(2))  # appended, but pretend the head update was lost
    resumed = AuditLog(
        key,
        sink,
        head=stale_head,
        tail_fn=lambda seq: sink.records[seq:],
        persist_head=lambda s, p: heads.append((s, p)),
    )
    assert resumed.head[0] == len(sink.records)
    resumed.record(_event(3))
    assert verify_chain(sink.records).records == 4


def test_resumed_log_refuses_a_tail_it_did_not_sign() -> None:
    sink = Sink()
    key = ec.generate_private_key(ec.SECP256R1())
    heads: list[tuple[int, bytes]] = []
    log = AuditLog(key, sink, persist_head=lambda s, p: heads.append((s, p)))
    log.record(_event(1))
    head = heads[-1]
    forged = _chain(3)[head[0] :]  # records signed by another key, inserted by the host
    resumed = AuditLog(key, sink, head=head, tail_fn=lambda seq: [sink.records[seq], *forged])
    assert resumed.head == head  # nothing adopted
    sink.records.extend(forged)
    resumed.record(_event(2))
    with pytest.raises(AuditError, match=f"record {head[0]}"):
        verify_chain(sink.records)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_resumed_log_refuses_a_truncated_log(cut: int) -> None:
    """The host deletes the last records the sealed head covers (or all of them after some
    point): the resumed log refuses to start, naming the cause, instead of continuing the
    chain from whatever is left (which `verify_chain` alone would accept)."""
    sink = Sink()
    key = ec.generate_private_key(ec.SECP256R1())
    heads: list[tuple[int, bytes]] = []
    log = AuditLog(key, sink, persist_head=lambda s, p: heads.append((s, p)))
    for i in range(4):
        log.record(_event(i))
    head = heads[-1]
    kept = sink.records[:-cut]
    assert verify_chain(kept).records == len(kept)  # the truncated log verifies on its own
    with pytest.raises(StateRollbackError, match="audit-truncated"):
        AuditLog(key, kept.extend, head=head, tail_fn=lambda seq: kept[seq:])
    # A rewritten last record (the host re-signs nothing: it cannot) is refused the same way.
    swapped = [*sink.records[:-1], sink.records[-2]]
    with pytest.raises(StateRollbackError, match="audit-truncated"):
        AuditLog(key, swapped.extend, head=head, tail_fn=lambda seq: swapped[seq:])


def _record_once_resumed(log: AuditLog, event: AuditEvent) -> None:
    """The first request after the host is back is refused (it asks the writer to resync);
    the next ones are recorded."""
    for _ in range(200):
        try:
            log.record(event)
            return
        except AuditError:
            time.sleep(0.01)
    raise AssertionError("the audit chain did not resume")


class FlakySink(Sink):
    """A host store that can go away: `fail` raises before storing, `lose_ack` stores and
    then raises (the commit landed, the acknowledgement did not: a database failover)."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_ack = False

    def __call__(self, batch: list[bytes]) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("database gone")
        self.records.extend(batch)
        if self.lose_ack:
            raise OSError("connection lost during commit")

    def tail(self, seq: int) -> list[bytes]:
        if self.fail:
            raise OSError("database gone")
        return self.records[seq:]


@pytest.mark.parametrize("outage", ["before-store", "after-store"])
def test_chain_resumes_after_the_host_comes_back(outage: str) -> None:
    sink = FlakySink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink, tail_fn=sink.tail)
    log.record(_event(1))
    if outage == "before-store":
        sink.fail = True
    else:
        sink.lose_ack = True
    with pytest.raises(AuditError, match="not acknowledged"):
        log.record(_event(2))
    sink.lose_ack, sink.fail = False, True
    with pytest.raises(AuditError):  # still away: refused, the chain stays closed
        log.record(_event(3))
    sink.fail = False
    _record_once_resumed(log, _event(4))  # back: the chain resumes without a restart
    result = verify_chain(sink.records)  # one chain, no gap, no fork
    ops = [cbor2.loads(cbor2.loads(r)[0])["request_id"] for r in sink.records[1:]]
    expected = ["1", "2", "4"] if outage == "after-store" else ["1", "4"]
    assert ops == expected  # a refused request's record may stay; none is made up
    assert result.records == len(sink.records)
    assert log.head[0] == len(sink.records)


def test_a_waiter_of_a_failed_batch_never_reads_as_durable() -> None:
    sink = FlakySink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink, tail_fn=sink.tail)
    sink.fail = True
    outcome: list[str] = []

    def waiter() -> None:
        try:
            log.record(_event(7))
            outcome.append("durable")
        except AuditError:
            outcome.append("refused")

    t = threading.Thread(target=waiter)
    t.start()
    t.join(10)
    sink.fail = False
    _record_once_resumed(log, _event(10))
    for i in range(5):
        log.record(_event(11 + i))  # the chain resumed and passes the old ticket's number
    assert outcome == ["refused"]


def test_a_log_truncated_during_the_outage_is_refused_on_resume() -> None:
    sink = FlakySink()
    log = AuditLog(ec.generate_private_key(ec.SECP256R1()), sink, tail_fn=sink.tail)
    for i in range(3):
        log.record(_event(i))
    sink.fail = True
    with pytest.raises(AuditError):
        log.record(_event(9))
    del sink.records[-2:]  # the host drops records the chain already covers
    sink.fail = False
    for i in range(20):  # closed for good: never resumed over a log the host cut
        with pytest.raises(AuditError):
            log.record(_event(10 + i))
        time.sleep(0.01)
    kept = len(sink.records)
    assert kept == 2  # genesis + the first record: nothing written after the cut
