"""Replica routes: the replica policy (admin: the `sys` permission) and the join (anonymous:
the joiner's attestation is its credential). Every call, refusals included, is audited by
the middleware; a join's target is the identity the joiner's quote claims."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from enclave_kms.enclave.api.models import In
from enclave_kms.enclave.api.support import Caller, add_route, app_context, caller, new_router
from enclave_kms.enclave.custody import handover
from enclave_kms.enclave.custody.replica_policy import ReplicaPolicy
from enclave_kms.enclave.custody.service import ReplicaCustody
from enclave_kms.errors import EnclaveKMSError, FormatError, NotFoundError
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.report import ReportBody
from enclave_kms.wire import ReplicaChallenge, ReplicaJoin, decode
from enclave_kms.wire import ReplicaPolicy as WireReplicaPolicy

Hex = Annotated[str, Field(max_length=2 * handover.MAX_QUOTE)]
Hex32 = Annotated[str, Field(min_length=64, max_length=64)]


class ReplicaPolicyModel(In):
    mr_signer: Hex32
    isv_prod_id: int
    min_isv_svn: int
    mr_enclave: Annotated[list[Hex32], Field(max_length=64)]
    accepted_tcb_statuses: Annotated[list[str], Field(max_length=8)] = Field(
        default_factory=lambda: ["UpToDate"]
    )


class JoinIn(In):
    challenge: Annotated[str, Field(max_length=2 * handover.CHALLENGE_SIZE)]
    public_key: Annotated[str, Field(max_length=64)]
    quote: Hex


def _custody(request: Request) -> ReplicaCustody:
    custody = app_context(request).joins
    if custody is None or custody.policies is None or custody.responder is None:
        raise NotFoundError("this server does not serve replicas")
    return custody


def read_policy(request: Request, who: Caller = Depends(caller)) -> WireReplicaPolicy:
    """The installation's replica policy: which builds may join and hold the root key."""
    policies = _custody(request).policies
    policy = None if policies is None else policies.get()
    if policy is None:
        raise NotFoundError("the installation has no replica policy yet")
    who.set_target("replica-policy")
    return decode(WireReplicaPolicy, policy.to_json())


def write_policy(
    request: Request, body: ReplicaPolicyModel, who: Caller = Depends(caller)
) -> WireReplicaPolicy:
    """Replace the replica policy (e.g. allow a new build before an upgrade)."""
    policy = ReplicaPolicy.from_json(body.model_dump())
    who.set_target("replica-policy")
    policies = _custody(request).policies
    assert policies is not None
    return decode(WireReplicaPolicy, policies.set(policy).to_json())


def challenge(request: Request) -> ReplicaChallenge:
    """A single-use challenge (120 s) the joiner's quote must bind."""
    responder = _custody(request).responder
    assert responder is not None
    return ReplicaChallenge(challenge=responder.challenge().hex())


def join(request: Request, body: JoinIn, who: Caller = Depends(caller)) -> ReplicaJoin:
    """Appraise the joiner against the replica policy; answer with the storage root key
    encrypted to the key its quote binds, and this replica's own quote over the answer."""
    responder = _custody(request).responder
    assert responder is not None
    parsed = handover.JoinRequest.from_json(body.model_dump())
    try:  # what the quote claims, for the audit; appraisal decides whether it is true
        claimed = parse_quote(parsed.quote).body
        if not isinstance(claimed, ReportBody):
            raise FormatError("not an SGX quote")
        who.set_target(f"{claimed.mr_enclave.hex()[:16]} isv_svn {claimed.isv_svn}")
    except EnclaveKMSError:
        who.set_target("unparseable quote")
    answer, _verified = responder.answer(parsed)
    return decode(ReplicaJoin, answer.to_json())


_ROUTES = (
    ("GET", "/v1/sys/replica-policy", read_policy, "sys.replica-policy.read", "sys", 200),
    ("PUT", "/v1/sys/replica-policy", write_policy, "sys.replica-policy.write", "sys", 200),
    ("POST", handover.CHALLENGE_PATH, challenge, "sys.replicas.challenge", None, 200),
    ("POST", handover.JOIN_PATH, join, "sys.replicas.join", None, 200),
)


def router() -> APIRouter:
    r = new_router()
    for method, path, endpoint, op, permission, status in _ROUTES:
        add_route(r, method, path, endpoint, op=op, permission=permission, status_code=status)
    return r
