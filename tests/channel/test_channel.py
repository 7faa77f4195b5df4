"""The secure-channel state machine: happy path, each attack, fail-closed, frame scan."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TcbStatus, VerifiedQuote
from enclave_kms.channel import (
    MAX_PLAINTEXT,
    ChannelPolicy,
    ChannelState,
    KeyEstablish,
    PeerIdentity,
    Record,
    ReportWithPubkey,
    SecureChannel,
    transcript_hash,
)
from enclave_kms.channel.state import LABEL
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    ChannelError,
    ChannelStateError,
    ConfigError,
    EnclaveKMSError,
    PlatformError,
    PolicyError,
    ReplayError,
    SignatureError,
    UnsupportedFormatError,
)
from enclave_kms.sgx.report import Attributes, ReportBody
from tests.channel.fakes import (
    MR_ENCLAVE,
    OTHER_SIGNER,
    POLICY,
    SIGNER,
    FakeEnclave,
    Pair,
    attested_pair,
    channel,
    fake_verifier,
    lazy_verifier,
    rsa_key,
    secure_pair,
)

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def assert_closed(ch: SecureChannel) -> None:
    """CLOSED for good: every entry point now refuses with ChannelStateError."""
    assert ch.state is ChannelState.CLOSED
    assert ch.closed
    calls: list[Callable[[], object]] = [
        lambda: ch.get_remote_report_with_pubkey(FakeEnclave().evidence),
        lambda: ch.verify_report_and_set_pubkey(b"x"),
        ch.establish_secure_channel,
        lambda: ch.acknowledge_secure_channel(b"x"),
        lambda: ch.generate_encrypted_message(b"x"),
        lambda: ch.process_encrypted_msg(b"x"),
    ]
    for call in calls:
        with pytest.raises(ChannelStateError, match="closed"):
            call()


def state_of(ch: SecureChannel) -> ChannelState:
    """Read the state through a call, so the type checker does not narrow it across steps."""
    return ch.state


def record_fields(frame: bytes) -> Record:
    return Record.parse(frame)


# ---------------------------------------------------------------------------- happy path


def test_happy_path_many_messages_both_ways() -> None:
    pair = secure_pair()
    a, b = pair.a, pair.b
    assert a.state is ChannelState.SECURE
    assert b.state is ChannelState.SECURE
    assert a.transcript_hash is not None
    assert a.transcript_hash == b.transcript_hash
    assert a.transcript_hash == transcript_hash(a.public_key_der or b"", b.public_key_der or b"")
    for i in range(40):
        to_b = f"A→B message {i}".encode() * (i + 1)
        assert b.process_encrypted_msg(a.generate_encrypted_message(to_b)) == to_b
        # Several in a row from B, to show the two counters are independent.
        for j in range(i % 3 + 1):
            to_a = f"B→A message {i}.{j}".encode()
            assert a.process_encrypted_msg(b.generate_encrypted_message(to_a)) == to_a
    assert a.records_sent == b.records_received == 40
    assert b.records_sent == a.records_received == sum(i % 3 + 1 for i in range(40))


def test_records_carry_direction_and_own_sequence_numbers() -> None:
    pair = secure_pair()
    first_a = record_fields(pair.a.generate_encrypted_message(b"one"))
    second_a = record_fields(pair.a.generate_encrypted_message(b"two"))
    first_b = record_fields(pair.b.generate_encrypted_message(b"uno"))
    assert (first_a.direction, first_a.sequence) == (1, 0)
    assert (second_a.direction, second_a.sequence) == (1, 1)
    assert (first_b.direction, first_b.sequence) == (2, 0)
    assert first_a.iv != second_a.iv


def test_keys_generated_inside_and_verify_before_report() -> None:
    """Without injected keys each end makes its own; the responder may verify first."""
    ea = FakeEnclave()
    a = SecureChannel("initiator", fake_verifier, POLICY)
    b = SecureChannel("responder", fake_verifier, POLICY)
    hello_a = a.get_remote_report_with_pubkey(ea.evidence)
    assert state_of(a) is ChannelState.REPORT_OBTAINED
    peer = b.verify_report_and_set_pubkey(hello_a)
    assert state_of(b) is ChannelState.REPORT_VERIFIED
    assert peer.mr_signer == SIGNER
    assert peer.report_data[:32] == hashlib.sha256(a.public_key_der or b"").digest()
    assert peer.report_data[32:] == bytes(32)
    a.verify_report_and_set_pubkey(b.get_remote_report_with_pubkey(ea.evidence))
    assert state_of(a) is state_of(b) is ChannelState.MUTUAL_ATTESTATION
    key = rsa.RSAPublicKey
    assert isinstance(serialization.load_der_public_key(a.public_key_der or b""), key)
    b_ack = b.acknowledge_secure_channel(a.establish_secure_channel())
    assert state_of(a) is ChannelState.KEY_SENT
    a.acknowledge_secure_channel(b_ack)
    assert b.process_encrypted_msg(a.generate_encrypted_message(b"hi")) == b"hi"


def test_empty_and_largest_plaintexts() -> None:
    pair = secure_pair()
    assert pair.b.process_encrypted_msg(pair.a.generate_encrypted_message(b"")) == b""
    big = bytes(range(256)) * (MAX_PLAINTEXT // 256)
    assert len(big) == MAX_PLAINTEXT
    assert pair.a.process_encrypted_msg(pair.b.generate_encrypted_message(big)) == big
    with pytest.raises(ChannelError, match="plaintext"):
        pair.a.generate_encrypted_message(big + b"!")
    assert_closed(pair.a)


# ---------------------------------------------------------------------------- record attacks


def test_replay_rejected_and_closes() -> None:
    pair = secure_pair()
    frame = pair.a.generate_encrypted_message(b"pay 10")
    assert pair.b.process_encrypted_msg(frame) == b"pay 10"
    with pytest.raises(ReplayError, match="sequence 0, expected 1"):
        pair.b.process_encrypted_msg(frame)
    assert_closed(pair.b)


def test_reorder_rejected_and_closes() -> None:
    pair = secure_pair()
    first = pair.a.generate_encrypted_message(b"first")
    second = pair.a.generate_encrypted_message(b"second")
    with pytest.raises(ReplayError, match="sequence 1, expected 0"):
        pair.b.process_encrypted_msg(second)
    assert_closed(pair.b)
    with pytest.raises(ChannelStateError):  # the right one is no longer accepted either
        pair.b.process_encrypted_msg(first)


def test_dropped_record_detected_at_the_next_one() -> None:
    pair = secure_pair()
    pair.b.process_encrypted_msg(pair.a.generate_encrypted_message(b"0"))
    pair.a.generate_encrypted_message(b"1 (dropped by the host)")
    with pytest.raises(ReplayError):
        pair.b.process_encrypted_msg(pair.a.generate_encrypted_message(b"2"))
    assert_closed(pair.b)


def test_dropped_final_records_detected_by_the_end_of_stream() -> None:
    """Dropping the last record(s) leaves no later record to show the gap: the sender's
    authenticated end of stream does. The host drops records, then the end of stream: the
    receiver's `finish` refuses; it cannot forge an end of stream either."""
    pair = secure_pair()
    pair.b.process_encrypted_msg(pair.a.generate_encrypted_message(b"0"))
    pair.a.generate_encrypted_message(b"1 (the last record, dropped by the host)")
    close = pair.a.generate_close_message()
    with pytest.raises(ChannelError, match="nothing more can be sent"):
        pair.a.generate_encrypted_message(b"after the end")
    with pytest.raises(ReplayError, match="records before it were dropped"):
        pair.b.process_encrypted_msg(close)
    assert_closed(pair.b)

    pair = secure_pair()
    pair.b.process_encrypted_msg(pair.a.generate_encrypted_message(b"0"))
    pair.a.generate_encrypted_message(b"1 (dropped, and the end of stream with it)")
    with pytest.raises(ReplayError, match="stream truncated"):
        pair.b.finish()
    assert_closed(pair.b)

    pair = secure_pair()
    for i in range(3):
        assert pair.b.process_encrypted_msg(pair.a.generate_encrypted_message(bytes([i]))) == bytes(
            [i]
        )
    closed_early = pair.b.peer_closed
    assert not closed_early
    close = pair.a.generate_close_message()
    assert pair.b.process_encrypted_msg(close) == b""
    assert pair.b.peer_closed
    with pytest.raises(ReplayError, match="after the peer's end of stream"):
        pair.b.process_encrypted_msg(close)
    pair2 = secure_pair()
    pair2.b.process_encrypted_msg(pair2.a.generate_close_message())
    pair2.b.finish()  # the whole stream arrived
    assert_closed(pair2.b)


