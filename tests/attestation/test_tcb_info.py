"""TCB Info / Enclave Identity models on every real document in the test vectors.

Expected values come from SOURCES.md (tcbEvaluationDataNumber, dates, FMSPC, ids). Every real
document must serialise back to its exact signed bytes.
"""

from __future__ import annotations

import copy
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.attestation.tcb_info import (
    EnclaveIdentity,
    QeTcbLevel,
    TcbComponentLabel,
    TcbInfo,
    TcbLevel,
    TdxModule,
    TdxModuleIdentity,
)
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.errors import EnclaveKMSError, FormatError, UnsupportedFormatError


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _pcs_inner(body: bytes, key: str) -> bytes:
    """The inner object of a PCS body, cut out by position (independent of the code under test)."""
    text = body.decode()
    prefix = f'{{"{key}":'
    assert text.startswith(prefix)
    _, end = json.JSONDecoder().raw_decode(text, len(prefix))
    return text[len(prefix) : end].encode()


def _oe_items(root: Path) -> list[bytes]:
    blob = (root / "openenclave-tests" / "endorsements").read_bytes().split(b"\n", 2)[2]
    offsets = struct.unpack_from("<9I", blob, 16)
    area = blob[52:]
    bounds = [*offsets, len(area)]
    return [area[bounds[i] : bounds[i + 1]] for i in range(9)]


def _signed(root: Path, source: str, kind: str) -> bytes:
    """The signed inner bytes of document `kind` ("tcb"/"qe") in `source`."""
    if source.endswith("_collateral.json"):
        doc = json.loads((root / source).read_bytes())
        return str(doc["tcb_info" if kind == "tcb" else "qe_identity"]).encode()
    if source == "openenclave-tests/endorsements":
        item = _oe_items(root)[1 if kind == "tcb" else 6].rstrip(b"\x00")
        return _pcs_inner(item, "tcbInfo" if kind == "tcb" else "enclaveIdentity")
    return _pcs_inner(
        (root / source).read_bytes(), "tcbInfo" if kind == "tcb" else "enclaveIdentity"
    )


# (source, version, id, fmspc, tcbEvaluationDataNumber, issueDate, nextUpdate, levels)
TCB_INFOS = [
    ("phala-dcap-qvl/sgx_quote_collateral.json", 3, "SGX", "00A067110000", 17,
     "2025-06-19T10:56:11Z", "2025-07-19T10:56:11Z", 11),
    ("phala-dcap-qvl/tdx_quote_collateral.json", 3, "TDX", "B0C06F000000", 17,
     "2025-06-19T10:16:03Z", "2025-07-19T10:16:03Z", 2),
    ("phala-dcap-qvl/tdx_quote_outdated_collateral.json", 3, "TDX", "90C06F000000", 18,
     "2026-02-18T10:58:51Z", "2026-03-20T10:58:51Z", 3),
    ("mobilecoin-attestation/fmspc_00906ED50000_2023_07_12.json", 3, "SGX", "00906ED50000", 15,
     "2023-07-12T19:56:44Z", "2023-08-11T19:56:44Z", None),
    ("automata-dcap-rs/tcbinfov2.json", 2, "SGX", "00606A000000", 17,
     "2025-02-13T03:29:42Z", "2025-03-15T03:29:42Z", None),
    ("automata-dcap-rs/tcbinfov3_00806f050000.json", 3, "TDX", "00806F050000", 17,
     "2025-02-13T03:50:41Z", "2025-03-15T03:50:41Z", None),
    ("google-go-tdx-guest/sample_tcbInfo_response", 3, "TDX", "50806F000000", 15,
     "2023-06-18T08:42:58Z", "2023-07-18T08:42:58Z", None),
    ("intel-qvl-sampledata-testpki/tcbInfo.json", 2, "SGX", "00707F000000", 3,
     "2019-09-05T07:47:07Z", "2029-09-05T07:47:07Z", None),
    ("openenclave-tests/endorsements", 2, "SGX", "00906ED50000", 12,
     "2022-04-26T22:39:25Z", "2022-05-26T22:39:25Z", None),
]  # fmt: skip

