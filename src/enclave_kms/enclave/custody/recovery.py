"""Recovery mode: an enclave that cannot unseal the SRK collects k officers' shares.

Started by `serve --recovery` on a new machine when every replica is lost (the sealed SRK
belongs to CPUs that are gone). The enclave makes a session key that lives only in its
memory, and serves, over its RA-TLS server, only: health, attestation, the recovery status
(with evidence binding the session key: `wire.session_binding`), the stored sealed shares,
and share submission. Each submission is opened with the session key and checked against the
stored set (its set id, its index not yet accepted, its digest) before it is kept; the k-th
reconstructs the SRK, which is used only if it matches the set's commitment and MAC and then
opens the existing store (the runtime's `restore`). Then the runtime seals it to this CPU and
swaps the full API in (`SwitchableApp`), same TLS key, same pins.

Audit: before the SRK is back the installation's audit key is out of reach (it is a record
under the SRK), so every step is kept in memory (`RecoveryEvent`, shown by the status and
logged without secrets) and appended to the installation's audit chain right after the
restore. A recovery that never completes leaves only the log lines (the host's log sink).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave_kms.attestation.appraise import appraise
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.evidence import EvidenceForm
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TcbStatus, TrustRoot
from enclave_kms.enclave.custody.shares import RecoverySet, SetStore, combine
from enclave_kms.enclave.host_calls import HostCalls
from enclave_kms.errors import (
    ConfigError,
    ConflictError,
    EnclaveKMSError,
    RecoveryDuplicateError,
    RecoveryError,
    RecoveryShareError,
)
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.wire import custody as wire

log = logging.getLogger("enclave_kms.enclave.recovery")

MAX_EVENTS = 256  # a flood of refused submissions must not grow the enclave's memory
SESSION_FORMULA = (
    "report_data[0:32] = SHA-256('enclave-kms/recovery/session/v1' || session_id || "
    "session_key), raw bytes"
)


@dataclass(frozen=True)
class RecoveryEvent:
    """One recovery step: what the installation's audit chain receives after the restore."""

    time: str
    op: str  # recovery.start, recovery.submit, recovery.restore
    officer: str  # fingerprint, or "" when the submission could not be opened
    outcome: str  # "ok" or an error code

    @classmethod
    def now(cls, op: str, officer: str, outcome: str) -> RecoveryEvent:
        return cls(datetime.now(UTC).replace(microsecond=0).isoformat(), op, officer, outcome)


class RecoverySession:
    """The shares accepted so far, the session key, and the steps taken."""

    def __init__(
        self,
        recovery_set: RecoverySet,
        *,
        quote_for: Callable[[bytes], bytes],
        collateral_for: Callable[[bytes], bytes],
        restore: Callable[[bytes, list[RecoveryEvent]], None],
    ) -> None:
        self.set = recovery_set
        self.session_id = os.urandom(wire.SESSION_ID_BYTES)
        self._key = x25519.X25519PrivateKey.generate()
        self.session_key = wire.raw_public(self._key.public_key())
        self._quote_for, self._collateral_for, self._restore = quote_for, collateral_for, restore
        self._accepted: dict[int, bytes] = {}
        self._evidence: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()
        self.events: list[RecoveryEvent] = []
        self.restored = False
        self._event("recovery.start", "", "ok")

    def _event(self, op: str, officer: str, outcome: str) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(RecoveryEvent.now(op, officer, outcome))
        log.warning(
            "recovery %s: officer %s, %s", op, officer[:16] or "unknown", outcome
        )  # warning: an operator must see every recovery step in the host's log

    def evidence(self) -> tuple[bytes, bytes]:
        """(quote, collateral) binding the session key; made once per session."""
        with self._lock:
            if self._evidence is None:
                binding = wire.session_binding(self.session_id, self.session_key)
                quote = self._quote_for(binding + bytes(32))
                self._evidence = (quote, self._collateral_for(quote))
            return self._evidence

    def status(self) -> dict[str, Any]:
        with self._lock:
            accepted = sorted(self._accepted)
            events = [e.__dict__ for e in self.events]
        return {
            "state": "restored" if self.restored else "recovering",
            **self.set.summary(),
            "accepted": [self.set.shares[i - 1].fingerprint for i in accepted],
            "needed": 0 if self.restored else self.set.threshold - len(accepted),
            "session_id": self.session_id.hex(),
            "session_key": wire.b64(self.session_key),
            "events": events,
            "audited": "in memory and in the host log until the restore; then in the "
            "installation's audit chain",
        }

    def submit(self, session_id: bytes, sealed: bytes) -> dict[str, Any]:
        """Open, check and keep one share; the k-th restores the SRK (or discards them all)."""
        with self._lock:
            try:
                index, share = self._open(session_id, sealed)
            except EnclaveKMSError as exc:
                self._event("recovery.submit", "", exc.code)
                raise
            officer = self.set.shares[index - 1].fingerprint
            try:
                self._check(index, share)
            except EnclaveKMSError as exc:
                self._event("recovery.submit", officer, exc.code)
                raise
            self._accepted[index] = share
            self._event("recovery.submit", officer, "ok")
            if len(self._accepted) >= self.set.threshold:
                self._reconstruct()
        return self.status()

    def _open(self, session_id: bytes, sealed: bytes) -> tuple[int, bytes]:
        if self.restored:
            raise ConflictError("the storage root key is already restored")
        if not hmac.compare_digest(session_id, self.session_id):
            raise RecoveryShareError(
                "the submission is for another recovery session (a replay, or this enclave "
                "restarted): read the status again and re-submit"
            )
        try:
            plain = wire.SUITE.decrypt(sealed, self._key, info=wire.submit_info(session_id))
        except (InvalidTag, ValueError):
            raise RecoveryShareError(
                "the submission is not sealed to this session's key (a replay or a forgery)"
            ) from None
        set_id, index, share = wire.decode_submission(plain)
        if set_id != self.set.set_id or index > len(self.set.shares):
            raise RecoveryShareError("the share belongs to another recovery set")
        return index, share

    def _check(self, index: int, share: bytes) -> None:
        if index in self._accepted:
            raise RecoveryDuplicateError("this officer's share is already accepted")
        expected = self.set.shares[index - 1].digest
        if not hmac.compare_digest(wire.share_digest(self.set.set_id, index, share), expected):
            raise RecoveryShareError(
                "the share does not match the recovery set (wrong, corrupted or forged)"
            )

    def _reconstruct(self) -> None:
        shares, self._accepted = list(self._accepted.values()), {}
        try:
            srk = combine(shares)
            if not self.set.matches(srk):
                raise RecoveryError(
                    "the reconstructed key does not match the recovery set's commitment; "
                    "every share was discarded"
                )
            self._restore(srk, self.events)
        except EnclaveKMSError as exc:
            self._event("recovery.restore", "", exc.code)
            raise
        self.restored = True
        self._event("recovery.restore", "", "ok")


