"""Open Enclave containers around an SGX DCAP quote (read from the Open Enclave SDK sources).

* **OE report** (legacy `oe_get_report` remote report, also the tutorial's `QuoteHex`):
  `oe_report_header_t` {u32 version = 1, u32 report_type (1 local, 2 SGX remote), u64
  report_size} followed by exactly `report_size` bytes of quote.
* **OE evidence, format SGX_ECDSA** (`oe_get_evidence`): the raw quote immediately followed by
  the custom-claims buffer, with no length field between them: the quote's own length
  (48 + 384 + 4 + signature data length) tells where the buffer starts, exactly as OE's
  verifier splits it. The binding rule: `report_data[0:32] == SHA-256(custom claims buffer)`,
  where an absent/empty buffer hashes as the empty string (OE hard-codes SHA-256("")).
  So here the quote's "trailing bytes" *are* the claims buffer, and a bare quote is evidence
  with an empty buffer.
* **Custom claims serialization** (`oe_serialize_custom_claims`, version 1; host byte order,
  i.e. little-endian on SGX): header {u64 version, u64 num_claims}, then per claim
  {u64 name_size, u64 value_size, name bytes including the terminating NUL, value bytes}.
  OE's own deserializer ignores bytes after the last claim; we reject them (they would be
  covered by the hash but invisible to policy) and also require exactly one NUL, at the end.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from enclave_kms.errors import BindingError, FormatError, UnsupportedFormatError
from enclave_kms.sgx.quote import Quote, parse_quote

OE_REPORT_HEADER_VERSION = 1
OE_REPORT_TYPE_SGX_LOCAL = 1
OE_REPORT_TYPE_SGX_REMOTE = 2
OE_CUSTOM_CLAIMS_VERSION = 1

_HEADER_FMT = "<IIQ"
_CLAIMS_HEADER_FMT = "<QQ"
_ENTRY_FMT = "<QQ"


def _bytes(data: object, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    return bytes(data)


@dataclass(frozen=True)
class OeReportHeader:
    """The 16-byte `oe_report_header_t` in front of an OE report."""

    version: int
    report_type: int
    report_size: int

    SIZE = 16

    def __post_init__(self) -> None:
        for name, value, bits in (
            ("version", self.version, 32),
            ("report_type", self.report_type, 32),
            ("report_size", self.report_size, 64),
        ):
            if not isinstance(value, int) or not 0 <= value < (1 << bits):
                raise FormatError(f"OE report header {name}: {value!r} out of range")

    @classmethod
    def parse(cls, data: bytes) -> OeReportHeader:
        raw = _bytes(data, "OE report header")
        if len(raw) != cls.SIZE:
            raise FormatError(f"OE report header: expected 16 bytes, got {len(raw)}")
        return cls(*struct.unpack(_HEADER_FMT, raw))

    def to_bytes(self) -> bytes:
        return struct.pack(_HEADER_FMT, self.version, self.report_type, self.report_size)


def parse_oe_report(data: bytes) -> tuple[OeReportHeader, Quote]:
    """Split an OE remote report into its header and quote (exactly `report_size` bytes)."""
    raw = _bytes(data, "OE report")
    if len(raw) < OeReportHeader.SIZE:
        raise FormatError(f"OE report: {len(raw)} bytes is shorter than its 16-byte header")
    header = OeReportHeader.parse(raw[:16])
    if header.version != OE_REPORT_HEADER_VERSION:
        raise UnsupportedFormatError(f"OE report header version {header.version} (expected 1)")
    if header.report_type != OE_REPORT_TYPE_SGX_REMOTE:
        raise UnsupportedFormatError(
            f"OE report type {header.report_type} is not supported (2 = SGX remote)"
        )
    if header.report_size != len(raw) - 16:
        raise FormatError(
            f"OE report size: header says {header.report_size}, {len(raw) - 16} bytes follow"
        )
    return header, parse_quote(raw[16:])


def build_oe_report(quote: Quote | bytes) -> bytes:
    """OE remote report bytes (header + quote), e.g. for the tutorial's QuoteHex."""
    body = quote.to_bytes() if isinstance(quote, Quote) else _bytes(quote, "quote")
    header = OeReportHeader(OE_REPORT_HEADER_VERSION, OE_REPORT_TYPE_SGX_REMOTE, len(body))
    return header.to_bytes() + body


# --------------------------------------------------------------------------- custom claims


