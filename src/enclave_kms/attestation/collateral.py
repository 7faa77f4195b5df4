"""Collateral loaders: every shape real collateral comes in, into one `Collateral`.

Shapes: dcap-qvl's `QuoteCollateralV3` JSON, Intel PCS/PCCS responses (`{"tcbInfo":{…},
"signature":"hex"}` bodies plus URL-encoded issuer-chain headers), loose files (PEM chains,
PEM or DER CRLs) and Open Enclave endorsements blobs. The signed TCB Info / QE Identity bytes
are always cut out of the body text as they were received, never re-serialised, because the
signature covers exactly those bytes.

Nothing here verifies a signature or a chain (that is `verify.py`); loaders only check that
every part is well-formed, so a broken file fails here with a message naming the part.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_kms.attestation.tcb_info import (
    EnclaveIdentity,
    TcbInfo,
    parse_date,
    strict_json_decoder,
    strict_json_loads,
)
from enclave_kms.attestation.types import Collateral
from enclave_kms.errors import CollateralError, FormatError
from enclave_kms.sgx.pck import X509_ERRORS

DCAP_QVL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
SIGNATURE_SIZE = 64  # raw ECDSA P-256 r || s

_HEX_RE = re.compile(r"[0-9A-Fa-f]*\Z", re.ASCII)
_PEM_CRL = b"-----BEGIN X509 CRL-----"
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"

# --------------------------------------------------------------------------- building blocks


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _hex_field(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not _HEX_RE.match(value) or len(value) % 2:
        raise CollateralError(f"{what}: expected a hex string")
    return bytes.fromhex(value)


def _signature(raw: bytes, what: str) -> bytes:
    if len(raw) != SIGNATURE_SIZE:
        raise CollateralError(f"{what}: expected {SIGNATURE_SIZE} bytes, got {len(raw)}")
    return raw


def extract_signed_object(body: bytes, key: str, *, what: str) -> tuple[bytes, bytes]:
    """Split a PCS body `{"<key>":{…},"signature":"hex"}` into (exact inner bytes, signature).

    The inner object is located with the JSON decoder's own positions, so the returned bytes
    are a verbatim slice of `body` (whitespace and key order as signed)."""
    try:
        text = bytes(body).decode("utf-8")
    except (UnicodeDecodeError, TypeError):
        raise CollateralError(f"{what}: not UTF-8 JSON") from None
    decoder = strict_json_decoder()
    members: dict[str, tuple[Any, int, int]] = {}
    try:
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("expected a JSON object")
        pos = _skip_ws(text, pos + 1)
        if text[pos : pos + 1] == "}":
            pos += 1
        else:
            while True:
                if text[pos : pos + 1] != '"':
                    raise ValueError("expected a member name")
                name, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
                pos = _skip_ws(text, pos)
                if text[pos : pos + 1] != ":":
                    raise ValueError("expected ':'")
                start = _skip_ws(text, pos + 1)
                value, end = decoder.raw_decode(text, start)
                if name in members:
                    raise ValueError(f"duplicate key {name!r}")
                members[name] = (value, start, end)
                pos = _skip_ws(text, end)
                if text[pos : pos + 1] == ",":
                    pos = _skip_ws(text, pos + 1)
                    continue
                if text[pos : pos + 1] != "}":
                    raise ValueError("expected ',' or '}'")
                pos += 1
                break
        if _skip_ws(text, pos) != len(text):
            raise ValueError("trailing data after the object")
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise CollateralError(f"{what}: not a PCS response body ({reason})") from None
    for name in members:
        if name not in (key, "signature"):
            raise CollateralError(f"{what}: unexpected member {name[:40]!r}")
    if key not in members or "signature" not in members:
        raise CollateralError(f"{what}: expected members {key!r} and 'signature'")
    inner, start, end = members[key]
    if not isinstance(inner, dict):
        raise CollateralError(f"{what}.{key}: expected a JSON object")
    signature = _signature(
        _hex_field(members["signature"][0], f"{what}.signature"), f"{what}.signature"
    )
    return text[start:end].encode("utf-8"), signature


def decode_issuer_chain(value: str | bytes, *, what: str) -> bytes:
    """PEM chain from a PCS issuer-chain header (URL-encoded) or from a file (plain PEM)."""
    try:
        raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    except UnicodeEncodeError:
        raise CollateralError(f"{what}: not an issuer chain") from None
    raw = raw.rstrip(b"\x00")
    if _PEM_CERT not in raw:
        try:
            raw = urllib.parse.unquote_to_bytes(raw.strip())
        except (ValueError, TypeError):
            raise CollateralError(f"{what}: not an issuer chain") from None
    return check_chain(raw, what=what)


def check_chain(pem: bytes, *, what: str) -> bytes:
    """Check that `pem` is one or more PEM certificates and nothing else; returns it unchanged."""
    try:
        text = pem.decode("ascii")
        certs = x509.load_pem_x509_certificates(pem)
    except X509_ERRORS:  # not only ValueError: InvalidVersion, DuplicateExtension, …
        raise CollateralError(f"{what}: not a PEM certificate chain") from None
    if not certs or text.count("-----BEGIN CERTIFICATE-----") != len(certs):
        raise CollateralError(f"{what}: not a PEM certificate chain")
    return pem


def _der_length(data: bytes) -> int | None:
    """Total length of the leading DER TLV, or None if the header is not a SEQUENCE."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    first = data[1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) < 2 + count:
        return None
    return 2 + count + int.from_bytes(data[2 : 2 + count], "big")


