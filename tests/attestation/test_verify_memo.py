"""The explicit verification cache never stands in for a check on different bytes or times.

The caller's `VerificationCache` remembers time-free checks (chains, CRLs, parsed collateral,
signatures) by exact bytes, successes only, bounded; validity windows are re-checked at every
`now`; the second opinion caches only conversions of its inputs and still asks dcap-qvl about
every quote. There is no module-level cache left to hit or to poison.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from enclave_kms.attestation import second_opinion, verify
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.verify import verify_quote, verify_quote_only
from enclave_kms.errors import CertificateChainError, CollateralExpiredError, SignatureError
from enclave_kms.sgx.quote import parse_quote
from tests.attestation.test_verify_vectors import INTEL, phala_sgx, phala_tdx


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _raw_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _warm(sgx_testdata: Path) -> tuple[Any, VerificationCache]:
    """Verify the good vector twice; the second time must be served by the cache."""
    v = phala_sgx(sgx_testdata)
    cache = VerificationCache()
    verify_quote_only(v.quote, v.collateral, trust_root=INTEL, now=v.now, cache=cache)
    verify_quote_only(v.quote, v.collateral, trust_root=INTEL, now=v.now, cache=cache)
    sigs = cache.stats()["p256_signature"]
    assert sigs["hits"] >= 3  # TCB Info, QE Identity, QE report
    return v, cache


def test_every_time_free_check_hits_across_calls_at_different_times(sgx_testdata: Path) -> None:
    """The old module memos keyed chains and CRLs by `now` and never hit across calls (0 of
    15); the explicit cache does, at another second, for every kind of check."""
    v = phala_sgx(sgx_testdata)
    cache = VerificationCache()
    verify_quote_only(v.quote, v.collateral, trust_root=INTEL, now=v.now, cache=cache)
    misses = cache.misses
    later = v.now - timedelta(hours=1)
    verify_quote_only(v.quote, v.collateral, trust_root=INTEL, now=later, cache=cache)
    stats = cache.stats()
    assert cache.misses == misses  # nothing recomputed
    for kind in ("pem_chain", "chain", "crl", "tcb_info", "qe_identity", "pck_extension"):
        assert stats[kind]["hits"] >= 1, (kind, stats)
    assert cache.hits >= 10


def test_a_cache_hit_still_checks_every_window_at_now(sgx_testdata: Path) -> None:
    v, cache = _warm(sgx_testdata)
    with pytest.raises(CollateralExpiredError):  # collateral expired a day later
        verify_quote_only(
            v.quote, v.collateral, trust_root=INTEL, now=v.now + timedelta(days=60), cache=cache
        )
    with pytest.raises(CertificateChainError, match="expired"):  # the PCK chain much later
        verify_quote_only(
            v.quote, v.collateral, trust_root=INTEL, now=v.now + timedelta(days=9000), cache=cache
        )


@pytest.mark.parametrize(
    ("field", "step"),
    [
        ("tcb_info", "tcb_info"),
        ("tcb_info_signature", "tcb_info"),
        ("qe_identity", "qe_identity"),
        ("qe_identity_signature", "qe_identity"),
    ],
)
def test_a_changed_collateral_byte_fails_after_the_memo_saw_the_good_bytes(
    sgx_testdata: Path, field: str, step: str
) -> None:
    v, cache = _warm(sgx_testdata)
    good = getattr(v.collateral, field)
    for index in (0, len(good) // 2, len(good) - 1):
        bad = dataclasses.replace(v.collateral, **{field: _flip(good, index)})
        with pytest.raises(SignatureError) as info:
            verify_quote_only(v.quote, bad, trust_root=INTEL, now=v.now, cache=cache)
        assert info.value.step == step
    # And the good bytes still verify: failures were not cached either way.
    verify_quote_only(v.quote, v.collateral, trust_root=INTEL, now=v.now, cache=cache)


def test_a_changed_qe_report_byte_fails_after_the_memo_saw_the_good_bytes(
    sgx_testdata: Path,
) -> None:
    v, cache = _warm(sgx_testdata)
    sig = parse_quote(v.quote).signature_data
    for field in (sig.qe_report.to_bytes(), sig.qe_report_signature):
        start = v.quote.find(field)
        assert start > 0
        # The CPUSVN at the start of the QE report, or the first byte of its signature.
        bad = _flip(v.quote, start)
        with pytest.raises(SignatureError) as info:
            verify_quote_only(bad, v.collateral, trust_root=INTEL, now=v.now, cache=cache)
        assert info.value.step == "qe_report_signature"


def test_the_cache_is_keyed_by_the_signer_key() -> None:
    cache = VerificationCache()
    data = b'{"id":"QE","version":2}'
    signer = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    signature = _raw_sign(signer, data)
    verify.verify_p256_signature_cached(
        cache, signer.public_key(), signature, data, what="doc", step="tcb_info"
    )
    with pytest.raises(SignatureError, match="does not verify"):
        verify.verify_p256_signature_cached(
            cache, other.public_key(), signature, data, what="doc", step="tcb_info"
        )


def test_the_cache_refuses_a_key_that_is_not_p256_before_looking_anything_up() -> None:
    cache = VerificationCache()
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(SignatureError, match="not ECDSA P-256"):
        verify.verify_p256_signature_cached(
            cache, key, bytes(64), b"x", what="doc", step="tcb_info"
        )
    assert cache.misses == 0


def test_the_cache_stays_bounded_and_keeps_no_failure() -> None:
    maxsize = 16
    cache = VerificationCache(maxsize=maxsize)
    signer = ec.generate_private_key(ec.SECP256R1())
    for n in range(maxsize + 20):
        data = b"document %d" % n
        verify.verify_p256_signature_cached(
            cache, signer.public_key(), _raw_sign(signer, data), data, what="doc", step="t"
        )
        assert len(cache) <= maxsize
    assert len(cache) == maxsize
    cache.clear()
    for _ in range(2):
        with pytest.raises(SignatureError):
            verify.verify_p256_signature_cached(
                cache, signer.public_key(), bytes(64), b"unsigned", what="doc", step="t"
            )
    assert len(cache) == 0
    assert cache.stats()["p256_signature"] == {"hits": 0, "misses": 2}


def test_a_disabled_cache_remembers_nothing() -> None:
    cache = VerificationCache.disabled()
    calls = []
    for _ in range(3):
        cache.get("k", b"x", lambda: calls.append(1))
    assert len(calls) == 3
    assert cache.hits == 0


def test_no_module_level_cache_is_left_in_the_trust_core() -> None:
    import enclave_kms.attestation as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "lru_cache" not in text, path.name
        assert "functools.cache" not in text, path.name


def test_dcap_qvl_is_asked_about_every_quote(
    sgx_testdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = phala_sgx(sgx_testdata)
    calls: list[bytes] = []
    real = dcap_qvl.verify_with_root_ca

    def counting(quote: bytes, *args: object) -> object:
        calls.append(quote)
        return real(quote, *args)

    monkeypatch.setattr(dcap_qvl, "verify_with_root_ca", counting)
    cache = VerificationCache()
    for _ in range(3):
        result = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now, cache=cache)
        assert result.second_opinion == "ConfigurationAndSWHardeningNeeded"
    assert calls == [v.quote] * 3


def test_dcap_qvl_sees_changed_collateral_after_the_good_one(sgx_testdata: Path) -> None:
    v = phala_tdx(sgx_testdata)
    for _ in range(2):
        good = second_opinion.run_dcap_qvl(v.quote, v.collateral, trust_root=INTEL, now=v.now)
        assert good.accepted
    text = v.collateral.tcb_info
    bad = dataclasses.replace(v.collateral, tcb_info=_flip(text, len(text) // 2))
    theirs = second_opinion.run_dcap_qvl(v.quote, bad, trust_root=INTEL, now=v.now)
    assert not theirs.accepted


def test_the_second_opinion_version_peek_is_lenient(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    # The peek is lenient: not JSON, not an object or not an integer is "unknown".
    assert second_opinion._json_version(b"\xff") is None
    assert second_opinion._json_version(b"[3]") is None
    assert second_opinion._json_version(b'{"version": true}') is None
    assert second_opinion._tcb_info_version(v.collateral) == 3


def test_collateral_that_cannot_key_the_memo_is_still_converted(sgx_testdata: Path) -> None:
    v = phala_tdx(sgx_testdata)
    crl: Any = bytearray(v.collateral.root_ca_crl)  # unhashable: cannot key the memo
    loose = dataclasses.replace(v.collateral, root_ca_crl=crl)
    theirs = second_opinion.run_dcap_qvl(
        v.quote, loose, trust_root=INTEL, now=v.now, cache=VerificationCache()
    )
    assert theirs == second_opinion.DcapQvlResult(True, "UpToDate", ())
