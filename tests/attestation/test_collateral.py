"""Collateral loaders on every real collateral set: dcap-qvl JSON, OE endorsements, PCS parts.

The loaders verify nothing, so to prove that the signed TCB Info / QE Identity bytes were cut
out exactly, these tests check the Intel signature over them with `cryptography` directly.
"""

from __future__ import annotations

import json
import struct
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.attestation.collateral import (
    OeEndorsements,
    check_collateral,
    collateral_expiry,
    collateral_from_parts,
    collateral_to_json,
    decode_issuer_chain,
    extract_signed_object,
    from_pcs_responses,
    load_collateral,
    load_dcap_qvl_json,
    normalize_crl,
    to_dcap_qvl,
)
from enclave_kms.attestation.tcb_info import EnclaveIdentity, TcbInfo
from enclave_kms.attestation.types import Collateral
from enclave_kms.errors import CollateralError, EnclaveKMSError

PHALA = [
    "sgx_quote_collateral.json",
    "tdx_quote_collateral.json",
    "tdx_quote_outdated_collateral.json",
]


def _assert_signed(chain_pem: bytes, data: bytes, signature: bytes) -> None:
    """The first certificate of `chain_pem` signed `data` (raw r||s ECDSA-P256-SHA256)."""
    key = x509.load_pem_x509_certificates(chain_pem)[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    key.verify(der, data, ec.ECDSA(hashes.SHA256()))


def _assert_collateral_signed(c: Collateral) -> None:
    _assert_signed(c.tcb_info_issuer_chain, c.tcb_info, c.tcb_info_signature)
    _assert_signed(c.qe_identity_issuer_chain, c.qe_identity, c.qe_identity_signature)


def _crl_issuer(der: bytes) -> str:
    return x509.load_der_x509_crl(der).issuer.rfc4514_string()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def _oe_blob(root: Path) -> bytes:
    """The endorsements test file is two `# ...` licence lines, then the raw binary blob."""
    raw = (root / "openenclave-tests" / "endorsements").read_bytes()
    first, second, blob = raw.split(b"\n", 2)
    assert first.startswith(b"# ")
    assert second.startswith(b"# ")
    return blob


# --------------------------------------------------------------------------- dcap-qvl JSON


@pytest.mark.parametrize("name", PHALA)
def test_phala_json_loads_and_matches_the_file(sgx_testdata: Path, name: str) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / name).read_bytes()
    doc = json.loads(raw)
    c = load_collateral(raw)
    assert c == load_dcap_qvl_json(raw)
    assert c.tcb_info == doc["tcb_info"].encode()
    assert c.qe_identity == doc["qe_identity"].encode()
    assert c.root_ca_crl == bytes.fromhex(doc["root_ca_crl"])
    assert c.pck_crl == bytes.fromhex(doc["pck_crl"])
    assert c.pck_crl_issuer_chain == doc["pck_crl_issuer_chain"].encode()
    assert len(c.tcb_info_signature) == len(c.qe_identity_signature) == 64
    assert "Root CA" in _crl_issuer(c.root_ca_crl)
    _assert_collateral_signed(c)


@pytest.mark.parametrize("name", PHALA)
def test_collateral_to_json_is_read_by_dcap_qvl(sgx_testdata: Path, name: str) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / name).read_bytes()
    c = load_collateral(raw)
    out = collateral_to_json(c)
    assert load_collateral(out) == c
    theirs = dcap_qvl.QuoteCollateralV3.from_json(out.decode())
    ours = to_dcap_qvl(c)
    for obj in (theirs, ours):
        assert obj.tcb_info == c.tcb_info.decode()
        assert obj.qe_identity == c.qe_identity.decode()
        assert bytes(obj.pck_crl) == c.pck_crl
        assert bytes(obj.root_ca_crl) == c.root_ca_crl
        assert bytes(obj.tcb_info_signature) == c.tcb_info_signature
        assert bytes(obj.qe_identity_signature) == c.qe_identity_signature
        assert obj.pck_crl_issuer_chain == c.pck_crl_issuer_chain.decode()
    # dcap-qvl writes the same pretty JSON it was given, and so do we.
    assert out.decode() == theirs.to_json()
    if name != "tdx_quote_outdated_collateral.json":  # that one file is stored compact
        assert out == raw


