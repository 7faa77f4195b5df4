"""Quote v5 (TDX 1.5) on real quotes from Trustee, and the Azure TD that lacks SEPT_VE_DISABLE.

Neither comes with collateral, so these run every collateral-free DCAP step on the real bytes:
PCK chain into Intel's production root, QE report signed by the PCK key, QE report data binding
the attestation key, and the quote signature over header (+ v5 body descriptor) + body. A
changed body byte must break the quote signature, so the v5 signed bytes are not a guess.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave_kms.attestation import second_opinion, verify, x509chain
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.policy import Policy, validate
from enclave_kms.attestation.tdx_policy import TdxRules
from enclave_kms.errors import PolicyError, SignatureError
from enclave_kms.sgx.quote import Quote, parse_quote
from enclave_kms.sgx.tdx import TdReport10, TdReport15
from tests.attestation.test_policy import verified_from
from tests.attestation.test_verify_vectors import INTEL, phala_tdx

WHEN = datetime(2025, 6, 1, tzinfo=UTC)  # inside both PCK chains' validity
TRUSTEE_V5 = "coco-trustee/tdx_quote_5.dat"
AZURE_TD = "coco-trustee/az-tdx-vtpm-td-quote.bin"


def _collateral_free_steps(quote: Quote) -> None:
    certs = tuple(verify._pck_certificates(quote, None))
    chain = x509chain.verify_chain(certs, INTEL, WHEN, what="PCK", step="pck_chain")
    verify._verify_qe_report(VerificationCache.disabled(), quote, chain.leaf)
    verify._verify_quote_signature(quote)


@pytest.mark.parametrize(
    ("rel", "version", "body"), [(TRUSTEE_V5, 5, TdReport15), (AZURE_TD, 4, TdReport10)]
)
def test_real_td_quotes_pass_every_collateral_free_step(
    sgx_testdata: Path, rel: str, version: int, body: type
) -> None:
    raw = (sgx_testdata / rel).read_bytes()
    quote = verify.parse_and_check_quote(raw)  # v5 is no longer refused
    assert (quote.version, type(quote.body)) == (version, body)
    _collateral_free_steps(quote)
    # Flip one byte of the TD's MRTD: the quote signature (over the v5 descriptor too) breaks.
    assert isinstance(quote.body, TdReport10)
    offset = raw.find(quote.body.mr_td)
    assert offset > 0
    bad = parse_quote(raw[:offset] + bytes([raw[offset] ^ 1]) + raw[offset + 1 :])
    with pytest.raises(SignatureError):
        verify._verify_quote_signature(bad)


def test_v5_mr_service_td_and_azure_sept_ve_are_policy_fields_not_invalid(
    sgx_testdata: Path,
) -> None:
    """Issue 17 defect 5: dcap-qvl refuses both (nonzero MR_SERVICETD on a real v5 quote; the
    Azure TD without SEPT_VE_DISABLE); Intel's QVL checks neither. Here they are policy."""
    collateral = phala_tdx(sgx_testdata).collateral
    v5 = verified_from((sgx_testdata / TRUSTEE_V5).read_bytes())
    azure = verified_from((sgx_testdata / AZURE_TD).read_bytes())
    for verified in (v5, azure):
        assert second_opinion.not_applicable(verified.quote, collateral) is not None
    v5_body, azure_body = v5.quote.body, azure.quote.body
    assert isinstance(v5_body, TdReport15)
    assert isinstance(azure_body, TdReport10)
    assert v5_body.mr_service_td != bytes(48)
    validate(v5, Policy(tdx=TdxRules(mr_td=(v5_body.mr_td,))))
    with pytest.raises(PolicyError, match="mr_service_td"):
        validate(v5, Policy(tdx=TdxRules(mr_td=(v5_body.mr_td,), mr_service_td=bytes(48))))
    with pytest.raises(PolicyError, match="SEPT_VE_DISABLE"):
        validate(azure, Policy(tdx=TdxRules(mr_td=(azure_body.mr_td,))))
    relaxed = TdxRules(mr_td=(azure_body.mr_td,), require_sept_ve_disable=False)
    validate(azure, Policy(tdx=relaxed))
