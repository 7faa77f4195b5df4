"""The join's wire format and bindings: how the storage root key (SRK) crosses to another
enclave with neither host nor database able to read it. Pure functions, no I/O.

    joiner                                   peer (a running replica, over its RA-TLS server)
      ── POST /v1/sys/replicas/challenge ──▶  challenge = time ‖ random ‖ MAC (single use, 120 s)
      ◀──────────── challenge ─────────────
      fresh X25519 key pair (in the enclave)
      quote, report_data[0:32] = H(REQUEST ‖ challenge ‖ public_key)
      ── POST /v1/sys/replicas/join {challenge, public_key, quote} ──▶
                                              appraise(quote, replica policy, binding)
                                              sealed_key = HPKE(public_key, SRK,
                                                            info = INFO ‖ challenge ‖ H(quote))
                                              quote', report_data[0:32] =
                                                H(ANSWER ‖ challenge ‖ H(quote) ‖ H(sealed_key))
      ◀──────────── {sealed_key, quote'} ──
      appraise(quote', same signer/product, binding); open sealed_key; appraise quote' again
      against the installation's replica policy (now readable); seal the SRK to this CPU

The SRK is encrypted to a key only the attested joiner holds (its quote binds it), so the host
relaying, a replay of any message or a swapped quote yields nothing but a refusal. HPKE is
RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_kms.errors import CryptoOperationError, InvalidRequestError

LABEL = b"enclave-kms/replica-join/v1"
CHALLENGE_PATH = "/v1/sys/replicas/challenge"
JOIN_PATH = "/v1/sys/replicas/join"
CHALLENGE_LIFETIME_S = 120
SRK_SIZE = 32
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_CHALLENGE = struct.Struct(">Q16s16s")  # issued at (unix seconds), random, MAC
CHALLENGE_SIZE = _CHALLENGE.size
MAX_QUOTE = 64 * 1024
SEALED_KEY_SIZE = 32 + SRK_SIZE + 16  # X25519 enc ‖ ciphertext ‖ tag


def _h(*parts: bytes) -> bytes:
    digest = hashlib.sha256(LABEL)
    for part in parts:
        digest.update(struct.pack(">I", len(part)) + part)
    return digest.digest()


def request_binding(challenge: bytes, public_key: bytes) -> bytes:
    """What the joiner's quote must carry in report_data[0:32]."""
    return _h(b"request", challenge, public_key)


def answer_binding(challenge: bytes, joiner_quote: bytes, sealed_key: bytes) -> bytes:
    """What the peer's quote must carry: it answers this request with these bytes."""
    return _h(b"answer", challenge, hashlib.sha256(joiner_quote).digest(), sealed_key)


def _info(challenge: bytes, joiner_quote: bytes) -> bytes:
    return _h(b"hpke-info", challenge, hashlib.sha256(joiner_quote).digest())


# --------------------------------------------------------------------------- challenges


def challenge_key(srk: bytes) -> bytes:
    """The MAC key of challenges: every replica derives the same one from the SRK, so any
    replica (or worker) recognises a challenge another issued."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=LABEL + b" challenge").derive(srk)


def issue_challenge(key: bytes, now: int) -> bytes:
    nonce = os.urandom(16)
    mac = hmac.new(key, struct.pack(">Q", now) + nonce, "sha256").digest()[:16]
    return _CHALLENGE.pack(now, nonce, mac)


def check_challenge(key: bytes, challenge: bytes, now: int) -> None:
    """InvalidRequestError unless `challenge` is one we issued less than 120 s ago."""
    if len(challenge) != CHALLENGE_SIZE:
        raise InvalidRequestError("join: the challenge has the wrong size")
    issued, nonce, mac = _CHALLENGE.unpack(challenge)
    expected = hmac.new(key, struct.pack(">Q", issued) + nonce, "sha256").digest()[:16]
    if not hmac.compare_digest(mac, expected):
        raise InvalidRequestError("join: the challenge was not issued by this installation")
    if not issued - 5 <= now <= issued + CHALLENGE_LIFETIME_S:
        raise InvalidRequestError("join: the challenge has expired (ask for a new one)")


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class JoinRequest:
    challenge: bytes
    public_key: bytes  # X25519, raw 32 bytes
    quote: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "challenge": self.challenge.hex(),
            "public_key": self.public_key.hex(),
            "quote": self.quote.hex(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JoinRequest:
        return cls(
            challenge=_field(doc, "challenge", CHALLENGE_SIZE),
            public_key=_field(doc, "public_key", 32),
            quote=_field(doc, "quote", None),
        )


@dataclass(frozen=True)
class JoinAnswer:
    sealed_key: bytes
    quote: bytes

    def to_json(self) -> dict[str, str]:
        return {"sealed_key": self.sealed_key.hex(), "quote": self.quote.hex()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JoinAnswer:
        return cls(
            sealed_key=_field(doc, "sealed_key", SEALED_KEY_SIZE), quote=_field(doc, "quote", None)
        )


def _field(doc: Mapping[str, Any], name: str, size: int | None) -> bytes:
    value = doc.get(name) if isinstance(doc, Mapping) else None
    if not isinstance(value, str) or len(value) > 2 * MAX_QUOTE:
        raise InvalidRequestError(f"join: {name} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise InvalidRequestError(f"join: {name} is not hex") from None
    if size is not None and len(raw) != size:
        raise InvalidRequestError(f"join: {name} must be {size} bytes")
    return raw


# --------------------------------------------------------------------------- the key itself


def new_join_key() -> tuple[x25519.X25519PrivateKey, bytes]:
    """The joiner's one-use key pair; the private half never leaves this enclave."""
    key = x25519.X25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def seal_srk(srk: bytes, request: JoinRequest) -> bytes:
    """HPKE-encrypt the SRK to the joiner's attested key, bound to this request."""
    public_key = x25519.X25519PublicKey.from_public_bytes(request.public_key)
    return _SUITE.encrypt(srk, public_key, info=_info(request.challenge, request.quote))


def open_srk(key: x25519.X25519PrivateKey, request: JoinRequest, sealed_key: bytes) -> bytes:
    try:
        srk = _SUITE.decrypt(sealed_key, key, info=_info(request.challenge, request.quote))
    except Exception:  # noqa: BLE001 - cryptography raises InvalidTag or ValueError here
        raise CryptoOperationError("join: the storage root key does not open") from None
    if len(srk) != SRK_SIZE:
        raise CryptoOperationError("join: the storage root key has the wrong size")
    return srk
