"""SGX / TDX / Open Enclave data structures: pure parse and build, exact byte round trips.

Submodules: `report` (REPORT, TARGETINFO), `quote` (DCAP quotes v3/v4/v5), `tdx` (TD report
bodies), `pck` (PCK certificate SGX extension), `oe` (Open Enclave report/evidence/claims),
`tutorial` (the enclave-info JSON). The main names are re-exported here.
"""

from __future__ import annotations

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
