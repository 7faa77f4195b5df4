"""DCAP quote verification with collateral in memory: ours next to dcap-qvl alone.

Two vectors: Intel's real SGX quote from the phala-dcap-qvl set at the time its SOURCES.md
gives, and a quote of a freshly initialised simulated platform with its own collateral (a
chain of the same shape under the simulated root). Rows:

- `verify-dcap` / enclave-kms, `second_opinion=false`: `verify_quote_only`, repeated calls
  with one `VerificationCache` (the pure checks of collateral and chains hit it, so this is the
  per-quote cost on a verifier that has seen the platform's collateral before);
- `verify-dcap` / enclave-kms, `second_opinion=true`: `verify_quote`, what the product runs
  (ours, then dcap-qvl, and both answers compared);
- `verify-dcap` / dcap-qvl: `dcap_qvl.verify` (`verify_with_root_ca` for the simulated root);
- `verify-dcap-cold` / enclave-kms: a new, empty cache for each call, i.e. the first
  quote of a platform (dcap-qvl keeps no cache, so its `verify-dcap` row is the peer).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dcap_qvl
from cryptography.hazmat.primitives.serialization import Encoding

from bench.measure import Case, RunSample, timed_loop
from bench.sdk import clear_memos
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.collateral import load_collateral, to_dcap_qvl
from enclave_kms.attestation.types import Collateral, TcbStatus, TrustRoot
from enclave_kms.attestation.verify import verify_quote, verify_quote_only
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes

REPO = Path(__file__).resolve().parents[1]
PHALA = REPO / "tests" / "vectors" / "sgx" / "phala-dcap-qvl"
PHALA_TIME = 1752919277  # SOURCES.md: 2025-07-19T10:01:17Z
PHALA_STATUS = TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED

RELEASE = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 0x3)
BENCH_ENCLAVE = EnclaveIdentity(bytes([0xBE]) * 32, bytes([0x5C]) * 32, 1, 1, RELEASE)


@dataclass(frozen=True)
class Vector:
    """A quote with everything needed to verify it, all in memory."""

    name: str
    quote: bytes
    collateral: Collateral
    trust_root: TrustRoot
    now: datetime
    expected: TcbStatus
    intel_root: bool  # dcap_qvl.verify (built-in Intel root) vs verify_with_root_ca

    def dcap_qvl_call(self) -> Callable[[], object]:
        theirs = to_dcap_qvl(self.collateral)
        stamp = int(self.now.timestamp())
        if self.intel_root:
            return lambda: dcap_qvl.verify(self.quote, theirs, stamp)
        root_der = self.trust_root.certificate.public_bytes(Encoding.DER)
        return lambda: dcap_qvl.verify_with_root_ca(self.quote, theirs, root_der, stamp)


def phala_vector() -> Vector:
    return Vector(
        name="phala-sgx",
        quote=(PHALA / "sgx_quote").read_bytes(),
        collateral=load_collateral((PHALA / "sgx_quote_collateral.json").read_bytes()),
        trust_root=TrustRoot.intel_production(),
        now=datetime.fromtimestamp(PHALA_TIME, UTC),
        expected=PHALA_STATUS,
        intel_root=True,
    )


def simulated_vector(workdir: Path) -> Vector:
    platform = SimPlatform.init(workdir / "attestation-platform")
    now = datetime.now(UTC).replace(microsecond=0)
    quote = platform.quote(BENCH_ENCLAVE, hashlib.sha512(b"bench report data").digest())
    return Vector(
        name="simulated",
        quote=quote,
        collateral=platform.collateral(now),
        trust_root=platform.trust_root(),
        now=now,
        expected=TcbStatus.UP_TO_DATE,
        intel_root=False,
    )


def clear_verifier_caches() -> None:
    """Forget every memoised check of `enclave_kms` (verify, second opinion, collateral):
    what the first quote of a platform pays."""
    clear_memos()


def _check(vector: Vector) -> None:
    """Refuse to time a verification that does not give the expected answer."""
    ours = verify_quote(
        vector.quote, vector.collateral, trust_root=vector.trust_root, now=vector.now
    )
    if ours.tcb_status != vector.expected:
        raise AssertionError(f"{vector.name}: status {ours.tcb_status}, want {vector.expected}")
    report: Any = vector.dcap_qvl_call()()
    if str(report.status) != vector.expected.value:
        raise AssertionError(f"{vector.name}: dcap-qvl says {report.status}")


def vector_cases(vector: Vector, seconds: float) -> list[Case]:
    _check(vector)
    warm = VerificationCache()  # what a long-lived verifier holds (the SDK keeps one)
    state = {"cache": warm}

    def ours_only() -> object:
        return verify_quote_only(
            vector.quote,
            vector.collateral,
            trust_root=vector.trust_root,
            now=vector.now,
            cache=state["cache"],
        )

    def ours_full() -> object:
        return verify_quote(
            vector.quote,
            vector.collateral,
            trust_root=vector.trust_root,
            now=vector.now,
            cache=state["cache"],
        )

    theirs = vector.dcap_qvl_call()
    extra: dict[str, Any] = {"vector": vector.name}
    specs: list[tuple[str, str, Callable[[], object], dict[str, Any], bool]] = [
        ("verify-dcap", "enclave-kms", ours_only, {"second_opinion": False}, False),
        ("verify-dcap", "enclave-kms", ours_full, {"second_opinion": True}, False),
        ("verify-dcap", "dcap-qvl", theirs, {}, False),
        ("verify-dcap-cold", "enclave-kms", ours_only, {"second_opinion": False}, True),
        ("verify-dcap-cold", "enclave-kms", ours_full, {"second_opinion": True}, True),
    ]
    out = []
    for name, system, op, fields, cold in specs:

        def fresh_cache() -> None:
            state["cache"] = VerificationCache()
            clear_verifier_caches()

        def run(op: Callable[[], object] = op, cold: bool = cold) -> RunSample:
            if cold:
                try:
                    return timed_loop(op, seconds, min_ops=3, before=fresh_cache)
                finally:
                    state["cache"] = warm
            op()
            return timed_loop(op, seconds, min_ops=3)

        row_extra = {**extra, **fields}
        if cold:
            row_extra["peer_name"] = "verify-dcap"
        out.append(Case(name, system, "attestation", run, extra=row_extra, warmup=op))
    return out


def cases(seconds: float, workdir: Path | None = None) -> list[Case]:
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bench-attestation-"))
    return vector_cases(phala_vector(), seconds) + vector_cases(simulated_vector(workdir), seconds)
