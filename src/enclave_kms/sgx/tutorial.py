"""The mini_kms tutorial's "enclave info" JSON (printed by Open Enclave hosts, e.g. Azure MAA).

Fields: `Type` (oe_enclave_type_t, 2 = SGX), `MrEnclaveHex`, `MrSignerHex`, `ProductIdHex`
(OE's 16-byte product id: ISVPRODID little-endian, zero-padded), `SecurityVersion` (ISVSVN),
`Attributes` (OE report attributes: 1 = DEBUG, 2 = REMOTE), `QuoteHex` (16-byte OE report
header + DCAP quote) and `EnclaveHeldDataHex` (the enclave's 512-byte zero-padded PEM public
key, whose SHA-256 is report_data[0:32]).

Everything but `QuoteHex` and `EnclaveHeldDataHex` is a copy of what the quote says and is
*not* trusted: `inconsistencies()` lists where the copies disagree with the quote, and
verifiers must read identities from the (verified) quote, never from these fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from enclave_kms.errors import FormatError
from enclave_kms.sgx.oe import OeReportHeader, build_oe_report, parse_oe_report
from enclave_kms.sgx.quote import Quote
from enclave_kms.sgx.report import ReportBody

OE_ENCLAVE_TYPE_SGX = 2
OE_REPORT_ATTRIBUTES_DEBUG = 0x1
OE_REPORT_ATTRIBUTES_REMOTE = 0x2

_FIELDS = (
    "Type",
    "MrEnclaveHex",
    "MrSignerHex",
    "ProductIdHex",
    "SecurityVersion",
    "Attributes",
    "QuoteHex",
    "EnclaveHeldDataHex",
)


def _hex(obj: dict[str, Any], key: str, size: int | None = None) -> bytes:
    value = obj[key]
    if not isinstance(value, str):
        raise FormatError(f"enclave info {key}: expected a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise FormatError(f"enclave info {key}: not hex") from None
    if size is not None and len(raw) != size:
        raise FormatError(f"enclave info {key}: expected {size} bytes, got {len(raw)}")
    return raw


def _int(obj: dict[str, Any], key: str, bits: int) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise FormatError(f"enclave info {key}: expected an integer 0..2^{bits}-1")
    return value


def oe_attributes(body: ReportBody) -> int:
    """OE report attributes for a remote report from this body (REMOTE, plus DEBUG if set)."""
    return OE_REPORT_ATTRIBUTES_REMOTE | (
        OE_REPORT_ATTRIBUTES_DEBUG if body.attributes.debug else 0
    )


def oe_product_id(isv_prod_id: int) -> bytes:
    return isv_prod_id.to_bytes(2, "little") + bytes(14)


@dataclass(frozen=True)
class EnclaveInfo:
    """The enclave-info JSON document. `oe_report` is QuoteHex decoded (header + quote)."""

    type: int
    mr_enclave: bytes
    mr_signer: bytes
    product_id: bytes
    security_version: int
    attributes: int
    oe_report: bytes
    enclave_held_data: bytes

    def __post_init__(self) -> None:
        for name, value, size in (
            ("mr_enclave", self.mr_enclave, 32),
            ("mr_signer", self.mr_signer, 32),
            ("product_id", self.product_id, 16),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise FormatError(f"enclave info {name}: expected {size} bytes")
        # Parsing the embedded report up front makes a bad QuoteHex a parse error.
        _ = self.report

    # ------------------------------------------------------------------ parse / build

    @classmethod
    def parse(cls, data: bytes | str) -> EnclaveInfo:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeError, RecursionError):
            raise FormatError("enclave info: not valid JSON") from None
        if not isinstance(obj, dict):
            raise FormatError("enclave info: expected a JSON object")
        missing = [k for k in _FIELDS if k not in obj]
        if missing:
            raise FormatError(f"enclave info: missing field {missing[0]}")
        return cls(
            type=_int(obj, "Type", 32),
            mr_enclave=_hex(obj, "MrEnclaveHex", 32),
            mr_signer=_hex(obj, "MrSignerHex", 32),
            product_id=_hex(obj, "ProductIdHex", 16),
            security_version=_int(obj, "SecurityVersion", 16),
            attributes=_int(obj, "Attributes", 64),
            oe_report=_hex(obj, "QuoteHex"),
            enclave_held_data=_hex(obj, "EnclaveHeldDataHex"),
        )

    def to_json(self) -> bytes:
        """The same layout OE hosts print (2-space indent, upper-case hex, final newline)."""
        obj = {
            "Type": self.type,
            "MrEnclaveHex": self.mr_enclave.hex().upper(),
            "MrSignerHex": self.mr_signer.hex().upper(),
            "ProductIdHex": self.product_id.hex().upper(),
            "SecurityVersion": self.security_version,
            "Attributes": self.attributes,
            "QuoteHex": self.oe_report.hex().upper(),
            "EnclaveHeldDataHex": self.enclave_held_data.hex().upper(),
        }
        return json.dumps(obj, indent=2).encode() + b"\n"

    @classmethod
    def from_report(cls, oe_report: bytes | Quote, held_data: bytes) -> EnclaveInfo:
        """Build the document from an OE remote report (or a bare quote) and the held data."""
        raw = build_oe_report(oe_report) if isinstance(oe_report, Quote) else bytes(oe_report)
        _, quote = parse_oe_report(raw)
        body = quote.body
        if not isinstance(body, ReportBody):
            raise FormatError("enclave info: the quote is not an SGX enclave quote")
        return cls(
            type=OE_ENCLAVE_TYPE_SGX,
            mr_enclave=body.mr_enclave,
            mr_signer=body.mr_signer,
            product_id=oe_product_id(body.isv_prod_id),
            security_version=body.isv_svn,
            attributes=oe_attributes(body),
            oe_report=raw,
            enclave_held_data=bytes(held_data),
        )

    # ------------------------------------------------------------------ views and checks

    @cached_property
    def report(self) -> tuple[OeReportHeader, Quote]:
        return parse_oe_report(self.oe_report)

    @property
    def quote(self) -> Quote:
        return self.report[1]

    @property
    def quote_bytes(self) -> bytes:
        """The DCAP quote alone (QuoteHex without its 16-byte OE header)."""
        return self.oe_report[OeReportHeader.SIZE :]

    def binds_held_data(self) -> bool:
        """report_data[0:32] == SHA-256(EnclaveHeldData)."""
        digest = hashlib.sha256(self.enclave_held_data).digest()
        return self.quote.body.report_data[:32] == digest

    def inconsistencies(self) -> list[str]:
        """Every field whose copy disagrees with the quote (empty list = consistent)."""
        body = self.quote.body
        if not isinstance(body, ReportBody):
            return ["QuoteHex: the quote is not an SGX enclave quote"]
        problems: list[str] = []
        if self.type != OE_ENCLAVE_TYPE_SGX:
            problems.append(f"Type: {self.type}, expected {OE_ENCLAVE_TYPE_SGX} (SGX)")
        if self.mr_enclave != body.mr_enclave:
            problems.append("MrEnclaveHex differs from the quote's mr_enclave")
        if self.mr_signer != body.mr_signer:
            problems.append("MrSignerHex differs from the quote's mr_signer")
        if self.product_id != oe_product_id(body.isv_prod_id):
            problems.append(f"ProductIdHex differs from the quote's isv_prod_id {body.isv_prod_id}")
        if self.security_version != body.isv_svn:
            problems.append(f"SecurityVersion differs from the quote's isv_svn {body.isv_svn}")
        if self.attributes != oe_attributes(body):
            problems.append(
                f"Attributes {self.attributes} differ from the quote's ({oe_attributes(body)})"
            )
        return problems
