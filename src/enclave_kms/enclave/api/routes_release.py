"""Key release routes (DESIGN §15, docs/release.md): release policies, nonces, the release.

- `GET/PUT /v1/keys/{name}/release-policy`: read (`keys.read`) or set (`keys.write`) the key's
  release policy; an immutable one is only tightened (409 `release_policy_immutable`).
- `POST /v1/release/nonce`: a fresh single-use nonce (any token holding `release` on some key).
- `POST /v1/keys/{name}/release`: evidence + nonce + recipient key in, an HPKE-sealed answer
  out (`release` on the key). Refusals are 403 with `nonce_invalid`, `evidence_refused`,
  `release_policy_not_met` or `no_release_policy`.

Every answer and every refusal is audited with the workload's identity and the policy
(`RequestSlot.detail`), never with a secret.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from enclave_kms.enclave.api.models import KEY_NAME_REGEX, In
from enclave_kms.enclave.api.support import Caller, add_route, app_context, caller, new_router
from enclave_kms.enclave.keys.release import MAX_POLICY_TOML, ReleaseRequest, ReleaseService
from enclave_kms.errors import InvalidRequestError, ReleaseRefusedError
from enclave_kms.wire import B64, ReleaseNonce, ReleaseOut, ReleasePolicyEnvelope

PathName = Annotated[str, Path(pattern=KEY_NAME_REGEX, description="key name")]


class ReleasePolicyIn(In):
    policy_toml: Annotated[str, Field(max_length=MAX_POLICY_TOML)]
    immutable: bool = False


class ReleaseIn(In):
    operation: Literal["export", "decrypt", "datakey"]
    nonce: B64
    evidence: B64
    evidence_form: Literal["raw-quote", "oe-evidence"] = "raw-quote"
    recipient_public_key: B64 = Field(description="raw X25519 public key (32 bytes)")
    version: Annotated[int, Field(ge=1)] | None = None
    ciphertext: str | None = None
    associated_data: B64 | None = None


def _service(request: Request) -> ReleaseService:
    service = app_context(request).release
    if service is None:
        raise InvalidRequestError("key release is not enabled on this server")
    return service


def _envelope(name: str, service: ReleaseService) -> ReleasePolicyEnvelope:
    spec = service.read_policy(name)
    return ReleasePolicyEnvelope(name=name, release_policy=spec)


def read_release_policy(request: Request, name: PathName) -> ReleasePolicyEnvelope:
    """The key's release policy, or null: then nothing is released."""
    return _envelope(name, _service(request))


def set_release_policy(
    request: Request, name: PathName, body: ReleasePolicyIn, who: Caller = Depends(caller)
) -> ReleasePolicyEnvelope:
    """Attach or replace the release policy (immutable: only a tighter one)."""
    service = _service(request)
    spec = service.set_policy(name, body.policy_toml, immutable=body.immutable)
    who.slot.detail = f"policy=rev{spec.revision}{':immutable' if spec.immutable else ''} set"
    return _envelope(name, service)


def release_nonce(request: Request, who: Caller = Depends(caller)) -> ReleaseNonce:
    """A single-use nonce for the next release request (valid for a few minutes)."""
    nonce, expires = _service(request).issue_nonce(who.principal.token_id)
    return ReleaseNonce(nonce=nonce, expires_at=expires)


def release(
    request: Request, name: PathName, body: ReleaseIn, who: Caller = Depends(caller)
) -> ReleaseOut:
    """Appraise the evidence against the key's release policy; answer sealed to the
    recipient key the evidence binds."""
    service = _service(request)
    ask = ReleaseRequest(
        operation=body.operation,
        nonce=body.nonce,
        evidence=body.evidence,
        recipient_public_key=body.recipient_public_key,
        evidence_form=body.evidence_form,
        version=body.version,
        ciphertext=body.ciphertext,
        associated_data=body.associated_data,
    )
    try:
        answer = service.release(name, ask)
    except ReleaseRefusedError as exc:
        who.slot.detail = f"op={body.operation} refused {exc.detail}".strip()
        raise
    who.slot.detail = f"op={body.operation} v{answer.version} {answer.detail}"
    return ReleaseOut(
        name=answer.key_name,
        key_type=answer.key_type,
        version=answer.version,
        operation=answer.operation,
        suite=answer.suite,
        sealed=answer.sealed,
        ciphertext=answer.ciphertext,
    )


_ROUTES = (
    (
        "GET",
        "/v1/keys/{name}/release-policy",
        read_release_policy,
        "release.policy.read",
        "keys.read",
    ),
    (
        "PUT",
        "/v1/keys/{name}/release-policy",
        set_release_policy,
        "release.policy.set",
        "keys.write",
    ),
    ("POST", "/v1/release/nonce", release_nonce, "release.nonce", "release"),
    ("POST", "/v1/keys/{name}/release", release, "release", "release"),
)
"""(method, path, endpoint, audit operation, token permission)."""


def router() -> APIRouter:
    r = new_router()
    for method, path, endpoint, op, permission in _ROUTES:
        add_route(r, method, path, endpoint, op=op, permission=permission)
    return r
