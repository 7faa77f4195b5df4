"""Issue 17 defect 9: the parsers raise only typed errors. Fuzzing found `cryptography`'s
`InvalidVersion` and `DuplicateExtension` (not ValueErrors) escaping the quote parser and the
collateral parser; here both are provoked on real certificates re-encoded by hand."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import AttestationError, CollateralError, FormatError
from enclave_kms.sgx.pck import parse_pck_extension
from enclave_kms.sgx.quote import parse_quote
from tests.attestation.test_verify_vectors import INTEL, phala_sgx


def _children(der: bytes) -> list[bytes]:
    """The complete child TLVs of the constructed element `der`."""
    out, pos = [], _header(der, 0)[1]
    while pos < len(der):
        _tag, _start, end = _header(der, pos)
        out.append(der[pos:end])
        pos = end
    return out


def _header(der: bytes, pos: int) -> tuple[int, int, int]:
    first = der[pos + 1]
    if first < 0x80:
        return der[pos], pos + 2, pos + 2 + first
    n = first & 0x7F
    length = int.from_bytes(der[pos + 2 : pos + 2 + n], "big")
    return der[pos], pos + 2 + n, pos + 2 + n + length


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def _with_version(der: bytes, version: int) -> bytes:
    cert = _children(der)
    tbs = _children(cert[0])
    assert tbs[0] == bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (v3)
    tbs[0] = bytes.fromhex("a0030201") + bytes([version])
    return _tlv(0x30, _tlv(0x30, b"".join(tbs)) + cert[1] + cert[2])


def _with_duplicate_extension(der: bytes) -> bytes:
    cert = _children(der)
    tbs = _children(cert[0])
    assert tbs[-1][0] == 0xA3
    inner = _children(_children(tbs[-1])[0])  # [3] { SEQUENCE OF Extension }
    doubled = _tlv(0xA3, _tlv(0x30, b"".join([inner[0], *inner])))
    return _tlv(0x30, _tlv(0x30, b"".join([*tbs[:-1], doubled])) + cert[1] + cert[2])


def _phala(sgx_testdata: Path) -> tuple[bytes, dict[str, str]]:
    d = sgx_testdata / "phala-dcap-qvl"
    return (d / "sgx_quote").read_bytes(), json.loads((d / "sgx_quote_collateral.json").read_text())


def test_the_re_encodings_provoke_the_untyped_errors(sgx_testdata: Path) -> None:
    quote, _ = _phala(sgx_testdata)
    leaf = parse_quote(quote).pck_certificates()[0].public_bytes(Encoding.DER)
    with pytest.raises(x509.InvalidVersion):
        x509.load_der_x509_certificate(_with_version(leaf, 5))
    duplicate = x509.load_der_x509_certificate(_with_duplicate_extension(leaf))
    with pytest.raises(x509.DuplicateExtension):
        _ = duplicate.extensions
    with pytest.raises(FormatError):
        parse_pck_extension(duplicate)


def _pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("damage", ["version", "duplicate"])
def test_collateral_with_such_a_certificate_is_a_collateral_error(
    sgx_testdata: Path, damage: str
) -> None:
    _, doc = _phala(sgx_testdata)
    first = re.search(
        r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----\n?",
        doc["tcb_info_issuer_chain"],
        re.S,
    )
    assert first is not None
    der = base64.b64decode("".join(first.group(1).split()))
    bad = _with_version(der, 5) if damage == "version" else _with_duplicate_extension(der)
    doc["tcb_info_issuer_chain"] = doc["tcb_info_issuer_chain"].replace(first.group(0), _pem(bad))
    try:
        collateral = load_collateral(json.dumps(doc).encode())
    except CollateralError:
        return  # refused at load: typed
    # Loaded (a duplicate extension is only seen when read): verification must refuse typed.
    v = phala_sgx(sgx_testdata)
    with pytest.raises(AttestationError):
        verify_quote(v.quote, collateral, trust_root=INTEL, now=v.now, second_opinion=False)


def test_a_quote_carrying_such_a_certificate_is_a_format_error(sgx_testdata: Path) -> None:
    quote, _ = _phala(sgx_testdata)
    parsed = parse_quote(quote)
    leaf = parsed.pck_certificates()[0].public_bytes(Encoding.DER)
    old_b64 = base64.b64encode(leaf)
    new_b64 = base64.b64encode(_with_version(leaf, 5))
    assert len(old_b64) == len(new_b64)  # same DER length: the quote's sizes still hold
    body = re.search(rb"-----BEGIN CERTIFICATE-----\n(.*?)-----END", quote, re.S)
    assert body is not None
    flat = b"".join(body.group(1).split())
    assert flat == old_b64
    width = len(body.group(1).split(b"\n")[0])
    wrapped = b"\n".join(new_b64[i : i + width] for i in range(0, len(new_b64), width))
    tail = body.group(1)[len(body.group(1).rstrip(b"\n")) :]
    bad = quote[: body.start(1)] + wrapped + tail + quote[body.end(1) :]
    assert len(bad) == len(quote)
    with pytest.raises(FormatError):
        parse_quote(bad).pck_certificates()
