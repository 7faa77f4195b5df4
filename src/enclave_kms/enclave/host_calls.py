"""The enclave's side of every OCALL, with the results treated as hostile.

The EDL endpoint has already checked types and sizes; here each result is checked for what
it claims: a quote must be for the report we made, collateral must parse, a stored record
must come back with a sane version (its contents are then authenticated by RecordCipher).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.errors import AttestationError, BoundaryError, IntegrityError
from enclave_kms.platform.base import TeeBackend
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.report import TargetInfo

Call = Callable[..., dict[str, Any]]


class HostCalls:
    """Typed wrappers around `endpoint.call` for the enclave (also the RecordStore backend)."""

    def __init__(self, call: Call) -> None:
        self._call = call

    # -------------------------------------------------------------- storage (store.Backend)

    def get(self, kind: str, id: str) -> tuple[int, bytes] | None:
        result = self._call("store_get", kind=kind, id=id)
        version, blob = result["version"], result["blob"]
        if version == 0:
            return None
        if blob is None:
            raise IntegrityError(f"record {kind}/{id}: host returned a version without data")
        return version, blob

    def put(self, kind: str, id: str, expected_version: int, blob: bytes) -> bool:
        return bool(
            self._call("store_put", kind=kind, id=id, expected_version=expected_version, blob=blob)[
                "ok"
            ]
        )

    def list_ids(self, kind: str, after: str, limit: int) -> list[str]:
        ids: list[str] = self._call("store_list", kind=kind, after=after, limit=limit)["ids"]
        if len(ids) > limit:
            raise IntegrityError(f"host returned more {kind} ids than asked for")
        return ids

    def delete(self, kind: str, id: str, expected_version: int) -> bool:
        return bool(
            self._call("store_delete", kind=kind, id=id, expected_version=expected_version)["ok"]
        )

    # -------------------------------------------------------------- audit

    def audit_append(self, records: list[bytes]) -> None:
        if not self._call("audit_append", records=records)["ok"]:
            raise BoundaryError("host refused the audit append")

    def audit_append_with(
        self, records: list[bytes], kind: str, id: str, expected_version: int, blob: bytes
    ) -> bool:
        """Append an audit batch and compare-and-set one record in one host transaction
        (one crossing, one fsync); False if the record's version had moved (nothing kept)."""
        result = self._call(
            "audit_append",
            records=records,
            put_kind=kind,
            put_id=id,
            put_expected_version=expected_version,
            put_blob=blob,
        )
        return bool(result["ok"])

    def audit_tail(self, from_seq: int) -> list[bytes]:
        """What the host claims follows record `from_seq - 1`; `AuditLog` verifies it."""
        records: list[bytes] = self._call("audit_tail", from_seq=from_seq)["records"]
        return records

    # -------------------------------------------------------------- attestation

    def quote_for(self, backend: TeeBackend, report_data: bytes) -> bytes:
        """EREPORT to the quoting enclave, have the host quote it, check it is our report."""
        target = TargetInfo.parse(self._call("get_qe_target_info")["target_info"])
        report = backend.get_report(target, report_data)
        quote_bytes: bytes = self._call("get_quote", report=report.to_bytes())["quote"]
        quote = parse_quote(quote_bytes)
        if quote.body != report.body or quote.trailing:
            raise AttestationError("host returned a quote that is not for this enclave's report")
        return quote_bytes

    def replica_join(self, path: str, body: bytes) -> tuple[int, bytes]:
        """The host's POST of `body` to the peer replica's `path`: (HTTP status, answer).
        The answer is as untrusted as the host (enclave/custody verifies it)."""
        result = self._call("replica_join", path=path, body=body)
        return int(result["status"]), bytes(result["body"])

    def collateral_for(self, quote: bytes) -> bytes:
        collateral: bytes = self._call("get_collateral", quote=quote)["collateral"]
        load_collateral(collateral)  # must at least parse; it is verified by whoever uses it
        return collateral


class OcallLogHandler(logging.Handler):
    """Forward enclave log records through the `log` OCALL; never recursively."""

    def __init__(self, call: Call) -> None:
        super().__init__()
        self._call = call
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            message = self.format(record)[:4000]
            self._call("log", level=record.levelname.lower()[:16], message=message)
        except Exception:  # noqa: BLE001 - a dead channel must not break the caller
            sys.stderr.write("enclave: log OCALL failed\n")
        finally:
            self._local.busy = False
