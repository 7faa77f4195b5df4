"""The secure-channel ECALLs: the sample's names, driving `channel.SecureChannel`.

Peer evidence is verified for real inside the enclave: collateral comes through the
`get_collateral` OCALL (it is signed, so the host cannot forge it), the trust root and the
peer policy come from the enclave's configuration, and `now` is read once per verification.
The host only relays opaque messages; plaintexts are made and consumed inside the enclave
(`process_encrypted_msg` returns only a digest).

What the ECALLs need of the initialized enclave comes as a `ChannelSide` from a callable the
runtime passes in, so this module never imports the runtime (and the runtime's lifecycle
error, NotInitializedError, reaches the host unchanged).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2

from enclave_kms.attestation.appraise import appraise
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.evidence import EvidenceForm
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot, VerifiedQuote
from enclave_kms.channel import ChannelPolicy, SecureChannel
from enclave_kms.errors import BindingError, ChannelStateError, ConfigError, PolicyError


@dataclass(frozen=True)
class ChannelSide:
    """The initialized enclave as the channel ECALLs see it."""

    settings: Mapping[str, Any]  # RuntimeConfig.channel: role, policy_toml, trust_root_pem
    mr_enclave: bytes
    quote_for: Callable[[bytes], bytes]
    collateral_for: Callable[[bytes], bytes]


def channel_message(index: int, role: str, mr_enclave: bytes) -> bytes:
    """The enclave's own message number `index` (the sample sends fixed strings too)."""
    return f"message {index} from the {role}, enclave {mr_enclave.hex()[:16]}".encode()


class ChannelEcalls:
    def __init__(self, side: Callable[[], ChannelSide]) -> None:
        self._side = side
        self._channel: SecureChannel | None = None
        self._policy: Policy | None = None
        self._cache = VerificationCache()  # this enclave's peers' chains and collateral
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Any]:
        return {
            "get_remote_report_with_pubkey": self.get_remote_report_with_pubkey,
            "verify_report_and_set_pubkey": self.verify_report_and_set_pubkey,
            "establish_secure_channel": self.establish_secure_channel,
            "acknowledge_secure_channel": self.acknowledge_secure_channel,
            "generate_encrypted_message": self.generate_encrypted_message,
            "process_encrypted_msg": self.process_encrypted_msg,
        }

    def _verify_peer(self, evidence: bytes, expected_report_data: bytes) -> VerifiedQuote:
        """The peer check is `appraise`: evidence, the channel policy, the peer key's hash."""
        side = self._side()
        root = TrustRoot.from_pem(bytes(side.settings["trust_root_pem"]))
        collateral = load_collateral(side.collateral_for(evidence))
        policy = self._policy
        if policy is None:
            raise ChannelStateError("no secure channel is configured for this enclave")
        try:
            return appraise(
                evidence,
                policy,
                expected_report_data=expected_report_data,
                now=datetime.now(UTC),
                collateral=collateral,
                cache=self._cache,
                trust_root=root,
                form=EvidenceForm.RAW_QUOTE,
            ).verified
        except PolicyError as exc:
            subject = exc.subject
            if isinstance(subject, VerifiedQuote) and subject.report_data[:32] != (
                expected_report_data
            ):
                raise BindingError("peer evidence does not bind the peer's channel key") from None
            raise

    def _get(self) -> SecureChannel:
        with self._lock:
            if self._channel is None:
                settings = self._side().settings
                if not settings:
                    raise ChannelStateError("no secure channel is configured for this enclave")
                try:
                    policy = ChannelPolicy.from_policy(
                        Policy.from_toml(str(settings["policy_toml"]))
                    )
                    role = str(settings["role"])
                except KeyError as exc:
                    raise ConfigError(f"channel configuration lacks {exc.args[0]}") from None
                self._policy = policy.to_policy()
                self._channel = SecureChannel(role, self._verify_peer, policy)
            return self._channel

    def get_remote_report_with_pubkey(self) -> dict[str, Any]:
        return {"message": self._get().get_remote_report_with_pubkey(self._side().quote_for)}

    def verify_report_and_set_pubkey(self, message: bytes) -> dict[str, Any]:
        peer = self._get().verify_report_and_set_pubkey(message)
        return {"peer": cbor2.dumps(peer.describe())}

    def establish_secure_channel(self) -> dict[str, Any]:
        return {"message": self._get().establish_secure_channel()}

    def acknowledge_secure_channel(self, message: bytes) -> dict[str, Any]:
        return {"message": self._get().acknowledge_secure_channel(message)}

    def generate_encrypted_message(self, index: int) -> dict[str, Any]:
        side = self._side()
        plaintext = channel_message(index, str(side.settings.get("role", "")), side.mr_enclave)
        return {"message": self._get().generate_encrypted_message(plaintext)}

    def process_encrypted_msg(self, message: bytes) -> dict[str, Any]:
        plaintext = self._get().process_encrypted_msg(message)
        return {"digest": hashlib.sha256(plaintext).digest()}
