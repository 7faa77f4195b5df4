"""The recovery set: the SRK split k-of-n, each share sealed to a recovery officer.

Stored by the host as `identity/recovery-set` (like the sealed SRK, outside the records the
SRK encrypts: an enclave that lost the SRK must still read it). Everything in it is either
public (officer keys, digests), sealed to an officer (the shares), or checkable only with the
SRK (commitment, MAC), so the host can read it all and learn nothing; what it can do, swap or
corrupt parts of it, is refused share by share (digests, HPKE info) or at the end (commitment,
MAC). Formats and the construction: `enclave_kms.wire.custody`.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
import shamir_mnemonic
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave_kms.enclave.state.store import Backend
from enclave_kms.errors import (
    ConflictError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    RecoveryError,
)
from enclave_kms.wire import custody as wire

SET_ID = ("identity", "recovery-set")
_ITERATION_EXPONENT = 0  # SLIP-39's passphrase stretching; the secret is random, so minimal


@dataclass(frozen=True)
class SealedShare:
    index: int  # 1..n
    officer: bytes  # raw X25519 public key
    digest: bytes
    sealed: bytes  # HPKE to the officer

    @property
    def fingerprint(self) -> str:
        return wire.officer_fingerprint(self.officer)


@dataclass(frozen=True)
class RecoverySet:
    set_id: bytes
    threshold: int
    created: str
    commitment: bytes
    shares: tuple[SealedShare, ...]
    mac: bytes
    origin: bytes = b""  # the splitting enclave's quote over `body()` (wire.set_origin_binding)

    def body(self) -> bytes:
        """The canonical bytes the MAC covers (everything but the MAC)."""
        return cbor2.dumps(
            {
                "v": 1,
                "set_id": self.set_id,
                "threshold": self.threshold,
                "created": self.created,
                "commitment": self.commitment,
                "shares": [[s.index, s.officer, s.digest, s.sealed] for s in self.shares],
            },
            canonical=True,
        )

    def to_bytes(self) -> bytes:
        return cbor2.dumps({"body": self.body(), "mac": self.mac, "origin": self.origin})

    @classmethod
    def parse(cls, blob: bytes) -> RecoverySet:
        """From the host's bytes: every field type- and range-checked (hostile input)."""
        try:
            outer = cbor2.loads(blob)
            doc = cbor2.loads(outer["body"])
            raw = doc["shares"]
            shares = tuple(SealedShare(int(i), bytes(o), bytes(d), bytes(s)) for i, o, d, s in raw)
            parsed = cls(
                set_id=bytes(doc["set_id"]),
                threshold=int(doc["threshold"]),
                created=str(doc["created"]),
                commitment=bytes(doc["commitment"]),
                shares=shares,
                mac=bytes(outer["mac"]),
                origin=bytes(outer.get("origin", b"")),
            )
        except Exception:  # noqa: BLE001 - any malformed set is one refusal
            raise RecoveryError("the stored recovery set does not parse") from None
        n = len(parsed.shares)
        if (
            len(parsed.set_id) != wire.SET_ID_BYTES
            or not wire.MIN_THRESHOLD <= parsed.threshold <= n <= wire.MAX_SHARES
            or [s.index for s in parsed.shares] != list(range(1, n + 1))
            or any(len(s.officer) != 32 or len(s.digest) != 32 for s in parsed.shares)
            or len({s.officer for s in parsed.shares}) != n
            or len(parsed.commitment) != 32
            or len(parsed.mac) != 32
        ):
            raise RecoveryError("the stored recovery set is malformed")
        return parsed

    def share_for(self, fingerprint: str) -> SealedShare:
        for share in self.shares:
            if share.fingerprint == fingerprint.lower():
                return share
        raise NotFoundError("no share of the recovery set is sealed to that officer")

    def matches(self, srk: bytes) -> bool:
        """Whether `srk` is the key this set was made from (commitment and MAC)."""
        return hmac.compare_digest(
            wire.commitment(srk, self.set_id), self.commitment
        ) and hmac.compare_digest(wire.set_mac(srk, self.body()), self.mac)

    def summary(self) -> dict[str, object]:
        return {
            "set_id": self.set_id.hex(),
            "threshold": self.threshold,
            "shares": len(self.shares),
            "officers": [s.fingerprint for s in self.shares],
            "created": self.created,
        }


