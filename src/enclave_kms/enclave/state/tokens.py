"""Bearer tokens with policies: who may do what to which keys (DESIGN §11).

Token string: ``ekms_<id: 16 hex>_<secret: 32 random bytes, base64url without padding>``.
Only SHA-256 of the 32 secret bytes is stored (sealed record kind "token", id = token id): a
dump of the store, even decrypted, yields no usable token, and the secret is 256 bits of
entropy so a plain hash needs no stretching. The token string exists only in the
`IssuedToken` returned once to the caller; it is never stored, and no repr, str or error
message of this module contains it.

A policy grants operations on key-name glob patterns (`fnmatch`, case-sensitive). Operations
that are not about a key (random, tokens.manage, audit.read, sys) ignore the patterns.
A token that manages tokens cannot mint one more powerful than itself: pass it as `issuer`.

Authority is a tree (DESIGN §11). Every token records its issuer's lineage (`ancestors`, the
init admin first), so a manager reads, lists and revokes only itself and the tokens it issued
and their descendants, never a sibling or a wider one (a root admin, which holds everything,
governs every token; a root admin issuing another never-expiring full admin makes a peer root,
so the first admin can be rotated out); a child never expires after its issuer
(its expiry is clamped to the issuer's); a token stops authenticating as soon as any of its
ancestors is revoked, expired or gone (revocation cascades); and the last full admin that
never expires cannot be revoked, so an installation always keeps a way to manage itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from enclave_kms import wire
from enclave_kms.enclave.state.store import INIT_MARKER, RecordStore, all_ids, retry_on_conflict
from enclave_kms.errors import (
    ConflictError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)

Clock = Callable[[], datetime]

OPERATIONS = frozenset(wire.OPERATIONS)  # the one list of grantable operations (wire/)
GLOBAL_OPERATIONS = frozenset({"random", "tokens.manage", "audit.read", "sys"})
KEY_OPERATIONS = OPERATIONS - GLOBAL_OPERATIONS  # scoped by key-name patterns
LATER_OPERATIONS = frozenset({"release"})
"""Added after installations existed: a full admin issued before them still counts as one
(the last-admin rule must keep protecting it), though it cannot grant what it lacks."""

TOKEN_PREFIX = "ekms_"  # noqa: S105 - a format prefix, not a credential
MAX_TTL = timedelta(days=3650)
MAX_POLICIES = 64
MAX_PATTERNS = 64
MAX_DEPTH = 16  # issuers above a token
_RECORD_FORMAT = 1
_TOKEN = re.compile(r"ekms_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PATTERN = re.compile(r"[A-Za-z0-9._\-*?\[\]!]{1,128}")
_WILDCARDS = frozenset("*?[]!")
_INIT_MARKER = INIT_MARKER


@dataclass(frozen=True)
class TokenPolicy:
    """Operations granted on keys whose names match one of the glob patterns."""

    keys: tuple[str, ...]
    operations: tuple[str, ...]

    @classmethod
    def of(cls, value: TokenPolicy | Mapping[str, Any]) -> TokenPolicy:
        """Validate a policy given as a TokenPolicy or a {"keys", "operations"} mapping."""
        keys: object
        operations: object
        if isinstance(value, TokenPolicy):
            keys, operations = value.keys, value.operations
        elif isinstance(value, Mapping):
            if set(value) - {"keys", "operations"}:
                raise InvalidRequestError("a policy has only 'keys' and 'operations'")
            keys, operations = value.get("keys", ()), value.get("operations")
        else:
            raise InvalidRequestError("a policy must be an object with keys and operations")
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise InvalidRequestError("policy keys must be a list of name patterns")
        if isinstance(operations, str | bytes) or not isinstance(operations, Sequence):
            raise InvalidRequestError("policy operations must be a list")
        if not operations:
            raise InvalidRequestError("a policy grants at least one operation")
        if len(keys) > MAX_PATTERNS:
            raise InvalidRequestError(f"a policy has at most {MAX_PATTERNS} key patterns")
        for pattern in keys:
            if not isinstance(pattern, str) or _PATTERN.fullmatch(pattern) is None:
                raise InvalidRequestError(
                    "a key pattern is 1-128 characters of key-name characters and * ? [ ] !"
                )
        for op in operations:
            if op not in OPERATIONS:
                raise InvalidRequestError(
                    f"unknown operation; expected some of {', '.join(sorted(OPERATIONS))}"
                )
        if not keys and any(op in KEY_OPERATIONS for op in operations):
            raise InvalidRequestError("a policy granting key operations needs key patterns")
        return cls(tuple(keys), tuple(sorted(set(operations))))

    def to_dict(self) -> dict[str, list[str]]:
        return {"keys": list(self.keys), "operations": list(self.operations)}

    def allows(self, operation: str, key_name: str | None) -> bool:
        """Whether this policy grants `operation` (on `key_name`, for key operations).

        A key operation with no key name (e.g. listing) is granted if any pattern is."""
        if operation not in self.operations:
            return False
        if operation in GLOBAL_OPERATIONS or key_name is None:
            return True
        return any(fnmatchcase(key_name, pattern) for pattern in self.keys)


ADMIN_POLICY = TokenPolicy(("*",), tuple(sorted(OPERATIONS)))


@dataclass(frozen=True)
class TokenInfo:
    """A token's metadata: everything except the secret (which is not even stored)."""

    id: str
    name: str
    policies: tuple[TokenPolicy, ...]
    created: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    ancestors: tuple[str, ...] = ()  # the issuers above it, the init admin first

    @property
    def issuer(self) -> str | None:
        return self.ancestors[-1] if self.ancestors else None


