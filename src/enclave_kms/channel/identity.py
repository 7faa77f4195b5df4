"""Who the peer enclave is (`PeerIdentity`) and whom this channel accepts (`ChannelPolicy`).

The channel does not verify evidence itself: an injected verifier does (DESIGN §12, verify is
separate from validate) and returns either a `VerifiedQuote` or a `PeerIdentity`. Both are
reduced to a `PeerIdentity`, and the per-peer policy runs on that one shape, so the simulated
platform, real DCAP quotes and the unit tests' fake evidence all meet the same rules.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TcbStatus, VerifiedQuote
from enclave_kms.errors import AttestationError, ConfigError, PolicyError, UnsupportedFormatError

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PeerIdentity:
    """Verified claims of a peer SGX enclave, as returned by (or derived from) the verifier.

    Contract for verifiers returning this directly: every field comes from evidence that was
    verified completely, and `report_data` is the full 64-byte REPORTDATA of that evidence.
    `simulated_root` is true when the evidence chains to a simulated root; then
    `root_spki_sha256` (hex) names that root so the policy can accept exactly that one.
    """

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    debug: bool
    tcb_status: TcbStatus
    report_data: bytes
    simulated_root: bool = False
    root_spki_sha256: str = ""
    advisory_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, size in (("mr_enclave", 32), ("mr_signer", 32), ("report_data", 64)):
            value = getattr(self, name)
            if type(value) is not bytes or len(value) != size:
                raise AttestationError(f"peer identity: {name} must be {size} bytes")
        for name in ("isv_prod_id", "isv_svn"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                raise AttestationError(f"peer identity: {name} must be an integer in 0..65535")
        if type(self.debug) is not bool or type(self.simulated_root) is not bool:
            raise AttestationError("peer identity: debug and simulated_root must be booleans")
        try:
            status = TcbStatus(self.tcb_status)
        except ValueError:
            raise AttestationError("peer identity: tcb_status is not a TCB status") from None
        object.__setattr__(self, "tcb_status", status)
        if not isinstance(self.root_spki_sha256, str) or not all(
            isinstance(a, str) for a in self.advisory_ids
        ):
            raise AttestationError("peer identity: root_spki_sha256 and advisory_ids are strings")

    @classmethod
    def from_verified_quote(cls, verified: VerifiedQuote) -> PeerIdentity:
        """Reduce a DCAP verification result; channel peers are SGX enclaves, not TDs."""
        if verified.tee != "SGX":
            raise UnsupportedFormatError(f"channel peer evidence is {verified.tee}, not SGX")
        return cls(
            mr_enclave=verified.mr_enclave,
            mr_signer=verified.mr_signer,
            isv_prod_id=verified.isv_prod_id,
            isv_svn=verified.isv_svn,
            debug=verified.debug,
            tcb_status=verified.tcb_status,
            report_data=verified.report_data,
            simulated_root=verified.simulated_root,
            root_spki_sha256=verified.root_spki_sha256,
            advisory_ids=verified.advisory_ids,
        )

    def describe(self) -> dict[str, str | int | bool | list[str]]:
        """Plain values (hex for bytes) for the CLI and the EDL result; nothing secret in here."""
        return {
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn,
            "debug": self.debug,
            "tcb_status": self.tcb_status.value,
            "report_data": self.report_data.hex(),
            "simulated_root": self.simulated_root,
            "root_spki_sha256": self.root_spki_sha256,
            "advisory_ids": list(self.advisory_ids),
        }


@dataclass(frozen=True)
class ChannelPolicy:
    """Whom a channel end accepts as its peer. The sample's three checks are mandatory here.

    `mr_signer`, `isv_prod_id` and `min_isv_svn` must be given (the sample checks exactly these);
    `mr_enclave` optionally pins builds; debug peers are refused unless `allow_debug`; only
    `accepted_tcb_statuses` pass; a simulated root passes only if named by `simulated_root`.
    """

    mr_signer: bytes
    isv_prod_id: int
    min_isv_svn: int
    mr_enclave: tuple[bytes, ...] = ()
    allow_debug: bool = False
    accepted_tcb_statuses: tuple[TcbStatus, ...] = (TcbStatus.UP_TO_DATE,)
    rejected_advisories: tuple[str, ...] = ()
    simulated_root: str | None = None

    def __post_init__(self) -> None:
        if type(self.mr_signer) is not bytes or len(self.mr_signer) != 32:
            raise ConfigError("channel policy: mr_signer must be 32 bytes")
        if any(type(m) is not bytes or len(m) != 32 for m in self.mr_enclave):
            raise ConfigError("channel policy: every mr_enclave must be 32 bytes")
        for name in ("isv_prod_id", "min_isv_svn"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                raise ConfigError(f"channel policy: {name} must be an integer in 0..65535")
        if type(self.allow_debug) is not bool:
            raise ConfigError("channel policy: allow_debug must be a boolean")
        try:
            statuses = tuple(TcbStatus(s) for s in self.accepted_tcb_statuses)
        except ValueError:
            raise ConfigError("channel policy: unknown TCB status") from None
        if not statuses:
            raise ConfigError("channel policy: accepted_tcb_statuses is empty")
        if not all(isinstance(a, str) for a in self.rejected_advisories):
            raise ConfigError("channel policy: rejected_advisories must be strings")
        object.__setattr__(self, "mr_enclave", tuple(self.mr_enclave))
        object.__setattr__(self, "accepted_tcb_statuses", statuses)
        object.__setattr__(
            self, "rejected_advisories", tuple(a.upper() for a in self.rejected_advisories)
        )
        if self.simulated_root is not None:
            root = self.simulated_root.lower()
            if not _HEX64.fullmatch(root):
                raise ConfigError("channel policy: simulated_root must be 64 hex digits")
            object.__setattr__(self, "simulated_root", root)

    @classmethod
    def from_policy(cls, policy: Policy) -> ChannelPolicy:
        """Adopt a general policy (e.g. from TOML) that names the sample's mandatory rules."""
        if policy.mr_signer is None or policy.isv_prod_id is None or policy.min_isv_svn is None:
            raise ConfigError("channel policy needs mr_signer, isv_prod_id and min_isv_svn")
        if policy.report_data is not None:
            raise ConfigError("channel policy: report_data is set by the channel, not the policy")
        return cls(
            mr_signer=policy.mr_signer,
            isv_prod_id=policy.isv_prod_id,
            min_isv_svn=policy.min_isv_svn,
            mr_enclave=policy.mr_enclave,
            allow_debug=policy.allow_debug,
            accepted_tcb_statuses=policy.accepted_tcb_statuses,
            rejected_advisories=policy.rejected_advisories,
            simulated_root=policy.simulated_root,
        )

    def to_policy(self) -> Policy:
        """The same rules as a general `Policy` (for `validate` on a VerifiedQuote, or TOML)."""
        return Policy(
            mr_enclave=self.mr_enclave,
            mr_signer=self.mr_signer,
            isv_prod_id=self.isv_prod_id,
            min_isv_svn=self.min_isv_svn,
            allow_debug=self.allow_debug,
            accepted_tcb_statuses=self.accepted_tcb_statuses,
            rejected_advisories=self.rejected_advisories,
            simulated_root=self.simulated_root,
        )

    def violations(self, peer: PeerIdentity) -> list[str]:
        """Every rule `peer` breaks (empty when it is acceptable)."""
        out: list[str] = []
        if not hmac.compare_digest(peer.mr_signer, self.mr_signer):
            out.append(f"mr_signer {peer.mr_signer.hex()} != expected {self.mr_signer.hex()}")
        if peer.isv_prod_id != self.isv_prod_id:
            out.append(f"isv_prod_id {peer.isv_prod_id} != expected {self.isv_prod_id}")
        if peer.isv_svn < self.min_isv_svn:
            out.append(f"isv_svn {peer.isv_svn} < minimum {self.min_isv_svn}")
        if self.mr_enclave and not any(
            hmac.compare_digest(peer.mr_enclave, m) for m in self.mr_enclave
        ):
            out.append(f"mr_enclave {peer.mr_enclave.hex()} is not one of the accepted values")
        if peer.debug and not self.allow_debug:
            out.append("debug: the peer is a debug enclave and the policy does not allow debug")
        if peer.tcb_status not in self.accepted_tcb_statuses:
            accepted = ", ".join(s.value for s in self.accepted_tcb_statuses)
            out.append(f"tcb_status {peer.tcb_status.value} is not accepted ({accepted})")
        rejected = set(self.rejected_advisories)
        out += [f"advisory {a} is rejected" for a in peer.advisory_ids if a.upper() in rejected]
        if peer.simulated_root and (
            self.simulated_root is None or self.simulated_root != peer.root_spki_sha256.lower()
        ):
            out.append("simulated root is not named by the policy (simulated evidence)")
        return out

    def check(self, peer: PeerIdentity) -> None:
        """Raise PolicyError listing every violation."""
        found = self.violations(peer)
        if found:
            raise PolicyError(found)
