"""The host's side of every OCALL: quoting, collateral, sealed-blob storage, audit, logs.

Kept deliberately dumb (DESIGN §4): the host moves bytes it cannot read. Everything here is
untrusted from the enclave's point of view, which checks every result it gets back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from enclave_kms.attestation.collateral import collateral_to_json
from enclave_kms.attestation.sources import CollateralSource
from enclave_kms.errors import (
    BoundaryError,
    ConfigError,
    EnclaveKMSError,
    PlatformError,
    ServerError,
)
from enclave_kms.host.storage import Storage
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.pck import parse_pck_extension, pck_ca_kind
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.report import Report

enclave_log = logging.getLogger("enclave_kms.enclave")
AUDIT_TAIL_LIMIT = 4096  # the EDL bound of audit_tail (and of one audit_append batch)
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class QuotingService(Protocol):
    """What the host offers for attestation: the QE's target, quoting, and collateral."""

    def target_info(self) -> bytes: ...
    def quote(self, report: bytes) -> bytes: ...
    def collateral(self, quote: bytes) -> bytes: ...


class SimQuoting:
    """The simulated quoting enclave and PCS. Collateral is re-issued at most hourly."""

    def __init__(
        self,
        platform: SimPlatform,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        refresh: timedelta = timedelta(hours=1),
    ) -> None:
        self._platform = platform
        self._clock = clock
        self._refresh = refresh
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[datetime, bytes]] = {}

    def target_info(self) -> bytes:
        return self._platform.qe.target_info().to_bytes()

    def quote(self, report: bytes) -> bytes:
        return self._platform.qe.quote(Report.parse(report))

    def collateral(self, quote: bytes) -> bytes:
        """SGX or TDX collateral, by the quote's TEE (a TD quote is a workload's, for key
        release); anything unparsable gets the SGX documents and fails verification inside."""
        now = self._clock()
        try:
            tee = "tdx" if parse_quote(quote).is_tdx else "sgx"
        except EnclaveKMSError:
            tee = "sgx"
        with self._lock:
            cached = self._cached.get(tee)
            if cached is None or now - cached[0] > self._refresh:
                made = (
                    self._platform.tdx_collateral(now)
                    if tee == "tdx"
                    else self._platform.collateral(now)
                )
                cached = self._cached[tee] = (now, collateral_to_json(made))
            return cached[1]


class PccsQuoting:
    """Hardware hosts: quoting happens inside Gramine; collateral comes from a PCCS/PCS."""

    def __init__(self, source: CollateralSource) -> None:
        self._source = source

    def target_info(self) -> bytes:
        raise PlatformError("quoting is done inside the enclave on this platform")

    def quote(self, report: bytes) -> bytes:
        raise PlatformError("quoting is done inside the enclave on this platform")

    def collateral(self, quote: bytes) -> bytes:
        parsed = parse_quote(quote)
        leaf = parsed.pck_certificates()[0]
        ext = parse_pck_extension(leaf)
        return collateral_to_json(
            self._source.get_collateral(
                tee="tdx" if parsed.is_tdx else "sgx", fmspc=ext.fmspc, pck_ca=pck_ca_kind(leaf)
            )
        )


class HostOcalls:
    """The OCALL handler table for `Endpoint(serves="ocall")`, for one enclave worker.

    `chain` is that worker's audit chain. `on_change(kind, id)` runs after each record write
    or delete the worker made, before the OCALL returns: with several workers the host tells
    the others to forget that record (the `records_changed` ECALL), so none of them answers
    from an older copy once the writer has acknowledged the change (enclave/state/cache.py).
    """

    def __init__(
        self,
        storage: Storage,
        quoting: QuotingService,
        *,
        chain: int = 0,
        on_change: Callable[[str, str], None] | None = None,
        join_url: str | None = None,
    ) -> None:
        self._join_url = join_url
        self._storage = storage
        self._quoting = quoting
        self._chain = chain
        self._on_change = on_change

    def handlers(self) -> dict[str, Callable[..., dict[str, Any] | None]]:
        return {
            "get_qe_target_info": lambda: {"target_info": self._quoting.target_info()},
            "get_quote": lambda report: {"quote": self._quoting.quote(report)},
            "get_collateral": lambda quote: {"collateral": self._quoting.collateral(quote)},
            "store_get": self.store_get,
            "store_put": self.store_put,
            "store_list": lambda kind, after, limit: {
                "ids": self._storage.list_ids(kind, after, limit)
            },
            "store_delete": self.store_delete,
            "audit_append": self.audit_append,
            "audit_tail": lambda from_seq: {
                "records": self._storage.audit_tail(from_seq, AUDIT_TAIL_LIMIT, self._chain)
            },
            "replica_join": self.replica_join,
            "log": self.log,
        }

    def store_get(self, kind: str, id: str) -> dict[str, Any]:
        found = self._storage.get(kind, id)
        return {"version": 0} if found is None else {"version": found[0], "blob": found[1]}

    def store_put(self, kind: str, id: str, expected_version: int, blob: bytes) -> dict[str, Any]:
        ok = self._storage.put(kind, id, expected_version, blob)
        if ok and self._on_change is not None:
            self._on_change(kind, id)
        return {"ok": ok}

    def store_delete(self, kind: str, id: str, expected_version: int) -> dict[str, Any]:
        ok = self._storage.delete(kind, id, expected_version)
        if ok and self._on_change is not None:
            self._on_change(kind, id)
        return {"ok": ok}

    def audit_append(
        self,
        records: list[bytes],
        put_kind: str | None = None,
        put_id: str | None = None,
        put_expected_version: int | None = None,
        put_blob: bytes | None = None,
    ) -> dict[str, Any]:
        if put_kind is None or put_id is None or put_expected_version is None or put_blob is None:
            if (put_kind, put_id, put_expected_version, put_blob) != (None, None, None, None):
                raise BoundaryError("audit_append: put_* come all together or not at all")
            return {"ok": self._storage.audit_append(records, self._chain)}
        put = (put_kind, put_id, put_expected_version, put_blob)
        ok = self._storage.audit_append(records, self._chain, put)
        if ok and self._on_change is not None:
            self._on_change(put_kind, put_id)
        return {"ok": ok}

    def replica_join(self, path: str, body: bytes) -> dict[str, Any]:
        """Relay a join message to the peer's RA-TLS server. Its certificate is not checked
        here: the enclave appraises the peer's quote over the answer itself (a host that
        relays elsewhere gains a refusal, not the key)."""
        import httpx

        from enclave_kms.client.tls import unverified_context

        if self._join_url is None:
            raise ConfigError("the enclave asked to join, but no peer was given (--join URL)")
        if not path.startswith("/v1/sys/replicas/"):
            raise BoundaryError(f"replica_join: {path[:64]!r} is not a join path")
        try:
            answer = httpx.post(
                self._join_url.rstrip("/") + path,
                content=body,
                headers={"content-type": "application/json"},
                verify=unverified_context(),
                timeout=60,
            )
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the peer {self._join_url}: {exc}") from None
        return {"status": answer.status_code, "body": answer.content[: 256 * 1024]}

    def log(self, level: str, message: str) -> None:
        enclave_log.log(_LEVELS.get(level, logging.INFO), "%s", message)
