"""`ReplicaCustody`: the runtime's one object for the SRK's custody, from start-up to joins.

`storage_root_key` runs first in `initialize` (before any record can be read); `open` runs
once the state is open: it checks a join's peer against the installation's replica policy
and only then seals the SRK on this CPU, creates the default policy of a new installation,
and readies the peer side (`responder`) for the API.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from enclave_kms.attestation.types import TrustRoot, VerifiedQuote
from enclave_kms.enclave.custody.appraiser import QuoteAppraiser
from enclave_kms.enclave.custody.joiner import (
    Found,
    Joined,
    ReplicaSettings,
    appraise_peer,
    find_storage_root_key,
    join_peer,
    seal_here,
)
from enclave_kms.enclave.custody.peer import JoinResponder
from enclave_kms.enclave.custody.replica_policy import ReplicaPolicyStore
from enclave_kms.enclave.host_calls import HostCalls
from enclave_kms.enclave.state.audit import AuditEvent, AuditLog
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.errors import EnclaveKMSError, JoinRefusedError
from enclave_kms.platform.base import TeeBackend

MAX_ANSWER = 256 * 1024


def trust_root_for(platform: str, platform_dir: str) -> TrustRoot:
    """Whose root a peer's quote must chain to: the simulated vendor's (every simulated CPU
    made with --root-from shares it) or Intel's."""
    if platform == "sim":
        from enclave_kms.platform.sim.platform import SimPlatform

        return SimPlatform.open(platform_dir).trust_root()
    return TrustRoot.intel_production()


class ReplicaCustody:
    def __init__(self, host: HostCalls) -> None:
        self._host = host
        self._appraiser: QuoteAppraiser | None = None
        self.policies: ReplicaPolicyStore | None = None
        self.responder: JoinResponder | None = None
        self.peer: VerifiedQuote | None = None  # the replica we joined from, if we did
        self._replaced = ""

    def _relay(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, raw = self._host.replica_join(path, json.dumps(body).encode())
        try:
            doc = json.loads(raw[:MAX_ANSWER])
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict):
            raise JoinRefusedError(f"the peer's answer to {path} is not JSON (status {status})")
        if status != 200:
            found = doc.get("error")
            error: dict[str, Any] = found if isinstance(found, dict) else {}
            code, message = str(error.get("code", status))[:40], str(error.get("message", ""))
            raise JoinRefusedError(f"the peer refused the join ({code}): {message[:300]}")
        return doc

    def storage_root_key(
        self,
        backend: TeeBackend,
        settings: ReplicaSettings,
        *,
        platform: str,
        platform_dir: str,
        quote_for: Callable[[bytes], bytes],
        create: Callable[[], bytes],
    ) -> Found | Joined:
        self._appraiser = QuoteAppraiser(
            self._host.collateral_for, trust_root_for(platform, platform_dir)
        )
        appraiser = self._appraiser

        def join() -> tuple[bytes, bytes, bytes]:
            return join_peer(self._relay, appraiser, quote_for, backend)

        return find_storage_root_key(
            self._host, backend, settings, create=create, join=join if settings.join else None
        )

    def open(
        self,
        found: Found | Joined,
        store: RecordStore,
        backend: TeeBackend,
        settings: ReplicaSettings,
        quote_for: Callable[[bytes], bytes],
    ) -> None:
        appraiser = self._appraiser
        if appraiser is None:
            raise EnclaveKMSError("custody: storage_root_key must run first")
        policies = ReplicaPolicyStore(store)
        if isinstance(found, Joined):
            policy = policies.get()
            if policy is None:
                raise JoinRefusedError("the installation has no replica policy to check the peer")
            self.peer = appraise_peer(
                appraiser,
                found.peer_quote,
                policy.attestation_policy(appraiser.simulated_root),
                found.binding,
            )
            seal_here(self._host, backend, settings, found)
            self._replaced = found.replaced
        elif not settings.join_only:
            policies.ensure(backend.identity)
        self.policies = policies
        self.responder = JoinResponder(found.srk, policies, appraiser, quote_for)

    def audit_join(self, audit: AuditLog) -> None:
        """Record on this replica's own chain where its key came from (the peer audits too)."""
        peer = self.peer
        if peer is None:
            return
        target = f"{peer.mr_enclave.hex()[:16]} isv_svn {peer.isv_svn} ({self._replaced})"
        audit.record(
            AuditEvent(
                actor="enclave",
                op="sys.replicas.joined",
                target=target,
                outcome="ok",
                request_id=os.urandom(8).hex(),
            )
        )
