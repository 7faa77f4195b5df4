"""SGX / TDX / Open Enclave data structures: pure parse and build, exact byte round trips.

Submodules: `report` (REPORT, TARGETINFO), `quote` (DCAP quotes v3/v4/v5), `tdx` (TD report
bodies), `pck` (PCK certificate SGX extension), `oe` (Open Enclave report/evidence/claims),
`tutorial` (the enclave-info JSON). The main names are re-exported here, each
imported on first use: a caller that needs one structure (the policy engine needs TD report
bodies) does not pay for the quote, PCK (pyasn1) and X.509 parsers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enclave_kms.sgx.oe import (
        CustomClaim,
        OeEvidence,
        OeReportHeader,
        parse_custom_claims,
        parse_oe_evidence,
        parse_oe_report,
        serialize_custom_claims,
    )
    from enclave_kms.sgx.pck import (
        PckConfiguration,
        PckExtension,
        build_pck_extension,
        parse_pck_extension,
        pck_ca_kind,
    )
    from enclave_kms.sgx.quote import (
        CertificationData,
        EcdsaSignatureData,
        Quote,
        QuoteHeader,
        parse_quote,
    )
    from enclave_kms.sgx.report import Attributes, Report, ReportBody, TargetInfo
    from enclave_kms.sgx.tdx import TdReport10, TdReport15
    from enclave_kms.sgx.tutorial import EnclaveInfo

# public name -> the submodule defining it
_SOURCES = {
    "Attributes": "report",
    "CertificationData": "quote",
    "CustomClaim": "oe",
    "EcdsaSignatureData": "quote",
    "EnclaveInfo": "tutorial",
    "OeEvidence": "oe",
    "OeReportHeader": "oe",
    "PckConfiguration": "pck",
    "PckExtension": "pck",
    "Quote": "quote",
    "QuoteHeader": "quote",
    "Report": "report",
    "ReportBody": "report",
    "TargetInfo": "report",
    "TdReport10": "tdx",
    "TdReport15": "tdx",
    "build_pck_extension": "pck",
    "parse_custom_claims": "oe",
    "parse_oe_evidence": "oe",
    "parse_oe_report": "oe",
    "parse_pck_extension": "pck",
    "parse_quote": "quote",
    "pck_ca_kind": "pck",
    "serialize_custom_claims": "oe",
}

__all__ = [
    "Attributes",
    "CertificationData",
    "CustomClaim",
    "EcdsaSignatureData",
    "EnclaveInfo",
    "OeEvidence",
    "OeReportHeader",
    "PckConfiguration",
    "PckExtension",
    "Quote",
    "QuoteHeader",
    "Report",
    "ReportBody",
    "TargetInfo",
    "TdReport10",
    "TdReport15",
    "build_pck_extension",
    "parse_custom_claims",
    "parse_oe_evidence",
    "parse_oe_report",
    "parse_pck_extension",
    "parse_quote",
    "pck_ca_kind",
    "serialize_custom_claims",
]


def __getattr__(name: str) -> Any:
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{source}"), name)