def test_dcap_qvl_verifies_with_our_collateral(sgx_testdata: Path) -> None:
    """End to end: the collateral object we hand dcap-qvl is the one it needs."""
    quote = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()
    c = load_collateral(
        (sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes()
    )
    report = dcap_qvl.verify(quote, to_dcap_qvl(c), 1752919277)
    assert report.status == "ConfigurationAndSWHardeningNeeded"
    assert list(report.advisory_ids) == ["INTEL-SA-00289", "INTEL-SA-00615"]


@pytest.mark.parametrize(
    ("name", "expiry"),
    [
        ("sgx_quote_collateral.json", "2025-07-19T10:01:18Z"),  # QE identity nextUpdate
        ("tdx_quote_collateral.json", "2025-07-19T10:00:35Z"),  # PCK CRL nextUpdate
        ("tdx_quote_outdated_collateral.json", "2026-03-20T10:41:15Z"),  # PCK CRL nextUpdate
    ],
)
def test_collateral_expiry_is_the_earliest_next_update(
    sgx_testdata: Path, name: str, expiry: str
) -> None:
    c = load_collateral((sgx_testdata / "phala-dcap-qvl" / name).read_bytes())
    expected = datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert collateral_expiry(c) == expected


def test_dcap_qvl_json_ignores_unknown_members_but_needs_all_nine(sgx_testdata: Path) -> None:
    doc = json.loads((sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes())
    doc["pck_certificate_chain"] = "-----BEGIN CERTIFICATE-----"
    assert load_collateral(json.dumps(doc).encode()).tcb_info == doc["tcb_info"].encode()
    for key in ("pck_crl", "qe_identity_signature", "tcb_info_issuer_chain"):
        broken = dict(doc)
        del broken[key]
        with pytest.raises(CollateralError, match=f"{key} missing"):
            load_collateral(json.dumps(broken).encode())


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("root_ca_crl", "zz", "root_ca_crl: expected a hex string"),
        ("pck_crl", "3082", "pck_crl: not a CRL"),
        ("tcb_info_signature", "00" * 63, "tcb_info_signature: expected 64 bytes"),
        ("qe_identity_signature", 5, "qe_identity_signature is not a string"),
        ("tcb_info", "{}", "tcbInfo.version: missing"),
        ("qe_identity", '{"version":3}', "enclaveIdentity.version: unsupported"),
        ("pck_crl_issuer_chain", "hello", "pck_crl_issuer_chain: not a PEM"),
        ("tcb_info_issuer_chain", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         "tcb_info_issuer_chain: not a PEM"),
    ],
)  # fmt: skip
def test_dcap_qvl_json_bad_parts_are_named(
    sgx_testdata: Path, key: str, value: object, needle: str
) -> None:
    doc = json.loads((sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes())
    doc[key] = value
    with pytest.raises(CollateralError) as info:
        load_collateral(json.dumps(doc).encode())
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- OE endorsements


def test_oe_endorsements_blob(sgx_testdata: Path) -> None:
    blob = _oe_blob(sgx_testdata)
    assert struct.unpack_from("<4I", blob) == (1, 2, len(blob) - 16, 9)
    endorsements = OeEndorsements.parse(blob)
    assert endorsements.creation_datetime == datetime(2022, 4, 26, 23, 43, 10, tzinfo=UTC)
    c = endorsements.collateral
    assert load_collateral(blob) == c
    info = TcbInfo.parse(c.tcb_info)
    assert (info.version, info.fmspc.hex().upper(), info.tcb_evaluation_data_number) == (
        2,
        "00906ED50000",
        12,
    )
    assert EnclaveIdentity.parse(c.qe_identity).id == "QE"
    assert "Intel SGX PCK Processor CA" in _crl_issuer(c.pck_crl)
    assert "Intel SGX Root CA" in _crl_issuer(c.root_ca_crl)
    assert len(x509.load_pem_x509_certificates(c.tcb_info_issuer_chain)) == 2
    assert len(x509.load_pem_x509_certificates(c.pck_crl_issuer_chain)) == 2
    assert not c.tcb_info_issuer_chain.endswith(b"\x00")
    _assert_collateral_signed(c)
    # Items 3 and 4 are the PCK CRL (bare DER) and the root CRL (DER + NUL terminator).
    offsets = struct.unpack_from("<9I", blob, 16)
    area = blob[52:]
    assert area[offsets[3] : offsets[4]] == c.pck_crl
    assert area[offsets[4] : offsets[5]] == c.root_ca_crl + b"\x00"


def test_oe_endorsements_still_has_its_comment_lines_in_the_test_file(sgx_testdata: Path) -> None:
    with pytest.raises(CollateralError, match="unrecognised format"):
        load_collateral((sgx_testdata / "openenclave-tests" / "endorsements").read_bytes())


def _patched(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<I", value) + blob[offset + 4 :]


@pytest.mark.parametrize(
    ("offset", "value", "needle"),
    [
        (0, 2, "not SGX v1"),
        (4, 3, "not SGX v1"),
        (8, 100, "buffer_size"),
        (12, 8, "8 elements"),
        (16, 4, "offsets"),  # first offset must be 0
        (20 + 4 * 3, 1, "offsets"),  # an offset going backwards
        (16 + 4 * 8, 0xFFFF_FFF0, "offsets"),  # beyond the data area
        (52, 2, "SGX endorsements version"),
    ],
)
def test_oe_endorsements_header_mutations(
    sgx_testdata: Path, offset: int, value: int, needle: str
) -> None:
    blob = _patched(_oe_blob(sgx_testdata), offset, value)
    with pytest.raises(CollateralError, match=needle):
        OeEndorsements.parse(blob)


def test_oe_endorsements_truncated(sgx_testdata: Path) -> None:
    blob = _oe_blob(sgx_testdata)
    for size in (0, 3, 15, 16, 51, 60, len(blob) - 1):
        with pytest.raises(CollateralError):
            OeEndorsements.parse(blob[:size])


# --------------------------------------------------------------------------- PCS parts


def test_mobilecoin_parts(sgx_testdata: Path) -> None:
    d = sgx_testdata / "mobilecoin-attestation"
    root = (d / "root_ca.pem").read_bytes()
    c = collateral_from_parts(
        (d / "fmspc_00906ED50000_2023_07_12.json").read_bytes(),
        (d / "qe_identity.json").read_bytes(),
        (d / "tcb_signer.pem").read_bytes() + root,
        (d / "root_crl.der").read_bytes(),
        (d / "processor_crl.der").read_bytes(),
        (d / "processor_ca.pem").read_bytes() + root,
    )
    assert TcbInfo.parse(c.tcb_info).fmspc.hex().upper() == "00906ED50000"
    assert c.pck_crl == (d / "processor_crl.der").read_bytes()
    assert c.root_ca_crl == (d / "root_crl.der").read_bytes()
    _assert_collateral_signed(c)
    # the stale PCK CRL (SOURCES.md caveat) makes the whole set expire on 2023-05-21
    assert collateral_expiry(c) == datetime(2023, 5, 21, 22, 0, 36, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tcb", "qe", "tee"),
    [
        ("tcbinfov2.json", "qeidentityv2.json", "SGX"),
        ("tcbinfov3_00806f050000.json", "qeidentityv2_apiv4.json", "TDX"),
    ],
)
def test_automata_parts(sgx_testdata: Path, tcb: str, qe: str, tee: str) -> None:
    d = sgx_testdata / "automata-dcap-rs"
    pck_chain = x509.load_pem_x509_certificates((d / "pck_certchain.pem").read_bytes())
    c = collateral_from_parts(
        (d / tcb).read_bytes(),
        (d / qe).read_bytes(),
        (d / "tcb_signing_cert.pem").read_bytes(),
        (d / "intel_root_ca_crl.der").read_bytes(),
        (d / "pck_platform_crl.der").read_bytes(),
        _pem(pck_chain[1]) + _pem(pck_chain[2]),
    )
    assert TcbInfo.parse(c.tcb_info).id == tee
    assert "Platform CA" in _crl_issuer(c.pck_crl)
    _assert_collateral_signed(c)


def test_go_tdx_guest_parts(sgx_testdata: Path) -> None:
    d = sgx_testdata / "google-go-tdx-guest"
    root = (d / "trusted_root.pem").read_bytes()
    platform_ca = x509.load_pem_x509_certificates(
        (sgx_testdata / "automata-dcap-rs" / "pck_certchain.pem").read_bytes()
    )[1]
    signer = (sgx_testdata / "mobilecoin-attestation" / "tcb_signer.pem").read_bytes()
    c = collateral_from_parts(
        (d / "sample_tcbInfo_response").read_bytes(),
        (d / "sample_qeIdentity_response").read_bytes(),
        signer + root,
        (d / "rootcrl.der").read_bytes(),
        (d / "pckcrl").read_bytes(),
        _pem(platform_ca) + root,
    )
    assert TcbInfo.parse(c.tcb_info).fmspc == bytes.fromhex("50806f000000")
    assert EnclaveIdentity.parse(c.qe_identity).id == "TD_QE"
    assert len(x509.load_der_x509_crl(c.pck_crl)) == 44
    _assert_collateral_signed(c)


def test_intel_test_pki_parts_with_pem_crls(sgx_testdata: Path) -> None:
    d = sgx_testdata / "intel-qvl-sampledata-testpki"
    c = collateral_from_parts(
        (d / "tcbInfo.json").read_bytes(),
        (d / "qeIdentity.json").read_bytes(),
        (d / "tcbSignChain.pem").read_bytes(),
        (d / "rootCaCrl.pem").read_bytes(),
        (d / "intermediateCaCrl.pem").read_bytes(),
        (d / "pckSignChain.pem").read_bytes(),
    )
    assert c.root_ca_crl == (d / "rootCaCrl.der").read_bytes()
    assert c.pck_crl == (d / "intermediateCaCrl.der").read_bytes()
    assert TcbInfo.parse(c.tcb_info).version == 2
    _assert_collateral_signed(c)
    assert collateral_to_json(c) == collateral_to_json(load_collateral(collateral_to_json(c)))


def test_pcs_headers_are_url_decoded(sgx_testdata: Path) -> None:
    d = sgx_testdata / "mobilecoin-attestation"
    root = (d / "root_ca.pem").read_bytes()
    chain = (d / "tcb_signer.pem").read_bytes() + root
    header = urllib.parse.quote(chain.decode(), safe="")
    assert "%0A" in header
    c = from_pcs_responses(
        tcb_info_body=(d / "fmspc_00906ED50000_2023_07_12.json").read_bytes(),
        tcb_info_issuer_chain=header,
        qe_identity_body=(d / "qe_identity.json").read_bytes(),
        qe_identity_issuer_chain=header.encode(),
        pck_crl=(d / "processor_crl.der").read_bytes(),
        pck_crl_issuer_chain=urllib.parse.quote(
            (d / "processor_ca.pem").read_text() + root.decode()
        ),
        root_ca_crl=(d / "root_crl.der").read_bytes().hex().encode(),
    )
    assert c.tcb_info_issuer_chain == chain
    assert c.qe_identity_issuer_chain == chain
    assert c.root_ca_crl == (d / "root_crl.der").read_bytes()
    assert decode_issuer_chain(chain, what="x") == chain


def test_a_lone_pcs_body_is_not_collateral(sgx_testdata: Path) -> None:
    body = (sgx_testdata / "mobilecoin-attestation" / "qe_identity.json").read_bytes()
    with pytest.raises(CollateralError, match="not complete collateral"):
        load_collateral(body)


# --------------------------------------------------------------------------- signed slices


def test_signed_object_is_a_verbatim_slice_even_with_whitespace(sgx_testdata: Path) -> None:
    body = (sgx_testdata / "mobilecoin-attestation" / "qe_identity.json").read_bytes()
    signed, signature = extract_signed_object(body, "enclaveIdentity", what="qe")
    inner_text = signed.decode()
    spaced = (
        '\n{ "signature" :\t"' + signature.hex().upper() + '" ,\r\n "enclaveIdentity" : '
        + inner_text + " }\n "
    ).encode()  # fmt: skip
    assert extract_signed_object(spaced, "enclaveIdentity", what="qe") == (signed, signature)
    # a re-serialised object would not be the signed bytes: prove we did not re-serialise
    assert json.dumps(json.loads(signed)).encode() != signed


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "not a PCS response body"),
        (b"[]", "not a PCS response body"),
        (b"{}", "expected members"),
        (b'{"tcbInfo":{}}', "expected members"),
        (b'{"tcbInfo":[],"signature":"' + b"00" * 64 + b'"}', "expected a JSON object"),
        (b'{"tcbInfo":{},"signature":"00"}', "expected 64 bytes"),
        (b'{"tcbInfo":{},"signature":"' + b"0g" * 64 + b'"}', "expected a hex string"),
        (b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'","x":1}', "unexpected member"),
        (b'{"tcbInfo":{},"tcbInfo":{},"signature":""}', "duplicate"),
        (b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'"}x', "trailing data"),
        (b'{"tcbInfo":{} "signature":"00"}', "expected ','"),
        (b'{"tcbInfo" {}}', "expected ':'"),
        (b"{tcbInfo:{}}", "member name"),
        (b"\xff{}", "not UTF-8"),
    ],
)
def test_pcs_body_errors(body: bytes, needle: str) -> None:
    with pytest.raises(CollateralError) as info:
        extract_signed_object(body, "tcbInfo", what="tcb")
    assert needle in str(info.value)


