"""The tutorial's enclave-info JSON on the four Azure MAA / Open Enclave samples."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from enclave_kms.errors import FormatError
from enclave_kms.sgx.pck import parse_pck_extension, pck_ca_kind
from enclave_kms.sgx.report import ReportBody
from enclave_kms.sgx.tutorial import EnclaveInfo

SAMPLES = {
    # name: (debug flags, ProductID, SVN, OE Attributes)
    "debug": (0x7, 1, 1, 3),
    "release": (0x5, 1, 1, 2),
    "prodid": (0x5, 9999, 1, 2),
    "securityversion": (0x5, 1, 8888, 2),
}
MRSIGNER = "62ba6bcab59700c340bdbcd36bf74c6e0d6892cdf91671dca93bcbfff81ef9f2"


def _sample(sgx_testdata: Path, name: str) -> bytes:
    return (sgx_testdata / f"azure-maa-oe-sample/enclave.info.{name}.json").read_bytes()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_samples_parse_match_and_rebuild_exactly(sgx_testdata: Path, name: str) -> None:
    raw = _sample(sgx_testdata, name)
    info = EnclaveInfo.parse(raw)
    assert info.to_json() == raw
    flags, prod_id, svn, oe_attrs = SAMPLES[name]
    body = info.quote.body
    assert isinstance(body, ReportBody)
    assert body.mr_signer.hex() == MRSIGNER == info.mr_signer.hex()
    assert body.attributes.flags == flags
    assert body.attributes.debug is (name == "debug")
    assert (body.isv_prod_id, body.isv_svn) == (prod_id, svn)
    assert info.security_version == svn
    assert info.product_id == prod_id.to_bytes(2, "little") + bytes(14)
    assert info.attributes == oe_attrs
    assert info.type == 2
    assert info.inconsistencies() == []
    assert info.binds_held_data()
    assert len(info.enclave_held_data) == 512
    assert info.enclave_held_data.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert info.quote_bytes == info.quote.to_bytes()
    assert info.report[0].report_size == len(info.quote_bytes)
    header = info.quote.header
    assert (header.version, header.qe_svn, header.pce_svn) == (3, 5, 10)
    leaf = info.quote.pck_certificates()[0]
    assert pck_ca_kind(leaf) == "processor"
    assert parse_pck_extension(leaf).fmspc == bytes.fromhex("00906ED50000")
    # from_report rebuilds the same document from the report and the held data alone
    assert EnclaveInfo.from_report(info.oe_report, info.enclave_held_data) == info
    assert EnclaveInfo.from_report(info.quote, info.enclave_held_data).to_json() == raw


def test_inconsistencies_are_all_reported(sgx_testdata: Path) -> None:
    info = EnclaveInfo.parse(_sample(sgx_testdata, "release"))
    lying = replace(
        info,
        type=3,
        mr_enclave=bytes(32),
        mr_signer=bytes(32),
        product_id=bytes(16),
        security_version=2,
        attributes=3,
    )
    problems = lying.inconsistencies()
    assert len(problems) == 6
    for word in ("Type", "MrEnclaveHex", "MrSignerHex", "ProductIdHex", "SecurityVersion"):
        assert any(p.startswith(word) for p in problems), word
    assert any(p.startswith("Attributes") for p in problems)


def test_held_data_binding_detects_change(sgx_testdata: Path) -> None:
    info = EnclaveInfo.parse(_sample(sgx_testdata, "debug"))
    other = replace(info, enclave_held_data=info.enclave_held_data[:-1] + b"\x01")
    assert not other.binds_held_data()
    digest = hashlib.sha256(info.enclave_held_data).digest()
    assert info.quote.body.report_data[:32] == digest


def _mutated(raw: bytes, **changes: object) -> bytes:
    obj = json.loads(raw)
    obj.update(changes)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"Type": "2"}, "Type"),
        ({"Type": True}, "Type"),
        ({"SecurityVersion": 70000}, "SecurityVersion"),
        ({"MrEnclaveHex": "00"}, "MrEnclaveHex"),
        ({"MrSignerHex": "zz" * 32}, "not hex"),
        ({"ProductIdHex": None}, "missing field ProductIdHex"),
        ({"QuoteHex": "0100000002000000"}, "OE report"),
        ({"QuoteHex": 5}, "QuoteHex"),
        ({"EnclaveHeldDataHex": "0"}, "EnclaveHeldDataHex"),
    ],
)
def test_parse_errors(sgx_testdata: Path, changes: dict[str, object], match: str) -> None:
    with pytest.raises(FormatError, match=match):
        EnclaveInfo.parse(_mutated(_sample(sgx_testdata, "debug"), **changes))


@pytest.mark.parametrize("data", [b"", b"[]", b"\xff\xfe", b"{" * 100000, b'{"Type": 2}'])
def test_not_enclave_info(data: bytes) -> None:
    with pytest.raises(FormatError):
        EnclaveInfo.parse(data)
