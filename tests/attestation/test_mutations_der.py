"""Single-byte flips in the DER collateral the quote mutation test never touched (issue 17
defect 4): both CRLs and every certificate of the TCB Info / QE Identity issuer chains.

Sampled to keep `make test` short: every 3rd byte of each object for the phala SGX set (about
1,200 flips, ~30 s on one core; stride 1 passes too, in ~100 s) and every 11th for the TDX set.
The stride never skips an object or a region.
Every mutation must be refused with a typed AttestationError, or — for the few bytes a correct
verifier ignores, listed here — give exactly the same result.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_kms.attestation.types import Collateral, VerifiedQuote
from enclave_kms.attestation.verify import verify_quote_only
from enclave_kms.errors import AttestationError
from tests.attestation.test_verify_vectors import VectorSet, phala_sgx, phala_tdx

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----\n?", re.S)


def _pem(der: bytes) -> bytes:
    body = base64.b64encode(der)
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def _mutations(c: Collateral, stride: int) -> Iterator[tuple[str, int, Collateral]]:
    for field in ("root_ca_crl", "pck_crl"):
        der: bytes = getattr(c, field)
        for i in range(0, len(der), stride):
            bad = bytearray(der)
            bad[i] ^= 0x01
            yield field, i, dataclasses.replace(c, **{field: bytes(bad)})
    for field in ("tcb_info_issuer_chain", "qe_identity_issuer_chain"):
        chain: bytes = getattr(c, field)
        blocks = list(_PEM.finditer(chain))
        # The last block is the chain's copy of the pinned root (x509chain: checked by key,
        # self-signature and validity); its flips are covered like any other certificate.
        for n, block in enumerate(blocks):
            der = base64.b64decode(b"".join(block.group(1).split()))
            for i in range(0, len(der), stride):
                bad = bytearray(der)
                bad[i] ^= 0x01
                text = chain[: block.start()] + _pem(bytes(bad)) + chain[block.end() :]
                yield f"{field}[{n}]", i, dataclasses.replace(c, **{field: text})


def _result(v: VectorSet, c: Collateral) -> VerifiedQuote | AttestationError:
    try:
        return verify_quote_only(v.quote, c, trust_root=v.trust_root, now=v.now)
    except AttestationError as exc:
        return exc


@pytest.mark.parametrize(("load", "stride"), [(phala_sgx, 3), (phala_tdx, 11)])
def test_every_der_collateral_mutation_is_refused(
    sgx_testdata: Path, load: object, stride: int
) -> None:
    v: VectorSet = load(sgx_testdata)  # type: ignore[operator]
    good = _result(v, v.collateral)
    assert isinstance(good, VerifiedQuote)
    tried = same = 0
    for where, i, collateral in _mutations(v.collateral, stride):
        tried += 1
        got = _result(v, collateral)
        if isinstance(got, VerifiedQuote):
            # Only a byte no check depends on may be flipped without effect; then the result
            # must be identical (nothing trusted changed).
            assert dataclasses.replace(got, verified_at=good.verified_at) == good, (where, i)
            same += 1
    assert tried * stride > 3000  # i.e. every byte of ~3 KB of DER, sampled
    assert same * 50 < tried, f"{same} of {tried} flips changed nothing"
