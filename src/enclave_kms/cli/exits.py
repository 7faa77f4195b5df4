"""The CLI's one mapping from the exception tree to exit codes (issue: 0 ok, 1 usage, 2 evidence
invalid, 3 collateral unavailable or expired, 4 policy not met, 5 server or internal error)."""

from __future__ import annotations

from enclave_kms import errors

OK = 0
USAGE = 1
EVIDENCE_INVALID = 2
COLLATERAL = 3
POLICY = 4
SERVER = 5

# Most specific first: CollateralError is an AttestationError but has its own code.
_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (errors.UsageError, USAGE),
    (errors.EvidenceRefusedError, EVIDENCE_INVALID),  # key release: appraisal failed
    (errors.ReleaseRefusedError, POLICY),  # key release: policy not met, or none
    (errors.ImmutablePolicyError, POLICY),
    (errors.PlatformPermissionError, USAGE),
    (errors.ImageError, EVIDENCE_INVALID),
    (errors.CollateralError, COLLATERAL),
    (errors.AttestationError, EVIDENCE_INVALID),
    (errors.ChannelStateError, EVIDENCE_INVALID),
    (errors.PolicyError, POLICY),
    (errors.ChannelError, EVIDENCE_INVALID),
    (errors.InvalidRequestError, USAGE),
    (errors.EnclaveKMSError, SERVER),
)


def exit_code_for(exc: BaseException) -> int:
    for kind, code in _TABLE:
        if isinstance(exc, kind):
            return code
    return SERVER
