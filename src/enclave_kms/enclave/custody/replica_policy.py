"""The installation's replica policy: which enclave builds may hold the storage root key.

Set at init to this build (MRSIGNER + ISVPRODID, minimum ISVSVN = its own, MRENCLAVE = its
own, debug refused, UpToDate only), kept as the sealed record `config/replica-policy`, and
changed only by a token holding the `sys` permission (every change is audited by the API). An
upgrade is two steps: allow the new build (its MRENCLAVE, or any MRENCLAVE of the signer with
`mr_enclave = []`), then start it with `--migrate-from` (docs/sgx-hardware.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.enclave.state.store import RecordStore, retry_on_conflict
from enclave_kms.errors import ConfigError, IntegrityError, InvalidRequestError
from enclave_kms.platform.base import EnclaveIdentity

RECORD = ("config", "replica-policy")
_FIELDS = frozenset(
    {"mr_signer", "isv_prod_id", "min_isv_svn", "mr_enclave", "accepted_tcb_statuses"}
)
MAX_MR_ENCLAVES = 64


@dataclass(frozen=True)
class ReplicaPolicy:
    """Who may join. `mr_enclave` empty: any build of this signer and product at or above
    `min_isv_svn`. Debug enclaves are never allowed to hold the key."""

    mr_signer: bytes
    isv_prod_id: int
    min_isv_svn: int
    mr_enclave: tuple[bytes, ...]
    accepted_tcb_statuses: tuple[TcbStatus, ...] = (TcbStatus.UP_TO_DATE,)

    @classmethod
    def default_for(cls, identity: EnclaveIdentity) -> ReplicaPolicy:
        return cls(
            identity.mr_signer,
            identity.isv_prod_id,
            identity.isv_svn,
            (identity.mr_enclave,),
        )

    def attestation_policy(self, simulated_root: str | None) -> Policy:
        """The appraisal policy (attestation/policy.py) a joiner's or peer's quote must meet."""
        return Policy(
            mr_enclave=self.mr_enclave,
            mr_signer=self.mr_signer,
            isv_prod_id=self.isv_prod_id,
            min_isv_svn=self.min_isv_svn,
            allow_debug=False,
            accepted_tcb_statuses=self.accepted_tcb_statuses,
            simulated_root=simulated_root,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": self.isv_prod_id,
            "min_isv_svn": self.min_isv_svn,
            "mr_enclave": [m.hex() for m in self.mr_enclave],
            "accepted_tcb_statuses": [s.value for s in self.accepted_tcb_statuses],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ReplicaPolicy:
        """Parse a policy given by an admin; every mistake is an InvalidRequestError."""
        if not isinstance(doc, Mapping):
            raise InvalidRequestError("replica policy: expected an object")
        unknown = sorted(set(doc) - _FIELDS)
        if unknown:
            raise InvalidRequestError(f"replica policy: unknown field {unknown[0][:40]!r}")
        missing = sorted(_FIELDS - {"accepted_tcb_statuses"} - set(doc))
        if missing:
            raise InvalidRequestError(f"replica policy: {missing[0]} is required")
        try:
            mr_enclave = doc["mr_enclave"]
            if not isinstance(mr_enclave, list) or len(mr_enclave) > MAX_MR_ENCLAVES:
                raise ConfigError(f"mr_enclave: a list of at most {MAX_MR_ENCLAVES}")
            statuses = doc.get("accepted_tcb_statuses", [TcbStatus.UP_TO_DATE.value])
            if not isinstance(statuses, list) or not statuses:
                raise ConfigError("accepted_tcb_statuses: a non-empty list")
            if TcbStatus.REVOKED.value in statuses:
                raise ConfigError("accepted_tcb_statuses: a revoked platform never joins")
            for name in ("isv_prod_id", "min_isv_svn"):
                value = doc[name]
                if type(value) is not int or not 0 <= value <= 0xFFFF:
                    raise ConfigError(f"{name}: an integer 0..65535")
            policy = cls(
                mr_signer=_hex32("mr_signer", doc["mr_signer"]),
                isv_prod_id=doc["isv_prod_id"],
                min_isv_svn=doc["min_isv_svn"],
                mr_enclave=tuple(_hex32("mr_enclave", m) for m in mr_enclave),
                accepted_tcb_statuses=tuple(TcbStatus(str(s)) for s in statuses),
            )
            policy.attestation_policy(None)  # the same invariants the appraisal enforces
        except ConfigError as exc:
            raise InvalidRequestError(f"replica policy: {exc.message}") from None
        except ValueError:
            raise InvalidRequestError("replica policy: unknown TCB status") from None
        return policy

    def to_record(self) -> dict[str, Any]:
        return {
            "mr_signer": self.mr_signer,
            "isv_prod_id": self.isv_prod_id,
            "min_isv_svn": self.min_isv_svn,
            "mr_enclave": list(self.mr_enclave),
            "accepted_tcb_statuses": [s.value for s in self.accepted_tcb_statuses],
        }

    @classmethod
    def from_record(cls, _id: str, value: Any) -> ReplicaPolicy:
        try:
            return cls(
                mr_signer=bytes(value["mr_signer"]),
                isv_prod_id=int(value["isv_prod_id"]),
                min_isv_svn=int(value["min_isv_svn"]),
                mr_enclave=tuple(bytes(m) for m in value["mr_enclave"]),
                accepted_tcb_statuses=tuple(TcbStatus(s) for s in value["accepted_tcb_statuses"]),
            )
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("the sealed replica policy record is malformed") from None


def _hex32(name: str, value: object) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise ConfigError(f"{name}: not hex") from None
    if len(raw) != 32:
        raise ConfigError(f"{name}: expected 32 bytes of hex")
    return raw


class ReplicaPolicyStore:
    """Read and compare-and-set the sealed `config/replica-policy` record."""

    def __init__(self, store: RecordStore) -> None:
        self._store = store

    def get(self) -> ReplicaPolicy | None:
        found = self._store.get_parsed(*RECORD, ReplicaPolicy.from_record)
        return None if found is None else found[1]

    def ensure(self, identity: EnclaveIdentity) -> ReplicaPolicy:
        """The policy, created as `default_for(identity)` if the installation has none yet."""

        def attempt() -> ReplicaPolicy:
            found = self.get()
            if found is not None:
                return found
            policy = ReplicaPolicy.default_for(identity)
            self._store.put(*RECORD, 0, policy.to_record())
            return policy

        return retry_on_conflict(attempt, "the replica policy")

    def set(self, policy: ReplicaPolicy) -> ReplicaPolicy:
        def attempt() -> ReplicaPolicy:
            found = self._store.get(*RECORD)
            self._store.put(*RECORD, 0 if found is None else found.version, policy.to_record())
            return policy

        return retry_on_conflict(attempt, "the replica policy")