def normalize_crl(data: bytes, *, what: str) -> bytes:
    """A CRL as DER, from DER, PEM or hex-encoded DER (each optionally NUL-terminated, as Open
    Enclave and older PCCS versions store them)."""
    raw = bytes(data)
    stripped = raw.strip(b" \t\r\n")
    try:
        if stripped.startswith(_PEM_CRL):
            pem = stripped.rstrip(b"\x00").strip()
            if pem.count(b"-----BEGIN") != 1:
                raise ValueError("more than one PEM block")
            return x509.load_pem_x509_crl(pem).public_bytes(Encoding.DER)
        text = stripped.rstrip(b"\x00")
        if text[:2] == b"30" and _HEX_RE.match(text.decode("ascii", "replace")):
            raw = bytes.fromhex(text.decode("ascii"))
        total = _der_length(raw)
        if total is None or total > len(raw) or raw[total:].strip(b"\x00"):
            raise ValueError("not a single DER structure")
        der = raw[:total]
        x509.load_der_x509_crl(der)
    except X509_ERRORS:
        raise CollateralError(f"{what}: not a CRL (DER, PEM or hex)") from None
    return der


def _crl_next_update(der: bytes) -> datetime | None:
    return x509.load_der_x509_crl(der).next_update_utc


def check_collateral(c: Collateral) -> Collateral:
    """Check every part of `c` is well-formed (not that it verifies); returns `c`."""
    try:
        TcbInfo.parse(c.tcb_info)
        EnclaveIdentity.parse(c.qe_identity)
    except FormatError as exc:
        raise CollateralError(f"collateral: {exc.message}") from None
    _signature(c.tcb_info_signature, "tcb_info_signature")
    _signature(c.qe_identity_signature, "qe_identity_signature")
    check_chain(c.tcb_info_issuer_chain, what="tcb_info_issuer_chain")
    check_chain(c.qe_identity_issuer_chain, what="qe_identity_issuer_chain")
    check_chain(c.pck_crl_issuer_chain, what="pck_crl_issuer_chain")
    for name, der in (("root_ca_crl", c.root_ca_crl), ("pck_crl", c.pck_crl)):
        if normalize_crl(der, what=name) != der:
            raise CollateralError(f"{name}: expected DER")
    return c