def test_end_of_stream_cannot_be_forged_or_reflected() -> None:
    pair = secure_pair()
    close = bytearray(pair.a.generate_close_message())
    close[-1] ^= 1  # the tag
    with pytest.raises(ChannelError, match="end of stream: authentication failed"):
        pair.b.process_encrypted_msg(bytes(close))
    pair = secure_pair()
    with pytest.raises(ChannelError, match="wrong direction"):
        pair.a.process_encrypted_msg(pair.a.generate_close_message())


def test_tamper_any_byte_of_a_record_rejected() -> None:
    base = secure_pair()
    frame = base.a.generate_encrypted_message(b"transfer the master key share")
    for offset in range(len(frame)):
        pair = secure_pair()  # same keys, fresh session: the record under test is new each time
        pair.a.generate_encrypted_message(b"transfer the master key share")
        tampered = bytearray(frame)
        tampered[offset] ^= 0x01
        with pytest.raises(ChannelError):
            pair.b.process_encrypted_msg(bytes(tampered))
        assert_closed(pair.b)


def test_tamper_ciphertext_byte_in_session_rejected() -> None:
    """A well-formed record whose ciphertext, IV or tag was altered fails authentication."""
    for field in ("iv", "ciphertext"):
        pair = secure_pair()
        record = record_fields(pair.a.generate_encrypted_message(b"secret share"))
        value = bytearray(getattr(record, field))
        value[-1] ^= 0x80
        changes = {"iv": record.iv, "ciphertext": record.ciphertext, field: bytes(value)}
        forged = Record(record.direction, record.sequence, changes["iv"], changes["ciphertext"])
        with pytest.raises(ChannelError, match="authentication failed"):
            pair.b.process_encrypted_msg(forged.to_bytes())
        assert_closed(pair.b)


