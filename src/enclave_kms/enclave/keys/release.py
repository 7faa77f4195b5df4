"""Key release to attested workloads (DESIGN §15): release policies, nonces, and the release.

A key is released only to a workload whose evidence satisfies the key's **release policy**
(the appraisal policy language of attestation/policy.py, SGX and TDX fields), and only
HPKE-sealed to a recipient key that the evidence binds together with a fresh server nonce
(`release_wire`). The host, the network and the caller see ciphertext.

Who may call: a token granted `release` on the key *and* evidence that satisfies its policy.
The token alone releases nothing (no policy, no release; evidence is appraised every time);
the evidence alone is not enough either, because evidence is not a credential: anyone on the
network can replay a workload's quote to ask for work, and the token keeps the audit actor
and the revocation path the same as for every other operation. Setting a policy needs
`keys.write`, reading it `keys.read`.

Nonces live only in the memory of the enclave worker that issued them (never in storage the
host could roll back): 32 random bytes, single use (consumed at first presentation, whatever
the outcome, so a refused request cannot be retried with the same evidence), valid for
`NONCE_TTL`, at most `MAX_NONCES` outstanding and `MAX_NONCES_PER_TOKEN` per token (a token
that asks for more loses its own oldest, never another token's). A nonce presented to another
worker or after a restart is unknown: ask for a new one.

Refusals are typed: `NonceError` / `EvidenceRefusedError` (the evidence did not appraise or
does not bind this nonce and key), `ReleasePolicyNotMetError` (genuine evidence of a workload
the policy does not name), `NoReleasePolicyError`. Each carries an audit `detail`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from cryptography import x509

from enclave_kms.attestation.appraise import Appraisal, appraise
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.evidence import EvidenceForm, load_evidence
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.policy_order import loosenings
from enclave_kms.attestation.types import Collateral, TrustRoot, VerifiedQuote, spki_sha256
from enclave_kms.enclave.keys.service import KMSService
from enclave_kms.enclave.keys.types import (
    KeyRecord,
    ReleasePolicySpec,
    parse_tagged,
    validate_key_name,
)
from enclave_kms.enclave.state.store import RecordStore, retry_on_conflict
from enclave_kms.errors import (
    AttestationError,
    ConfigError,
    EnclaveKMSError,
    EvidenceRefusedError,
    ImmutablePolicyError,
    InvalidRequestError,
    NonceError,
    NoReleasePolicyError,
    NotFoundError,
    PolicyError,
    ReleasePolicyNotMetError,
)
from enclave_kms.sgx.oe import parse_custom_claims
from enclave_kms.sgx.report import ReportBody
from enclave_kms.wire import ReleasePolicy
from enclave_kms.wire import release as release_wire

NONCE_TTL = timedelta(minutes=5)
MAX_NONCES = 10_000
MAX_NONCES_PER_TOKEN = 64
"""One token's outstanding nonces: far above what a workload needs (one per release in
flight), low enough that flooding the book with one token cannot evict other workloads'
nonces (the book holds MAX_NONCES)."""
MAX_EVIDENCE = 128 * 1024
MAX_POLICY_TOML = 16 * 1024
RELEASE_CLAIM = "enclave-kms/release"
"""OE evidence: the custom claim that carries `release_wire.binding(...)` (the container binds
the claims buffer: report_data[0:32] = SHA-256(claims))."""
ACCEPTED_FORMS = (EvidenceForm.RAW_QUOTE, EvidenceForm.OE_EVIDENCE)

Clock = Callable[[], datetime]
CollateralFor = Callable[[bytes], Collateral]


@lru_cache(maxsize=256)
def _parsed(policy_toml: str) -> Policy:
    return Policy.from_toml(policy_toml)


def release_policy(policy_toml: str) -> Policy:
    """Parse and check a release policy: an identity pinned, no `any_enclave_unsafe` (a key
    released to any genuine enclave is released to anyone who rents one), no `report_data`
    (the KMS sets the binding)."""
    if not isinstance(policy_toml, str) or len(policy_toml) > MAX_POLICY_TOML:
        raise InvalidRequestError(f"a release policy is TOML text of at most {MAX_POLICY_TOML}")
    try:
        policy = _parsed(policy_toml)
    except ConfigError as exc:
        raise InvalidRequestError(f"release policy: {exc.message}") from None
    if policy.any_enclave_unsafe:
        raise InvalidRequestError("release policy: any_enclave_unsafe is never accepted")
    if policy.report_data is not None:
        raise InvalidRequestError("release policy: report_data is set by the KMS (the binding)")
    if not policy.pins_identity:
        raise InvalidRequestError(
            "release policy: pin an identity (mr_enclave, or mr_signer and isv_prod_id, "
            "or mr_td / an rt_mr)"
        )
    return policy


def policy_digest(spec: ReleasePolicy) -> str:
    return hashlib.sha256(spec.policy_toml.encode()).hexdigest()[:16]


def describe_policy(spec: ReleasePolicy | None) -> str:
    if spec is None:
        return "policy=none"
    return (
        f"policy=rev{spec.revision}:{policy_digest(spec)}{':immutable' if spec.immutable else ''}"
    )


def describe_workload(verified: VerifiedQuote) -> str:
    """The workload's identity for the audit log (never secret: it is in its evidence)."""
    body = verified.quote.body
    if isinstance(body, ReportBody):
        return (
            f"tee=SGX mr_enclave={body.mr_enclave.hex()} mr_signer={body.mr_signer.hex()} "
            f"isv_prod_id={body.isv_prod_id} isv_svn={body.isv_svn} "
            f"tcb={verified.tcb_status.value}"
        )
    mr_td = getattr(body, "mr_td", b"")
    return f"tee={verified.tee} mr_td={mr_td.hex()} tcb={verified.tcb_status.value}"


