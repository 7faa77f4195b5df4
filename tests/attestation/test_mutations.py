"""Bit flips in every signed region of every real quote with full collateral must be rejected.

For each set that verifies (SOURCES.md), each byte of the quote's header, body, signature,
attestation key, QE report, QE report signature, QE auth data, length fields and certification
data is XORed with 0x01 (and a second pattern on the fixed-size signed fields), and so is each
byte of the signed TCB Info / QE Identity text and their signatures. Every mutation must raise a
typed AttestationError naming the step that caught it, and wherever dcap-qvl applies (TCB Info
v3, non-debug) dcap-qvl must reject it too.

Every mutated input goes through one `VerificationCache` per set, as an SDK client's
verifications do: the unchanged parts (chain, PCK extension, collateral) are remembered, while
the cache's keys are the exact input bytes, so each mutation is a miss for what it changed and
must still be rejected. The baseline is verified without a cache. This checks the memo under
hostile input too, and keeps the file fast.

Long regions are sampled with a stride (plus every byte of the PEM armour, line breaks and
padding) to keep the file fast; the stride never skips a region. The bytes a correct verifier
may ignore are listed below with the reason; flipping one of them must either be rejected or
give exactly the same verification result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.second_opinion import not_applicable, run_dcap_qvl
from enclave_kms.attestation.types import Collateral, VerifiedQuote
from enclave_kms.attestation.verify import verify_quote_only
from enclave_kms.errors import AttestationError
from enclave_kms.sgx.quote import CERT_TYPE_PCK_CHAIN, parse_quote
from tests.attestation.test_verify_vectors import (
    VectorSet,
    automata_sgx,
    automata_tdx,
    intel_test_pki,
    oe_evidence,
    phala_sgx,
    phala_tdx,
)

# --------------------------------------------------------------------------- what may be ignored

# Bytes of a type-5 PEM chain that a correct verifier may ignore (ours and dcap-qvl alike):
#  * line breaks: "\n" XOR 1 is "\v", which PEM readers skip as whitespace like "\n";
#  * the NUL padding QEs append after the last PEM block: PEM readers skip text outside blocks;
#  * the BEGIN/END armour lines of the chain's last block (its copy of the root): breaking them
#    makes the PEM reader skip that block, and the chain then stops at the PCK CA, which is
#    checked against the *pinned* root directly (the copy is redundant; x509chain). Any flip
#    inside the copy itself breaks its self-signature and is rejected.
# And ours only:
#  * type-1 certification data (PPID, CPUSVN, PCESVN in clear, Intel test-PKI set): nothing
#    signs it and with an explicit PCK chain nothing uses it (Intel's QVL ignores it too).
IGNORED_PEM = "pem-whitespace-or-padding"
IGNORED_ROOT_ARMOUR = "root-copy-armour"
IGNORED_TYPE1 = "type-1-certification-data"

# Where dcap-qvl accepts what we reject (the test checks we do). Strictness, not security:
#  * the whole root PEM block: dcap-qvl anchors on the root it is given and never reads the
#    copy; we check the copy's self-signature and validity as Intel's QVL does;
#  * framing fields it does not cross-check: the signature-data length (when trailing padding
#    absorbs the change), the type of the v4 type-6 record and the certification-data size.
#    Our parser requires exact framing (sgx/quote.py); none of these is signed.
DCAP_LENIENT_REGIONS = ("sig_len", "qe_cert_header", "cert_header")

# Which verification step may catch a flip in each region (the first check that covers it).
STEPS = {
    "header": {"parse", "quote_signature"},
    "body": {"quote_signature"},
    "sig_len": {"parse"},
    "signature": {"quote_signature"},
    "attestation_key": {"qe_report_data"},  # bound by the QE report before the quote signature
    "qe_cert_header": {"parse"},
    "qe_report": {"qe_report_signature"},
    "qe_report_signature": {"qe_report_signature"},
    "auth_size": {"parse"},
    "auth_data": {"qe_report_data"},
    "cert_header": {"parse"},
    "cert_data": {"pck_chain"},
}


@dataclass(frozen=True)
class Region:
    name: str
    start: int
    end: int


def quote_regions(raw: bytes) -> list[Region]:
    """The quote's fields by offset (the signed regions and the framing that holds them)."""
    quote = parse_quote(raw)
    sig = quote.signature_data
    sizes = [("header", 48), ("body", len(quote.body.to_bytes())), ("sig_len", 4)]
    sizes += [("signature", 64), ("attestation_key", 64)]
    if quote.version >= 4:
        sizes.append(("qe_cert_header", 6))
    sizes += [("qe_report", 384), ("qe_report_signature", 64), ("auth_size", 2)]
    sizes += [("auth_data", len(sig.qe_auth_data)), ("cert_header", 6)]
    sizes.append(("cert_data", len(sig.certification_data.data)))
    regions, offset = [], 0
    for name, size in sizes:
        regions.append(Region(name, offset, offset + size))
        offset += size
    assert offset == len(raw) - len(quote.trailing)
    return regions