def test_truncated_records_rejected() -> None:
    pair = secure_pair()
    frame = pair.a.generate_encrypted_message(b"a record to cut short")
    for cut in range(len(frame)):
        victim = secure_pair()
        with pytest.raises(ChannelError):
            victim.b.process_encrypted_msg(frame[:cut])
        assert_closed(victim.b)
    # Well-formed but with the tail of the ciphertext gone (the framing re-done by the host).
    record = record_fields(frame)
    short = Record(record.direction, record.sequence, record.iv, record.ciphertext[:-1])
    with pytest.raises(ChannelError, match="authentication failed"):
        pair.b.process_encrypted_msg(short.to_bytes())
    assert_closed(pair.b)


def test_record_reflected_to_its_sender_rejected() -> None:
    pair = secure_pair()
    frame = pair.a.generate_encrypted_message(b"to B")
    with pytest.raises(ChannelError, match="wrong direction"):
        pair.a.process_encrypted_msg(frame)
    assert_closed(pair.a)


def test_reflected_record_with_rewritten_direction_does_not_decrypt() -> None:
    pair = secure_pair()
    record = record_fields(pair.a.generate_encrypted_message(b"to B"))
    forged = Record(2, record.sequence, record.iv, record.ciphertext)
    with pytest.raises(ChannelError, match="authentication failed"):
        pair.a.process_encrypted_msg(forged.to_bytes())
    assert_closed(pair.a)


def test_record_from_a_third_enclave_rejected() -> None:
    """C and D (same signer, same policy) have their own session; C's record goes to B."""
    ours = secure_pair(keys=(0, 1))
    theirs = secure_pair(keys=(2, 3))
    foreign = theirs.a.generate_encrypted_message(b"from C")
    with pytest.raises(ChannelError, match="authentication failed"):
        ours.b.process_encrypted_msg(foreign)
    assert_closed(ours.b)


def test_key_establish_from_a_third_enclave_rejected() -> None:
    ours = attested_pair(keys=(0, 1))
    theirs = attested_pair(keys=(2, 3))
    with pytest.raises(ChannelError, match="signature does not verify"):
        ours.b.acknowledge_secure_channel(theirs.a.establish_secure_channel())
    assert_closed(ours.b)


# ---------------------------------------------------------------------------- key establishment


class SpyKey(rsa.RSAPrivateKey):
    """Delegates to a real key and records whether `decrypt` ran."""

    def __init__(self, inner: rsa.RSAPrivateKey) -> None:
        self.inner = inner
        self.decrypts = 0

    def decrypt(self, ciphertext: bytes, padding: Any) -> bytes:
        self.decrypts += 1
        return self.inner.decrypt(ciphertext, padding)

    @property
    def key_size(self) -> int:
        return self.inner.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self.inner.public_key()

    def sign(self, data: Any, padding: Any, algorithm: Any) -> bytes:
        return self.inner.sign(data, padding, algorithm)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self.inner.private_numbers()

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        return self.inner.private_bytes(encoding, format, encryption_algorithm)

    def __copy__(self) -> SpyKey:
        return self

    def __deepcopy__(self, memo: Any) -> SpyKey:
        return self


