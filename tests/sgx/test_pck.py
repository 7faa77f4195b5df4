"""PCK certificate SGX extension: real leaves (Processor and Platform CA), exact re-encoding."""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from enclave_kms.errors import FormatError, UnsupportedFormatError
from enclave_kms.sgx.pck import (
    SGX_EXTENSIONS_OID,
    PckConfiguration,
    PckExtension,
    build_pck_extension,
    parse_pck_extension,
    parse_pck_extension_der,
    pck_ca_kind,
)
from enclave_kms.sgx.quote import parse_quote
from tests.sgx.vectors import QUOTE_VECTORS, read_quote_file


def _ext_der(cert: x509.Certificate) -> bytes:
    value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID)).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def _leaves(sgx_testdata: Path) -> list[tuple[str, x509.Certificate]]:
    out = []
    for vec in QUOTE_VECTORS:
        if vec.cert_type == 5:
            quote = parse_quote(read_quote_file(sgx_testdata / vec.rel))
            out.append((vec.rel, quote.pck_certificates()[0]))
    for rel in (
        "cosmian-intel-sgx-ra/pck_cert.pem",
        "intel-qvl-sampledata-testpki/pckCert.pem",
        "mobilecoin-attestation/leaf_cert.pem",
    ):
        out.append((rel, x509.load_pem_x509_certificate((sgx_testdata / rel).read_bytes())))
    return out


def test_every_real_leaf_parses_and_reencodes_exactly(sgx_testdata: Path) -> None:
    leaves = _leaves(sgx_testdata)
    assert len(leaves) == 14
    for name, cert in leaves:
        ext = parse_pck_extension(cert)
        assert build_pck_extension(ext) == _ext_der(cert), name
        assert parse_pck_extension_der(build_pck_extension(ext)) == ext, name
        # CPUSVN bytes are the 16 component SVNs, in order
        assert tuple(ext.cpu_svn) == ext.tcb_components, name
        kind = pck_ca_kind(cert)
        # Platform-CA leaves carry the platform instance id and configuration; Processor ones do not
        assert (ext.platform_instance_id is not None) is (kind == "platform"), name
        assert (ext.configuration is not None) is (kind == "platform"), name
        assert ext.sgx_type == (1 if kind == "platform" else 0), name


def test_known_pck_values(sgx_testdata: Path) -> None:
    leaves = dict(_leaves(sgx_testdata))
    automata = parse_pck_extension(leaves["automata-dcap-rs/quote_v3_sgx_test_verifyv3.hex"])
    assert automata.fmspc == bytes.fromhex("00606A000000")
    assert automata.tcb_components[:8] == (12, 12, 3, 3, 255, 255, 1, 0)
    assert automata.pce_svn == 13
    assert automata.pce_id == b"\x00\x00"
    outdated = parse_pck_extension(leaves["phala-dcap-qvl/tdx_quote_outdated"])
    assert outdated.tcb_components[:8] == (3, 3, 2, 2, 4, 1, 0, 3)
    assert outdated.configuration == PckConfiguration(True, False, True)
    cosmian = parse_pck_extension(leaves["cosmian-intel-sgx-ra/pck_cert.pem"])
    assert cosmian.fmspc == bytes.fromhex("30606A000000")
    assert len(cosmian.fmspc) == 6
    assert cosmian.ppid.hex() == "d23804c16b628d9159831d2f37c07367"
    assert cosmian.platform_instance_id == bytes.fromhex("4e7f3e1b4c174ac2369869d1018d8171")
    assert cosmian.configuration == PckConfiguration(True, False, True)
    processor = parse_pck_extension(leaves["phala-dcap-qvl/sgx_quote"])
    assert processor.fmspc == bytes.fromhex("00A067110000")
    assert processor.pce_svn == 13
    assert processor.sgx_type == 0
    assert pck_ca_kind(leaves["phala-dcap-qvl/sgx_quote"]) == "processor"
    assert pck_ca_kind(leaves["cosmian-intel-sgx-ra/pck_cert.pem"]) == "platform"


SAMPLE = PckExtension(
    ppid=bytes(range(16)),
    tcb_components=tuple(range(1, 17)),
    pce_svn=300,
    cpu_svn=bytes(range(1, 17)),
    pce_id=b"\x00\x01",
    fmspc=bytes.fromhex("00906ED50000"),
    sgx_type=0,
)


@pytest.mark.parametrize(
    "ext",
    [
        SAMPLE,
        replace(SAMPLE, platform_instance_id=b"\x07" * 16, sgx_type=1),
        replace(SAMPLE, configuration=PckConfiguration(True, None, False), sgx_type=2),
        replace(SAMPLE, configuration=PckConfiguration()),
    ],
)
def test_build_parse_round_trip(ext: PckExtension) -> None:
    der = build_pck_extension(ext)
    assert parse_pck_extension_der(der) == ext
    assert build_pck_extension(parse_pck_extension_der(der)) == der