@dataclass(frozen=True)
class ReleaseRequest:
    operation: str
    nonce: bytes
    evidence: bytes = field(repr=False)
    recipient_public_key: bytes
    evidence_form: str = EvidenceForm.RAW_QUOTE.value
    version: int | None = None  # export: default latest
    ciphertext: str | None = None  # decrypt
    associated_data: bytes | None = None  # decrypt, datakey


@dataclass(frozen=True)
class ReleaseAnswer:
    """`sealed` opens only with the workload's recipient key (release_wire.open_sealed)."""

    key_name: str
    key_type: str
    version: int
    operation: str
    sealed: bytes
    suite: str
    ciphertext: str | None  # datakey: the data key under the KMS key (not secret)
    detail: str  # audit: workload identity and the policy that allowed it


class NonceBook:
    """Single-use, short-lived nonces held in this enclave worker's memory, each owned by
    the token that asked for it (its quota; redemption does not depend on the token)."""

    def __init__(
        self,
        clock: Clock,
        ttl: timedelta = NONCE_TTL,
        limit: int = MAX_NONCES,
        per_owner: int = MAX_NONCES_PER_TOKEN,
    ) -> None:
        self._clock, self._ttl, self._limit, self._per_owner = clock, ttl, limit, per_owner
        self._live: OrderedDict[bytes, tuple[datetime, str]] = OrderedDict()
        self._owned: dict[str, OrderedDict[bytes, None]] = {}
        self._lock = threading.Lock()

    def issue(self, owner: str) -> tuple[bytes, datetime]:
        nonce, expires = os.urandom(release_wire.NONCE_BYTES), self._clock() + self._ttl
        with self._lock:
            self._drop_expired()
            while len(self._owned.get(owner, ())) >= self._per_owner:
                self._forget(next(iter(self._owned[owner])))  # this token's oldest goes first
            while len(self._live) >= self._limit:
                self._forget(next(iter(self._live)))  # then the oldest of all
            self._live[nonce] = (expires, owner)
            self._owned.setdefault(owner, OrderedDict())[nonce] = None
        return nonce, expires

    def redeem(self, nonce: bytes) -> None:
        """Consume `nonce`; NonceError if it is not a live nonce of this worker."""
        with self._lock:
            entry = self._live.get(nonce)
            if entry is not None:
                self._forget(nonce)
        if entry is None:
            raise NonceError(
                "the nonce is unknown or already used (nonces are single-use, and only the "
                "worker that issued one accepts it): ask for a new nonce"
            )
        if self._clock() >= entry[0]:
            raise NonceError("the nonce has expired: ask for a new nonce")

    def outstanding(self, owner: str | None = None) -> int:
        """How many nonces are live (of `owner`, or in all)."""
        with self._lock:
            return len(self._live) if owner is None else len(self._owned.get(owner, ()))

    def _forget(self, nonce: bytes) -> None:
        _expires, owner = self._live.pop(nonce)
        mine = self._owned[owner]
        del mine[nonce]
        if not mine:
            del self._owned[owner]  # the owners held are bounded by the live nonces

    def _drop_expired(self) -> None:
        now = self._clock()
        while self._live and next(iter(self._live.values()))[0] <= now:
            self._forget(next(iter(self._live)))