def spy_pair() -> tuple[Pair, SpyKey]:
    spy = SpyKey(rsa_key(1))
    a = channel("initiator", 0)
    b = SecureChannel("responder", fake_verifier, POLICY, key=spy)
    b.verify_report_and_set_pubkey(a.get_remote_report_with_pubkey(FakeEnclave().evidence))
    a.verify_report_and_set_pubkey(b.get_remote_report_with_pubkey(FakeEnclave().evidence))
    return Pair(a, b, []), spy


def test_bad_signature_rejected_before_any_decryption() -> None:
    pair, spy = spy_pair()
    msg = KeyEstablish.parse(pair.a.establish_secure_channel())
    bad = bytearray(msg.signature)
    bad[100] ^= 0x04
    with pytest.raises(ChannelError, match="signature does not verify"):
        pair.b.acknowledge_secure_channel(KeyEstablish(msg.encrypted_key, bytes(bad)).to_bytes())
    assert spy.decrypts == 0
    assert_closed(pair.b)


def test_key_signed_by_another_key_rejected_before_decryption() -> None:
    """A host that knows B's public key wraps its own session key and signs it itself."""
    pair, spy = spy_pair()
    pair.a.establish_secure_channel()
    attacker = rsa_key(2)
    encrypted = spy.public_key().encrypt(
        b"k" * 32,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    digest = hashlib.sha256(encrypted).digest()
    signature = attacker.sign(digest, _PSS, utils.Prehashed(hashes.SHA256()))
    with pytest.raises(ChannelError, match="signature does not verify"):
        pair.b.acknowledge_secure_channel(KeyEstablish(encrypted, signature).to_bytes())
    assert spy.decrypts == 0
    assert_closed(pair.b)


def test_good_signature_then_exactly_one_decryption() -> None:
    pair, spy = spy_pair()
    pair.b.acknowledge_secure_channel(pair.a.establish_secure_channel())
    assert spy.decrypts == 1


def test_altered_key_ack_rejected_by_initiator() -> None:
    pair = attested_pair()
    ack = bytearray(pair.b.acknowledge_secure_channel(pair.a.establish_secure_channel()))
    ack[-1] ^= 0x01
    with pytest.raises(ChannelError, match="key confirmation"):
        pair.a.acknowledge_secure_channel(bytes(ack))
    assert_closed(pair.a)


def test_key_ack_from_another_session_rejected() -> None:
    ours = attested_pair(keys=(0, 1))
    theirs = attested_pair(keys=(2, 3))
    ours.a.establish_secure_channel()
    their_ack = theirs.b.acknowledge_secure_channel(theirs.a.establish_secure_channel())
    with pytest.raises(ChannelError, match="key confirmation"):
        ours.a.acknowledge_secure_channel(their_ack)
    assert_closed(ours.a)


# ---------------------------------------------------------------------------- attestation / policy


POLICY_ATTACKS = {
    "wrong-signer": (FakeEnclave(mr_signer=OTHER_SIGNER), "mr_signer"),
    "wrong-product": (FakeEnclave(isv_prod_id=2), "isv_prod_id 2 != expected 1"),
    "low-svn": (FakeEnclave(isv_svn=0), "isv_svn 0 < minimum 1"),
    "debug-peer": (FakeEnclave(debug=True), "debug"),
    "out-of-date-tcb": (FakeEnclave(tcb_status=TcbStatus.OUT_OF_DATE), "tcb_status OutOfDate"),
}


@pytest.mark.parametrize("attack", sorted(POLICY_ATTACKS))
@pytest.mark.parametrize("victim", ["initiator", "responder"])
def test_policy_attacks_rejected_and_close(attack: str, victim: str) -> None:
    peer, violation = POLICY_ATTACKS[attack]
    ch = channel(victim, 0)
    ch.get_remote_report_with_pubkey(FakeEnclave().evidence)
    hello = channel("responder" if victim == "initiator" else "initiator", 1)
    with pytest.raises(PolicyError) as info:
        ch.verify_report_and_set_pubkey(hello.get_remote_report_with_pubkey(peer.evidence))
    assert any(violation in v for v in info.value.violations)
    assert len(info.value.violations) == 1
    assert ch.peer is None
    assert_closed(ch)


def test_policy_reports_every_violation_at_once() -> None:
    peer = FakeEnclave(mr_signer=OTHER_SIGNER, isv_prod_id=7, isv_svn=0, debug=True)
    ch = channel("responder", 1)
    with pytest.raises(PolicyError) as info:
        ch.verify_report_and_set_pubkey(
            channel("initiator", 0).get_remote_report_with_pubkey(peer.evidence)
        )
    assert len(info.value.violations) == 4


def test_mr_enclave_list_and_allow_debug() -> None:
    other_build = hashlib.sha256(b"another build").digest()
    pinned = ChannelPolicy(SIGNER, 1, 1, mr_enclave=(other_build,), allow_debug=True)
    hello = channel("initiator", 0).get_remote_report_with_pubkey(FakeEnclave(debug=True).evidence)
    with pytest.raises(PolicyError, match="mr_enclave"):
        channel("responder", 1, pinned).verify_report_and_set_pubkey(hello)
    both = ChannelPolicy(SIGNER, 1, 1, mr_enclave=(other_build, MR_ENCLAVE), allow_debug=True)
    peer = channel("responder", 1, both).verify_report_and_set_pubkey(hello)
    assert peer.debug


def test_simulated_root_only_when_named() -> None:
    root = "ab" * 32
    identity = PeerIdentity(
        MR_ENCLAVE, SIGNER, 1, 1, False, TcbStatus.UP_TO_DATE, bytes(64), True, root
    )
    assert POLICY.violations(identity) == [
        "simulated root is not named by the policy (simulated evidence)"
    ]
    named = ChannelPolicy(SIGNER, 1, 1, simulated_root=root.upper())
    assert named.violations(identity) == []
    other = ChannelPolicy(SIGNER, 1, 1, simulated_root="cd" * 32)
    assert other.violations(identity) != []


def test_evidence_binding_another_key_rejected() -> None:
    """The host swaps in its own key next to A's genuine evidence (which binds A's key)."""
    genuine = ReportWithPubkey.parse(
        channel("initiator", 0).get_remote_report_with_pubkey(FakeEnclave().evidence)
    )
    host_key = (
        rsa_key(2)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    swapped = ReportWithPubkey(host_key, genuine.evidence).to_bytes()
    for verifier in (fake_verifier, lazy_verifier):
        ch = SecureChannel("responder", verifier, POLICY, key=rsa_key(1))
        with pytest.raises(BindingError):
            ch.verify_report_and_set_pubkey(swapped)
        assert_closed(ch)


def test_edited_evidence_rejected_by_the_verifier() -> None:
    genuine = ReportWithPubkey.parse(
        channel("initiator", 0).get_remote_report_with_pubkey(FakeEnclave().evidence)
    )
    doc = cbor2.loads(genuine.evidence)
    doc["claims"] = cbor2.dumps({**cbor2.loads(doc["claims"]), "isv_svn": 9}, canonical=True)
    forged = ReportWithPubkey(genuine.public_key_der, cbor2.dumps(doc)).to_bytes()
    ch = channel("responder", 1)
    with pytest.raises(SignatureError):
        ch.verify_report_and_set_pubkey(forged)
    assert_closed(ch)


def test_own_report_reflected_back_rejected() -> None:
    ch = channel("initiator", 0)
    hello = ch.get_remote_report_with_pubkey(FakeEnclave().evidence)
    with pytest.raises(ChannelError, match="own key"):
        ch.verify_report_and_set_pubkey(hello)
    assert_closed(ch)


def test_peer_key_must_be_rsa_2048() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    der = small.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ChannelError, match="294 bytes"):
        ReportWithPubkey(der, b"e")
    junk = bytes(294)
    ch = channel("responder", 1)
    with pytest.raises(ChannelError, match="public_key_der"):
        ch.verify_report_and_set_pubkey(ReportWithPubkey(junk, b"e").to_bytes())
    assert_closed(ch)


def _verified_quote(report_data: bytes, tee: str = "SGX") -> VerifiedQuote:
    """A verification result as `attestation.verify` returns it (the quote reduced to its body)."""
    body = ReportBody(
        cpu_svn=bytes(16),
        misc_select=0,
        isv_ext_prod_id=bytes(16),
        attributes=Attributes(flags=0x05, xfrm=0x3),
        mr_enclave=MR_ENCLAVE,
        mr_signer=SIGNER,
        config_id=bytes(64),
        isv_prod_id=1,
        isv_svn=3,
        config_svn=0,
        isv_family_id=bytes(16),
        report_data=report_data,
    )
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return VerifiedQuote(
        quote=cast(Any, SimpleNamespace(body=body)),
        tee=tee,
        tcb_status=TcbStatus.UP_TO_DATE,
        platform_tcb_status=TcbStatus.UP_TO_DATE,
        qe_tcb_status=TcbStatus.UP_TO_DATE,
        advisory_ids=("INTEL-SA-00001",),
        fmspc=bytes(6),
        pck_ca="processor",
        tcb_date=now,
        collateral_expiry=now,
        verified_at=now,
        root_spki_sha256="00" * 32,
        simulated_root=False,
    )


def test_verifier_may_return_a_verified_quote() -> None:
    hello = channel("initiator", 0).get_remote_report_with_pubkey(FakeEnclave().evidence)
    expected = hashlib.sha256(ReportWithPubkey.parse(hello).public_key_der).digest()
    bound = _verified_quote(expected + bytes(32))
    ch = SecureChannel("responder", lambda _e, _r: bound, POLICY, key=rsa_key(1))
    peer = ch.verify_report_and_set_pubkey(hello)
    assert (peer.isv_svn, peer.advisory_ids, peer.debug) == (3, ("INTEL-SA-00001",), False)
    # Evidence bound to some other key is refused even if the verifier let it through.
    unbound = _verified_quote(bytes(64))
    ch = SecureChannel("responder", lambda _e, _r: unbound, POLICY, key=rsa_key(1))
    with pytest.raises(BindingError):
        ch.verify_report_and_set_pubkey(hello)
    assert_closed(ch)
    # A TD quote is not an enclave peer.
    td = _verified_quote(expected + bytes(32), tee="TDX")
    ch = SecureChannel("responder", lambda _e, _r: td, POLICY, key=rsa_key(1))
    with pytest.raises(UnsupportedFormatError):
        ch.verify_report_and_set_pubkey(hello)
    assert_closed(ch)


def test_channel_policy_converts_to_and_from_policy() -> None:
    policy = ChannelPolicy(SIGNER, 1, 2, mr_enclave=(MR_ENCLAVE,), rejected_advisories=("x-1",))
    general = policy.to_policy()
    assert ChannelPolicy.from_policy(Policy.from_toml(general.to_toml())) == policy
    with pytest.raises(ConfigError, match="mr_signer"):
        ChannelPolicy.from_policy(Policy(isv_prod_id=1, min_isv_svn=1))
    with pytest.raises(ConfigError):
        ChannelPolicy(SIGNER[:31], 1, 1)
    with pytest.raises(ConfigError):
        ChannelPolicy(SIGNER, 1, 1, accepted_tcb_statuses=())


# ---------------------------------------------------------------------------- misuse, fail closed


def _initiator_in(state: str) -> SecureChannel:
    if state == "initial":
        return channel("initiator", 0)
    if state == "mutual":
        return attested_pair().a
    pair = attested_pair()
    pair.a.establish_secure_channel()
    return pair.a


OUT_OF_ORDER: dict[str, tuple[str, Callable[[SecureChannel], object]]] = {
    "establish before attestation": ("initial", lambda c: c.establish_secure_channel()),
    "record before secure": ("mutual", lambda c: c.generate_encrypted_message(b"early")),
    "process before secure": ("mutual", lambda c: c.process_encrypted_msg(b"early")),
    "establish twice": ("key_sent", lambda c: c.establish_secure_channel()),
    "record before key ack": ("key_sent", lambda c: c.generate_encrypted_message(b"early")),
    "second report": (
        "mutual",
        lambda c: c.get_remote_report_with_pubkey(FakeEnclave().evidence),
    ),
    "second verify": ("mutual", lambda c: c.verify_report_and_set_pubkey(b"again")),
    "ack before establish": ("mutual", lambda c: c.acknowledge_secure_channel(b"ack")),
}


@pytest.mark.parametrize("case", sorted(OUT_OF_ORDER))
def test_out_of_order_calls_refused_and_close(case: str) -> None:
    state, call = OUT_OF_ORDER[case]
    ch = _initiator_in(state)
    with pytest.raises(ChannelStateError):
        call(ch)
    assert_closed(ch)


def test_responder_cannot_establish_and_initiator_cannot_take_a_key() -> None:
    pair = attested_pair()
    with pytest.raises(ChannelStateError, match="only the initiator"):
        pair.b.establish_secure_channel()
    assert_closed(pair.b)
    pair = attested_pair()
    establish = pair.a.establish_secure_channel()
    with pytest.raises(ChannelError, match="expected KeyAck"):
        pair.a.acknowledge_secure_channel(establish)
    assert_closed(pair.a)


def test_explicit_close_is_final() -> None:
    pair = secure_pair()
    frame = pair.a.generate_encrypted_message(b"late")
    pair.b.close()
    pair.b.close()
    assert_closed(pair.b)
    with pytest.raises(ChannelStateError):
        pair.b.process_encrypted_msg(frame)
    assert pair.b.transcript_hash is None  # keys dropped


def test_injected_callables_fail_typed() -> None:
    def broken_provider(_rd: bytes) -> bytes:
        raise RuntimeError("platform down")

    ch = channel("initiator", 0)
    with pytest.raises(PlatformError, match="evidence provider failed"):
        ch.get_remote_report_with_pubkey(broken_provider)
    assert_closed(ch)

    def broken_verifier(_e: bytes, _r: bytes) -> PeerIdentity:
        raise ValueError("bug")

    hello = channel("initiator", 0).get_remote_report_with_pubkey(FakeEnclave().evidence)
    ch = SecureChannel("responder", broken_verifier, POLICY, key=rsa_key(1))
    with pytest.raises(AttestationError, match="verifier failed"):
        ch.verify_report_and_set_pubkey(hello)
    assert_closed(ch)

    ch = SecureChannel("responder", lambda _e, _r: cast(Any, "yes"), POLICY, key=rsa_key(1))
    with pytest.raises(AttestationError, match="returned str"):
        ch.verify_report_and_set_pubkey(hello)
    assert_closed(ch)

    a = SecureChannel(
        "initiator", fake_verifier, POLICY, rng=lambda n: bytes(n - 1), key=rsa_key(0)
    )
    b = channel("responder", 1)
    b.verify_report_and_set_pubkey(a.get_remote_report_with_pubkey(FakeEnclave().evidence))
    a.verify_report_and_set_pubkey(b.get_remote_report_with_pubkey(FakeEnclave().evidence))
    with pytest.raises(PlatformError, match="random source"):
        a.establish_secure_channel()
    assert_closed(a)


def test_reentrant_callback_fails_the_channel() -> None:
    ch = channel("initiator", 0)

    def sneaky(report_data: bytes) -> bytes:
        ch.close()
        return FakeEnclave().evidence(report_data)

    with pytest.raises(ChannelStateError):
        ch.get_remote_report_with_pubkey(sneaky)
    assert_closed(ch)


def test_constructor_rejects_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="role"):
        SecureChannel("observer", fake_verifier, POLICY)
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigError, match="RSA-2048"):
        SecureChannel("initiator", fake_verifier, POLICY, key=small)
    with pytest.raises(ConfigError, match="ChannelPolicy"):
        SecureChannel("initiator", fake_verifier, cast(Any, Policy()))


