"""Where this enclave gets the storage root key (SRK): its own sealed copy, the first
replica's, a new one, or a join. The joiner's half of handover.py lives here too.

Records (kind `identity`, sealed under MRSIGNER; the record name is in the AAD, so the host
cannot pass one copy off as another):
  storage-root-key               sealed by the replica that initialized the installation
  storage-root-key@<platform>    sealed by a replica that joined (or migrated) on that CPU

Order: this platform's copy, else the first replica's. If neither opens here (another CPU,
or under Gramine's rule a CPUSVN or ISVSVN change: SealKeyChangedError names it) the enclave
refuses to start, naming the cause, unless it was started to join a peer; it never creates
a new key over an existing one. After a join the SRK is sealed here only once the peer has
also met the installation's own replica policy (`ReplicaCustody.open` in service.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TcbStatus, VerifiedQuote
from enclave_kms.enclave.custody import handover
from enclave_kms.enclave.custody.appraiser import QuoteAppraiser
from enclave_kms.enclave.host_calls import HostCalls
from enclave_kms.errors import (
    AttestationError,
    ConfigError,
    JoinRefusedError,
    PolicyError,
    SealingError,
)
from enclave_kms.platform.base import KeyPolicy, TeeBackend

SRK_AAD = b"enclave-kms/storage-root-key/v1"
SHARED_ID = "storage-root-key"
_PLATFORM_ID = re.compile(r"[0-9A-Za-z._-]{1,64}")
_ANY_BUT_REVOKED = tuple(s for s in TcbStatus if s is not TcbStatus.REVOKED)

Relay = Callable[[str, dict[str, Any]], dict[str, Any]]
"""`relay(path, json_body) -> json_answer`: the host's POST to the peer (replica_join OCALL)."""


@dataclass(frozen=True)
class ReplicaSettings:
    """The host's non-secret replica settings (RuntimeConfig.replica)."""

    platform_id: str = "local"
    join: bool = False  # get the SRK from the peer if no copy opens here
    join_only: bool = False  # stop once the SRK is sealed here (no server)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ReplicaSettings:
        platform_id = str(raw.get("platform_id", "local"))
        if not _PLATFORM_ID.fullmatch(platform_id):
            raise ConfigError("initialize: replica.platform_id must be 1-64 of [0-9A-Za-z._-]")
        join, join_only = raw.get("join", False), raw.get("join_only", False)
        if not isinstance(join, bool) or not isinstance(join_only, bool):
            raise ConfigError("initialize: replica.join and join_only must be booleans")
        return cls(platform_id, join or join_only, join_only)

    @property
    def record_id(self) -> str:
        return f"{SHARED_ID}@{self.platform_id}"

    @property
    def aad(self) -> bytes:
        return SRK_AAD + b"@" + self.platform_id.encode("ascii")


@dataclass(frozen=True)
class Joined:
    """A key a peer handed over, not yet sealed here: `ReplicaCustody.open` checks `peer` against
    the installation's replica policy first, then seals it as `version` + 1."""

    srk: bytes
    peer_quote: bytes
    binding: bytes
    own_version: int  # of storage-root-key@<platform> (0: none), for the compare-and-set
    replaced: str  # why the join was needed, for the audit and the log


@dataclass(frozen=True)
class Found:
    srk: bytes
    source: str  # "own", "shared" or "created"


def find_storage_root_key(
    host: HostCalls,
    backend: TeeBackend,
    settings: ReplicaSettings,
    *,
    create: Callable[[], bytes],
    join: Callable[[], tuple[bytes, bytes, bytes]] | None,
) -> Found | Joined:
    """The SRK from the first copy that opens here; else a join (if allowed) or the error."""
    own = host.get("identity", settings.record_id)
    failure: SealingError
    if own is not None:
        try:
            return Found(backend.unseal(own[1], settings.aad), "own")
        except SealingError as exc:
            failure = exc
    else:
        shared = host.get("identity", SHARED_ID)
        if shared is None and not settings.join:
            return Found(create(), "created")
        if shared is None:
            failure = SealingError("no storage root key is stored here yet")
        else:
            try:
                return Found(backend.unseal(shared[1], SRK_AAD), "shared")
            except SealingError as exc:
                failure = exc
    if join is None:
        raise type(failure)(
            f"storage root key: {failure.message}; to obtain it from a running replica, start "
            "with --join https://PEER (an upgrade: --migrate-from https://OLD)"
        )
    srk, peer_quote, binding = join()
    return Joined(srk, peer_quote, binding, 0 if own is None else own[0], failure.code)


def seal_here(
    host: HostCalls, backend: TeeBackend, settings: ReplicaSettings, joined: Joined
) -> None:
    blob = backend.seal(joined.srk, KeyPolicy.MRSIGNER, settings.aad)
    if not host.put("identity", settings.record_id, joined.own_version, blob):
        raise JoinRefusedError(f"identity/{settings.record_id} changed while joining; start again")


def join_peer(
    relay: Relay,
    appraiser: QuoteAppraiser,
    quote_for: Callable[[bytes], bytes],
    backend: TeeBackend,
) -> tuple[bytes, bytes, bytes]:
    """Run the joiner's side of handover.py: (SRK, the peer's quote, its binding).

    Before the SRK opens, the peer must be a genuine non-debug enclave of this signer and
    product whose quote binds this exchange; the installation's own replica policy (readable
    only with the SRK) is applied to it before the SRK is sealed here."""
    identity = backend.identity
    challenge_doc = relay(handover.CHALLENGE_PATH, {})
    challenge = handover.JoinRequest.from_json(
        {"challenge": challenge_doc.get("challenge"), "public_key": "00" * 32, "quote": ""}
    ).challenge
    key, public_key = handover.new_join_key()
    quote = quote_for(handover.request_binding(challenge, public_key))
    request = handover.JoinRequest(challenge, public_key, quote)
    answer = handover.JoinAnswer.from_json(relay(handover.JOIN_PATH, request.to_json()))
    binding = handover.answer_binding(challenge, quote, answer.sealed_key)
    same_signer = Policy(
        mr_signer=identity.mr_signer,
        isv_prod_id=identity.isv_prod_id,
        accepted_tcb_statuses=_ANY_BUT_REVOKED,
        simulated_root=appraiser.simulated_root,
    )
    appraise_peer(appraiser, answer.quote, same_signer, binding)
    return handover.open_srk(key, request, answer.sealed_key), answer.quote, binding


def appraise_peer(
    appraiser: QuoteAppraiser, quote: bytes, policy: Policy, binding: bytes
) -> VerifiedQuote:
    try:
        return appraiser(quote, policy, binding)
    except (AttestationError, PolicyError) as exc:
        raise JoinRefusedError(
            f"the peer's evidence is refused ({exc.code}): {exc.message}"
        ) from None
