"""Evidence for a workload in a confidential VM, through Linux configfs-tsm (kernel 6.7+).

A TDX or SEV-SNP guest asks its TSM for an attestation report by creating a report instance
under `/sys/kernel/config/tsm/report/` (Documentation/ABI/testing/configfs-tsm-report):

  mkdir  report/$name           one instance per request (no sharing, so no races)
  write  $name/inblob           up to 64 bytes: here the report data binding key and nonce
  read   $name/provider         "tdx_guest" (outblob: a DCAP quote v4/v5) or "sev_guest"
  read   $name/outblob          the report, generated on first read
  read   $name/auxblob          optional (SEV-SNP: the certificate table)
  read   $name/generation       incremented on every write; must equal the writes we made,
                                or another writer raced us and outblob is not for our inblob
  rmdir  report/$name

This is the confidential-VM counterpart of `platform/gramine.py` (the SGX pseudo-files): it
only produces evidence; appraisal happens in the KMS. A VM has no sealing, so this is not a
`TeeBackend` for the KMS itself but the workload side of key release (DESIGN §15).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enclave_kms.errors import PlatformError, UsageError

DEFAULT_ROOT = Path("/sys/kernel/config/tsm/report")
INBLOB_MAX = 64
OUTBLOB_MAX = 32 * 1024  # TSM_REPORT_OUTBLOB_MAX
PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}
"""Kernel provider names → the evidence format they produce."""


@dataclass(frozen=True)
class TsmReport:
    """One report from the TSM: the format the provider implies, its bytes, and aux data."""

    provider: str
    evidence_format: str
    outblob: bytes
    auxblob: bytes = b""


class ConfigfsTsm:
    """Reports from configfs-tsm at `root` (tests point it at a fake tree)."""

    def __init__(
        self, root: Path | str = DEFAULT_ROOT, *, make_entry: Callable[[Path], None] | None = None
    ) -> None:
        self.root = Path(root)
        # configfs creates an entry's attributes on mkdir; a test's fake tree does it here
        self._make_entry = make_entry or Path.mkdir
        if not self.root.is_dir():
            raise PlatformError(
                f"{self.root} does not exist: not a confidential VM, or configfs-tsm is not "
                "mounted (kernel 6.7+, `mount -t configfs none /sys/kernel/config`)"
            )

    def report(self, inblob: bytes) -> TsmReport:
        """A fresh report over `inblob` (≤ 64 bytes); PlatformError on any TSM failure."""
        if not isinstance(inblob, bytes) or not 0 < len(inblob) <= INBLOB_MAX:
            raise UsageError(f"TSM inblob: 1 to {INBLOB_MAX} bytes")
        entry = self.root / f"enclave-kms-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            self._make_entry(entry)
        except OSError as exc:
            raise PlatformError(f"cannot create TSM report {entry}: {exc.strerror}") from None
        try:
            before = self._generation(entry)
            self._write(entry / "inblob", inblob)
            provider = self._read(entry / "provider", 64).decode("ascii", "replace").strip()
            outblob = self._read(entry / "outblob", OUTBLOB_MAX)
            auxblob = self._optional(entry / "auxblob")
            after = self._generation(entry)
        finally:
            with contextlib.suppress(OSError):  # configfs drops its attributes with the entry
                entry.rmdir()
        if after != before + 1:
            raise PlatformError(
                f"TSM report generation moved {before} → {after}: another writer raced this "
                "request, so the report may not be over our data"
            )
        if provider not in PROVIDERS:
            raise PlatformError(f"TSM provider {provider[:40]!r} is not supported (tdx_guest)")
        if not outblob:
            raise PlatformError("TSM returned an empty report")
        return TsmReport(provider, PROVIDERS[provider], outblob, auxblob)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        try:
            with path.open("wb", buffering=0) as fh:
                fh.write(data)
        except OSError as exc:
            raise PlatformError(f"TSM write {path.name}: {exc.strerror}") from None

    @staticmethod
    def _read(path: Path, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            with path.open("rb", buffering=0) as fh:
                while size <= limit and (chunk := fh.read(limit + 1 - size)):
                    chunks.append(chunk)  # attribute reads may return the value in pieces
                    size += len(chunk)
        except OSError as exc:
            raise PlatformError(f"TSM read {path.name}: {exc.strerror}") from None
        if size > limit:
            raise PlatformError(f"TSM {path.name}: more than {limit} bytes")
        return b"".join(chunks)

    def _optional(self, path: Path) -> bytes:
        return self._read(path, OUTBLOB_MAX) if path.exists() else b""

    def _generation(self, entry: Path) -> int:
        text = self._read(entry / "generation", 32).decode("ascii", "replace").strip()
        if not text.isdigit():
            raise PlatformError(f"TSM generation {text[:20]!r} is not a number")
        return int(text)