# ---------------------------------------------------------------------------- frame scan


def test_session_key_and_plaintexts_never_on_the_wire() -> None:
    draws: list[bytes] = []

    def recording_rng(n: int) -> bytes:
        import os

        value = os.urandom(n)
        draws.append(value)
        return value

    ea = FakeEnclave()
    a = SecureChannel("initiator", fake_verifier, POLICY, rng=recording_rng, key=rsa_key(0))
    b = SecureChannel("responder", fake_verifier, POLICY, rng=recording_rng, key=rsa_key(1))
    wire = [a.get_remote_report_with_pubkey(ea.evidence)]
    b.verify_report_and_set_pubkey(wire[-1])
    wire.append(b.get_remote_report_with_pubkey(ea.evidence))
    a.verify_report_and_set_pubkey(wire[-1])
    wire.append(a.establish_secure_channel())
    session_key = draws[0]
    assert len(session_key) == 32
    wire.append(b.acknowledge_secure_channel(wire[-1]))
    a.acknowledge_secure_channel(wire[-1])
    plaintexts = [f"plaintext number {i} / top secret share".encode() for i in range(12)]
    for i, text in enumerate(plaintexts):
        sender, receiver = (a, b) if i % 2 == 0 else (b, a)
        wire.append(sender.generate_encrypted_message(text))
        assert receiver.process_encrypted_msg(wire[-1]) == text

    # The derived directional keys, recomputed independently from the session key.
    th = transcript_hash(a.public_key_der or b"", b.public_key_der or b"")
    derived = [
        HKDF(hashes.SHA256(), 32, salt=th, info=LABEL + purpose).derive(session_key)
        for purpose in (b" key i2r", b" key r2i", b" key confirm")
    ]
    # Sanity: the recomputed i2r key really decrypts A's first record.
    first = Record.parse(wire[4])
    aad = LABEL + b" record" + bytes([1]) + bytes(8)
    assert AESGCM(derived[0]).decrypt(first.iv, first.ciphertext, aad) == plaintexts[0]

    private_parts = [
        value.to_bytes(256, "big").lstrip(b"\0")
        for i in (0, 1)
        for value in (rsa_key(i).private_numbers().d, rsa_key(i).private_numbers().p)
    ]
    secrets = [session_key, *derived, *plaintexts, *private_parts]
    needles = [s for secret in secrets for s in _encodings(secret)]
    blob = b"".join(wire)
    for needle in needles:
        assert needle not in blob
    for shown in (repr(a), repr(b), str(a), repr(Record.parse(wire[-1]))):
        for needle in needles:
            assert needle.decode("latin-1") not in shown


