"""Intel DCAP ECDSA quotes: v3 (SGX), v4 (SGX or TDX), v5 (TDX 1.0/1.5 or SGX).

Layout (Intel "SGX ECDSA Quote Library API" and "TDX DCAP Quoting Library API" specs; all
integers little-endian)::

    header            48 B   QuoteHeader
    [v5 only]          6 B   body descriptor: u16 body_type, u32 body_size
    body          384/584/648 B  ReportBody (SGX) | TdReport10 | TdReport15
    sig_data_len       4 B   u32
    signature data   sig_data_len B
    trailing         anything left (kept, see below)

Signature data: quote signature (64 B r||s over header [+ descriptor] + body), attestation key
(64 B x||y), then

* v3: QE report (384), QE report signature (64), u16 + QE auth data, u16 cert type, u32 size,
  certification data (type 5 = PEM PCK chain; others kept as opaque bytes);
* v4/v5: u16 cert type 6, u32 size, then the type-6 "QE report certification data" holding the
  same QE report / signature / auth data and an inner certification data record.

The type-6 wrapper is unwrapped into the same `EcdsaSignatureData` fields as v3 so verifiers see
one shape; `qe_report_cert_type` remembers the wrapper so `to_bytes` rebuilds it exactly.

**Trailing bytes.** Several genuine quotes carry bytes after the declared signature data (zero
padding of a fixed-size buffer: 70 B in Phala's TDX quotes, 3065 B in Automata's; 39 B of ASCII
junk in go-tdx-guest's). Nothing signs them, so they can neither help nor hurt verification.
We keep them in `Quote.trailing` (so `to_bytes` returns the input exactly) instead of rejecting,
matching Intel's QVL, dcap-qvl and go-tdx-guest; a policy that wants strict framing can check
`trailing == b""`. By contrast, every length field *inside* the signature data must be exact:
a declared length that runs past its container, or bytes left over inside a container, is a
FormatError, because those bytes would otherwise be unaccounted for between signed fields.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography import x509

from enclave_kms.errors import FormatError, UnsupportedFormatError
from enclave_kms.sgx.pck import X509_ERRORS
from enclave_kms.sgx.report import ReportBody
from enclave_kms.sgx.tdx import TdReport10, TdReport15

ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
#: QE vendor id of Intel's quoting enclaves (header.qe_vendor_id), in quote byte order.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

CERT_TYPE_PPID_CLEARTEXT = 1
CERT_TYPE_PPID_RSA2048 = 2
CERT_TYPE_PPID_RSA3072 = 3
CERT_TYPE_PCK_CLEARTEXT = 4
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PLATFORM_MANIFEST = 7

BODY_TYPE_SGX = 1
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3

_CERT_TYPE_NAMES = {
    1: "PPID cleartext",
    2: "PPID RSA-2048-OAEP",
    3: "PPID RSA-3072-OAEP",
    4: "PCK leaf cleartext",
    5: "PCK cert chain",
    6: "QE report certification data",
    7: "platform manifest",
}

Body = ReportBody | TdReport10 | TdReport15

_HEADER_FMT = "<HHIHH16s20s"


class _Reader:
    """Bounded cursor: every read names the field, so a truncation says what was cut."""

    def __init__(self, data: bytes, offset: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = offset
        self.end = len(data) if end is None else end

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > self.end:
            raise FormatError(
                f"{what}: needs {size} bytes at offset {self.pos}, "
                f"only {max(self.end - self.pos, 0)} left"
            )
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "little")

    @property
    def remaining(self) -> int:
        return self.end - self.pos


def _as_bytes(data: object, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    return bytes(data)


def _fixed(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise FormatError(f"{what}: expected {size} bytes")


def cert_type_name(cert_type: int) -> str:
    return f"{cert_type} ({_CERT_TYPE_NAMES.get(cert_type, 'unknown')})"


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header.

    In v4/v5 Intel renamed the `qe_svn`/`pce_svn` words "reserved" but QEs still fill them, so
    we keep the v3 names. `reserved` exists for the shared contract: the 48 bytes are fully
    covered by the named fields, so it must be empty.
    """

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    reserved: bytes = b""

    SIZE = 48

    def __post_init__(self) -> None:
        _fixed(self.qe_vendor_id, 16, "qe_vendor_id")
        _fixed(self.user_data, 20, "user_data")
        if self.reserved != b"":
            raise FormatError("quote header reserved: must be empty (48 bytes are all named)")
        for name, value, bits in (
            ("version", self.version, 16),
            ("att_key_type", self.att_key_type, 16),
            ("tee_type", self.tee_type, 32),
            ("qe_svn", self.qe_svn, 16),
            ("pce_svn", self.pce_svn, 16),
        ):
            if not isinstance(value, int) or not 0 <= value < (1 << bits):
                raise FormatError(f"quote header {name}: {value!r} does not fit in {bits} bits")

    @classmethod
    def parse(cls, data: bytes) -> QuoteHeader:
        raw = _as_bytes(data, "quote header")
        if len(raw) != cls.SIZE:
            raise FormatError(f"quote header: expected 48 bytes, got {len(raw)}")
        return cls(*struct.unpack(_HEADER_FMT, raw))

    def to_bytes(self) -> bytes:
        return struct.pack(
            _HEADER_FMT,
            self.version,
            self.att_key_type,
            self.tee_type,
            self.qe_svn,
            self.pce_svn,
            self.qe_vendor_id,
            self.user_data,
        )

    @property
    def is_tdx(self) -> bool:
        return self.tee_type == TEE_TYPE_TDX