def collateral_expiry(c: Collateral) -> datetime:
    """Earliest nextUpdate among TCB Info, QE Identity and both CRLs: when to fetch again."""
    try:
        dates = [
            TcbInfo.parse(c.tcb_info).next_update,
            EnclaveIdentity.parse(c.qe_identity).next_update,
        ]
        for name, der in (("root_ca_crl", c.root_ca_crl), ("pck_crl", c.pck_crl)):
            try:
                next_update = _crl_next_update(der)
            except ValueError:
                raise CollateralError(f"{name}: not a DER CRL") from None
            if next_update is not None:
                dates.append(next_update)
    except FormatError as exc:
        raise CollateralError(f"collateral: {exc.message}") from None
    return min(dates)


# --------------------------------------------------------------------------- PCS / loose files


def from_pcs_responses(
    *,
    tcb_info_body: bytes,
    tcb_info_issuer_chain: str | bytes,
    qe_identity_body: bytes,
    qe_identity_issuer_chain: str | bytes,
    pck_crl: bytes,
    pck_crl_issuer_chain: str | bytes,
    root_ca_crl: bytes,
) -> Collateral:
    """Collateral from Intel PCS/PCCS responses: the bodies as received, the issuer chains as
    the `TCB-Info-Issuer-Chain`, `SGX-Enclave-Identity-Issuer-Chain` and
    `SGX-PCK-CRL-Issuer-Chain` header values (URL-encoded) or plain PEM, CRLs DER/PEM/hex."""
    tcb_info, tcb_sig = extract_signed_object(tcb_info_body, "tcbInfo", what="tcb info response")
    qe_identity, qe_sig = extract_signed_object(
        qe_identity_body, "enclaveIdentity", what="qe identity response"
    )
    return check_collateral(
        Collateral(
            pck_crl_issuer_chain=decode_issuer_chain(
                pck_crl_issuer_chain, what="pck_crl_issuer_chain"
            ),
            root_ca_crl=normalize_crl(root_ca_crl, what="root_ca_crl"),
            pck_crl=normalize_crl(pck_crl, what="pck_crl"),
            tcb_info_issuer_chain=decode_issuer_chain(
                tcb_info_issuer_chain, what="tcb_info_issuer_chain"
            ),
            tcb_info=tcb_info,
            tcb_info_signature=tcb_sig,
            qe_identity_issuer_chain=decode_issuer_chain(
                qe_identity_issuer_chain, what="qe_identity_issuer_chain"
            ),
            qe_identity=qe_identity,
            qe_identity_signature=qe_sig,
        )
    )


def collateral_from_parts(  # noqa: PLR0917 - positional order is the published contract
    tcb_info_body: bytes,
    qe_identity_body: bytes,
    tcb_signing_chain_pem: bytes,
    root_ca_crl: bytes,
    pck_crl: bytes,
    pck_crl_issuer_chain_pem: bytes,
) -> Collateral:
    """Collateral from loose files (mobilecoin/automata/Intel sample layout): PCS bodies, one
    TCB-signing chain for both documents, and the two CRLs."""
    return from_pcs_responses(
        tcb_info_body=tcb_info_body,
        tcb_info_issuer_chain=tcb_signing_chain_pem,
        qe_identity_body=qe_identity_body,
        qe_identity_issuer_chain=tcb_signing_chain_pem,
        pck_crl=pck_crl,
        pck_crl_issuer_chain=pck_crl_issuer_chain_pem,
        root_ca_crl=root_ca_crl,
    )


# --------------------------------------------------------------------------- dcap-qvl JSON