def _encodings(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret), secret[:16], secret[-16:]]


def test_error_messages_carry_no_secrets() -> None:
    pair = secure_pair()
    secret = b"the plaintext that must not leak"
    frame = bytearray(pair.a.generate_encrypted_message(secret))
    frame[-1] ^= 1
    with pytest.raises(ChannelError) as info:
        pair.b.process_encrypted_msg(bytes(frame))
    assert secret.decode() not in str(info.value)
    assert bytes(frame).hex() not in str(info.value)


# ---------------------------------------------------------------------------- fuzz


_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(data=st.binary(max_size=600))
def test_verify_takes_arbitrary_bytes(data: bytes) -> None:
    ch = channel("responder", 1)
    with pytest.raises(EnclaveKMSError):
        ch.verify_report_and_set_pubkey(data)
    assert ch.closed


@_FUZZ
@given(data=st.binary(max_size=600), initiator=st.booleans())
def test_acknowledge_takes_arbitrary_bytes(data: bytes, initiator: bool) -> None:
    pair = attested_pair()
    if initiator:
        pair.a.establish_secure_channel()
    ch = pair.a if initiator else pair.b
    with pytest.raises(EnclaveKMSError):
        ch.acknowledge_secure_channel(data)
    assert ch.closed


@_FUZZ
@given(data=st.binary(max_size=300))
def test_process_takes_arbitrary_bytes(data: bytes) -> None:
    pair = secure_pair()
    with pytest.raises(EnclaveKMSError):
        pair.b.process_encrypted_msg(data)
    assert pair.b.closed


