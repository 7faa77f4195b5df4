"""The one exception tree of enclave-kms.

Every failure the package raises on purpose is a subclass of `EnclaveKMSError`. Each class
carries a stable machine-readable `code`; the boundaries (HTTP status table, CLI exit codes,
EDL error frames) map these classes in exactly one place each and never inspect messages.

Messages name the problem in one line and never contain secrets: key material, tokens,
plaintexts and sealed blobs must not be interpolated into them.
"""

from __future__ import annotations

from collections.abc import Sequence


class EnclaveKMSError(Exception):
    """Base of every deliberate failure. `code` is stable across releases."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- usage / input


class UsageError(EnclaveKMSError):
    """The caller asked for something malformed (bad flag, bad file, bad TOML)."""

    code = "usage"


class ConfigError(UsageError):
    """A configuration or policy file is unreadable or invalid."""

    code = "invalid_config"


# --------------------------------------------------------------------------- attestation


class AttestationError(EnclaveKMSError):
    """Evidence is not acceptable. `step` names the verification step that failed."""

    code = "evidence_invalid"
    step = "evidence"

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        if step is not None:
            self.step = step


class FormatError(AttestationError):
    """Bytes do not parse as the structure they claim to be (truncated, bad field, bad size)."""

    code = "evidence_malformed"
    step = "parse"


class UnsupportedFormatError(FormatError):
    """A well-formed structure of a kind or version we deliberately do not accept."""

    code = "evidence_unsupported"
    step = "parse"


class CertificateChainError(AttestationError):
    """A certificate chain does not build, has a bad signature or is outside its validity."""

    code = "certificate_chain_invalid"
    step = "pck_chain"


class UntrustedRootError(CertificateChainError):
    """The chain ends in a root that is not the pinned trust root."""

    code = "untrusted_root"
    step = "trust_root"


class SimulatedRootError(UntrustedRootError):
    """The chain ends in a simulated root, and no simulated root was trusted explicitly."""

    code = "simulated_root"
    step = "trust_root"


class RevokedError(AttestationError):
    """A certificate in the chain is listed in a CRL."""

    code = "revoked"
    step = "revocation"


class SignatureError(AttestationError):
    """A signature over evidence or collateral does not verify."""

    code = "signature_invalid"
    step = "signature"


class BindingError(AttestationError):
    """A value that must bind two things (report data, QE report data, certificate key) differs."""

    code = "binding_invalid"
    step = "binding"


class QeIdentityError(AttestationError):
    """The quoting enclave is not the one the QE Identity describes."""

    code = "qe_identity_mismatch"
    step = "qe_identity"


class TcbLevelError(AttestationError):
    """No TCB level of the TCB Info matches the platform (or the FMSPC differs)."""

    code = "tcb_level_not_found"
    step = "tcb_level"


class VerifierDisagreementError(AttestationError):
    """Our verifier and dcap-qvl disagree; both answers are kept for the operator."""

    code = "verifier_disagreement"
    step = "second_opinion"

    def __init__(self, message: str, *, ours: str, dcap_qvl: str) -> None:
        super().__init__(message)
        self.ours = ours
        self.dcap_qvl = dcap_qvl


class CollateralError(AttestationError):
    """Collateral is unusable. The class itself means *invalid*: present but malformed, not
    the one the quote needs, or not correctly signed. The subclasses below are the other two
    kinds: could not be obtained, or outside its validity window at `now`."""

    code = "collateral_invalid"
    step = "collateral"


class CollateralUnavailableError(CollateralError):
    """Collateral could not be obtained (PCCS/PCS unreachable, HTTP error, not in the cache)."""

    code = "collateral_unavailable"


class CollateralWindowError(CollateralError):
    """Collateral (TCB Info, QE Identity, CRL) is outside its validity window at `now`."""

    code = "collateral_outside_window"
    step = "collateral_freshness"


class CollateralExpiredError(CollateralWindowError):
    """`now` is after the collateral's nextUpdate."""

    code = "collateral_expired"


class CollateralNotYetValidError(CollateralWindowError):
    """`now` is before the collateral's issueDate / thisUpdate."""

    code = "collateral_not_yet_valid"


# --------------------------------------------------------------------------- policy


class PolicyError(EnclaveKMSError):
    """Verified evidence does not satisfy the policy. Carries every violation, not the first."""

    code = "policy_violation"

    def __init__(self, violations: Sequence[str], *, subject: object | None = None) -> None:
        self.violations = tuple(violations)
        # The verified result the policy was applied to (from `appraise`), for display only.
        self.subject = subject
        super().__init__("policy not met: " + "; ".join(self.violations))


# --------------------------------------------------------------------------- platform / TEE


class PlatformError(EnclaveKMSError):
    """The TEE platform (simulated or real) cannot do what was asked."""

    code = "platform_error"


class PlatformPermissionError(PlatformError):
    """A platform directory or file is readable by others; refuse to use it."""

    code = "platform_permissions"


class ReportMacError(PlatformError):
    """An SGX report's MAC does not verify for this target (wrong target or altered report)."""

    code = "report_mac_invalid"


class KeyDerivationError(PlatformError):
    """EGETKEY refused: e.g. a key for a higher ISVSVN than the enclave's own."""

    code = "key_derivation_refused"


class SealingError(PlatformError):
    """A sealed blob cannot be unsealed here: altered, other platform or identity, newer SVN."""

    code = "unseal_failed"