def check_origin(
    recovery_set: RecoverySet,
    *,
    own: EnclaveIdentity,
    trust_root: TrustRoot | None,
    collateral_for: Callable[[bytes], bytes],
) -> None:
    """Refuse a set no enclave of our signer and product made: its origin quote must verify
    (any TCB status but Revoked: the CPU that made it may be outdated or gone) and bind the
    set's body. Otherwise a host could fabricate a set for a key it chose and submit its own
    shares, and a genuine enclave would adopt a key the host knows."""
    quote = recovery_set.origin
    try:
        if not quote:
            raise RecoveryError("it carries no origin quote")
        policy = Policy(
            mr_signer=own.mr_signer,
            isv_prod_id=own.isv_prod_id,
            allow_debug=own.attributes.debug,
            accepted_tcb_statuses=tuple(s for s in TcbStatus if s is not TcbStatus.REVOKED),
            simulated_root=None if trust_root is None else trust_root.spki_sha256,
        )
        appraise(
            quote,
            policy,
            expected_report_data=wire.set_origin_binding(recovery_set.body()),
            now=datetime.now(UTC),
            collateral=load_collateral(collateral_for(quote)),
            cache=VerificationCache.disabled(),
            trust_root=trust_root,
            form=EvidenceForm.RAW_QUOTE,
        )
    except EnclaveKMSError as exc:
        raise RecoveryError(
            "the stored recovery set was not made by an enclave of this signer and product "
            f"({exc.message}); refusing to recover from it"
        ) from None


def platform_root(platform: str, platform_dir: str) -> TrustRoot | None:
    """The root a recovery set's origin quote must chain to: Intel's on hardware (None, the
    default); in simulation the platform's own simulated root (simulation protects nothing)."""
    if platform != "sim":
        return None
    from enclave_kms.platform.sim.platform import SimPlatform

    return TrustRoot.from_pem(SimPlatform.open(platform_dir).root_pem())


def start_session(
    host: HostCalls,
    *,
    own: EnclaveIdentity,
    platform: tuple[str, str, int],
    quote_for: Callable[[bytes], bytes],
    restore: Callable[[bytes, list[RecoveryEvent]], None],
) -> RecoverySession:
    """Recovery mode for an enclave that cannot unseal the SRK: the stored set, checked for
    its origin, and a new session. `platform` is (name, directory, workers)."""
    name, directory, workers = platform
    if workers != 1:
        raise ConfigError("recovery mode runs one worker (--workers 1)")
    found = SetStore(host).load()
    if found is None:
        raise RecoveryError(
            "this CPU cannot unseal the storage root key and the storage holds no "
            "recovery set: the installation cannot be recovered here"
        )
    check_origin(
        found[1],
        own=own,
        trust_root=platform_root(name, directory),
        collateral_for=host.collateral_for,
    )
    return RecoverySession(
        found[1], quote_for=quote_for, collateral_for=host.collateral_for, restore=restore
    )