# (source, id, tcbEvaluationDataNumber, issueDate, nextUpdate, mrsigner prefix, isvprodid)
QE_IDENTITIES = [
    ("phala-dcap-qvl/sgx_quote_collateral.json", "QE", 17,
     "2025-06-19T10:01:18Z", "2025-07-19T10:01:18Z", "8c4f5775", 1),
    ("phala-dcap-qvl/tdx_quote_collateral.json", "TD_QE", 17,
     "2025-06-19T10:32:27Z", "2025-07-19T10:32:27Z", "dc9e2a7c", 2),
    ("phala-dcap-qvl/tdx_quote_outdated_collateral.json", "TD_QE", 18,
     "2026-02-18T10:42:15Z", "2026-03-20T10:42:15Z", "dc9e2a7c", 2),
    ("mobilecoin-attestation/qe_identity.json", "QE", 15,
     "2023-07-12T20:48:25Z", "2023-08-11T20:48:25Z", "8c4f5775", 1),
    ("automata-dcap-rs/qeidentityv2.json", "QE", 17,
     "2025-02-13T03:33:12Z", "2025-03-15T03:33:12Z", "8c4f5775", 1),
    ("automata-dcap-rs/qeidentityv2_apiv4.json", "TD_QE", 17,
     "2025-02-13T03:39:00Z", "2025-03-15T03:39:00Z", "dc9e2a7c", 2),
    ("google-go-tdx-guest/sample_qeIdentity_response", "TD_QE", 15,
     "2023-06-08T07:24:59Z", "2023-07-08T07:24:59Z", "dc9e2a7c", 2),
    ("intel-qvl-sampledata-testpki/qeIdentity.json", "QE", 0,
     "2019-09-05T07:47:08Z", "2029-09-05T07:47:08Z", "8c4f5775", 1),
    ("intel-qvl-sampledata-testpki/qveIdentity.json", "QVE", 0,
     "2019-09-09T13:06:21Z", "2029-09-09T13:06:21Z", "c87c2f01", 2),
    ("openenclave-tests/endorsements", "QE", 12,
     "2022-04-26T23:28:09Z", "2022-05-26T23:28:09Z", "8c4f5775", 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("source", "version", "tee", "fmspc", "eval_num", "issue", "next_update", "levels"),
    TCB_INFOS,
)
def test_every_real_tcb_info_parses_and_round_trips(
    sgx_testdata: Path,
    source: str,
    version: int,
    tee: str,
    fmspc: str,
    eval_num: int,
    issue: str,
    next_update: str,
    levels: int | None,
) -> None:
    signed = _signed(sgx_testdata, source, "tcb")
    info = TcbInfo.parse(signed)
    assert info.version == version
    assert info.id == tee
    assert info.is_tdx == (tee == "TDX")
    assert info.fmspc == bytes.fromhex(fmspc)
    assert info.pce_id == b"\x00\x00"
    assert info.tcb_type == 0
    assert info.tcb_evaluation_data_number == eval_num
    assert info.issue_date == _utc(issue)
    assert info.next_update == _utc(next_update)
    assert info.issue_date.tzinfo is not None
    if levels is not None:
        assert len(info.tcb_levels) == levels
    for level in info.tcb_levels:
        assert len(level.sgx_components) == 16
        assert (level.tdx_components is not None) == info.is_tdx
    assert info.to_json_bytes() == signed


@pytest.mark.parametrize(
    ("source", "ident", "eval_num", "issue", "next_update", "mrsigner", "prod_id"), QE_IDENTITIES
)
def test_every_real_enclave_identity_parses_and_round_trips(
    sgx_testdata: Path,
    source: str,
    ident: str,
    eval_num: int,
    issue: str,
    next_update: str,
    mrsigner: str,
    prod_id: int,
) -> None:
    signed = _signed(sgx_testdata, source, "qe")
    identity = EnclaveIdentity.parse(signed)
    assert identity.id == ident
    assert identity.version == 2
    assert identity.tcb_evaluation_data_number == eval_num
    assert identity.issue_date == _utc(issue)
    assert identity.next_update == _utc(next_update)
    assert identity.mrsigner.hex().startswith(mrsigner)
    assert len(identity.mrsigner) == 32
    assert identity.isv_prod_id == prod_id
    assert len(identity.miscselect) == len(identity.miscselect_mask) == 4
    assert len(identity.attributes) == len(identity.attributes_mask) == 16
    assert identity.tcb_levels
    assert identity.to_json_bytes() == signed


def test_phala_sgx_levels_carry_status_and_advisories(sgx_testdata: Path) -> None:
    info = TcbInfo.parse(_signed(sgx_testdata, "phala-dcap-qvl/sgx_quote_collateral.json", "tcb"))
    second = info.tcb_levels[1]
    assert second.sgx_components == (11, 11, 2, 2, 255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert second.pce_svn == 13
    assert second.tcb_status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert second.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert second.tcb_date == _utc("2024-03-13T00:00:00Z")
    assert second.sgx_component_labels == ()
    assert info.tdx_module is None
    assert info.tdx_module_identities == ()


def test_mobilecoin_level_zero_is_sw_hardening(sgx_testdata: Path) -> None:
    source = "mobilecoin-attestation/fmspc_00906ED50000_2023_07_12.json"
    level = TcbInfo.parse(_signed(sgx_testdata, source, "tcb")).tcb_levels[0]
    assert level.sgx_components[:7] == (20, 20, 2, 4, 1, 128, 14)
    assert level.tcb_status is TcbStatus.SW_HARDENING_NEEDED
    assert level.advisory_ids == ("INTEL-SA-00334", "INTEL-SA-00615")


def test_phala_tdx_module_and_identities(sgx_testdata: Path) -> None:
    info = TcbInfo.parse(_signed(sgx_testdata, "phala-dcap-qvl/tdx_quote_collateral.json", "tcb"))
    assert info.tdx_module == TdxModule(bytes(48), bytes(8), b"\xff" * 8)
    assert [m.id for m in info.tdx_module_identities] == ["TDX_03", "TDX_01"]
    tdx01 = info.tdx_module_identity("TDX_01")
    assert tdx01 is not None
    assert [(lv.isv_svn, lv.tcb_status) for lv in tdx01.tcb_levels] == [
        (4, TcbStatus.UP_TO_DATE),
        (2, TcbStatus.OUT_OF_DATE),
    ]
    assert info.tdx_module_identity("TDX_02") is None
    top = info.tcb_levels[0]
    assert top.tdx_components == (5, 0, 2) + (0,) * 13
    assert top.tcb_status is TcbStatus.UP_TO_DATE
    assert top.sgx_component_labels[0] == TcbComponentLabel("BIOS", "Early Microcode Update")
    assert top.sgx_component_labels[6] == TcbComponentLabel()
    assert len(top.sgx_component_labels) == 8  # components 9..16 carry no label
    assert top.tdx_component_labels[0] == TcbComponentLabel("OS/VMM", "TDX Module")


def test_go_tdx_guest_has_module_but_no_identities(sgx_testdata: Path) -> None:
    source = "google-go-tdx-guest/sample_tcbInfo_response"
    info = TcbInfo.parse(_signed(sgx_testdata, source, "tcb"))
    assert info.tdx_module is not None
    assert info.tdx_module_identities == ()
    assert info.lowercase_ids  # PCS spelled this FMSPC "50806f000000"


def test_hex_is_kept_in_quote_byte_order(sgx_testdata: Path) -> None:
    source = "intel-qvl-sampledata-testpki/qeIdentity.json"
    identity = EnclaveIdentity.parse(_signed(sgx_testdata, source, "qe"))
    assert identity.miscselect == bytes([0xD1, 0x82, 0xB1, 0x8C])
    assert identity.attributes[:4] == bytes([0x70, 0xC8, 0xCB, 0xF4])
    assert identity.miscselect_mask == b"\xff" * 4


def test_v2_levels_read_component_keys(sgx_testdata: Path) -> None:
    info = TcbInfo.parse(_signed(sgx_testdata, "automata-dcap-rs/tcbinfov2.json", "tcb"))
    first = info.tcb_levels[0]
    assert first.sgx_components == (14, 14, 3, 3, 255, 255, 1) + (0,) * 9
    assert first.pce_svn == 13
    assert first.tdx_components is None
    assert first.advisory_ids == ()
    assert first.tcb_status is TcbStatus.SW_HARDENING_NEEDED


def test_built_documents_round_trip() -> None:
    """The simulator builds these from scratch: build → bytes → parse gives the same model."""
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    level = QeTcbLevel(3, when, TcbStatus.UP_TO_DATE)
    tdx = TcbInfo(
        version=3,
        id="TDX",
        issue_date=when,
        next_update=when,
        fmspc=bytes.fromhex("00a067110000"),
        pce_id=b"\x00\x00",
        tcb_type=0,
        tcb_evaluation_data_number=20,
        tcb_levels=(
            TcbLevel(
                sgx_components=tuple(range(16)),
                pce_svn=13,
                tdx_components=(1,) * 16,
                tcb_date=when,
                tcb_status=TcbStatus.OUT_OF_DATE,
                advisory_ids=("INTEL-SA-00001",),
                sgx_component_labels=(TcbComponentLabel("BIOS"),),
            ),
        ),
        tdx_module=TdxModule(bytes(48), bytes(8), b"\xff" * 8),
        tdx_module_identities=(
            TdxModuleIdentity("TDX_01", bytes(48), bytes(8), b"\xff" * 8, (level,)),
        ),
    )
    raw = tdx.to_json_bytes()
    assert raw.startswith(b'{"id":"TDX","version":3,"issueDate":"2030-01-02T03:04:05Z",')
    assert b'"fmspc":"00A067110000"' in raw
    assert b'{"svn":0,"category":"BIOS"},{"svn":1},' in raw
    assert TcbInfo.parse(raw) == tdx
    identity = EnclaveIdentity(
        "QE", 2, when, when, bytes(4), b"\xff" * 4, bytes(16), b"\xff" * 16, bytes(32), 1, 20,
        (level,),
    )  # fmt: skip
    assert EnclaveIdentity.parse(identity.to_json_bytes()) == identity


# --------------------------------------------------------------------------- strictness


def _mobilecoin_doc(root: Path) -> dict[str, Any]:
    source = "mobilecoin-attestation/fmspc_00906ED50000_2023_07_12.json"
    doc: dict[str, Any] = json.loads(_signed(root, source, "tcb"))
    return doc


def _tdx_doc(root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        _signed(root, "phala-dcap-qvl/tdx_quote_collateral.json", "tcb")
    )
    return doc


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("path", "value", "error", "needle"),
    [
        (("version",), 4, UnsupportedFormatError, "tcbInfo.version"),
        (("version",), "3", FormatError, "tcbInfo.version"),
        (("version",), True, FormatError, "tcbInfo.version"),
        (("id",), "SEV", UnsupportedFormatError, "tcbInfo.id"),
        (("fmspc",), "00906ED5000", FormatError, "tcbInfo.fmspc"),
        (("fmspc",), "00906ED5000G", FormatError, "tcbInfo.fmspc"),
        (("fmspc",), "00906ED5 000", FormatError, "tcbInfo.fmspc"),
        (("pceId",), 0, FormatError, "tcbInfo.pceId"),
        (("issueDate",), "2023-13-12T19:56:44Z", FormatError, "tcbInfo.issueDate"),
        (("issueDate",), "2023-07-12T19:56:44+00:00", FormatError, "tcbInfo.issueDate"),
        (("nextUpdate",), 1689105404, FormatError, "tcbInfo.nextUpdate"),
        (("tcbType",), True, FormatError, "tcbInfo.tcbType"),
        (("tcbEvaluationDataNumber",), -1, FormatError, "tcbEvaluationDataNumber"),
        (("tcbEvaluationDataNumber",), 15.0, FormatError, "tcbEvaluationDataNumber"),
        (("tcbLevels",), [], FormatError, "tcbInfo.tcbLevels"),
        (("tcbLevels", 0, "tcbStatus"), "Fine", FormatError, "tcbLevels[0].tcbStatus"),
        (("tcbLevels", 1, "tcbDate"), "yesterday", FormatError, "tcbLevels[1].tcbDate"),
        (("tcbLevels", 0, "tcb", "pcesvn"), 65536, FormatError, "tcbLevels[0].tcb.pcesvn"),
        (("tcbLevels", 0, "tcb", "sgxtcbcomponents", 3, "svn"), 256, FormatError, "[3].svn"),
        (("tcbLevels", 0, "tcb", "sgxtcbcomponents"), [{"svn": 1}] * 15, FormatError, "16"),
        (("tcbLevels", 0, "advisoryIDs"), "INTEL-SA-00334", FormatError, "advisoryIDs"),
        (("tcbLevels", 0, "advisoryIDs", 0), 334, FormatError, "advisoryIDs[0]"),
        (("tcbLevels", 0, "tcb", "tdxtcbcomponents"), [{"svn": 0}] * 16,
         UnsupportedFormatError, "tdxtcbcomponents"),
        (("tdxModule",), {}, UnsupportedFormatError, "tcbInfo.tdxModule"),
        (("extra",), 1, UnsupportedFormatError, "tcbInfo.extra"),
    ],
)  # fmt: skip
def test_sgx_tcb_info_mutations_are_rejected_naming_the_field(
    sgx_testdata: Path,
    path: tuple[str | int, ...],
    value: Any,
    error: type[Exception],
    needle: str,
) -> None:
    doc = _mobilecoin_doc(sgx_testdata)
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(error) as info:
        TcbInfo.parse(_dump(doc))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "error", "needle"),
    [
        (lambda d: d["tcbLevels"][0]["tcb"].pop("tdxtcbcomponents"), FormatError,
         "tdxtcbcomponents: missing"),
        (lambda d: d["tdxModule"].update(mrsigner="00"), FormatError, "tdxModule.mrsigner"),
        (lambda d: d["tdxModuleIdentities"][0].pop("id"), FormatError, "[0].id: missing"),
        (lambda d: d["tdxModuleIdentities"][1]["tcbLevels"][0].update(tcbStatus="UPTODATE"),
         FormatError, "tdxModuleIdentities[1].tcbLevels[0].tcbStatus"),
        (lambda d: d["tdxModuleIdentities"][0]["tcbLevels"][0]["tcb"].update(isvsvn=-1),
         FormatError, "isvsvn"),
        (lambda d: d.update(tdxModuleIdentities={}), FormatError, "tdxModuleIdentities"),
    ],
)  # fmt: skip
def test_tdx_tcb_info_mutations(
    sgx_testdata: Path, mutate: Any, error: type[Exception], needle: str
) -> None:
    doc = _tdx_doc(sgx_testdata)
    mutate(doc)
    with pytest.raises(error) as info:
        TcbInfo.parse(_dump(doc))
    assert needle in str(info.value)