class SealKeyChangedError(SealingError):
    """Sealed under another CPUSVN or ISVSVN: Gramine derives seal keys for the current ones
    only, so a microcode/TCB-recovery update or an enclave upgrade cannot unseal old blobs."""

    code = "seal_key_changed"


class ImageError(PlatformError):
    """An enclave image's manifest, signature or trusted files do not verify; launch refused."""

    code = "image_invalid"


# --------------------------------------------------------------------------- KMS service


class KMSError(EnclaveKMSError):
    """Base of errors returned by the key management API."""

    code = "kms_error"


class InvalidRequestError(KMSError):
    """A client mistake in the request body or parameters."""

    code = "invalid_request"


class UnauthenticatedError(KMSError):
    code = "unauthenticated"


class PermissionDeniedError(KMSError):
    code = "permission_denied"


class JoinRefusedError(PermissionDeniedError):
    """A replica join was refused: the joiner's (or the peer's) evidence, binding, challenge
    or identity does not meet the installation's replica policy. Audited on the peer."""

    code = "join_refused"


class NotFoundError(KMSError):
    code = "not_found"


class ConflictError(KMSError):
    """The request conflicts with current state (already exists, already initialised, CAS lost)."""

    code = "conflict"


class VersionConflict(ConflictError):
    """A compare-and-set write lost to a concurrent one: read again and retry
    (`enclave.state.store.retry_on_conflict`). Other ConflictErrors are final answers."""


class KeyStateError(KMSError):
    """The key exists but cannot be used for this (disabled, scheduled for deletion, version)."""

    code = "key_state"


class CryptoOperationError(KMSError):
    """A ciphertext, signature or wrapped key is invalid for this key."""

    code = "crypto_failed"


class IntegrityError(KMSError):
    """A stored record failed authentication: the host altered, swapped or replayed it."""

    code = "integrity_violation"


class StateRollbackError(IntegrityError):
    """The host's store is behind (or beside) the enclave-signed state head: a record rolled
    back, deleted or re-added, a truncated audit log, a missing audit key or head. `cause`
    names which (docs/operations.md says what an operator does about each)."""

    code = "state_rollback"

    def __init__(self, message: str, *, cause: str = "state-rollback") -> None:
        super().__init__(f"{message} (cause: {cause})")
        self.cause = cause


class ReleaseRefusedError(KMSError):
    """Key release (DESIGN §15) was refused. `detail` is the non-secret audit line: the
    workload's identity as far as it was established, and the release policy consulted."""

    code = "release_refused"

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class EvidenceRefusedError(ReleaseRefusedError):
    """The workload's evidence did not appraise: not genuine, unverifiable, stale, or it does
    not bind the nonce and the recipient key it was presented with."""

    code = "evidence_refused"


class NonceError(EvidenceRefusedError):
    """The release nonce is unknown, expired, already used, or from another worker."""

    code = "nonce_invalid"


class ReleasePolicyNotMetError(ReleaseRefusedError):
    """Genuine evidence of a workload that the key's release policy does not name."""

    code = "release_policy_not_met"


class NoReleasePolicyError(ReleaseRefusedError):
    """The key has no release policy: without one nothing is ever released (safe default)."""

    code = "no_release_policy"


class ImmutablePolicyError(KMSError):
    """An immutable release policy may only be tightened; this change would loosen it."""

    code = "release_policy_immutable"


class StorageError(KMSError):
    """The host's storage failed; the operation was not acknowledged."""

    code = "storage_unavailable"


class NotReadyError(KMSError):
    """A replica has not (yet) had the latest state confirmed by a majority of its peers, or
    found its database behind them: it serves nothing until it has (docs/replicas.md)."""

    code = "not_ready"


class AuditError(KMSError):
    """The audit record could not be appended, or an audit chain does not verify."""

    code = "audit_failed"


# --------------------------------------------------------------------------- enclave lifecycle


class NotInitializedError(EnclaveKMSError):
    """An ECALL that needs the enclave's sealed state came before `initialize` succeeded."""

    code = "not_initialized"


class RecoveryError(KMSError):
    """k-of-n recovery of the storage root key refused a step (docs/replicas.md, Recovery)."""

    code = "recovery_failed"


class RecoveryShareError(RecoveryError):
    """A submitted or fetched share is not one of the recovery set's: wrong, corrupted,
    sealed to another session (a replay), or from another set."""

    code = "recovery_share_invalid"


class RecoveryDuplicateError(RecoveryError):
    """That officer's share was already accepted in this recovery session."""

    code = "recovery_share_duplicate"


class RecoveryPendingError(RecoveryError):
    """The enclave is in recovery mode: nothing but recovery is served until k shares arrive."""

    code = "recovery_in_progress"


# --------------------------------------------------------------------------- boundary / channel


class BoundaryError(EnclaveKMSError):
    """An EDL frame is malformed, undeclared, or out of its declared bounds."""

    code = "boundary_violation"


class ChannelError(EnclaveKMSError):
    """The enclave-to-enclave secure channel refused a step; the channel is closed for good."""

    code = "channel_error"


class ChannelStateError(ChannelError):
    code = "channel_state"


class ReplayError(ChannelError):
    code = "channel_replay"


class ServerError(EnclaveKMSError):
    """The remote KMS answered with a server-side failure or could not be reached."""

    code = "server_error"


class ServerUnreachableError(ServerError):
    """No connection to the server opened: the request was never sent (so another replica
    may be asked, whatever the request: client/failover.py)."""

    code = "server_unreachable"
