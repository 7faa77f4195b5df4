"""The host's relay of record changes between enclave workers, and per-worker audit chains."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

from enclave_kms.errors import BoundaryError
from enclave_kms.host.launcher import EnclaveProcess
from enclave_kms.host.ocalls import HostOcalls, SimQuoting
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.host.workers import ChangeRelay


class FakeWorker:
    """Records the ECALLs it gets; can be dead or broken."""

    def __init__(self, *, alive: bool = True, broken: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._alive = alive
        self.broken = broken
        self.stopped = threading.Event()

    def alive(self) -> bool:
        return self._alive

    def call(self, name: str, /, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        if self.broken:
            raise BoundaryError("EDL channel closed")
        self.calls.append((name, args))
        return {}

    def stop(self) -> None:
        self.stopped.set()


def _relay(*workers: FakeWorker) -> ChangeRelay:
    relay = ChangeRelay()
    for worker in workers:
        relay.add(cast(EnclaveProcess, worker))
    return relay


def test_a_change_reaches_every_other_live_worker() -> None:
    w0, w1, w2, dead = FakeWorker(), FakeWorker(), FakeWorker(), FakeWorker(alive=False)
    relay = _relay(w0, w1, w2, dead)
    relay.on_change_for(1)("key", "k1")
    assert w0.calls == [("records_changed", {"kind": "key", "id": "k1"})]
    assert w2.calls == w0.calls
    assert w1.calls == []  # not back to the writer
    assert dead.calls == []


def test_a_worker_that_cannot_be_told_is_stopped() -> None:
    w0, w1 = FakeWorker(), FakeWorker(broken=True)
    _relay(w0, w1).on_change_for(0)("token", "t1")
    assert w1.stopped.wait(5)  # it may hold the old record: it must not serve from it


def test_a_workers_own_audit_head_is_not_relayed() -> None:
    w0, w1 = FakeWorker(), FakeWorker()
    relay = _relay(w0, w1)
    relay.on_change_for(0)("config", "audit-head")
    relay.on_change_for(1)("config", "audit-head-1")
    relay.on_change_for(1)("config", "state-head")
    relay.on_change_for(0)("config", "tokens-initialized")
    assert w1.calls == [("records_changed", {"kind": "config", "id": "tokens-initialized"})]
    assert w0.calls == []


def test_host_ocalls_relay_only_successful_writes_and_keep_chains_apart(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "kms.sqlite")
    changed: list[tuple[str, str]] = []
    quoting = cast(SimQuoting, object())
    w1 = HostOcalls(storage, quoting, chain=1, on_change=lambda k, i: changed.append((k, i)))
    calls = w1.handlers()
    assert calls["store_put"](kind="key", id="a", expected_version=0, blob=b"x") == {"ok": True}
    assert calls["store_put"](kind="key", id="a", expected_version=0, blob=b"y") == {"ok": False}
    assert calls["store_delete"](kind="key", id="a", expected_version=1) == {"ok": True}
    assert calls["store_delete"](kind="key", id="a", expected_version=1) == {"ok": False}
    assert changed == [("key", "a"), ("key", "a")]
    calls["audit_append"](records=[b"r0", b"r1"])
    HostOcalls(storage, quoting).handlers()["audit_append"](records=[b"s0"])
    assert storage.audit_records(1) == [b"r0", b"r1"]
    assert storage.audit_records(0) == [b"s0"]
    assert calls["audit_tail"](from_seq=1) == {"records": [b"r1"]}
    storage.close()
