"""The secure channel between two enclaves as a sans-I/O state machine (docs/secure-channel.md).

Protocol of the Open Enclave secure-channel sample, done correctly: each side sends a fresh
RSA-2048 key with evidence binding it; each verifies the other's evidence and applies a
per-peer policy; the initiator wraps a 256-bit session key to the responder (RSA-OAEP-SHA256)
and signs SHA-256 of the wrapped key (RSA-PSS-SHA256); the responder checks that signature
against the initiator's *attested* key before it decrypts anything, and answers with a key
confirmation; then both exchange AES-256-GCM records.

No sockets, processes or clocks here: bytes in, bytes out. Randomness (`rng`), the own evidence
(`evidence_provider`) and the verification of the peer's evidence (`verify_peer`, which owns
the trust root, collateral and `now`) are injected, so the EDL handlers drive the same code the
unit tests do.

Records, and why two keys and two counters beat the sample's single key and counter: the
session key is expanded with HKDF-SHA256 (salt = transcript hash of both attested public keys)
into one key per direction plus a confirmation key. With one shared key and counter, a record
that A sent can be reflected back to A and authenticates whenever the counter lines up, and
both sides sending at once desynchronise the one counter. Here a reflected record is under the
wrong key (and carries the wrong direction byte in its additional data), each side numbers its
own records from 0, and a session key is bound to the pair of enclaves that attested it, so a
record from any other session — even one with a peer of the same signer — never decrypts.
Every record's additional data is label || direction || 64-bit sequence; the receiver accepts
exactly the next sequence number, so replay, reordering and dropped records are all refused.

Fail closed: any failure, including a call out of order, moves the channel to CLOSED for good
and drops its keys; there is no retry and no counter resynchronisation to guess at.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_kms.attestation.types import VerifiedQuote
from enclave_kms.channel.identity import ChannelPolicy, PeerIdentity
from enclave_kms.channel.messages import (
    INITIATOR_TO_RESPONDER,
    IV_LEN,
    MAX_PLAINTEXT,
    RESPONDER_TO_INITIATOR,
    SESSION_KEY_LEN,
    Close,
    KeyAck,
    KeyEstablish,
    Record,
    ReportWithPubkey,
    decode_message,
    record_aad,
)
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    ChannelError,
    ChannelStateError,
    ConfigError,
    EnclaveKMSError,
    PlatformError,
    ReplayError,
)

LABEL = b"enclave-kms/channel/v1"
RSA_BITS = 2048
RSA_EXPONENT = 65537
# NIST SP 800-38D: at most 2**32 GCM invocations per key with random 96-bit IVs.
MAX_RECORDS = 1 << 32

PeerVerifier = Callable[[bytes, bytes], "PeerIdentity | VerifiedQuote"]
"""`verify_peer(evidence, expected_report_data32)`: verify the evidence completely (signatures,
chain to the trust root, collateral at `now`) and check `report_data[0:32] ==
expected_report_data32`; return the verified claims or raise an AttestationError subclass."""
EvidenceProvider = Callable[[bytes], bytes]
"""`evidence_provider(report_data64) -> evidence` (a quote, OE evidence) from the platform."""

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
_PREHASHED = utils.Prehashed(hashes.SHA256())

_T = TypeVar("_T")


class Role(StrEnum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class ChannelState(StrEnum):
    """The sample's states, plus KEY_SENT (initiator awaiting the KeyAck) and CLOSED."""

    INITIAL = "initial"
    REPORT_OBTAINED = "report_obtained"  # own key and evidence produced, peer not yet verified
    REPORT_VERIFIED = "report_verified"  # peer verified and its key set, own report not yet made
    MUTUAL_ATTESTATION = "mutual_attestation"  # both: own report produced and peer verified
    KEY_SENT = "key_sent"
    SECURE = "secure"
    CLOSED = "closed"


def transcript_hash(initiator_spki: bytes, responder_spki: bytes) -> bytes:
    """SHA-256 over both attested public keys, initiator first, length-prefixed."""
    h = hashlib.sha256(LABEL + b" transcript")
    for spki in (initiator_spki, responder_spki):
        h.update(struct.pack(">H", len(spki)) + spki)
    return h.digest()


class _SessionKeys:
    """Directional AEADs and the key confirmation. Never printed."""

    __slots__ = ("confirmation", "receive", "send", "transcript")

    def __init__(self, send: AESGCM, receive: AESGCM, confirmation: bytes, transcript: bytes):
        self.send = send
        self.receive = receive
        self.confirmation = confirmation
        self.transcript = transcript

    def __repr__(self) -> str:
        return "<session keys>"


