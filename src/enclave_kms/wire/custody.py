"""k-of-n recovery of the storage root key: the formats both sides share (DESIGN §14).

The enclave (`enclave/custody`) and the officers' SDK/CLI (`client/recovery.py`) import this
one definition of the labels, the HPKE suite, what each HPKE `info` binds and how a share is
digested, so the two sides cannot drift. Pure: no I/O, no clock, no randomness of its own.

Construction, stated once (tests/custody check each property):
- the 32-byte storage root key (SRK) is split with SLIP-39 (`shamir-mnemonic`, Trezor's
  reference implementation: Shamir over GF(256) with a digest share, RS1024 checksums) into n
  mnemonic shares with threshold k (2 <= k <= n <= 16, one group);
- each share is sealed with HPKE (RFC 9180, base mode: DHKEM(X25519, HKDF-SHA256),
  HKDF-SHA256, AES-256-GCM) to one officer's X25519 public key; `info` binds the set id, the
  share's index, k, n, the SRK commitment and the share's digest, so a share moved to another
  index, set or officer does not open;
- the set stores, per share, digest = SHA-256(label ‖ set id ‖ index ‖ share): an enclave in
  recovery refuses a wrong or forged share at once, without the SRK (k-1 shares plus these
  digests leave the SRK as hard to find as a 256-bit preimage);
- commitment = HMAC-SHA256(SRK, label ‖ set id), and a MAC over the whole set under the SRK:
  a reconstructed key is used only if both match and it opens the existing store;
- the enclave that splits quotes the set (report_data[0:32] = SHA-256(label ‖ set body)); an
  enclave in recovery appraises that quote (same MRSIGNER and ISVPRODID as its own) before
  it accepts any share, so a host cannot fabricate a set for a key of its own choosing and
  feed the enclave its own shares (the MAC alone could not stop that: the host would know
  the key it MACs with);
- an officer re-seals its share to the recovering enclave's session key (HPKE again, `info` =
  label ‖ session id) only after appraising evidence whose report_data[0:32] is
  SHA-256(label ‖ session id ‖ session key), so the share is readable only inside that
  enclave, and a submission replayed to another session does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from enclave_kms.errors import InvalidRequestError, RecoveryShareError

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
SRK_BYTES = 32
SET_ID_BYTES = 16
SESSION_ID_BYTES = 16
MAX_SHARES = 16  # SLIP-39's member limit
MIN_THRESHOLD = 2  # SLIP-39 refuses 1-of-n with n > 1 (it would be n copies of the secret)
SHARE_FILE_FORMAT = "enclave-kms-recovery-share/v1"
FINGERPRINT_REGEX = "^[0-9a-fA-F]{64}$"

_SHARE_INFO = b"enclave-kms/recovery/share/v1"
_SHARE_DIGEST = b"enclave-kms/recovery/share-digest/v1"
_COMMITMENT = b"enclave-kms/recovery/commitment/v1"
_SET_MAC = b"enclave-kms/recovery/set/v1"
_SESSION_BINDING = b"enclave-kms/recovery/session/v1"
_SUBMIT_INFO = b"enclave-kms/recovery/submit/v1"
_SET_ORIGIN = b"enclave-kms/recovery/set-origin/v1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecoveryShareError("a recovery field is not valid base64") from None


def officer_fingerprint(public_key: x25519.X25519PublicKey | bytes) -> str:
    """SHA-256 of the officer's raw 32-byte X25519 public key, hex: how officers are named."""
    raw = public_key if isinstance(public_key, bytes) else raw_public(public_key)
    return hashlib.sha256(raw).hexdigest()


def raw_public(public_key: x25519.X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_officer_public(data: bytes) -> x25519.X25519PublicKey:
    """An officer's public key: PEM (SubjectPublicKeyInfo) or the raw 32 bytes."""
    try:
        if len(data) == 32:
            return x25519.X25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise InvalidRequestError("an officer key is not an X25519 public key") from None
    if not isinstance(key, x25519.X25519PublicKey):
        raise InvalidRequestError("an officer key is not an X25519 public key")
    return key


def share_info(
    set_id: bytes, index: int, *, threshold: int, shares: int, commitment: bytes, digest: bytes
) -> bytes:
    """HPKE `info` of share `index` sealed to its officer."""
    return _SHARE_INFO + cbor2.dumps([set_id, index, threshold, shares, commitment, digest])


def share_digest(set_id: bytes, index: int, share: bytes) -> bytes:
    return hashlib.sha256(_SHARE_DIGEST + set_id + struct.pack(">H", index) + share).digest()


def commitment(srk: bytes, set_id: bytes) -> bytes:
    """What identifies the SRK without revealing it (checkable only with the SRK)."""
    return hmac.new(srk, _COMMITMENT + set_id, hashlib.sha256).digest()


def set_mac(srk: bytes, body: bytes) -> bytes:
    return hmac.new(srk, _SET_MAC + body, hashlib.sha256).digest()


def set_origin_binding(body: bytes) -> bytes:
    """What the splitting enclave's quote binds (report_data[0:32]): the set it made."""
    return hashlib.sha256(_SET_ORIGIN + body).digest()


def session_binding(session_id: bytes, session_key: bytes) -> bytes:
    """What a recovering enclave's report_data[0:32] must be for this session and key."""
    return hashlib.sha256(_SESSION_BINDING + session_id + session_key).digest()


def submit_info(session_id: bytes) -> bytes:
    return _SUBMIT_INFO + session_id


def encode_submission(set_id: bytes, index: int, share: bytes) -> bytes:
    """The plaintext an officer seals to the session key."""
    return cbor2.dumps({"set_id": set_id, "index": index, "share": share})


def decode_submission(data: bytes) -> tuple[bytes, int, bytes]:
    """(set_id, index, share) of a decrypted submission; anything else is refused."""
    try:
        doc = cbor2.loads(data)
    except Exception:  # noqa: BLE001 - cbor2 raises many types on garbage
        raise RecoveryShareError("the submission is not a share") from None
    if not isinstance(doc, dict) or set(doc) != {"set_id", "index", "share"}:
        raise RecoveryShareError("the submission is not a share")
    set_id, index, share = doc["set_id"], doc["index"], doc["share"]
    if not (
        isinstance(set_id, bytes)
        and len(set_id) == SET_ID_BYTES
        and isinstance(index, int)
        and 1 <= index <= MAX_SHARES
        and isinstance(share, bytes)
        and 0 < len(share) <= 1024
    ):
        raise RecoveryShareError("the submission is not a share")
    return set_id, index, share