def test_missing_fields_are_named(sgx_testdata: Path) -> None:
    base = _mobilecoin_doc(sgx_testdata)
    for key in list(base):
        doc = copy.deepcopy(base)
        del doc[key]
        with pytest.raises(FormatError, match=f"tcbInfo.{key}: missing"):
            TcbInfo.parse(_dump(doc))


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"version":3,"version":3}', "duplicate"),
        (b'{"version":NaN}', "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_json_is_a_format_error(raw: bytes, needle: str) -> None:
    for parse in (TcbInfo.parse, EnclaveIdentity.parse):
        with pytest.raises(FormatError, match=needle):
            parse(raw)


@pytest.mark.parametrize(
    ("key", "value", "error", "needle"),
    [
        ("version", 1, UnsupportedFormatError, "enclaveIdentity.version"),
        ("id", "PCE", UnsupportedFormatError, "enclaveIdentity.id"),
        ("id", 7, UnsupportedFormatError, "enclaveIdentity.id"),
        ("miscselect", "000000", FormatError, "enclaveIdentity.miscselect"),
        ("attributesMask", "FB" * 15, FormatError, "enclaveIdentity.attributesMask"),
        ("mrsigner", "8C" * 33, FormatError, "enclaveIdentity.mrsigner"),
        ("isvprodid", 65536, FormatError, "enclaveIdentity.isvprodid"),
        ("tcbLevels", [{"tcb": {"isvsvn": 1}, "tcbDate": "2020-01-01T00:00:00Z"}], FormatError,
         "tcbLevels[0].tcbStatus: missing"),
        ("tcbLevels", [{"tcb": {"isvsvn": 1, "pcesvn": 1}, "tcbDate": "2020-01-01T00:00:00Z",
                        "tcbStatus": "UpToDate"}], UnsupportedFormatError, "tcb.pcesvn"),
        ("issueDate", "2023-07-12T20:48:25.000Z", FormatError, "enclaveIdentity.issueDate"),
        ("unknown", None, UnsupportedFormatError, "enclaveIdentity.unknown"),
    ],
)  # fmt: skip
def test_enclave_identity_mutations(
    sgx_testdata: Path, key: str, value: Any, error: type[Exception], needle: str
) -> None:
    doc = json.loads(_signed(sgx_testdata, "mobilecoin-attestation/qe_identity.json", "qe"))
    doc[key] = value
    with pytest.raises(error) as info:
        EnclaveIdentity.parse(_dump(doc))
    assert needle in str(info.value)


# --------------------------------------------------------------------------- fuzzing


def _assert_one_line(exc: EnclaveKMSError) -> None:
    assert "\n" not in str(exc), str(exc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    for parse in (TcbInfo.parse, EnclaveIdentity.parse):
        try:
            parse(data)
        except EnclaveKMSError as exc:
            _assert_one_line(exc)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:2]):
            out += _paths(value, (*prefix, i))
    return out


@settings(max_examples=200, deadline=None)
@given(data=st.data(), replacement=_JSON)
def test_any_field_replaced_by_any_json_raises_only_typed_errors(
    sgx_testdata: Path, data: st.DataObject, replacement: Any
) -> None:
    for kind, source, parse in (
        ("tcb", "phala-dcap-qvl/tdx_quote_collateral.json", TcbInfo.parse),
        ("qe", "mobilecoin-attestation/qe_identity.json", EnclaveIdentity.parse),
    ):
        doc = json.loads(_signed(sgx_testdata, source, kind))
        path = data.draw(st.sampled_from(_paths(doc)))
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = replacement
        try:
            parse(_dump(doc))
        except EnclaveKMSError as exc:
            _assert_one_line(exc)


def test_unknown_field_names_stay_on_one_line(sgx_testdata: Path) -> None:
    doc = _mobilecoin_doc(sgx_testdata)
    doc["evil\nkey"] = 1
    with pytest.raises(UnsupportedFormatError, match=r"tcbInfo\.evil\?key: unknown field"):
        TcbInfo.parse(_dump(doc))
