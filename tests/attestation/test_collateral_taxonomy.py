"""Issue 17 defect 6: "collateral unreachable" and "collateral forged" are different errors
(unavailable / invalid / outside its window), all exit 3 at the CLI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from enclave_kms.attestation.sources import FileCollateralSource, PccsClient
from enclave_kms.cli import exits
from enclave_kms.errors import (
    CollateralError,
    CollateralExpiredError,
    CollateralNotYetValidError,
    CollateralUnavailableError,
    CollateralWindowError,
)

FMSPC = bytes.fromhex("00A067110000")


def _client(handler: object) -> PccsClient:
    return PccsClient("https://pccs.example:8081/", transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def _get(client: PccsClient) -> None:
    client.get_collateral(tee="sgx", fmspc=FMSPC, pck_ca="processor")


def test_unreachable_and_http_errors_are_unavailable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler in (down, lambda _r: httpx.Response(503)):
        with pytest.raises(CollateralUnavailableError):
            _get(_client(handler))


def test_a_forged_or_malformed_answer_is_invalid_not_unavailable() -> None:
    def garbage(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=b"not collateral", headers={"TCB-Info-Issuer-Chain": "x"}
        )

    with pytest.raises(CollateralError) as info:
        _get(_client(garbage))
    assert not isinstance(info.value, CollateralUnavailableError | CollateralWindowError)
    assert info.value.code == "collateral_invalid"


def test_a_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(CollateralUnavailableError):
        FileCollateralSource(tmp_path / "none.json").get_collateral(
            tee="sgx", fmspc=FMSPC, pck_ca="processor"
        )


def test_every_kind_exits_3_and_has_its_own_code() -> None:
    kinds = (
        CollateralError("x"),
        CollateralUnavailableError("x"),
        CollateralExpiredError("x"),
        CollateralNotYetValidError("x"),
    )
    assert {exits.exit_code_for(k) for k in kinds} == {exits.COLLATERAL}
    assert len({k.code for k in kinds}) == len(kinds)