def split(srk: bytes, threshold: int, officers: Sequence[x25519.X25519PublicKey]) -> RecoverySet:
    """A new recovery set: `srk` in len(officers) shares, any `threshold` of which restore it."""
    n = len(officers)
    if len(srk) != wire.SRK_BYTES:
        raise RecoveryError("the storage root key is not 32 bytes")
    if not wire.MIN_THRESHOLD <= threshold <= n <= wire.MAX_SHARES:
        raise InvalidRequestError(
            f"threshold and officers: need 2 <= threshold <= officers <= {wire.MAX_SHARES}"
        )
    raws = [wire.raw_public(k) for k in officers]
    if len(set(raws)) != n:
        raise InvalidRequestError("officers: the same key is named twice")
    mnemonics = shamir_mnemonic.generate_mnemonics(
        1, [(threshold, n)], srk, b"", True, _ITERATION_EXPONENT
    )[0]
    set_id = os.urandom(wire.SET_ID_BYTES)
    commit = wire.commitment(srk, set_id)
    sealed = []
    for index, (officer, raw, words) in enumerate(zip(officers, raws, mnemonics, strict=True), 1):
        share = words.encode("ascii")
        digest = wire.share_digest(set_id, index, share)
        info = wire.share_info(
            set_id, index, threshold=threshold, shares=n, commitment=commit, digest=digest
        )
        sealed.append(SealedShare(index, raw, digest, wire.SUITE.encrypt(share, officer, info)))
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    unsigned = RecoverySet(set_id, threshold, created, commit, tuple(sealed), bytes(32))
    return RecoverySet(
        set_id, threshold, created, commit, tuple(sealed), wire.set_mac(srk, unsigned.body())
    )


def combine(shares: Sequence[bytes]) -> bytes:
    """The secret of `shares` (SLIP-39 mnemonics); its digest share refuses a wrong mix."""
    try:
        secret = shamir_mnemonic.combine_mnemonics([s.decode("ascii") for s in shares], b"")
    except (shamir_mnemonic.MnemonicError, UnicodeDecodeError, ValueError):
        raise RecoveryError(
            "the accepted shares do not reconstruct a key (a share or the stored set was "
            "altered); every share was discarded: submit them again"
        ) from None
    if not isinstance(secret, bytes) or len(secret) != wire.SRK_BYTES:
        raise RecoveryError("the shares reconstruct a secret that is not a storage root key")
    return secret


class SetStore:
    """`identity/recovery-set` through the host's storage OCALLs (compare-and-set)."""

    def __init__(self, host: Backend) -> None:
        self._host = host

    def load(self) -> tuple[int, RecoverySet] | None:
        found = self._host.get(*SET_ID)
        if found is None:
            return None
        version, blob = found
        return version, RecoverySet.parse(blob)

    def load_verified(self, srk: bytes) -> RecoverySet | None:
        """The stored set, only if it is this installation's (with the SRK at hand)."""
        found = self.load()
        if found is None:
            return None
        if not found[1].matches(srk):
            raise IntegrityError(
                "the stored recovery set is not this installation's (the host altered it)"
            )
        return found[1]

    def replace(self, recovery_set: RecoverySet) -> None:
        found = self._host.get(*SET_ID)
        version = 0 if found is None else found[0]
        if not self._host.put(*SET_ID, version, recovery_set.to_bytes()):
            raise ConflictError("the recovery set changed meanwhile; split again")


def share_answer(
    recovery_set: RecoverySet, share: SealedShare, *, verified: bool
) -> dict[str, Any]:
    """One officer's sealed share as served (and as the officer's share file keeps it).
    `verified`: the enclave checked the set against the SRK (a running installation); an
    enclave in recovery cannot, and the officer's own decryption (HPKE info) is the check."""
    return {
        "format": wire.SHARE_FILE_FORMAT,
        "set_id": recovery_set.set_id.hex(),
        "index": share.index,
        "threshold": recovery_set.threshold,
        "shares": len(recovery_set.shares),
        "commitment": recovery_set.commitment.hex(),
        "digest": share.digest.hex(),
        "officer": share.fingerprint,
        "sealed": wire.b64(share.sealed),
        "verified_by_enclave": verified,
    }


class RecoveryCustody:
    """What a running installation does with its SRK for recovery: split, status, shares."""

    def __init__(self, host: Backend, srk: bytes, quote_for: Callable[[bytes], bytes]) -> None:
        self._sets = SetStore(host)
        self._srk = srk
        self._quote_for = quote_for

    def split(self, threshold: int, officers: Sequence[bytes]) -> dict[str, object]:
        """A new set, quoted by this enclave so a recovering one can tell who made it."""
        keys = [wire.load_officer_public(pem) for pem in officers]
        made = split(self._srk, threshold, keys)
        origin = self._quote_for(wire.set_origin_binding(made.body()) + bytes(32))
        recovery_set = dataclasses.replace(made, origin=origin)
        self._sets.replace(recovery_set)
        return recovery_set.summary()

    def status(self) -> dict[str, object]:
        found = self._sets.load_verified(self._srk)
        if found is None:
            return {"state": "not-configured"}
        return {"state": "ready", **found.summary()}

    def share(self, fingerprint: str) -> dict[str, Any]:
        found = self._sets.load_verified(self._srk)
        if found is None:
            raise NotFoundError("no recovery set: split the storage root key first")
        return share_answer(found, found.share_for(fingerprint), verified=True)