class SecureChannel:
    """One end of a channel. Methods mirror the sample's ECALLs; each returns the bytes to relay.

    Order for either role: `get_remote_report_with_pubkey` and `verify_report_and_set_pubkey`
    (in either order) → MUTUAL_ATTESTATION; then the initiator's `establish_secure_channel`,
    the responder's `acknowledge_secure_channel(KeyEstablish)` → KeyAck, the initiator's
    `acknowledge_secure_channel(KeyAck)` → b"" (both SECURE); then records both ways.
    Calls are serialised by a lock; a re-entrant call from a callback fails the channel.
    """

    def __init__(
        self,
        role: Role | str,
        verify_peer: PeerVerifier,
        policy: ChannelPolicy,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        try:
            self._role = Role(role)
        except ValueError:
            raise ConfigError("role: expected 'initiator' or 'responder'") from None
        if not isinstance(policy, ChannelPolicy):
            raise ConfigError("policy: expected a ChannelPolicy")
        if not callable(verify_peer) or not callable(rng):
            raise ConfigError("verify_peer and rng must be callables")
        if key is not None and not (
            isinstance(key, rsa.RSAPrivateKey)
            and key.key_size == RSA_BITS
            and key.public_key().public_numbers().e == RSA_EXPONENT
        ):
            raise ConfigError("key: expected an RSA-2048 private key with exponent 65537")
        self._verify_peer = verify_peer
        self._policy = policy
        self._rng = rng
        self._own_key = key
        self._own_spki: bytes | None = None
        self._peer_key: rsa.RSAPublicKey | None = None
        self._peer_spki: bytes | None = None
        self._peer: PeerIdentity | None = None
        self._keys: _SessionKeys | None = None
        self._state = ChannelState.INITIAL
        self._sent = 0
        self._received = 0
        self._sent_close = False
        self._peer_closed = False
        self._lock = threading.RLock()
        self._busy = False
        self._reentered = False

    # ------------------------------------------------------------------ introspection

    @property
    def role(self) -> Role:
        return self._role

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is ChannelState.CLOSED

    @property
    def peer(self) -> PeerIdentity | None:
        """The peer's verified identity once `verify_report_and_set_pubkey` succeeded."""
        return self._peer

    @property
    def public_key_der(self) -> bytes | None:
        """This end's channel public key (DER SPKI), once its report was produced."""
        return self._own_spki

    @property
    def transcript_hash(self) -> bytes | None:
        """Hash of both attested keys, once the session key is set; equal on both ends."""
        return self._keys.transcript if self._keys is not None else None

    @property
    def records_sent(self) -> int:
        return self._sent

    @property
    def records_received(self) -> int:
        return self._received

    def __repr__(self) -> str:
        return (
            f"SecureChannel(role={self._role.value!r}, state={self._state.value!r}, "
            f"sent={self._sent}, received={self._received})"
        )

    def close(self) -> None:
        """Close for good and drop all key material (idempotent)."""
        with self._lock:
            if self._busy:
                self._reentered = True
                raise ChannelStateError("close: called from inside a channel step")
            self._close()

    # ------------------------------------------------------------------ attestation

    def get_remote_report_with_pubkey(self, evidence_provider: EvidenceProvider) -> bytes:
        """Generate this end's RSA-2048 key; return it with evidence binding its hash."""

        def step() -> bytes:
            after = self._advance(
                "get_remote_report_with_pubkey",
                {
                    ChannelState.INITIAL: ChannelState.REPORT_OBTAINED,
                    ChannelState.REPORT_VERIFIED: ChannelState.MUTUAL_ATTESTATION,
                },
            )
            key = self._own_key or rsa.generate_private_key(RSA_EXPONENT, RSA_BITS)
            spki = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if self._peer_spki is not None and hmac.compare_digest(spki, self._peer_spki):
                raise ChannelError("own key equals the peer's key (reflected report)")
            report_data = hashlib.sha256(spki).digest() + bytes(32)
            evidence = _call_provider(evidence_provider, report_data)
            message = ReportWithPubkey(spki, evidence).to_bytes()
            self._own_key, self._own_spki, self._state = key, spki, after
            return message

        return self._run("get_remote_report_with_pubkey", step)

    def verify_report_and_set_pubkey(self, msg: bytes) -> PeerIdentity:
        """Verify the peer's evidence, its binding to the peer's key, and the policy."""

        def step() -> PeerIdentity:
            after = self._advance(
                "verify_report_and_set_pubkey",
                {
                    ChannelState.INITIAL: ChannelState.REPORT_VERIFIED,
                    ChannelState.REPORT_OBTAINED: ChannelState.MUTUAL_ATTESTATION,
                },
            )
            report = ReportWithPubkey.parse(msg)
            peer_key = _load_public_key(report.public_key_der)
            if self._own_spki is not None and hmac.compare_digest(
                report.public_key_der, self._own_spki
            ):
                raise ChannelError("peer presented this enclave's own key (reflected report)")
            expected = hashlib.sha256(report.public_key_der).digest()
            peer = _call_verifier(self._verify_peer, report.evidence, expected)
            # Checked here too, so a verifier that forgot the binding cannot open a channel.
            if not hmac.compare_digest(peer.report_data[:32], expected):
                raise BindingError("peer evidence report_data[0:32] does not bind its public key")
            self._policy.check(peer)
            self._peer_key, self._peer_spki, self._peer = peer_key, report.public_key_der, peer
            self._state = after
            return peer

        return self._run("verify_report_and_set_pubkey", step)

    # ------------------------------------------------------------------ key establishment

    def establish_secure_channel(self) -> bytes:
        """Initiator: wrap a fresh 256-bit session key to the peer and sign its hash."""

        def step() -> bytes:
            self._require_role("establish_secure_channel", Role.INITIATOR)
            after = self._advance(
                "establish_secure_channel",
                {ChannelState.MUTUAL_ATTESTATION: ChannelState.KEY_SENT},
            )
            own_key, peer_key = self._own_key, self._peer_key
            assert own_key is not None
            assert peer_key is not None
            session_key = self._random(SESSION_KEY_LEN)
            encrypted_key = peer_key.encrypt(session_key, _OAEP)
            digest = hashlib.sha256(encrypted_key).digest()
            signature = own_key.sign(digest, _PSS, _PREHASHED)
            message = KeyEstablish(encrypted_key, signature).to_bytes()
            self._keys = self._derive(session_key, encrypted_key)
            self._state = after
            return message

        return self._run("establish_secure_channel", step)

    def acknowledge_secure_channel(self, msg: bytes) -> bytes:
        """Responder: KeyEstablish in, KeyAck out. Initiator: KeyAck in, b"" out (key confirmed).

        The responder verifies the signature with the initiator's attested key before it
        decrypts, so nobody but the attested peer can make it run RSA decryption on their input.
        """

        def step() -> bytes:
            if self._role is Role.INITIATOR:
                after = self._advance(
                    "acknowledge_secure_channel", {ChannelState.KEY_SENT: ChannelState.SECURE}
                )
                ack = KeyAck.parse(msg)
                assert self._keys is not None
                if not hmac.compare_digest(ack.confirmation, self._keys.confirmation):
                    raise ChannelError("KeyAck: key confirmation does not match")
                self._state = after
                return b""
            after = self._advance(
                "acknowledge_secure_channel", {ChannelState.MUTUAL_ATTESTATION: ChannelState.SECURE}
            )
            establish = KeyEstablish.parse(msg)
            own_key, peer_key = self._own_key, self._peer_key
            assert own_key is not None
            assert peer_key is not None
            digest = hashlib.sha256(establish.encrypted_key).digest()
            try:
                peer_key.verify(establish.signature, digest, _PSS, _PREHASHED)
            except InvalidSignature:
                raise ChannelError(
                    "KeyEstablish: signature does not verify with the initiator's attested key"
                ) from None
            try:
                session_key = own_key.decrypt(establish.encrypted_key, _OAEP)
            except ValueError:
                raise ChannelError("KeyEstablish: the session key does not unwrap") from None
            if len(session_key) != SESSION_KEY_LEN:
                raise ChannelError("KeyEstablish: the session key is not 256 bits")
            self._keys = self._derive(session_key, establish.encrypted_key)
            self._state = after
            return KeyAck(self._keys.confirmation).to_bytes()

        return self._run("acknowledge_secure_channel", step)

    # ------------------------------------------------------------------ records

    @property
    def peer_closed(self) -> bool:
        """Whether the peer's authenticated end of stream has arrived."""
        return self._peer_closed

    def generate_close_message(self) -> bytes:
        """The authenticated end of this end's stream (its next sequence number); nothing
        can be sent after it."""

        def step() -> bytes:
            self._advance("generate_close_message", {ChannelState.SECURE: ChannelState.SECURE})
            if self._sent_close:
                raise ChannelError("end of stream already sent")
            assert self._keys is not None
            direction = self._direction(sending=True)
            iv = self._random(IV_LEN)
            tag = self._keys.send.encrypt(
                iv, b"", record_aad(LABEL + b" close", direction, self._sent)
            )
            self._sent_close = True
            message = Close(direction, self._sent, iv, tag).to_bytes()
            self._sent += 1
            return message

        return self._run("generate_close_message", step)

    def finish(self) -> None:
        """The receiver is done: the peer's end of stream must have arrived, else the host
        dropped the last records (ReplayError); then the channel closes."""

        def step() -> None:
            if not self._peer_closed:
                raise ReplayError(
                    f"stream truncated: {self._received} record(s) received and no "
                    "authenticated end of stream (the last records were dropped)"
                )

        self._run("finish", step)
        self.close()

    def generate_encrypted_message(self, plaintext: bytes) -> bytes:
        """Encrypt one record in this end's direction with the next send sequence number."""

        def step() -> bytes:
            self._advance("generate_encrypted_message", {ChannelState.SECURE: ChannelState.SECURE})
            if self._sent_close:
                raise ChannelError("end of stream sent: nothing more can be sent")
            if not isinstance(plaintext, bytes | bytearray | memoryview):
                raise ChannelError("plaintext: expected bytes")
            data = bytes(plaintext)
            if len(data) > MAX_PLAINTEXT:
                raise ChannelError(f"plaintext: more than {MAX_PLAINTEXT} bytes")
            if self._sent >= MAX_RECORDS:
                raise ChannelError("record limit for this session reached; open a new channel")
            assert self._keys is not None
            direction = self._direction(sending=True)
            iv = self._random(IV_LEN)
            aad = record_aad(LABEL + b" record", direction, self._sent)
            ciphertext = self._keys.send.encrypt(iv, data, aad)
            message = Record(direction, self._sent, iv, ciphertext).to_bytes()
            self._sent += 1
            return message

        return self._run("generate_encrypted_message", step)

    def process_encrypted_msg(self, msg: bytes) -> bytes:
        """Authenticate and decrypt exactly the next record from the peer; return its plaintext."""

        def step() -> bytes:
            self._advance("process_encrypted_msg", {ChannelState.SECURE: ChannelState.SECURE})
            if self._peer_closed:
                raise ReplayError("record after the peer's end of stream")
            if not isinstance(msg, bytes | bytearray | memoryview):
                raise ChannelError("record: expected bytes")
            decoded = decode_message(bytes(msg))
            if isinstance(decoded, Close):
                self._process_close(decoded)
                return b""
            record = Record.parse(msg)
            if record.direction != self._direction(sending=False):
                raise ChannelError("record: wrong direction (reflected back to its sender)")
            if record.sequence != self._received:
                raise ReplayError(
                    f"record: sequence {record.sequence}, expected {self._received}"
                    " (replayed, reordered or dropped)"
                )
            assert self._keys is not None
            aad = record_aad(LABEL + b" record", record.direction, record.sequence)
            try:
                plaintext = self._keys.receive.decrypt(record.iv, record.ciphertext, aad)
            except InvalidTag:
                raise ChannelError(
                    "record: authentication failed (altered, truncated or from another session)"
                ) from None
            self._received += 1
            return plaintext

        return self._run("process_encrypted_msg", step)

    def _process_close(self, close: Close) -> None:
        if close.direction != self._direction(sending=False):
            raise ChannelError("end of stream: wrong direction (reflected back to its sender)")
        if close.sequence != self._received:
            raise ReplayError(
                f"end of stream: sequence {close.sequence}, expected {self._received}"
                " (records before it were dropped)"
            )
        assert self._keys is not None
        aad = record_aad(LABEL + b" close", close.direction, close.sequence)
        try:
            self._keys.receive.decrypt(close.iv, close.tag, aad)
        except InvalidTag:
            raise ChannelError("end of stream: authentication failed") from None
        self._received += 1
        self._peer_closed = True

    # ------------------------------------------------------------------ internals

    def _run(self, step: str, action: Callable[[], _T]) -> _T:
        """Run one step under the lock; any failure closes the channel before it propagates."""
        with self._lock:
            if self._state is ChannelState.CLOSED:
                raise ChannelStateError(f"{step}: the channel is closed")
            if self._busy:
                self._reentered = True
                raise ChannelStateError(f"{step}: called from inside another channel step")
            self._busy = True
            try:
                result = action()
                if self._reentered:
                    raise ChannelStateError(f"{step}: a callback re-entered the channel")
                return result
            except EnclaveKMSError:
                self._close()
                raise
            except Exception as exc:
                self._close()
                raise ChannelError(f"{step}: unexpected {type(exc).__name__}") from exc
            except BaseException:
                self._close()
                raise
            finally:
                self._busy = False

    def _advance(self, step: str, moves: dict[ChannelState, ChannelState]) -> ChannelState:
        after = moves.get(self._state)
        if after is None:
            raise ChannelStateError(f"{step}: not allowed in state {self._state.value}")
        return after

    def _require_role(self, step: str, role: Role) -> None:
        if self._role is not role:
            raise ChannelStateError(f"{step}: only the {role.value} may call this")

    def _direction(self, *, sending: bool) -> int:
        initiator_sends = (self._role is Role.INITIATOR) == sending
        return INITIATOR_TO_RESPONDER if initiator_sends else RESPONDER_TO_INITIATOR

    def _random(self, size: int) -> bytes:
        try:
            value = self._rng(size)
        except Exception as exc:  # noqa: BLE001 - injected callable: any failure is typed here
            raise PlatformError(f"random source failed ({type(exc).__name__})") from None
        if type(value) is not bytes or len(value) != size:
            raise PlatformError(f"random source did not return {size} bytes")
        return value

    def _derive(self, session_key: bytes, encrypted_key: bytes) -> _SessionKeys:
        assert self._own_spki is not None
        assert self._peer_spki is not None
        if self._role is Role.INITIATOR:
            th = transcript_hash(self._own_spki, self._peer_spki)
        else:
            th = transcript_hash(self._peer_spki, self._own_spki)

        def expand(purpose: bytes) -> bytes:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=th, info=LABEL + purpose)
            return hkdf.derive(session_key)

        i2r, r2i, confirm = expand(b" key i2r"), expand(b" key r2i"), expand(b" key confirm")
        send, receive = (i2r, r2i) if self._role is Role.INITIATOR else (r2i, i2r)
        transcript_input = LABEL + b" key ack" + th + hashlib.sha256(encrypted_key).digest()
        confirmation = hmac.new(confirm, transcript_input, hashlib.sha256).digest()
        return _SessionKeys(AESGCM(send), AESGCM(receive), confirmation, th)

    def _close(self) -> None:
        """Python cannot wipe memory; dropping every reference is the best we can do here."""
        self._state = ChannelState.CLOSED
        self._keys = None
        self._own_key = None
        self._peer_key = None