def _pair(oid: str, value: univ.Asn1Item) -> bytes:
    return bytes(encoder.encode(univ.ObjectIdentifier(oid))) + bytes(encoder.encode(value))


def test_parse_errors_are_typed() -> None:
    der = build_pck_extension(SAMPLE)
    with pytest.raises(FormatError, match="invalid DER"):
        parse_pck_extension_der(der[:-1])
    with pytest.raises(FormatError, match="after the DER"):
        parse_pck_extension_der(der + b"\x00")
    with pytest.raises(FormatError, match="invalid DER"):
        parse_pck_extension_der(b"\x04\x02ab")
    with pytest.raises(FormatError, match="expected bytes"):
        parse_pck_extension_der("30")  # type: ignore[arg-type]


def _der(
    *,
    ppid_size: int = 16,
    drop: str | None = None,
    extra: list[tuple[str, univ.Asn1Item]] | None = None,
    fmspc_value: univ.Asn1Item | None = None,
) -> bytes:
    """A hand-assembled extension (via pyasn1) with one defect, to test each check."""
    from enclave_kms.sgx import pck

    tcb = [pck._pair(f"{pck._TCB}.{i}", univ.Integer(1)) for i in range(1, 17)]
    tcb += [
        pck._pair(pck._PCESVN, univ.Integer(1)),
        pck._pair(pck._CPUSVN, univ.OctetString(bytes(16))),
    ]
    items: list[tuple[str, univ.Asn1Item]] = [
        (pck._PPID, univ.OctetString(bytes(ppid_size))),
        (pck._TCB, pck._seq(tcb)),
        (pck._PCE_ID, univ.OctetString(bytes(2))),
        (pck._FMSPC, fmspc_value if fmspc_value is not None else univ.OctetString(bytes(6))),
        (pck._SGX_TYPE, univ.Enumerated(0)),
        *(extra or []),
    ]
    pairs = [pck._pair(oid, value) for oid, value in items if oid != drop]
    return bytes(encoder.encode(pck._seq(pairs)))


def test_structural_errors() -> None:
    base = SGX_EXTENSIONS_OID
    assert parse_pck_extension_der(_der()).pce_svn == 1
    with pytest.raises(FormatError, match="TCB"):
        parse_pck_extension_der(_der(drop=base + ".2"))
    with pytest.raises(FormatError, match="FMSPC"):
        parse_pck_extension_der(_der(drop=base + ".4"))
    with pytest.raises(FormatError, match="duplicate"):
        parse_pck_extension_der(_der(extra=[(base + ".1", univ.OctetString(bytes(16)))]))
    with pytest.raises(UnsupportedFormatError, match=r"13\.1\.9"):
        parse_pck_extension_der(_der(extra=[(base + ".9", univ.Null(""))]))
    with pytest.raises(FormatError, match="PPID: expected 16"):
        parse_pck_extension_der(_der(ppid_size=15))
    with pytest.raises(FormatError, match="FMSPC: invalid DER"):
        parse_pck_extension_der(_der(fmspc_value=univ.Integer(6)))


def test_constructor_validates() -> None:
    with pytest.raises(FormatError, match="fmspc"):
        replace(SAMPLE, fmspc=bytes(5))
    with pytest.raises(FormatError, match="tcb_components"):
        replace(SAMPLE, tcb_components=(1,) * 15)
    with pytest.raises(FormatError, match="tcb_components"):
        replace(SAMPLE, tcb_components=(256,) * 16)
    with pytest.raises(FormatError, match="platform_instance_id"):
        replace(SAMPLE, platform_instance_id=bytes(15))


def _self_signed(cn: str, extensions: list[x509.ExtensionType] | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for ext in extensions or []:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256())


def test_simulated_certificate_carries_built_extension() -> None:
    ext = replace(SAMPLE, platform_instance_id=b"\x01" * 16, configuration=PckConfiguration(False))
    der = build_pck_extension(ext)
    oid = x509.ObjectIdentifier(SGX_EXTENSIONS_OID)
    cert = _self_signed("Simulated SGX PCK Platform CA", [x509.UnrecognizedExtension(oid, der)])
    assert parse_pck_extension(cert) == ext
    assert pck_ca_kind(cert) == "platform"


def test_certificate_without_extension_or_odd_issuer() -> None:
    cert = _self_signed("Intel SGX Root CA")
    with pytest.raises(FormatError, match="no SGX extension"):
        parse_pck_extension(cert)
    with pytest.raises(FormatError, match="neither"):
        pck_ca_kind(cert)
    assert pck_ca_kind(_self_signed("Intel SGX PCK Processor CA")) == "processor"
