"""The enclave-to-enclave secure channel: a sans-I/O state machine (docs/secure-channel.md).

`SecureChannel` is one end; the EDL handlers of each enclave drive it and the untrusted host
relays the bytes it returns. `messages` holds the wire format, `identity` the peer's verified
claims and the per-peer policy.
"""

from __future__ import annotations

from enclave_kms.channel.identity import ChannelPolicy, PeerIdentity
from enclave_kms.channel.messages import (
    MAX_EVIDENCE,
    MAX_FRAME,
    MAX_PLAINTEXT,
    PROTOCOL_VERSION,
    Hello,
    KeyAck,
    KeyEstablish,
    Message,
    Record,
    ReportWithPubkey,
    decode_message,
)
from enclave_kms.channel.state import (
    ChannelState,
    EvidenceProvider,
    PeerVerifier,
    Role,
    SecureChannel,
    transcript_hash,
)

__all__ = [
    "MAX_EVIDENCE",
    "MAX_FRAME",
    "MAX_PLAINTEXT",
    "PROTOCOL_VERSION",
    "ChannelPolicy",
    "ChannelState",
    "EvidenceProvider",
    "Hello",
    "KeyAck",
    "KeyEstablish",
    "Message",
    "PeerIdentity",
    "PeerVerifier",
    "Record",
    "ReportWithPubkey",
    "Role",
    "SecureChannel",
    "decode_message",
    "transcript_hash",
]
