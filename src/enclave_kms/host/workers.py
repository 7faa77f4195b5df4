"""Several enclave workers on one store and one port (`enclave-kms serve --workers N`).

Why: one enclave process runs Python under one interpreter lock, so it uses one core whatever
the machine has (docs/performance.md). N workers are N enclave processes of the same image,
each with its own EDL channel to this host process, sharing:

- the sealed store (every record is compare-and-set on its version, so workers never
  overwrite each other), the storage root key, the TLS key (sealed to MRENCLAVE) and the
  RA-TLS certificate (worker 0 issues it; the others serve the same one);
- the listening port (SO_REUSEPORT: the kernel spreads connections over the workers).

What they do not share: each worker keeps its own memory of records and its own audit chain
(chain N, sealed head `audit-head-N`), so neither a cache nor the chain is a lock across
processes. The price is that a worker's memory can be out of date when another worker
changes a record: `ChangeRelay` closes that gap. Every record write or delete a worker makes
is relayed to every other worker (the `records_changed` ECALL) before the writer's OCALL
returns, so by the time a client has the writer's answer no worker holds the old copy. The
host does the relaying and could withhold it; what it gains is a worker that answers from an
older version of a record, which is exactly what it can already do by serving an old sealed
version (the rollback limit in docs/concepts.md), so no new power.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from enclave_kms.errors import EnclaveKMSError
from enclave_kms.host.launcher import EnclaveProcess

log = logging.getLogger("enclave_kms.host")

RELAY_TIMEOUT = 30.0
MAX_WORKERS = 64


class ChangeRelay:
    """Tells the other workers to forget a record one worker has just changed."""

    def __init__(self) -> None:
        self._workers: list[EnclaveProcess] = []
        self._lock = threading.Lock()

    def add(self, worker: EnclaveProcess) -> None:
        with self._lock:
            self._workers.append(worker)

    def on_change_for(self, index: int) -> Callable[[str, str], None]:
        """The `HostOcalls.on_change` of worker `index`."""
        return lambda kind, id: self._relay(index, kind, id)

    def _relay(self, origin: int, kind: str, id: str) -> None:
        if kind == "config" and (id == "state-head" or id.startswith("audit-head")):
            # The state head (written with every audit batch) is never cached: a worker reads
            # it from the store whenever its compare-and-set fails, and checks it is newer.
            return
        with self._lock:
            others = [(i, w) for i, w in enumerate(self._workers) if i != origin]
        for index, worker in others:
            if not worker.alive():
                continue  # a stopped worker holds nothing
            try:
                worker.call("records_changed", timeout=RELAY_TIMEOUT, kind=kind, id=id)
            except EnclaveKMSError as exc:
                # It may still hold the old record: it must not answer from it.
                log.error(
                    "worker %d did not take a record change (%s); stopping it", index, exc.message
                )
                threading.Thread(target=worker.stop, name="stop-worker", daemon=True).start()