def load_dcap_qvl_json(data: bytes) -> Collateral:
    """dcap-qvl `QuoteCollateralV3` JSON: PEM chains, hex CRLs and signatures, and the signed
    TCB Info / QE Identity as JSON strings. Unknown members (e.g. dcap-qvl's optional
    `pck_certificate_chain`) are ignored: this container is not signed."""
    root = strict_json_loads(data, "dcap-qvl collateral", CollateralError)
    if not isinstance(root, dict):
        raise CollateralError("dcap-qvl collateral: expected a JSON object")
    for name in DCAP_QVL_FIELDS:
        if name not in root:
            raise CollateralError(f"dcap-qvl collateral: {name} missing")
        if not isinstance(root[name], str):
            raise CollateralError(f"dcap-qvl collateral: {name} is not a string")

    def text(name: str) -> bytes:
        return str(root[name]).encode("utf-8", "surrogatepass")

    try:
        collateral = Collateral(
            pck_crl_issuer_chain=text("pck_crl_issuer_chain"),
            root_ca_crl=_hex_field(root["root_ca_crl"], "root_ca_crl"),
            pck_crl=_hex_field(root["pck_crl"], "pck_crl"),
            tcb_info_issuer_chain=text("tcb_info_issuer_chain"),
            tcb_info=text("tcb_info"),
            tcb_info_signature=_hex_field(root["tcb_info_signature"], "tcb_info_signature"),
            qe_identity_issuer_chain=text("qe_identity_issuer_chain"),
            qe_identity=text("qe_identity"),
            qe_identity_signature=_hex_field(
                root["qe_identity_signature"], "qe_identity_signature"
            ),
        )
    except UnicodeError:
        raise CollateralError("dcap-qvl collateral: invalid string") from None
    return check_collateral(collateral)


def collateral_to_json(c: Collateral) -> bytes:
    """dcap-qvl's JSON shape (what `QuoteCollateralV3.from_json` reads and `to_json` writes)."""
    try:
        doc = {
            "pck_crl_issuer_chain": c.pck_crl_issuer_chain.decode("utf-8"),
            "root_ca_crl": c.root_ca_crl.hex(),
            "pck_crl": c.pck_crl.hex(),
            "tcb_info_issuer_chain": c.tcb_info_issuer_chain.decode("utf-8"),
            "tcb_info": c.tcb_info.decode("utf-8"),
            "tcb_info_signature": c.tcb_info_signature.hex(),
            "qe_identity_issuer_chain": c.qe_identity_issuer_chain.decode("utf-8"),
            "qe_identity": c.qe_identity.decode("utf-8"),
            "qe_identity_signature": c.qe_identity_signature.hex(),
        }
    except UnicodeDecodeError:
        raise CollateralError("collateral: a text part is not UTF-8") from None
    return json.dumps(doc, indent=2).encode("ascii")


def to_dcap_qvl(c: Collateral) -> Any:
    """The same collateral as a `dcap_qvl.QuoteCollateralV3` (for the second opinion)."""
    import dcap_qvl  # imported here: only the second-opinion path needs the native module

    try:
        return dcap_qvl.QuoteCollateralV3(
            pck_crl_issuer_chain=c.pck_crl_issuer_chain.decode("utf-8"),
            root_ca_crl=c.root_ca_crl,
            pck_crl=c.pck_crl,
            tcb_info_issuer_chain=c.tcb_info_issuer_chain.decode("utf-8"),
            tcb_info=c.tcb_info.decode("utf-8"),
            tcb_info_signature=c.tcb_info_signature,
            qe_identity_issuer_chain=c.qe_identity_issuer_chain.decode("utf-8"),
            qe_identity=c.qe_identity.decode("utf-8"),
            qe_identity_signature=c.qe_identity_signature,
        )
    except (UnicodeDecodeError, ValueError, TypeError):
        raise CollateralError("collateral: dcap-qvl does not accept it") from None


# --------------------------------------------------------------------------- Open Enclave

OE_ENDORSEMENTS_VERSION = 1
OE_ENCLAVE_TYPE_SGX = 2
OE_SGX_ENDORSEMENTS_VERSION = 1
OE_SGX_ENDORSEMENT_COUNT = 9
_OE_HEADER = struct.Struct("<4I")