@dataclass(frozen=True)
class CustomClaim:
    """One OE custom claim: a text name (serialized with a trailing NUL) and opaque bytes."""

    name: str
    value: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or "\x00" in self.name:
            raise FormatError("custom claim name: must be text without NUL")
        if not isinstance(self.value, bytes):
            raise FormatError("custom claim value: expected bytes")


def serialize_custom_claims(claims: list[CustomClaim] | tuple[CustomClaim, ...]) -> bytes:
    """Same bytes as `oe_serialize_custom_claims` for the same claims, in order."""
    out = [struct.pack(_CLAIMS_HEADER_FMT, OE_CUSTOM_CLAIMS_VERSION, len(claims))]
    for claim in claims:
        try:
            name = claim.name.encode("utf-8") + b"\x00"
        except UnicodeError:
            raise FormatError("custom claim name: not encodable as UTF-8") from None
        out.append(struct.pack(_ENTRY_FMT, len(name), len(claim.value)) + name + claim.value)
    return b"".join(out)


def parse_custom_claims(data: bytes) -> tuple[CustomClaim, ...]:
    """Inverse of `serialize_custom_claims`; strict (no bytes after the last claim)."""
    raw = _bytes(data, "custom claims")
    if len(raw) < 16:
        raise FormatError(f"custom claims header: needs 16 bytes, got {len(raw)}")
    version, count = struct.unpack(_CLAIMS_HEADER_FMT, raw[:16])
    if version != OE_CUSTOM_CLAIMS_VERSION:
        raise UnsupportedFormatError(f"custom claims version {version} (expected 1)")
    pos = 16
    claims: list[CustomClaim] = []
    for i in range(count):
        if len(raw) - pos < 16:
            raise FormatError(f"custom claim {i}: truncated entry header")
        name_size, value_size = struct.unpack(_ENTRY_FMT, raw[pos : pos + 16])
        pos += 16
        if name_size < 1 or name_size + value_size > len(raw) - pos:
            raise FormatError(f"custom claim {i}: sizes run past the buffer")
        name_raw = raw[pos : pos + name_size]
        pos += name_size
        if name_raw[-1] != 0 or b"\x00" in name_raw[:-1]:
            raise FormatError(f"custom claim {i} name: must end with its only NUL")
        try:
            name = name_raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"custom claim {i} name: not UTF-8") from None
        claims.append(CustomClaim(name, raw[pos : pos + value_size]))
        pos += value_size
    if pos != len(raw):
        raise FormatError(f"custom claims: {len(raw) - pos} bytes after the last claim")
    return tuple(claims)


def custom_claims_hash(buffer: bytes) -> bytes:
    """What report_data[0:32] must hold for this claims buffer (SHA-256, "" when empty)."""
    return hashlib.sha256(_bytes(buffer, "custom claims buffer")).digest()


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class OeEvidence:
    """OE SGX_ECDSA evidence: a quote and the raw custom-claims buffer that follows it."""

    quote: Quote
    custom_claims_buffer: bytes = b""

    def __post_init__(self) -> None:
        if self.quote.trailing:
            raise FormatError("OE evidence quote: trailing bytes belong to the claims buffer")

    @classmethod
    def parse(cls, data: bytes) -> OeEvidence:
        quote = parse_quote(_bytes(data, "OE evidence"))
        bare = Quote(quote.header, quote.body, quote.signature_data, quote.body_type, trailing=b"")
        return cls(bare, quote.trailing)

    @classmethod
    def build(cls, quote: Quote, claims: list[CustomClaim] | tuple[CustomClaim, ...]) -> OeEvidence:
        """Evidence for `claims` (the quote's report_data must already bind them)."""
        buffer = serialize_custom_claims(claims) if claims else b""
        return cls(quote, buffer)

    def to_bytes(self) -> bytes:
        return self.quote.to_bytes() + self.custom_claims_buffer

    def custom_claims(self) -> tuple[CustomClaim, ...]:
        """The claims in the buffer; an empty buffer means no claims."""
        if not self.custom_claims_buffer:
            return ()
        return parse_custom_claims(self.custom_claims_buffer)

    @property
    def binds_custom_claims(self) -> bool:
        return self.quote.body.report_data[:32] == custom_claims_hash(self.custom_claims_buffer)

    def check_binding(self) -> None:
        """Raise BindingError unless report_data[0:32] is SHA-256 of the claims buffer."""
        if not self.binds_custom_claims:
            raise BindingError(
                "OE evidence: report_data[0:32] is not SHA-256 of the custom claims buffer"
            )


def parse_oe_evidence(data: bytes) -> OeEvidence:
    return OeEvidence.parse(data)
