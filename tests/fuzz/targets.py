"""One fuzz target per untrusted-bytes parser: each must return or raise `EnclaveKMSError`.

Anything else escaping (TypeError, OverflowError, a `cryptography` exception…) is a crash:
under atheris (`make fuzz`) it stops the run with the input; in the test suite
(`tests/test_fuzz_targets.py`) a bounded run over mutations of the real vectors asserts none.
Issue 17's crash inputs are the first seeds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from enclave_kms import edl
from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.dice import parse_tagged_evidence
from enclave_kms.attestation.evidence import load_evidence
from enclave_kms.attestation.ratls import RaTlsCertificate, extract_evidence
from enclave_kms.attestation.tcb_info import EnclaveIdentity, TcbInfo
from enclave_kms.errors import EnclaveKMSError
from enclave_kms.sgx.quote import parse_quote

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sgx"
NOW = datetime(2025, 7, 19, 10, 0, tzinfo=UTC)

# Minimal crashes found by coverage-guided fuzzing (issue 17), kept as seeds.
CRASH_SEEDS = {
    "ratls": [bytes.fromhex("300c3088ffffffffffffffff00")],
    "edl": [bytes.fromhex("a2626964016174a1616101")],
}


def _quote(data: bytes) -> None:
    quote = parse_quote(data)
    quote.pck_certificates() if quote.certification_data.cert_type == 5 else None


def _evidence(data: bytes) -> None:
    load_evidence(data).check_bindings(now=NOW)


def _ratls(data: bytes) -> None:
    extract_evidence(RaTlsCertificate.parse(data))


def _collateral(data: bytes) -> None:
    load_collateral(data)


def _tcb_info(data: bytes) -> None:
    TcbInfo.parse(data)


def _qe_identity(data: bytes) -> None:
    EnclaveIdentity.parse(data)


def _edl(data: bytes) -> None:
    edl.decode_frame(data)


def _dice(data: bytes) -> None:
    parse_tagged_evidence(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "quote": _quote,
    "evidence": _evidence,
    "ratls": _ratls,
    "collateral": _collateral,
    "tcb_info": _tcb_info,
    "qe_identity": _qe_identity,
    "edl": _edl,
    "dice": _dice,
}


def run_one(name: str, data: bytes) -> None:
    """The harness body: typed errors are fine, everything else propagates (a crash)."""
    try:
        TARGETS[name](data)
    except EnclaveKMSError:
        pass


def seeds(name: str) -> list[bytes]:
    """Real inputs for a target (vectors from tests/vectors/sgx), plus its crash seeds."""
    out = list(CRASH_SEEDS.get(name, []))
    phala = VECTORS / "phala-dcap-qvl"
    doc = json.loads((phala / "sgx_quote_collateral.json").read_text())
    if name in ("quote", "evidence"):
        out += [(phala / "sgx_quote").read_bytes(), (phala / "tdx_quote_outdated").read_bytes()]
    if name == "evidence":
        out.append((VECTORS / "openenclave-tests" / "evidence").read_bytes())
    if name == "ratls":
        out.append((VECTORS / "openenclave-tests" / "sgx_cert_ec_bad.der").read_bytes())
    if name == "collateral":
        out.append((phala / "sgx_quote_collateral.json").read_bytes())
    if name == "tcb_info":
        out.append(doc["tcb_info"].encode())
    if name == "qe_identity":
        out.append(doc["qe_identity"].encode())
    if name == "edl":
        frame = edl.Frame(1, "call", fn="get_report", body={})
        out.append(edl.encode_frame(frame)[4:])
    if name == "dice":
        out.append(bytes.fromhex("d9ea6082416141") + b"\x62")
    return out