@dataclass(frozen=True)
class OeEndorsements:
    """Open Enclave SGX endorsements (`oe_endorsements_t`, common/sgx/endorsements.c).

    Layout: u32 version=1, u32 enclave_type=2 (SGX), u32 buffer_size, u32 num_elements=9, then
    `buffer_size` bytes: 9 u32 offsets relative to the data area that follows them, and the
    data area. Items in order: u32 SGX endorsements version (1), TCB Info PCS body, its issuer
    chain (PEM), PCK CRL, root CA CRL, PCK CRL issuer chain (PEM), QE Identity PCS body, its
    issuer chain (PEM), creation time (RFC 3339). Text items are NUL-terminated; CRLs are
    DER (or PEM / hex DER from older providers), sometimes NUL-terminated."""

    collateral: Collateral
    creation_datetime: datetime

    @classmethod
    def parse(cls, data: bytes) -> OeEndorsements:
        data = bytes(data)
        if len(data) < _OE_HEADER.size:
            raise CollateralError("oe endorsements: truncated header")
        version, enclave_type, buffer_size, count = _OE_HEADER.unpack_from(data)
        if version != OE_ENDORSEMENTS_VERSION or enclave_type != OE_ENCLAVE_TYPE_SGX:
            raise CollateralError(
                f"oe endorsements: version {version} / enclave type {enclave_type} is not SGX v1"
            )
        if count != OE_SGX_ENDORSEMENT_COUNT:
            raise CollateralError(f"oe endorsements: {count} elements, expected 9")
        offsets_size = 4 * count
        if buffer_size != len(data) - _OE_HEADER.size or buffer_size <= offsets_size:
            raise CollateralError("oe endorsements: buffer_size does not match the data")
        offsets = struct.unpack_from(f"<{count}I", data, _OE_HEADER.size)
        area = data[_OE_HEADER.size + offsets_size :]
        bounds = (*offsets, len(area))
        if offsets[0] != 0 or any(a > b for a, b in itertools.pairwise(bounds)):
            raise CollateralError("oe endorsements: element offsets out of order or range")
        items = [area[bounds[i] : bounds[i + 1]] for i in range(count)]
        if items[0] != struct.pack("<I", OE_SGX_ENDORSEMENTS_VERSION):
            raise CollateralError("oe endorsements: unsupported SGX endorsements version")
        created_text = items[8].rstrip(b"\x00")
        try:
            created = parse_date(created_text.decode("ascii"), "oe endorsements creation time")
        except (UnicodeDecodeError, FormatError):
            raise CollateralError("oe endorsements: bad creation time") from None
        collateral = from_pcs_responses(
            tcb_info_body=items[1].rstrip(b"\x00"),
            tcb_info_issuer_chain=items[2],
            pck_crl=items[3],
            root_ca_crl=items[4],
            pck_crl_issuer_chain=items[5],
            qe_identity_body=items[6].rstrip(b"\x00"),
            qe_identity_issuer_chain=items[7],
        )
        return cls(collateral, created)


# --------------------------------------------------------------------------- auto-detection


def load_collateral(data: bytes) -> Collateral:
    """Load collateral in any whole-collateral format: dcap-qvl JSON or an Open Enclave
    endorsements blob (PCS parts come separately: see `from_pcs_responses`)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CollateralError("collateral: expected bytes")
    data = bytes(data)
    if data[:8] == struct.pack("<2I", OE_ENDORSEMENTS_VERSION, OE_ENCLAVE_TYPE_SGX):
        return OeEndorsements.parse(data).collateral
    if data.lstrip(b" \t\r\n")[:1] == b"{":
        root = strict_json_loads(data, "collateral", CollateralError)
        if isinstance(root, dict) and "tcb_info" in root:
            return load_dcap_qvl_json(data)
        if isinstance(root, dict) and ("tcbInfo" in root or "enclaveIdentity" in root):
            raise CollateralError(
                "collateral: a single PCS response is not complete collateral (needs CRLs, chains)"
            )
        raise CollateralError("collateral: unrecognised JSON collateral")
    raise CollateralError(
        "collateral: unrecognised format (expected dcap-qvl JSON or OE endorsements)"
    )