def ignored_by_us(raw: bytes, regions: list[Region]) -> dict[int, str]:
    """Offsets we may ignore, with the reason (see the list at the top of the file)."""
    cert = next(r for r in regions if r.name == "cert_data")
    quote = parse_quote(raw)
    out: dict[int, str] = {}
    if quote.certification_data.cert_type != CERT_TYPE_PCK_CHAIN:
        return dict.fromkeys(range(cert.start, cert.end), IGNORED_TYPE1)
    data = raw[cert.start : cert.end]
    end_of_pem = data.rindex(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")
    for i in range(len(data)):
        if data[i] == 0x0A or i >= end_of_pem:
            out[cert.start + i] = IGNORED_PEM
    root_begin = data.rindex(b"-----BEGIN CERTIFICATE-----")
    for line_start in (root_begin, data.rindex(b"-----END CERTIFICATE-----")):
        line_end = data.index(b"-----", line_start + 5) + 5
        for i in range(line_start, line_end):
            out.setdefault(cert.start + i, IGNORED_ROOT_ARMOUR)
    return out


def root_block(raw: bytes, regions: list[Region]) -> set[int]:
    """Offsets of the chain's last PEM block (its copy of the root)."""
    cert = next(r for r in regions if r.name == "cert_data")
    data = raw[cert.start : cert.end]
    return set(range(cert.start + data.rindex(b"-----BEGIN"), cert.end))


def positions(
    regions: list[Region], ignored: dict[int, str], stride: int
) -> Iterator[tuple[str, int]]:
    """Every byte of short regions, a stride of long ones, and every possibly-ignored byte."""
    for region in regions:
        step = 1 if region.end - region.start <= 600 else stride
        for i in range(region.start, region.end):
            if (i - region.start) % step == 0 or i in ignored:
                yield region.name, i


# --------------------------------------------------------------------------- the sets


@dataclass(frozen=True)
class Case:
    load: Callable[[Path], VectorSet]
    stride: int  # for long regions (PEM chain, TCB Info text)


CASES = {
    "phala-sgx": Case(phala_sgx, 3),
    "phala-tdx": Case(phala_tdx, 3),
    "automata-tdx": Case(automata_tdx, 5),
    "automata-sgx": Case(automata_sgx, 7),
    "intel-test-pki": Case(intel_test_pki, 7),
    "oe-evidence": Case(oe_evidence, 7),
}


def _ours(
    v: VectorSet, quote: bytes, collateral: Collateral, cache: VerificationCache | None = None
) -> VerifiedQuote | AttestationError:
    try:
        return verify_quote_only(
            quote,
            collateral,
            trust_root=v.trust_root,
            now=v.now,
            pck_chain=v.pck_chain,
            cache=cache,
        )
    except AttestationError as exc:
        return exc


def _same_result(a: VerifiedQuote, b: VerifiedQuote) -> bool:
    fields = ("tcb_status", "advisory_ids", "fmspc", "pck_ca", "collateral_expiry", "tee")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (
        a.quote.signed_bytes == b.quote.signed_bytes
    )


def _dcap_applies(v: VectorSet) -> bool:
    return v.pck_chain is None and not_applicable(parse_quote(v.quote), v.collateral) is None


@pytest.mark.parametrize("name", list(CASES))
def test_every_quote_mutation_is_rejected(sgx_testdata: Path, name: str) -> None:
    case = CASES[name]
    v = case.load(sgx_testdata)
    baseline = _ours(v, v.quote, v.collateral)
    assert isinstance(baseline, VerifiedQuote), baseline
    dcap = _dcap_applies(v)
    assert dcap == (name in {"phala-sgx", "phala-tdx", "automata-tdx"})
    regions = quote_regions(v.quote)
    ignored = ignored_by_us(v.quote, regions)
    dcap_ignores = (set(ignored) | root_block(v.quote, regions)) if dcap else set()
    tried, ignored_hits = 0, 0
    cache = VerificationCache()
    for region, i in positions(regions, ignored, case.stride):
        patterns = (0x01, 0x80) if region in {"header", "qe_report", "signature"} else (0x01,)
        for pattern in patterns:
            mutated = bytearray(v.quote)
            mutated[i] ^= pattern
            tried += 1
            ours = _ours(v, bytes(mutated), v.collateral, cache)
            where = f"{name} {region} offset {i} ^ {pattern:#x}"
            if isinstance(ours, VerifiedQuote):
                assert i in ignored, f"{where}: accepted"
                assert _same_result(ours, baseline), f"{where}: accepted with another result"
                ignored_hits += 1
            else:
                assert ours.step in STEPS[region], f"{where}: caught at {ours.step}: {ours}"
            if dcap:
                theirs = run_dcap_qvl(
                    bytes(mutated), v.collateral, trust_root=v.trust_root, now=v.now
                )
                if theirs.accepted and i not in dcap_ignores:
                    assert region in DCAP_LENIENT_REGIONS, f"{where}: dcap-qvl accepts"
                    assert isinstance(ours, AttestationError), f"{where}: both accept"
    assert tried > 1000
    assert ignored_hits > 0  # the ignorable bytes listed above are real, not hypothetical
    assert cache.hits > 0


def _collateral_mutations(c: Collateral, stride: int) -> Iterator[tuple[str, int, Collateral]]:
    for field in ("tcb_info", "qe_identity", "tcb_info_signature", "qe_identity_signature"):
        data: bytes = getattr(c, field)
        step = 1 if len(data) <= 1300 else stride
        for i in range(0, len(data), step):
            mutated = bytearray(data)
            mutated[i] ^= 0x01
            yield field, i, replace(c, **{field: bytes(mutated)})


@pytest.mark.parametrize("name", list(CASES))
def test_every_collateral_text_mutation_is_rejected(sgx_testdata: Path, name: str) -> None:
    case = CASES[name]
    v = case.load(sgx_testdata)
    dcap = _dcap_applies(v)
    stride = 1 if name == "phala-sgx" else case.stride * 2
    count = 0
    cache = VerificationCache()
    for field, i, collateral in _collateral_mutations(v.collateral, stride):
        count += 1
        ours = _ours(v, v.quote, collateral, cache)
        where = f"{name} {field} offset {i}"
        assert isinstance(ours, AttestationError), f"{where}: accepted"
        expected_step = "qe_identity" if field.startswith("qe_identity") else "tcb_info"
        assert ours.step == expected_step, f"{where}: caught at {ours.step}: {ours}"
        if dcap:
            theirs = run_dcap_qvl(v.quote, collateral, trust_root=v.trust_root, now=v.now)
            assert not theirs.accepted, f"{where}: dcap-qvl accepts"
    assert count > 200
    assert cache.hits >= count  # the unchanged chain came from the memo every time
