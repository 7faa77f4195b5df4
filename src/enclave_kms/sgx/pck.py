"""The Intel SGX PCK certificate extension (OID 1.2.840.113741.1.13.1).

Intel "SGX PCK Certificate and CRL Profile": the extension value is a SEQUENCE OF
{OID, value} pairs; TCB (.2) and Configuration (.7) nest the same pair shape. The verifier
reads FMSPC, PCE-ID and the TCB components from here to pick the TCB level, so the parser is
strict (each required sub-OID exactly once, exact sizes, no bytes after the DER) and DER goes
through pyasn1, never a hand-written codec. `build_pck_extension` is the inverse, used by the
simulated PKI; parse(build(x)) == x, and build(parse(real)) reproduces Intel's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, univ

from enclave_kms.errors import FormatError, UnsupportedFormatError

# Everything `cryptography` raises on malformed certificates and CRLs, including fields it
# decodes lazily (extensions, names): not all of them are ValueErrors (fuzzing found
# DuplicateExtension and InvalidVersion escaping). Parsers catch exactly this tuple.
X509_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnicodeError,
    OverflowError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
)

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSIONS_OID + ".1"
_TCB = SGX_EXTENSIONS_OID + ".2"
_PCE_ID = SGX_EXTENSIONS_OID + ".3"
_FMSPC = SGX_EXTENSIONS_OID + ".4"
_SGX_TYPE = SGX_EXTENSIONS_OID + ".5"
_PLATFORM_INSTANCE_ID = SGX_EXTENSIONS_OID + ".6"
_CONFIGURATION = SGX_EXTENSIONS_OID + ".7"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
_CONF_DYNAMIC = _CONFIGURATION + ".1"
_CONF_CACHED = _CONFIGURATION + ".2"
_CONF_SMT = _CONFIGURATION + ".3"

SGX_TYPE_STANDARD = 0
SGX_TYPE_SCALABLE = 1
SGX_TYPE_SCALABLE_WITH_INTEGRITY = 2

PROCESSOR_CA_CN = "Intel SGX PCK Processor CA"
PLATFORM_CA_CN = "Intel SGX PCK Platform CA"


class _Pair(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("id", univ.ObjectIdentifier()),
        namedtype.NamedType("value", univ.Any()),
    )


class _Pairs(univ.SequenceOf):  # type: ignore[misc]
    componentType = _Pair()


@dataclass(frozen=True)
class PckConfiguration:
    """Platform configuration flags (.7), present in Platform-CA PCK certs. None = absent."""

    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


@dataclass(frozen=True)
class PckExtension:
    """Decoded SGX extension of a PCK leaf. Byte fields are in certificate (quote) order."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    configuration: PckConfiguration | None = None

    def __post_init__(self) -> None:
        for name, value, size in (
            ("ppid", self.ppid, 16),
            ("cpu_svn", self.cpu_svn, 16),
            ("pce_id", self.pce_id, 2),
            ("fmspc", self.fmspc, 6),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise FormatError(f"PCK extension {name}: expected {size} bytes")
        if self.platform_instance_id is not None and (
            not isinstance(self.platform_instance_id, bytes) or len(self.platform_instance_id) != 16
        ):
            raise FormatError("PCK extension platform_instance_id: expected 16 bytes")
        comps = self.tcb_components
        if len(comps) != 16 or not all(isinstance(c, int) and 0 <= c <= 255 for c in comps):
            raise FormatError("PCK extension tcb_components: expected 16 values 0..255")
        if not isinstance(self.pce_svn, int) or not 0 <= self.pce_svn <= 0xFFFF:
            raise FormatError("PCK extension pce_svn: expected 0..65535")
        if not isinstance(self.sgx_type, int) or not 0 <= self.sgx_type <= 255:
            raise FormatError("PCK extension sgx_type: expected a small enumerated value")


# --------------------------------------------------------------------------- decoding


def _decode(data: bytes, spec: univ.Asn1Item, what: str) -> univ.Asn1Item:
    try:
        value, rest = decoder.decode(data, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise FormatError(f"PCK extension {what}: invalid DER ({type(exc).__name__})") from None
    if rest:
        raise FormatError(f"PCK extension {what}: {len(rest)} bytes after the DER value")
    return value


def _pairs(data: bytes, what: str) -> dict[str, bytes]:
    seq = _decode(data, _Pairs(), what)
    out: dict[str, bytes] = {}
    for pair in seq:
        oid = str(pair["id"])
        if oid in out:
            raise FormatError(f"PCK extension {what}: duplicate {oid}")
        out[oid] = bytes(pair["value"])
    return out


def _octets(raw: bytes, size: int, what: str) -> bytes:
    value = bytes(_decode(raw, univ.OctetString(), what))
    if len(value) != size:
        raise FormatError(f"PCK extension {what}: expected {size} bytes, got {len(value)}")
    return value


def _integer(raw: bytes, what: str, spec: univ.Asn1Item | None = None) -> int:
    value = int(_decode(raw, spec if spec is not None else univ.Integer(), what))
    if value < 0:
        raise FormatError(f"PCK extension {what}: negative")
    return value


def _boolean(raw: bytes, what: str) -> bool:
    return bool(_decode(raw, univ.Boolean(), what))


def _required(pairs: dict[str, bytes], oid: str, what: str) -> bytes:
    if oid not in pairs:
        raise FormatError(f"PCK extension: {what} ({oid}) missing")
    return pairs[oid]


def parse_pck_extension_der(data: bytes) -> PckExtension:
    """Parse the DER extension value (the OCTET STRING contents of the X.509 extension)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError("PCK extension: expected bytes")
    top = _pairs(bytes(data), "SGX extensions")
    known = {_PPID, _TCB, _PCE_ID, _FMSPC, _SGX_TYPE, _PLATFORM_INSTANCE_ID, _CONFIGURATION}
    unknown = sorted(set(top) - known)
    if unknown:
        raise UnsupportedFormatError(f"PCK extension: unknown sub-extension {unknown[0]}")
    tcb = _pairs(_required(top, _TCB, "TCB"), "TCB")
    tcb_known = {f"{_TCB}.{i}" for i in range(1, 19)}
    extra = sorted(set(tcb) - tcb_known)
    if extra:
        raise UnsupportedFormatError(f"PCK extension TCB: unknown component {extra[0]}")
    comps = tuple(
        _integer(_required(tcb, f"{_TCB}.{i}", f"TCB comp {i}"), f"TCB comp {i}")
        for i in range(1, 17)
    )
    configuration = None
    if _CONFIGURATION in top:
        conf = _pairs(top[_CONFIGURATION], "configuration")
        extra = sorted(set(conf) - {_CONF_DYNAMIC, _CONF_CACHED, _CONF_SMT})
        if extra:
            raise UnsupportedFormatError(f"PCK extension configuration: unknown {extra[0]}")

        def flag(oid: str, name: str) -> bool | None:
            return _boolean(conf[oid], name) if oid in conf else None

        configuration = PckConfiguration(
            dynamic_platform=flag(_CONF_DYNAMIC, "dynamicPlatform"),
            cached_keys=flag(_CONF_CACHED, "cachedKeys"),
            smt_enabled=flag(_CONF_SMT, "SMTEnabled"),
        )
    pid = top.get(_PLATFORM_INSTANCE_ID)
    try:
        return PckExtension(
            ppid=_octets(_required(top, _PPID, "PPID"), 16, "PPID"),
            tcb_components=comps,
            pce_svn=_integer(_required(tcb, _PCESVN, "PCESVN"), "PCESVN"),
            cpu_svn=_octets(_required(tcb, _CPUSVN, "CPUSVN"), 16, "CPUSVN"),
            pce_id=_octets(_required(top, _PCE_ID, "PCE-ID"), 2, "PCE-ID"),
            fmspc=_octets(_required(top, _FMSPC, "FMSPC"), 6, "FMSPC"),
            sgx_type=_integer(_required(top, _SGX_TYPE, "SGX type"), "SGX type", univ.Enumerated()),
            platform_instance_id=None if pid is None else _octets(pid, 16, "platform id"),
            configuration=configuration,
        )
    except FormatError:
        raise
    except (ValueError, TypeError) as exc:  # pragma: no cover - guarded above
        raise FormatError(f"PCK extension: {type(exc).__name__}") from None


def _sgx_extension_value(cert: x509.Certificate) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound:
        raise FormatError("PCK certificate: no SGX extension (1.2.840.113741.1.13.1)") from None
    except X509_ERRORS as exc:
        raise FormatError(f"PCK certificate: unreadable extensions ({exc})") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - unknown OID
        raise FormatError("PCK certificate: SGX extension has an unexpected type")
    return value.value


def parse_pck_extension(cert: x509.Certificate) -> PckExtension:
    """The SGX extension of a PCK leaf certificate."""
    return parse_pck_extension_der(_sgx_extension_value(cert))


# --------------------------------------------------------------------------- encoding


def _pair(oid: str, value: univ.Asn1Item) -> _Pair:
    pair = _Pair()
    pair["id"] = univ.ObjectIdentifier(oid)
    pair["value"] = univ.Any(encoder.encode(value))
    return pair


def _seq(pairs: list[_Pair]) -> _Pairs:
    seq = _Pairs()
    for i, pair in enumerate(pairs):
        seq[i] = pair
    return seq


def build_pck_extension(ext: PckExtension) -> bytes:
    """DER of the extension value, in Intel's element order (so real certs re-encode exactly)."""
    tcb = [_pair(f"{_TCB}.{i + 1}", univ.Integer(c)) for i, c in enumerate(ext.tcb_components)]
    tcb.append(_pair(_PCESVN, univ.Integer(ext.pce_svn)))
    tcb.append(_pair(_CPUSVN, univ.OctetString(ext.cpu_svn)))
    top = [
        _pair(_PPID, univ.OctetString(ext.ppid)),
        _pair(_TCB, _seq(tcb)),
        _pair(_PCE_ID, univ.OctetString(ext.pce_id)),
        _pair(_FMSPC, univ.OctetString(ext.fmspc)),
        _pair(_SGX_TYPE, univ.Enumerated(ext.sgx_type)),
    ]
    if ext.platform_instance_id is not None:
        top.append(_pair(_PLATFORM_INSTANCE_ID, univ.OctetString(ext.platform_instance_id)))
    if ext.configuration is not None:
        conf = ext.configuration
        flags = [
            _pair(oid, univ.Boolean(value))
            for oid, value in (
                (_CONF_DYNAMIC, conf.dynamic_platform),
                (_CONF_CACHED, conf.cached_keys),
                (_CONF_SMT, conf.smt_enabled),
            )
            if value is not None
        ]
        top.append(_pair(_CONFIGURATION, _seq(flags)))
    return bytes(encoder.encode(_seq(top)))


# --------------------------------------------------------------------------- issuer kind


def pck_ca_kind(cert: x509.Certificate) -> str:
    """ "processor" or "platform": which PCK CA issued `cert` (picks the PCK CRL to use).

    Decided on the issuer CN, as Intel's PCS does (`ca=processor|platform`); a simulated CA
    names itself "... Platform CA" too.
    """
    try:
        names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    except X509_ERRORS as exc:
        raise FormatError(f"PCK certificate issuer: unreadable ({exc})") from None
    cn = str(names[0].value) if names else ""
    if cn.endswith("Processor CA"):
        return "processor"
    if cn.endswith("Platform CA"):
        return "platform"
    raise FormatError(f"PCK certificate issuer CN {cn!r} is neither a Processor nor Platform CA")