@dataclass(frozen=True)
class CertificationData:
    """One certification-data record: `cert_type` and its opaque `data` (kept byte-exact)."""

    cert_type: int
    data: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.cert_type, int) or not 0 <= self.cert_type < 1 << 16:
            raise FormatError(f"certification data type: {self.cert_type!r} is not a u16")
        if not isinstance(self.data, bytes):
            raise FormatError("certification data: expected bytes")

    @classmethod
    def read(cls, reader: _Reader, what: str = "certification data") -> CertificationData:
        cert_type = reader.u16(f"{what} type")
        size = reader.u32(f"{what} size")
        return cls(cert_type, reader.take(size, f"{what} (type {cert_type})"))

    def to_bytes(self) -> bytes:
        return struct.pack("<HI", self.cert_type, len(self.data)) + self.data

    def pck_chain_pem(self) -> bytes:
        """The PEM chain (leaf, intermediate, root) with the NUL padding real QEs append removed."""
        if self.cert_type != CERT_TYPE_PCK_CHAIN:
            raise UnsupportedFormatError(
                f"certification data type {cert_type_name(self.cert_type)} is not supported: "
                "only type 5 (PCK cert chain) carries the PCK certificates",
            )
        return self.data.rstrip(b"\x00")

    def certificates(self) -> list[x509.Certificate]:
        """The PCK chain as certificates, leaf first (quote order)."""
        pem = self.pck_chain_pem()
        try:
            certs = x509.load_pem_x509_certificates(pem)
        except X509_ERRORS as exc:
            raise FormatError(
                f"certification data PCK chain: not valid PEM ({type(exc).__name__}: {exc})"
            ) from None
        return certs


@dataclass(frozen=True)
class EcdsaSignatureData:
    """ECDSA-256 quote signature data, v3 layout; v4/v5 type-6 wrapper unwrapped into it.

    `qe_report_cert_type` is None for v3 and 6 for v4/v5 (the outer certification type).
    """

    signature: bytes
    attestation_key: bytes
    qe_report: ReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData
    qe_report_cert_type: int | None = None

    def __post_init__(self) -> None:
        _fixed(self.signature, 64, "quote signature")
        _fixed(self.attestation_key, 64, "attestation key")
        _fixed(self.qe_report_signature, 64, "QE report signature")
        if not isinstance(self.qe_auth_data, bytes) or len(self.qe_auth_data) >= 1 << 16:
            raise FormatError("QE auth data: expected at most 65535 bytes")
        if self.qe_report_cert_type not in (None, CERT_TYPE_QE_REPORT):
            raise UnsupportedFormatError(
                f"QE report wrapper type {self.qe_report_cert_type!r}: only 6 (or None for v3)"
            )

    def _qe_part(self) -> bytes:
        return (
            self.qe_report.to_bytes()
            + self.qe_report_signature
            + struct.pack("<H", len(self.qe_auth_data))
            + self.qe_auth_data
            + self.certification_data.to_bytes()
        )

    def to_bytes(self) -> bytes:
        """The signature data without its u32 length prefix."""
        head = self.signature + self.attestation_key
        if self.qe_report_cert_type is None:
            return head + self._qe_part()
        inner = self._qe_part()
        return head + struct.pack("<HI", self.qe_report_cert_type, len(inner)) + inner

    @classmethod
    def parse(cls, data: bytes, *, wrapped: bool) -> EcdsaSignatureData:
        """Parse exactly `data` (no length prefix). `wrapped`: v4/v5 type-6 layout."""
        raw = _as_bytes(data, "signature data")
        r = _Reader(raw)
        signature = r.take(64, "quote signature")
        attestation_key = r.take(64, "attestation key")
        outer_type: int | None = None
        if wrapped:
            outer_type = r.u16("certification data type")
            if outer_type != CERT_TYPE_QE_REPORT:
                raise UnsupportedFormatError(
                    f"certification data type {cert_type_name(outer_type)}: quote v4/v5 "
                    "needs type 6 (QE report certification data)"
                )
            size = r.u32("QE report certification data size")
            inner = r.take(size, "QE report certification data")
            if r.remaining:
                raise FormatError(
                    f"signature data: {r.remaining} unaccounted bytes after the type-6 record"
                )
            r = _Reader(inner)
        qe_report = ReportBody.parse(r.take(ReportBody.SIZE, "QE report"))
        qe_report_signature = r.take(64, "QE report signature")
        auth_size = r.u16("QE auth data size")
        qe_auth_data = r.take(auth_size, "QE auth data")
        cert = CertificationData.read(r)
        if r.remaining:
            where = "QE report certification data" if wrapped else "signature data"
            raise FormatError(f"{where}: {r.remaining} unaccounted bytes after certification data")
        return cls(
            signature,
            attestation_key,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            cert,
            outer_type,
        )


