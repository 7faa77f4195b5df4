"""A fake attestation platform for the channel tests.

Evidence = CBOR {"claims": {...}, "report_data": 64 B, "mac": HMAC(platform key, claims||rd)}.
The MAC stands in for the quote signature chain: only the "platform" can make evidence, so a
test attacker can copy genuine evidence but cannot forge or edit it. `FakeVerifier` follows the
channel's verifier contract: check genuineness, check `report_data[0:32] == expected`, return a
`PeerIdentity`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass, replace
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.attestation.types import TcbStatus
from enclave_kms.channel import ChannelPolicy, PeerIdentity, SecureChannel
from enclave_kms.errors import BindingError, FormatError, SignatureError

PLATFORM_KEY = b"fake platform attestation key...."
SIGNER = hashlib.sha256(b"signer of the channel enclaves").digest()
OTHER_SIGNER = hashlib.sha256(b"some other signer").digest()
MR_ENCLAVE = hashlib.sha256(b"channel enclave build 1").digest()


@dataclass(frozen=True)
class FakeEnclave:
    mr_enclave: bytes = MR_ENCLAVE
    mr_signer: bytes = SIGNER
    isv_prod_id: int = 1
    isv_svn: int = 1
    debug: bool = False
    tcb_status: TcbStatus = TcbStatus.UP_TO_DATE

    def evidence(self, report_data: bytes) -> bytes:
        claims = {
            "mr_enclave": self.mr_enclave,
            "mr_signer": self.mr_signer,
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "tcb_status": self.tcb_status.value,
        }
        body = cbor2.dumps(claims, canonical=True)
        mac = hmac.new(PLATFORM_KEY, body + report_data, hashlib.sha256).digest()
        return cbor2.dumps({"claims": body, "report_data": report_data, "mac": mac})

    def but(self, **changes: Any) -> FakeEnclave:
        return replace(self, **changes)


def fake_verifier(
    evidence: bytes, expected_report_data: bytes, *, check_binding: bool = True
) -> PeerIdentity:
    try:
        doc = cbor2.loads(evidence)
        body, report_data, mac = doc["claims"], doc["report_data"], doc["mac"]
        claims = cbor2.loads(body)
        assert isinstance(body, bytes)
        assert isinstance(report_data, bytes)
        assert isinstance(mac, bytes)
    except (cbor2.CBORDecodeError, KeyError, TypeError, AssertionError):
        raise FormatError("fake evidence does not parse") from None
    good = hmac.new(PLATFORM_KEY, body + report_data, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, good):
        raise SignatureError("fake evidence MAC does not verify")
    if check_binding and report_data[:32] != expected_report_data:
        raise BindingError("report_data does not bind the expected key")
    try:
        return PeerIdentity(
            mr_enclave=claims["mr_enclave"],
            mr_signer=claims["mr_signer"],
            isv_prod_id=claims["isv_prod_id"],
            isv_svn=claims["isv_svn"],
            debug=claims["debug"],
            tcb_status=TcbStatus(claims["tcb_status"]),
            report_data=report_data,
        )
    except (KeyError, TypeError, ValueError):
        raise FormatError("fake evidence claims are incomplete") from None


def lazy_verifier(evidence: bytes, expected_report_data: bytes) -> PeerIdentity:
    """A buggy verifier that forgets the key binding (the channel must catch it anyway)."""
    return fake_verifier(evidence, expected_report_data, check_binding=False)


POLICY = ChannelPolicy(mr_signer=SIGNER, isv_prod_id=1, min_isv_svn=1)


@functools.cache
def rsa_key(index: int) -> rsa.RSAPrivateKey:
    """A small pool of pre-generated keys keeps the suite fast (keygen is ~50-100 ms)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def channel(role: str, index: int | None, policy: ChannelPolicy = POLICY) -> SecureChannel:
    key = rsa_key(index) if index is not None else None
    return SecureChannel(role, fake_verifier, policy, key=key)


@dataclass
class Pair:
    a: SecureChannel  # initiator
    b: SecureChannel  # responder
    frames: list[bytes]


def attested_pair(
    ea: FakeEnclave = FakeEnclave(), eb: FakeEnclave = FakeEnclave(), keys: tuple[int, int] = (0, 1)
) -> Pair:
    """Both ends in MUTUAL_ATTESTATION, in the sample host's order."""
    a, b = channel("initiator", keys[0]), channel("responder", keys[1])
    frames = [a.get_remote_report_with_pubkey(ea.evidence)]
    b.verify_report_and_set_pubkey(frames[-1])
    frames.append(b.get_remote_report_with_pubkey(eb.evidence))
    a.verify_report_and_set_pubkey(frames[-1])
    return Pair(a, b, frames)


def secure_pair(keys: tuple[int, int] = (0, 1)) -> Pair:
    pair = attested_pair(keys=keys)
    pair.frames.append(pair.a.establish_secure_channel())
    pair.frames.append(pair.b.acknowledge_secure_channel(pair.frames[-1]))
    assert pair.a.acknowledge_secure_channel(pair.frames[-1]) == b""
    return pair
