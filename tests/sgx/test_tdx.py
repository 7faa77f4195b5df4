"""TD report bodies (TDX 1.0 / 1.5): field offsets on real quotes and exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_kms.errors import FormatError
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.tdx import TdReport10, TdReport15
from tests.sgx.vectors import QUOTE_VECTORS, read_quote_file

TDX_VECTORS = [v.rel for v in QUOTE_VECTORS if v.tdx]


@pytest.mark.parametrize("rel", TDX_VECTORS)
def test_real_td_bodies_round_trip(sgx_testdata: Path, rel: str) -> None:
    raw = read_quote_file(sgx_testdata / rel)
    quote = parse_quote(raw)
    body = quote.body
    assert isinstance(body, TdReport10)
    start = 48 + (6 if quote.body_type is not None else 0)
    assert body.to_bytes() == raw[start : start + body.SIZE]
    assert type(body).parse(body.to_bytes()) == body


def test_td10_field_offsets(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl/tdx_quote").read_bytes()
    body = parse_quote(raw).body
    assert type(body) is TdReport10
    b = raw[48 : 48 + 584]
    assert body.tee_tcb_svn == b[0:16]
    assert body.mr_seam == b[16:64]
    assert body.mr_signer_seam == b[64:112]
    assert body.seam_attributes == b[112:120]
    assert body.td_attributes == b[120:128]
    assert body.xfam == b[128:136]
    assert body.mr_td == b[136:184]
    assert body.mr_config_id == b[184:232]
    assert body.mr_owner == b[232:280]
    assert body.mr_owner_config == b[280:328]
    assert body.rt_mrs == (b[328:376], b[376:424], b[424:472], b[472:520])
    assert body.report_data == b[520:584]
    # a production TD: TUD.DEBUG clear, module TDX_01 (tee_tcb_svn[1] == 1)
    assert not body.debug
    assert body.tee_tcb_svn[1] == 1


def test_td15_extra_fields(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl/tdx_quote_outdated").read_bytes()
    body = parse_quote(raw).body
    assert type(body) is TdReport15
    b = raw[54 : 54 + 648]
    assert body.report_data == b[520:584]
    assert body.tee_tcb_svn2 == b[584:600]
    assert body.mr_service_td == b[600:648]
    assert isinstance(body, TdReport10)  # a 1.5 body offers every 1.0 field


def test_sizes_enforced() -> None:
    with pytest.raises(FormatError, match="584"):
        TdReport10.parse(bytes(583))
    with pytest.raises(FormatError, match="648"):
        TdReport15.parse(bytes(584))
    with pytest.raises(FormatError, match="mr_td"):
        TdReport10(
            *(
                [bytes(16)]
                + [bytes(48)] * 2
                + [bytes(8)] * 3
                + [bytes(47)]
                + [bytes(48)] * 7
                + [bytes(64)]
            )
        )
    with pytest.raises(FormatError, match="expected bytes"):
        TdReport10.parse("x" * 584)  # type: ignore[arg-type]


def test_built_td15_round_trips() -> None:
    raw = bytes(range(256)) * 2 + bytes(range(136))
    body = TdReport15.parse(raw)
    assert body.to_bytes() == raw
    assert body.mr_service_td == raw[600:]
    assert TdReport10.parse(raw[:584]).to_bytes() == raw[:584]
