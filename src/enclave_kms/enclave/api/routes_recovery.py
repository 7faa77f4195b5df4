"""k-of-n recovery routes of a running installation (docs/replicas.md, Recovery).

`POST /v1/sys/recovery/split` (a root admin only) splits the storage root key into sealed
shares for the named officers and replaces the stored recovery set. Status and the sealed
shares are anonymous: a share is ciphertext only its officer can open, the host stores it
anyway, and an officer may hold no token. Every request is audited like any other.
The routes of an enclave in recovery mode are in `enclave/custody/recovery.py`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from enclave_kms.enclave.api.support import Caller, add_route, app_context, caller, new_router
from enclave_kms.enclave.custody.shares import RecoveryCustody
from enclave_kms.errors import NotFoundError, PermissionDeniedError
from enclave_kms.wire import RecoverySetInfo, RecoveryShare, RecoveryStatus, decode
from enclave_kms.wire import custody as wire


class SplitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: int = Field(ge=wire.MIN_THRESHOLD, le=wire.MAX_SHARES)
    officers: list[Annotated[str, Field(max_length=1024)]] = Field(
        min_length=wire.MIN_THRESHOLD,
        max_length=wire.MAX_SHARES,
        description="each officer's X25519 public key, PEM",
    )


def _custody(request: Request) -> RecoveryCustody:
    custody = app_context(request).custody
    if custody is None:
        raise NotFoundError("k-of-n recovery is not available in this enclave")
    return custody


def split(request: Request, body: SplitIn, who: Caller = Depends(caller)) -> RecoverySetInfo:
    """Split the storage root key k-of-n, each share sealed to one officer (root admin)."""
    if not who.principal.root:
        raise PermissionDeniedError("only a root admin may split the storage root key")
    summary = _custody(request).split(body.threshold, [o.encode() for o in body.officers])
    who.set_target(str(summary["set_id"]))
    return decode(RecoverySetInfo, summary)


def status(request: Request) -> RecoveryStatus:
    """Whether a recovery set exists (checked against the SRK), with k, n and the officers."""
    return decode(RecoveryStatus, _custody(request).status())


def share(
    request: Request,
    fingerprint: Annotated[str, Path(pattern=wire.FINGERPRINT_REGEX)],
    who: Caller = Depends(caller),
) -> RecoveryShare:
    """One officer's sealed share (ciphertext for that officer only)."""
    who.set_target(fingerprint[:16])
    return decode(RecoveryShare, _custody(request).share(fingerprint))


_ROUTES = (
    ("POST", "/v1/sys/recovery/split", split, "sys.recovery.split", "sys", 201),
    ("GET", "/v1/sys/recovery", status, "sys.recovery.status", None, 200),
    ("GET", "/v1/sys/recovery/shares/{fingerprint}", share, "sys.recovery.share", None, 200),
)


def router() -> APIRouter:
    r = new_router()
    for method, path, endpoint, op, permission, code in _ROUTES:
        add_route(r, method, path, endpoint, op=op, permission=permission, status_code=code)
    return r