def _load_public_key(der: bytes) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ChannelError("public_key_der: not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != RSA_BITS:
        raise ChannelError("public_key_der: not an RSA-2048 key")
    if key.public_numbers().e != RSA_EXPONENT:
        raise ChannelError("public_key_der: exponent is not 65537")
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != der:  # one key, one encoding, one hash in report_data
        raise ChannelError("public_key_der: not canonical DER")
    return key


def _call_provider(provider: EvidenceProvider, report_data: bytes) -> bytes:
    try:
        evidence = provider(report_data)
    except EnclaveKMSError:
        raise
    except Exception as exc:  # noqa: BLE001 - injected callable: any failure is typed here
        raise PlatformError(f"evidence provider failed ({type(exc).__name__})") from None
    if not isinstance(evidence, bytes):
        raise PlatformError("evidence provider did not return bytes")
    return evidence


def _call_verifier(verify: PeerVerifier, evidence: bytes, expected: bytes) -> PeerIdentity:
    try:
        result = verify(evidence, expected)
    except EnclaveKMSError:
        raise
    except Exception as exc:  # noqa: BLE001 - injected callable: any failure is typed here
        raise AttestationError(f"peer evidence verifier failed ({type(exc).__name__})") from None
    if isinstance(result, VerifiedQuote):
        return PeerIdentity.from_verified_quote(result)
    if isinstance(result, PeerIdentity):
        return result
    raise AttestationError(
        f"peer verifier returned {type(result).__name__}, not PeerIdentity or VerifiedQuote"
    )
