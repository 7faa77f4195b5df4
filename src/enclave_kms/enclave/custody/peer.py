"""The running replica's side of a join: issue challenges, appraise the joiner, answer with
the storage root key encrypted to the joiner's attested key (handover.py has the protocol).

A refusal is a JoinRefusedError naming the cause; the API audits it with the joiner's claimed
identity as the target. Challenges are MACed with a key every replica derives from the SRK
(any worker or replica accepts them), expire after 120 s, and are spent on first use in this
process; a replay that reaches another process within the window gets an answer encrypted
to the original joiner's key, which only that joiner can open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from enclave_kms.attestation.types import VerifiedQuote
from enclave_kms.enclave.custody import handover
from enclave_kms.enclave.custody.appraiser import QuoteAppraiser
from enclave_kms.enclave.custody.replica_policy import ReplicaPolicyStore
from enclave_kms.errors import (
    AttestationError,
    InvalidRequestError,
    JoinRefusedError,
    PolicyError,
)


class JoinResponder:
    def __init__(
        self,
        srk: bytes,
        policies: ReplicaPolicyStore,
        appraiser: QuoteAppraiser,
        quote_for: Callable[[bytes], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._srk = srk
        self._challenge_key = handover.challenge_key(srk)
        self._policies = policies
        self._appraiser = appraiser
        self._quote_for = quote_for
        self._clock = clock
        self._spent: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def challenge(self) -> bytes:
        return handover.issue_challenge(self._challenge_key, int(self._clock()))

    def _spend(self, challenge: bytes) -> None:
        now = int(self._clock())
        try:
            handover.check_challenge(self._challenge_key, challenge, now)
        except InvalidRequestError as exc:
            raise JoinRefusedError(exc.message) from None
        with self._lock:
            horizon = now - handover.CHALLENGE_LIFETIME_S - 5
            for old in [c for c, t in self._spent.items() if t < horizon]:
                del self._spent[old]
            if challenge in self._spent:
                raise JoinRefusedError("join: this challenge was already used (a replay)")
            self._spent[challenge] = now

    def answer(self, request: handover.JoinRequest) -> tuple[handover.JoinAnswer, VerifiedQuote]:
        """Appraise the joiner against the replica policy, then hand it the SRK."""
        self._spend(request.challenge)
        policy = self._policies.get()
        if policy is None:
            raise JoinRefusedError("join: this installation has no replica policy yet")
        binding = handover.request_binding(request.challenge, request.public_key)
        try:
            verified = self._appraiser(
                request.quote, policy.attestation_policy(self._appraiser.simulated_root), binding
            )
        except (AttestationError, PolicyError) as exc:
            raise JoinRefusedError(f"join refused ({exc.code}): {exc.message}") from None
        sealed_key = handover.seal_srk(self._srk, request)
        quote = self._quote_for(
            handover.answer_binding(request.challenge, request.quote, sealed_key)
        )
        return handover.JoinAnswer(sealed_key, quote), verified