class ReleaseService:
    """Release policies on keys and the release operation, over the KMS service."""

    def __init__(
        self,
        store: RecordStore,
        kms: KMSService,
        collateral_for: CollateralFor,
        clock: Clock | None = None,
        *,
        nonce_ttl: timedelta = NONCE_TTL,
    ) -> None:
        self._store = store
        self._kms = kms
        self._collateral_for = collateral_for
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self.nonces = NonceBook(self._now, nonce_ttl)
        self._cache = VerificationCache()

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # ----------------------------------------------------------------- policies

    def read_policy(self, name: str) -> ReleasePolicy | None:
        return self._kms.read_key(name).release_policy

    def set_policy(
        self, name: str, policy_toml: str, *, immutable: bool = False
    ) -> ReleasePolicySpec:
        """Attach (or replace) the release policy of `name`. An immutable one is replaced only
        by a tighter policy (ImmutablePolicyError lists every loosening) and stays immutable."""
        validate_key_name(name)
        if not isinstance(immutable, bool):
            raise InvalidRequestError("immutable must be a boolean")
        new_policy = release_policy(policy_toml)
        canonical = new_policy.to_toml()
        self._kms.read_key(name)  # purges a key whose deletion is due; NotFoundError

        def attempt() -> ReleasePolicySpec:
            found = self._store.get_parsed("key", name, KeyRecord.from_value)
            if found is None:
                raise NotFoundError(f"key {name!r} not found")
            version, key = found
            if key.deletion_scheduled_at is not None:
                raise InvalidRequestError(f"key {name!r} is scheduled for deletion")
            old = key.release_policy
            if old is not None and old.immutable:
                loose = loosenings(_parsed(old.policy_toml), new_policy)
                if loose:
                    raise ImmutablePolicyError(
                        f"the release policy of {name!r} is immutable and may only be "
                        "tightened; this change loosens it: " + "; ".join(loose)
                    )
            spec = ReleasePolicySpec(
                policy_toml=canonical,
                immutable=immutable or (old is not None and old.immutable),
                revision=1 if old is None else old.revision + 1,
                updated=self._now(),
            )
            self._store.put("key", name, version, replace(key, release_policy=spec).to_value())
            return spec

        return retry_on_conflict(attempt, f"key {name!r}")

    # ----------------------------------------------------------------- release

    def issue_nonce(self, token_id: str) -> tuple[bytes, datetime]:
        """A nonce for the caller `token_id` (whose quota it counts against)."""
        return self.nonces.issue(token_id)

    def release(self, name: str, request: ReleaseRequest) -> ReleaseAnswer:
        """Appraise the workload's evidence against the key's release policy and answer
        HPKE-sealed to the key the evidence binds (module docstring)."""
        validate_key_name(name)
        if request.operation not in release_wire.OPERATIONS:
            raise InvalidRequestError(
                f"operation must be one of {', '.join(release_wire.OPERATIONS)}"
            )
        release_wire.binding(request.nonce, request.recipient_public_key)  # shapes
        if not isinstance(request.evidence, bytes) or not 0 < len(request.evidence) <= MAX_EVIDENCE:
            raise InvalidRequestError(f"evidence must be 1..{MAX_EVIDENCE} bytes")
        try:
            form = EvidenceForm(request.evidence_form)
        except ValueError:
            form = None
        if form not in ACCEPTED_FORMS:
            raise InvalidRequestError(
                "evidence_form must be one of " + ", ".join(f.value for f in ACCEPTED_FORMS)
            )
        self.nonces.redeem(request.nonce)
        spec = self.read_policy(name)
        if spec is None:
            raise NoReleasePolicyError(
                f"key {name!r} has no release policy, so it is released to no workload",
                detail="policy=none",
            )
        appraisal = self._appraise(request, form, _parsed(spec.policy_toml), spec)
        detail = f"{describe_workload(appraisal.verified)} {describe_policy(spec)}"
        return self._answer(name, request, detail)

    def _appraise(
        self, request: ReleaseRequest, form: EvidenceForm, policy: Policy, spec: ReleasePolicy
    ) -> Appraisal:
        where = describe_policy(spec)
        expected = release_wire.binding(request.nonce, request.recipient_public_key)
        try:
            evidence = load_evidence(request.evidence, form=form)
            root = _trust_root(policy, evidence.quote.pck_certificates)
            appraisal = appraise(
                evidence,
                policy,
                expected_report_data=expected if form is EvidenceForm.RAW_QUOTE else None,
                now=self._now(),
                collateral=self._collateral_for(evidence.quote_bytes),
                cache=self._cache,
                trust_root=root,
                form=form,
            )
        except PolicyError as exc:
            subject = exc.subject
            who = describe_workload(subject) if isinstance(subject, VerifiedQuote) else "tee=?"
            others = [v for v in exc.violations if "(caller)" not in v]
            if (
                isinstance(subject, VerifiedQuote)
                and not hmac.compare_digest(subject.report_data[:32], expected)
                and form is EvidenceForm.RAW_QUOTE
            ):
                raise EvidenceRefusedError(
                    "evidence refused: its report_data does not bind this nonce and recipient "
                    "key (replayed, or made for another key)",
                    detail=f"{who} {where} step=binding",
                ) from None
            raise ReleasePolicyNotMetError(
                "release policy not met: " + "; ".join(others or exc.violations),
                detail=f"{who} {where}",
            ) from None
        except AttestationError as exc:
            raise EvidenceRefusedError(
                f"evidence refused ({exc.code}): {exc.message}",
                detail=f"tee=? {where} step={exc.code}",
            ) from None
        except EnclaveKMSError as exc:
            if isinstance(exc, ConfigError):
                raise EvidenceRefusedError(
                    f"evidence refused: {exc.message}", detail=where
                ) from None
            raise
        if form is EvidenceForm.OE_EVIDENCE:
            self._check_claim(appraisal, expected, where)
        return appraisal

    @staticmethod
    def _check_claim(appraisal: Appraisal, expected: bytes, where: str) -> None:
        claims = parse_custom_claims(appraisal.evidence.held_data or b"")
        values = [c.value for c in claims if c.name == RELEASE_CLAIM]
        if len(values) != 1 or not hmac.compare_digest(values[0], expected):
            raise EvidenceRefusedError(
                f"evidence refused: the custom claim {RELEASE_CLAIM!r} does not bind this "
                "nonce and recipient key",
                detail=f"{describe_workload(appraisal.verified)} {where} step=binding",
            )

    def _answer(self, name: str, request: ReleaseRequest, detail: str) -> ReleaseAnswer:
        kms, op = self._kms, request.operation
        ciphertext: str | None = None
        if op == "export":
            exported = kms.export_key(name, version=request.version)
            key_type, version, secret = exported.type, exported.version, exported.material
        elif op == "decrypt":
            if request.ciphertext is None:
                raise InvalidRequestError("decrypt needs a ciphertext")
            version = parse_tagged(request.ciphertext, "ciphertext")[0]
            secret = kms.decrypt(name, request.ciphertext, associated_data=request.associated_data)
            key_type = kms.read_key(name).type
        else:
            made = kms.generate_data_key(name, associated_data=request.associated_data)
            assert made.plaintext is not None
            secret, ciphertext = made.plaintext, made.ciphertext
            version = parse_tagged(ciphertext, "ciphertext")[0]
            key_type = kms.read_key(name).type
        info = release_wire.answer_info(name, version, op, request.nonce)
        sealed = release_wire.seal(secret, request.recipient_public_key, info)
        return ReleaseAnswer(
            name, key_type, version, op, sealed, release_wire.SUITE_NAME, ciphertext, detail
        )


def _trust_root(policy: Policy, chain: Callable[[], list[x509.Certificate]]) -> TrustRoot | None:
    """Intel's production root, or the root the policy names by key, taken from the quote's own
    certification data (a self-signed certificate is trusted only for its key, which the
    policy pins)."""
    if policy.simulated_root is None:
        return None
    try:
        certificates = chain()
    except EnclaveKMSError:
        return None
    for cert in certificates:
        if hmac.compare_digest(spki_sha256(cert), policy.simulated_root.lower()):
            return TrustRoot(cert)
    return None
