"""The join's pure parts: challenges, bindings and the HPKE handover (no processes)."""

from __future__ import annotations

import os

import pytest

from enclave_kms.enclave.custody import handover
from enclave_kms.enclave.custody.replica_policy import ReplicaPolicy
from enclave_kms.errors import CryptoOperationError, InvalidRequestError


def test_challenge_expires_and_is_bound_to_the_installation() -> None:
    key = handover.challenge_key(os.urandom(32))
    fresh = handover.issue_challenge(key, 1_000_000)
    handover.check_challenge(key, fresh, 1_000_000 + handover.CHALLENGE_LIFETIME_S)
    with pytest.raises(InvalidRequestError, match="expired"):
        handover.check_challenge(key, fresh, 1_000_000 + handover.CHALLENGE_LIFETIME_S + 1)
    other = handover.challenge_key(os.urandom(32))
    with pytest.raises(InvalidRequestError, match="not issued by this installation"):
        handover.check_challenge(other, fresh, 1_000_000)
    forged = fresh[:-1] + bytes([fresh[-1] ^ 1])
    with pytest.raises(InvalidRequestError, match="not issued"):
        handover.check_challenge(key, forged, 1_000_000)


def test_the_root_key_opens_only_for_the_request_it_answers() -> None:
    srk = os.urandom(32)
    key, public = handover.new_join_key()
    challenge = handover.issue_challenge(handover.challenge_key(srk), 5)
    request = handover.JoinRequest(challenge, public, b"quote")
    sealed = handover.seal_srk(srk, request)
    assert srk not in sealed
    assert handover.open_srk(key, request, sealed) == srk
    # another quote (a swapped evidence), another challenge, another key: nothing opens
    for other in (
        handover.JoinRequest(challenge, public, b"other quote"),
        handover.JoinRequest(handover.issue_challenge(os.urandom(32), 5), public, b"quote"),
    ):
        with pytest.raises(CryptoOperationError):
            handover.open_srk(key, other, sealed)
    stranger, _ = handover.new_join_key()
    with pytest.raises(CryptoOperationError):
        handover.open_srk(stranger, request, sealed)
    assert handover.request_binding(challenge, public) != handover.request_binding(
        challenge, os.urandom(32)
    )


def test_replica_policy_refuses_mistakes() -> None:
    good = {
        "mr_signer": "ab" * 32,
        "isv_prod_id": 1,
        "min_isv_svn": 2,
        "mr_enclave": [],
        "accepted_tcb_statuses": ["UpToDate", "OutOfDate"],
    }
    policy = ReplicaPolicy.from_json(good)
    assert ReplicaPolicy.from_record("", policy.to_record()) == policy
    for bad, message in (
        ({**good, "extra": 1}, "unknown field"),
        ({**good, "mr_signer": "ab"}, "32 bytes"),
        ({**good, "min_isv_svn": 70000}, "0..65535"),
        ({**good, "accepted_tcb_statuses": ["Revoked"]}, "revoked"),
        ({**good, "accepted_tcb_statuses": ["Fine"]}, "unknown TCB status"),
        ({k: v for k, v in good.items() if k != "mr_enclave"}, "mr_enclave is required"),
    ):
        with pytest.raises(InvalidRequestError, match=message):
            ReplicaPolicy.from_json(bad)