# --------------------------------------------------------------------------- CRL normalisation


def test_crl_encodings_normalise_to_der(sgx_testdata: Path) -> None:
    d = sgx_testdata / "intel-qvl-sampledata-testpki"
    der = (d / "rootCaCrl.der").read_bytes()
    pem = (d / "rootCaCrl.pem").read_bytes()
    for form in (
        der,
        der + b"\x00",
        pem,
        pem + b"\x00",
        der.hex().encode(),
        der.hex().upper().encode() + b"\x00",
        b"\n" + der.hex().encode() + b"\n",
    ):
        assert normalize_crl(form, what="crl") == der


@pytest.mark.parametrize(
    "mangle",
    [
        lambda der: b"",
        lambda der: der[:-1],
        lambda der: der + b"\x01",
        lambda der: der + der,
        lambda der: b"\x31" + der[1:],
        lambda der: der.hex().encode()[:-1],
        lambda der: b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        lambda der: b"\x30\x84\xff\xff\xff\xff" + der,
    ],
)
def test_bad_crls_are_rejected(sgx_testdata: Path, mangle: object) -> None:
    der = (sgx_testdata / "automata-dcap-rs" / "intel_root_ca_crl.der").read_bytes()
    with pytest.raises(CollateralError, match="crl: not a CRL"):
        normalize_crl(mangle(der), what="crl")  # type: ignore[operator]