_ITEM = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.binary(max_size=300),
    st.sampled_from([0, 1, 2, 3, 4, 12, 16, 32, 256, 294]).map(bytes),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)


@_FUZZ
@given(
    type_tag=st.integers(min_value=0, max_value=6),
    fields=st.lists(_ITEM, max_size=5),
    target=st.sampled_from(["verify", "ack-responder", "ack-initiator", "process"]),
)
def test_structured_frames_fail_typed(type_tag: int, fields: list[Any], target: str) -> None:
    """Well-formed CBOR with plausible version and type reaches the field checks."""
    frame = cbor2.dumps([1, type_tag, *fields])
    if target == "verify":
        ch = channel("responder", 1)
        act: Callable[[], object] = lambda: ch.verify_report_and_set_pubkey(frame)  # noqa: E731
    elif target == "process":
        ch = secure_pair().b
        act = lambda: ch.process_encrypted_msg(frame)  # noqa: E731
    else:
        pair = attested_pair()
        ch = pair.b if target == "ack-responder" else pair.a
        if target == "ack-initiator":
            pair.a.establish_secure_channel()
        act = lambda: ch.acknowledge_secure_channel(frame)  # noqa: E731
    with pytest.raises(EnclaveKMSError):
        act()
    assert ch.closed


def test_reentry_is_fatal_even_if_the_callback_swallows_the_error() -> None:
    ch = channel("initiator", 0)

    def swallowing(report_data: bytes) -> bytes:
        try:
            ch.establish_secure_channel()
        except ChannelStateError:
            pass
        return FakeEnclave().evidence(report_data)

    with pytest.raises(ChannelStateError, match="re-entered"):
        ch.get_remote_report_with_pubkey(swallowing)
    assert_closed(ch)