@dataclass(frozen=True)
class TokenPage:
    tokens: tuple[TokenInfo, ...]
    next_after: str | None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Carries the token id (the audit actor), never the secret."""

    token_id: str
    name: str
    policies: tuple[TokenPolicy, ...]
    ancestors: tuple[str, ...] = ()
    expires_at: datetime | None = None
    root: bool = False  # a root admin: every operation on every key, no expiry, no issuer

    def governs(self, info: TokenInfo) -> bool:
        """Whether this caller may see and revoke `info`: itself or one of its descendants
        (a root admin governs every token)."""
        return self.root or info.id == self.token_id or self.token_id in info.ancestors


@dataclass(frozen=True)
class IssuedToken:
    """A newly issued token: `token` is the only copy of the bearer string anywhere."""

    token: str = field(repr=False)
    info: TokenInfo

    def __str__(self) -> str:
        return f"IssuedToken(id={self.info.id})"

    def __repr__(self) -> str:
        return str(self)


# --------------------------------------------------------------------------- helpers


def _secret_hash(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _parse_token(token: object) -> tuple[str, bytes]:
    """(token id, secret bytes); UnauthenticatedError if the string is not a token."""
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise UnauthenticatedError("malformed token")
    try:
        secret = base64.urlsafe_b64decode(match.group(2) + "=")
    except (binascii.Error, ValueError):
        raise UnauthenticatedError("malformed token") from None
    if len(secret) != 32 or _b64url(secret) != match.group(2):
        raise UnauthenticatedError("malformed token")
    return match.group(1), secret


def _covers(granted: str, requested: str) -> bool:
    """Whether every name matching `requested` surely matches `granted` (conservative)."""
    if granted in ("*", requested):
        return True
    if not _WILDCARDS & set(requested):
        return fnmatchcase(requested, granted)
    prefix = granted[:-1]
    return granted.endswith("*") and not _WILDCARDS & set(prefix) and requested.startswith(prefix)


def _is_full(policies: Sequence[TokenPolicy]) -> bool:
    granted = {op for p in policies if "*" in p.keys for op in p.operations}
    return granted >= OPERATIONS - LATER_OPERATIONS


def _root_admin(info: TokenInfo) -> bool:
    """Every operation on every key, no expiry, no issuer: what `sys/init` issues."""
    return info.expires_at is None and not info.ancestors and _is_full(info.policies)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value)
    if t.tzinfo is None:
        raise ValueError("naive time")
    return t


@dataclass(frozen=True)
class _TokenRecord:
    info: TokenInfo
    secret_sha256: bytes = field(repr=False)

    @functools.cached_property
    def principal(self) -> Principal:
        """The caller this record authenticates: built once per record version (the parsed
        record is cached with its version, so a revocation or any change makes a new one)."""
        i = self.info
        return Principal(i.id, i.name, i.policies, i.ancestors, i.expires_at, root=_root_admin(i))

    def to_value(self) -> dict[str, Any]:
        i = self.info
        return {
            "format": _RECORD_FORMAT,
            "id": i.id,
            "name": i.name,
            "secret_sha256": self.secret_sha256,
            "policies": [p.to_dict() for p in i.policies],
            "created": i.created.isoformat(),
            "expires_at": None if i.expires_at is None else i.expires_at.isoformat(),
            "revoked_at": None if i.revoked_at is None else i.revoked_at.isoformat(),
            "ancestors": list(i.ancestors),
        }

    @classmethod
    def from_value(cls, token_id: str, value: Any) -> _TokenRecord:
        try:
            if value["format"] != _RECORD_FORMAT or value["id"] != token_id:
                raise ValueError("format or id")
            digest = value["secret_sha256"]
            ancestors = tuple(value.get("ancestors", ()))
            if len(ancestors) > MAX_DEPTH or any(
                not isinstance(a, str) or _TOKEN_ID.fullmatch(a) is None for a in ancestors
            ):
                raise ValueError("ancestors")
            created = _time(value["created"])
            if not isinstance(digest, bytes) or len(digest) != 32 or created is None:
                raise ValueError("digest or created")
            info = TokenInfo(
                id=token_id,
                name=str(value["name"]),
                policies=tuple(TokenPolicy.of(p) for p in value["policies"]),
                created=created,
                expires_at=_time(value["expires_at"]),
                revoked_at=_time(value["revoked_at"]),
                ancestors=ancestors,
            )
        except (KeyError, TypeError, ValueError, InvalidRequestError):
            raise IntegrityError(
                f"token record {token_id} does not have the expected shape"
            ) from None
        return cls(info, digest)


# --------------------------------------------------------------------------- the service


class TokenService:
    """Issues, lists, revokes and checks bearer tokens stored as sealed records."""

    def __init__(self, store: RecordStore, clock: Clock | None = None) -> None:
        self._store = store
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        # Two concurrent revocations of the last two root admins must not both pass the
        # "another one remains" check (within one worker; see docs/api.md for several).
        self._root_lock = threading.Lock()

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the token clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def _get(self, token_id: str) -> tuple[int, _TokenRecord] | None:
        return self._store.get_parsed("token", token_id, _TokenRecord.from_value)

    def _issue(
        self,
        name: str,
        policies: tuple[TokenPolicy, ...],
        expires_at: datetime | None,
        store: RecordStore | None = None,
        ancestors: tuple[str, ...] = (),
    ) -> IssuedToken:
        into = store or self._store

        def attempt() -> IssuedToken:
            token_id, secret = os.urandom(8).hex(), os.urandom(32)
            info = TokenInfo(token_id, name, policies, self._now(), expires_at, None, ancestors)
            record = _TokenRecord(info, _secret_hash(secret))
            into.put("token", token_id, 0, record.to_value())  # a 64-bit id collision: redraw
            return IssuedToken(f"{TOKEN_PREFIX}{token_id}_{_b64url(secret)}", info)

        return retry_on_conflict(attempt, "token id allocation")

    def init_admin(self) -> IssuedToken:
        """Issue the first admin token (every operation on every key). Works exactly once
        per store, across restarts and replicas; afterwards ConflictError.

        Each init draws a new installation id that key and token records are bound to
        (`store.RecordStore`): a host that deletes the marker to run init again gets an
        admin token for a new, empty installation, never for the existing keys.
        """
        if self._store.bound or self._store.get(*_INIT_MARKER) is not None:
            raise ConflictError("already initialised")
        installation = os.urandom(32)
        issued = self._issue("admin", (ADMIN_POLICY,), None, self._store.bound_to(installation))
        marker = {
            "admin_token_id": issued.info.id,
            "at": self._now().isoformat(),
            "installation": installation,
            "state_head": 1,  # covered by the signed state head from its first write
        }
        try:
            self._store.put(*_INIT_MARKER, 0, marker)
        except ConflictError:
            # Someone else initialised first: withdraw ours so no second admin exists.
            self._store.delete("token", issued.info.id, 1)
            raise ConflictError("already initialised") from None
        self._store.bind(installation)
        return issued

    def is_initialised(self) -> bool:
        return self._store.bound or self._store.get(*_INIT_MARKER) is not None

    def create_token(
        self,
        name: str,
        policies: Sequence[TokenPolicy | Mapping[str, Any]],
        *,
        ttl: timedelta | None = None,
        issuer: Principal | None = None,
    ) -> IssuedToken:
        """Issue a token with `policies`, expiring after `ttl` (None: never).

        With `issuer`, every granted (operation, key pattern) must already be granted to
        the issuer, so tokens.manage alone cannot escalate (PermissionDeniedError).
        """
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise InvalidRequestError("token name must be 1-128 characters of A-Z a-z 0-9 . _ -")
        if isinstance(policies, str | bytes | Mapping) or not isinstance(policies, Sequence):
            raise InvalidRequestError("policies must be a list")
        if not 1 <= len(policies) <= MAX_POLICIES:
            raise InvalidRequestError(f"a token has 1..{MAX_POLICIES} policies")
        checked = tuple(TokenPolicy.of(p) for p in policies)
        if ttl is not None and (
            not isinstance(ttl, timedelta) or not timedelta(0) < ttl <= MAX_TTL
        ):
            raise InvalidRequestError(f"ttl must be positive and at most {MAX_TTL.days} days")
        expires_at = None if ttl is None else self._now() + ttl
        ancestors: tuple[str, ...] = ()
        if issuer is not None:
            self._check_within(issuer, checked)
            if len(issuer.ancestors) >= MAX_DEPTH:
                raise InvalidRequestError(f"tokens nest at most {MAX_DEPTH} issuers deep")
            ancestors = (*issuer.ancestors, issuer.token_id)
            if issuer.root and ttl is None and _is_full(checked):
                ancestors = ()  # a root admin issues a peer root (so admins can be rotated)
            if issuer.expires_at is not None and (
                expires_at is None or expires_at > issuer.expires_at
            ):
                expires_at = issuer.expires_at  # a child never outlives its issuer
        return self._issue(name, checked, expires_at, ancestors=ancestors)

    @staticmethod
    def _check_within(issuer: Principal, policies: tuple[TokenPolicy, ...]) -> None:
        for policy in policies:
            for op in policy.operations:
                mine = [p for p in issuer.policies if op in p.operations]
                if op in GLOBAL_OPERATIONS:
                    ok = bool(mine)
                else:
                    ok = all(any(_covers(g, r) for p in mine for g in p.keys) for r in policy.keys)
                if not ok:
                    raise PermissionDeniedError(
                        f"token {issuer.token_id} cannot grant {op} beyond its own policies"
                    )

    def read_token(self, token_id: str, caller: Principal | None = None) -> TokenInfo:
        """Metadata of one token (never its secret); with `caller`, only one it governs
        (any other reads as not found, so existence is not revealed either)."""
        found = self._get(self._check_id(token_id))
        if found is None or (caller is not None and not caller.governs(found[1].info)):
            raise NotFoundError(f"token {token_id} not found")
        return found[1].info

    def list_tokens(
        self, *, after: str = "", limit: int = 100, caller: Principal | None = None
    ) -> TokenPage:
        """Token metadata by id, ascending, revoked ones included (with revoked_at); with
        `caller`, only the tokens it governs, and `next_after` is always one of those."""
        if not isinstance(after, str) or len(after) > 16:
            raise InvalidRequestError("after must be a token id")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidRequestError("limit must be 1..1000")
        tokens: list[TokenInfo] = []
        more = False
        for token_id in all_ids(self._store.list_ids, "token", after=after):
            found = self._get(token_id)
            if found is None or (caller is not None and not caller.governs(found[1].info)):
                continue
            if len(tokens) == limit:
                more = True
                break
            tokens.append(found[1].info)
        return TokenPage(tuple(tokens), tokens[-1].id if more else None)

    def revoke_token(self, token_id: str, caller: Principal | None = None) -> TokenInfo:
        """Revoke for good: the token and every token it issued (and theirs) fail
        authentication from now on. Idempotent. With `caller`, only a token it governs; the
        last full admin that never expires cannot be revoked (ConflictError)."""
        self._check_id(token_id)

        def attempt() -> TokenInfo:
            found = self._get(token_id)
            if found is None or (caller is not None and not caller.governs(found[1].info)):
                raise NotFoundError(f"token {token_id} not found")
            version, record = found
            if record.info.revoked_at is not None:
                return record.info
            revoked = replace(record, info=replace(record.info, revoked_at=self._now()))
            if not _root_admin(record.info):
                self._store.put("token", token_id, version, revoked.to_value())
                return revoked.info
            with self._root_lock:
                if not self._other_root_admin(token_id):
                    raise ConflictError(
                        "the last full admin token that never expires cannot be revoked: "
                        "issue another one first"
                    )
                self._store.put("token", token_id, version, revoked.to_value())
                return revoked.info

        return retry_on_conflict(attempt, f"token {token_id}")

    def _other_root_admin(self, revoking: str) -> bool:
        """Whether a live never-expiring full admin remains once `revoking` (and hence its
        descendants) is revoked."""
        for token_id in all_ids(self._store.list_ids, "token"):
            found = self._get(token_id)
            if found is None or token_id == revoking:
                continue
            info = found[1].info
            if revoking in info.ancestors or info.revoked_at is not None:
                continue
            if _root_admin(info) and self._lineage_live(info):
                return True
        return False

    def _lineage_live(self, info: TokenInfo) -> bool:
        """Every issuer above `info` still exists, unrevoked and unexpired."""
        now = self._now()
        for ancestor in info.ancestors:
            found = self._get(ancestor)
            if found is None:
                return False
            a = found[1].info
            if a.revoked_at is not None or (a.expires_at is not None and a.expires_at <= now):
                return False
        return True

    @staticmethod
    def _check_id(token_id: object) -> str:
        if not isinstance(token_id, str) or _TOKEN_ID.fullmatch(token_id) is None:
            raise InvalidRequestError("token id must be 16 lowercase hex digits")
        return token_id

    def authenticate(self, token: str) -> Principal:
        """The principal of a valid bearer token; UnauthenticatedError if it is malformed,
        unknown, wrong, revoked or expired (the message never echoes the token)."""
        token_id, secret = _parse_token(token)
        found = self._get(token_id)
        if found is None:
            raise UnauthenticatedError("invalid token")
        info = found[1].info
        if not hmac.compare_digest(_secret_hash(secret), found[1].secret_sha256):
            raise UnauthenticatedError("invalid token")
        if info.revoked_at is not None:
            raise UnauthenticatedError("token revoked")
        if info.expires_at is not None and info.expires_at <= self._now():
            raise UnauthenticatedError("token expired")
        if info.ancestors and not self._lineage_live(info):
            raise UnauthenticatedError("token revoked (an issuing token was revoked)")
        return found[1].principal

    @staticmethod
    def allowed(principal: Principal, operation: str, key_name: str | None = None) -> bool:
        """Whether `principal` may run `operation` (on `key_name`); for filtering lists."""
        if operation not in OPERATIONS:
            raise InvalidRequestError(f"unknown operation {operation!r}")
        return any(p.allows(operation, key_name) for p in principal.policies)

    @classmethod
    def authorize(cls, principal: Principal, operation: str, key_name: str | None = None) -> None:
        """Return if allowed, else PermissionDeniedError naming the operation and key."""
        if not cls.allowed(principal, operation, key_name):
            target = "" if key_name is None else f" on key {key_name!r}"
            raise PermissionDeniedError(
                f"token {principal.token_id} is not allowed {operation}{target}"
            )