@dataclass(frozen=True)
class Quote:
    """A parsed DCAP quote; `to_bytes()` returns the exact input, trailing bytes included."""

    header: QuoteHeader
    body: ReportBody | TdReport10 | TdReport15
    signature_data: EcdsaSignatureData
    body_type: int | None = None
    trailing: bytes = b""

    def __post_init__(self) -> None:
        v = self.header.version
        if v not in (3, 4, 5):
            raise UnsupportedFormatError(f"quote version {v} is not supported (3, 4, 5 are)")
        if (v == 5) != (self.body_type is not None):
            raise FormatError("quote body_type: set for version 5 and only for version 5")
        if (self.signature_data.qe_report_cert_type is None) != (v == 3):
            raise FormatError("quote signature data: type-6 wrapper is used by v4/v5 only")
        expected = _body_class(self.header, self.body_type)
        if type(self.body) is not expected:
            raise FormatError(
                f"quote body: {type(self.body).__name__} does not match header/body type "
                f"(expected {expected.__name__})"
            )
        if not isinstance(self.trailing, bytes):
            raise FormatError("quote trailing: expected bytes")

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def is_sgx(self) -> bool:
        return isinstance(self.body, ReportBody)

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.body, TdReport10)

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    @property
    def signed_bytes(self) -> bytes:
        """What the attestation key signs: header (+ v5 body descriptor) + body."""
        body = self.body.to_bytes()
        descriptor = b""
        if self.body_type is not None:
            descriptor = struct.pack("<HI", self.body_type, len(body))
        return self.header.to_bytes() + descriptor + body

    def to_bytes(self) -> bytes:
        return self.without_trailing() + self.trailing

    def without_trailing(self) -> bytes:
        """The quote proper, trailing padding/junk removed."""
        sig = self.signature_data.to_bytes()
        return self.signed_bytes + struct.pack("<I", len(sig)) + sig

    def pck_certificates(self) -> list[x509.Certificate]:
        """PCK chain from the certification data, leaf first. Type 5 only."""
        return self.signature_data.certification_data.certificates()

    @property
    def certification_data(self) -> CertificationData:
        return self.signature_data.certification_data


def _body_class(header: QuoteHeader, body_type: int | None) -> type[Body]:
    if header.version == 5:
        if body_type == BODY_TYPE_SGX:
            return ReportBody
        if body_type == BODY_TYPE_TD10:
            return TdReport10
        if body_type == BODY_TYPE_TD15:
            return TdReport15
        raise UnsupportedFormatError(f"quote v5 body type {body_type} is not supported (1-3 are)")
    if header.tee_type == TEE_TYPE_SGX:
        return ReportBody
    if header.tee_type == TEE_TYPE_TDX and header.version >= 4:
        return TdReport10
    raise UnsupportedFormatError(
        f"quote tee_type 0x{header.tee_type:08x} is not supported for version {header.version}"
    )


def parse_quote(data: bytes) -> Quote:
    """Parse a DCAP quote v3/v4/v5. Bytes after the declared signature data go to `.trailing`."""
    raw = _as_bytes(data, "quote")
    r = _Reader(raw)
    header = QuoteHeader.parse(r.take(QuoteHeader.SIZE, "quote header"))
    if header.version not in (3, 4, 5):
        raise UnsupportedFormatError(f"quote version {header.version} is not supported")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise UnsupportedFormatError(
            f"quote att_key_type {header.att_key_type} is not supported (2 = ECDSA-256-P256)"
        )
    if header.version == 3 and header.tee_type != TEE_TYPE_SGX:
        raise UnsupportedFormatError(f"quote v3 tee_type 0x{header.tee_type:08x} is not SGX")
    body_type: int | None = None
    if header.version == 5:
        body_type = r.u16("quote v5 body type")
        body_size = r.u32("quote v5 body size")
        cls = _body_class(header, body_type)
        if body_size != cls.SIZE:
            raise FormatError(
                f"quote v5 body size: {body_size} for body type {body_type}, expected {cls.SIZE}"
            )
        expect_tdx = body_type != BODY_TYPE_SGX
        if header.is_tdx != expect_tdx:
            raise FormatError(
                f"quote v5: tee_type 0x{header.tee_type:08x} and body type {body_type} disagree"
            )
    else:
        cls = _body_class(header, None)
    body = cls.parse(r.take(cls.SIZE, "quote body"))
    sig_len = r.u32("signature data length")
    sig_raw = r.take(sig_len, "signature data")
    signature_data = EcdsaSignatureData.parse(sig_raw, wrapped=header.version >= 4)
    trailing = raw[r.pos :]
    return Quote(header, body, signature_data, body_type, trailing)
