"""TCG DICE tagged evidence (OID 2.23.133.5.4.9), as Gramine's RA-TLS (since v1.8) writes it.

The extension value is CBOR: ``tag 60000 ( [ bstr quote, bstr claims ] )`` where `claims` is a
serialized CBOR map with at least ``"pubkey-hash": bstr(serialized [ hash-alg-id, bstr digest ])``
(hash-alg-id from IANA's Named Information registry: 1 = SHA-256, 7 = SHA-384, 8 = SHA-512), the
digest is over the certificate's DER SubjectPublicKeyInfo, and the quote's `report_data[0:32]`
is SHA-256 of the serialized claims. So the quote binds the claims and the claims bind the key.

Parsing is strict (exact shapes, definite lengths as cbor2 decodes them, known hash ids) and
raises only FormatError; the binding checks raise BindingError.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import cbor2

from enclave_kms.errors import BindingError, FormatError

DICE_TAGGED_EVIDENCE_OID = "2.23.133.5.4.9"
TEE_QUOTE_CBOR_TAG = 60000
PUBKEY_HASH = "pubkey-hash"
_HASHES = {1: "sha256", 7: "sha384", 8: "sha512"}
_STEP = "ratls_evidence"


@dataclass(frozen=True)
class TaggedEvidence:
    """The quote, the exact serialized claims it binds, and the claimed key hash."""

    quote: bytes
    claims: bytes
    pubkey_hash_alg: int
    pubkey_hash: bytes


def _loads(data: bytes, what: str) -> object:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises many unrelated types on garbage
        raise FormatError(f"{what}: not CBOR ({type(exc).__name__})", step=_STEP) from None


def parse_tagged_evidence(value: bytes) -> TaggedEvidence:
    """Split a tagged-evidence extension value; FormatError for any other shape."""
    obj = _loads(bytes(value), "DICE tagged evidence")
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != TEE_QUOTE_CBOR_TAG:
        raise FormatError(f"DICE tagged evidence: not CBOR tag {TEE_QUOTE_CBOR_TAG}", step=_STEP)
    item = obj.value
    if not isinstance(item, list | tuple) or len(item) != 2:
        raise FormatError("DICE tagged evidence: expected [quote, claims]", step=_STEP)
    quote, claims = item
    if not isinstance(quote, bytes) or not isinstance(claims, bytes) or not quote or not claims:
        raise FormatError("DICE tagged evidence: quote and claims must be byte strings", step=_STEP)
    doc = _loads(claims, "DICE claims")
    if not isinstance(doc, dict) or not doc or not all(isinstance(k, str) and k for k in doc):
        raise FormatError("DICE claims: expected a map with text keys", step=_STEP)
    entry_bytes = doc.get(PUBKEY_HASH)
    if not isinstance(entry_bytes, bytes):
        raise FormatError(f"DICE claims: no {PUBKEY_HASH!r} byte string", step=_STEP)
    entry = _loads(entry_bytes, "DICE pubkey-hash")
    if (
        not isinstance(entry, list | tuple)
        or len(entry) != 2
        or type(entry[0]) is not int
        or not isinstance(entry[1], bytes)
    ):
        raise FormatError("DICE pubkey-hash: expected [hash-alg-id, digest]", step=_STEP)
    alg, digest = entry
    name = _HASHES.get(alg)
    if name is None or len(digest) != hashlib.new(name).digest_size:
        raise FormatError(f"DICE pubkey-hash: unsupported hash id {alg}", step=_STEP)
    return TaggedEvidence(quote, claims, alg, digest)


def check_tagged_binding(evidence: TaggedEvidence, spki_der: bytes, report_data: bytes) -> None:
    """The claims name this key, and the quote binds the claims."""
    expected = hashlib.new(_HASHES[evidence.pubkey_hash_alg], spki_der).digest()
    if not hmac.compare_digest(evidence.pubkey_hash, expected):
        raise BindingError(
            "DICE claims name another public key than this certificate's", step="ratls_binding"
        )
    if not hmac.compare_digest(report_data[:32], hashlib.sha256(evidence.claims).digest()):
        raise BindingError(
            "report_data does not bind the DICE claims: the evidence belongs to another key",
            step="ratls_binding",
        )


def claims_for(spki_der: bytes) -> bytes:
    """The serialized claims our enclaves emit: only the SHA-256 key hash (as Gramine)."""
    entry = cbor2.dumps([1, hashlib.sha256(spki_der).digest()])
    return cbor2.dumps({PUBKEY_HASH: entry})


def build_tagged_evidence(quote: bytes, claims: bytes) -> bytes:
    """The extension value for `quote` (whose report_data[0:32] = SHA-256(claims))."""
    return cbor2.dumps(cbor2.CBORTag(TEE_QUOTE_CBOR_TAG, [bytes(quote), bytes(claims)]))