def test_check_collateral_rejects_non_der_crl_in_hand_built_collateral(sgx_testdata: Path) -> None:
    c = load_collateral(
        (sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes()
    )
    assert check_collateral(c) is c
    bad = Collateral(**{**c.__dict__, "pck_crl": c.pck_crl + b"\x00"})
    with pytest.raises(CollateralError, match="pck_crl: expected DER"):
        check_collateral(bad)
    with pytest.raises(CollateralError, match="not UTF-8"):
        collateral_to_json(Collateral(**{**c.__dict__, "tcb_info": b"\xff"}))
    with pytest.raises(CollateralError, match="dcap-qvl"):
        to_dcap_qvl(Collateral(**{**c.__dict__, "qe_identity": b"\xff"}))


# --------------------------------------------------------------------------- fuzzing


def _assert_one_line(exc: EnclaveKMSError) -> None:
    assert "\n" not in str(exc), str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_into_every_loader_raise_only_typed_errors(data: bytes) -> None:
    loaders = (
        load_collateral,
        load_dcap_qvl_json,
        OeEndorsements.parse,
        lambda b: extract_signed_object(b, "tcbInfo", what="x"),
        lambda b: normalize_crl(b, what="x"),
        lambda b: decode_issuer_chain(b, what="x"),
        lambda b: decode_issuer_chain(b.decode("latin-1"), what="x"),
    )
    for load in loaders:
        try:
            load(data)
        except EnclaveKMSError as exc:
            _assert_one_line(exc)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    oe=st.booleans(),
)
def test_mutated_real_collateral_raises_only_typed_errors(
    sgx_testdata: Path, data: st.DataObject, oe: bool
) -> None:
    if oe:
        base = _oe_blob(sgx_testdata)
    else:
        base = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes()
    position = data.draw(st.integers(0, len(base) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=8))
    mutated = base[:position] + junk + base[position + len(junk) :]
    try:
        load_collateral(mutated)
    except EnclaveKMSError as exc:
        _assert_one_line(exc)
