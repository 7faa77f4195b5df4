"""Bearer tokens: issue once, authenticate, authorise by key pattern, revoke, expire, and the
token string never stored or shown."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.enclave.state.tokens import (
    ADMIN_POLICY,
    OPERATIONS,
    IssuedToken,
    Principal,
    TokenPolicy,
    TokenService,
)
from enclave_kms.errors import (
    ConflictError,
    EnclaveKMSError,
    IntegrityError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from enclave_kms.host.storage.sqlite import SQLiteStorage

START = datetime(2025, 3, 1, tzinfo=UTC)
TOKEN_SHAPE = re.compile(r"ekms_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


class Env:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = os.urandom(32)
        self.clock = FakeClock()
        self.storages: list[SQLiteStorage] = []
        self.store = self.new_store()
        self.tokens = TokenService(self.store, self.clock)

    def new_store(self) -> RecordStore:
        storage = SQLiteStorage(self.path)
        self.storages.append(storage)
        return RecordStore(storage, RecordCipher(self.root))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path / "kms.sqlite")
    yield e
    for s in e.storages:
        s.close()


def secret_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token[22:] + "=")


def test_init_admin_once(env: Env) -> None:
    assert not env.tokens.is_initialised()
    admin = env.tokens.init_admin()
    assert TOKEN_SHAPE.fullmatch(admin.token)
    assert admin.token.startswith(f"ekms_{admin.info.id}_")
    assert admin.info.policies == (ADMIN_POLICY,)
    assert env.tokens.is_initialised()
    with pytest.raises(ConflictError, match="already initialised"):
        env.tokens.init_admin()
    # Also after a restart (another service over the same store).
    with pytest.raises(ConflictError):
        TokenService(env.new_store(), env.clock).init_admin()
    principal = env.tokens.authenticate(admin.token)
    assert principal.token_id == admin.info.id
    for op in OPERATIONS:
        env.tokens.authorize(principal, op, "any-key")
        env.tokens.authorize(principal, op)


def test_concurrent_init_issues_exactly_one_admin(env: Env) -> None:
    results: list[IssuedToken | str] = []

    def worker() -> None:
        try:
            results.append(TokenService(env.new_store(), env.clock).init_admin())
        except ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    issued = [r for r in results if isinstance(r, IssuedToken)]
    assert len(issued) == 1
    assert results.count("conflict") == 3
    listed = env.tokens.list_tokens().tokens
    assert [t.id for t in listed] == [issued[0].info.id]  # the losers left no token behind


def test_policies_grant_operations_on_key_patterns(env: Env) -> None:
    app = env.tokens.create_token(
        "app",
        [
            {"keys": ["app-*", "shared"], "operations": ["encrypt", "decrypt"]},
            TokenPolicy(("sig-?",), ("sign",)),
            {"operations": ["random"]},
        ],
    )
    p = env.tokens.authenticate(app.token)
    assert p.name == "app"
    env.tokens.authorize(p, "encrypt", "app-1")
    env.tokens.authorize(p, "decrypt", "shared")
    env.tokens.authorize(p, "sign", "sig-a")
    env.tokens.authorize(p, "random")
    env.tokens.authorize(p, "encrypt")  # key operation without a key: e.g. a filtered listing
    assert env.tokens.allowed(p, "decrypt", "app-x.y")
    for op, key in (
        ("encrypt", "other"),
        ("encrypt", "App-1"),  # case-sensitive
        ("encrypt", "shared2"),
        ("sign", "sig-ab"),
        ("sign", "app-1"),
        ("keys.read", "app-1"),
        ("tokens.manage", None),
        ("sys", None),
    ):
        assert not env.tokens.allowed(p, op, key)
        with pytest.raises(PermissionDeniedError, match=op):
            env.tokens.authorize(p, op, key)
    with pytest.raises(InvalidRequestError, match="unknown operation"):
        env.tokens.authorize(p, "encrypt-all", "app-1")


@pytest.mark.parametrize(
    "policy",
    [
        {"keys": ["*"], "operations": []},
        {"keys": ["*"], "operations": ["launch"]},
        {"keys": ["*"], "operations": "encrypt"},
        {"keys": "*", "operations": ["encrypt"]},
        {"keys": [], "operations": ["encrypt"]},
        {"keys": ["a/b"], "operations": ["encrypt"]},
        {"keys": [""], "operations": ["encrypt"]},
        {"keys": ["x" * 129], "operations": ["encrypt"]},
        {"keys": [1], "operations": ["encrypt"]},
        {"keys": ["*"], "operations": ["encrypt"], "admin": True},
        "keys=*",
    ],
)
def test_bad_policies(env: Env, policy: Any) -> None:
    with pytest.raises(InvalidRequestError):
        env.tokens.create_token("t", [policy])


def test_bad_token_requests(env: Env) -> None:
    ok = [{"keys": ["*"], "operations": ["encrypt"]}]
    for name in ("", "a b", "-x", None):
        with pytest.raises(InvalidRequestError, match="token name"):
            env.tokens.create_token(name, ok)  # type: ignore[arg-type]
    for policies in ([], {"keys": ["*"], "operations": ["encrypt"]}, "x", ok * 65):
        with pytest.raises(InvalidRequestError, match="polic"):
            env.tokens.create_token("t", policies)  # type: ignore[arg-type]
    for ttl in (timedelta(0), timedelta(seconds=-1), timedelta(days=3651), 60):
        with pytest.raises(InvalidRequestError, match="ttl"):
            env.tokens.create_token("t", ok, ttl=ttl)  # type: ignore[arg-type]


def test_expiry_and_revocation(env: Env) -> None:
    ok = [{"keys": ["*"], "operations": ["encrypt"]}]
    short = env.tokens.create_token("short", ok, ttl=timedelta(hours=1))
    assert short.info.expires_at == START + timedelta(hours=1)
    env.tokens.authenticate(short.token)
    env.clock.now = START + timedelta(hours=1)
    with pytest.raises(UnauthenticatedError, match="expired"):
        env.tokens.authenticate(short.token)

    doomed = env.tokens.create_token("doomed", ok)
    env.tokens.authenticate(doomed.token)
    info = env.tokens.revoke_token(doomed.info.id)
    assert info.revoked_at == env.clock.now
    assert env.tokens.revoke_token(doomed.info.id) == info  # idempotent
    with pytest.raises(UnauthenticatedError, match="revoked"):
        env.tokens.authenticate(doomed.token)
    assert env.tokens.read_token(doomed.info.id).revoked_at == env.clock.now
    with pytest.raises(NotFoundError):
        env.tokens.revoke_token("0" * 16)
    with pytest.raises(NotFoundError):
        env.tokens.read_token("0" * 16)
    for bad in ("", "XYZ", "0" * 15, "A" * 16, None):
        with pytest.raises(InvalidRequestError, match="token id"):
            env.tokens.revoke_token(bad)  # type: ignore[arg-type]


def test_list_is_paged_and_has_no_secrets(env: Env) -> None:
    issued = [
        env.tokens.create_token(f"t{i}", [{"keys": ["*"], "operations": ["hmac"]}])
        for i in range(5)
    ]
    page = env.tokens.list_tokens(limit=2)
    ids = [t.id for t in page.tokens]
    cursor = page.next_after
    while cursor is not None:
        page = env.tokens.list_tokens(after=cursor, limit=2)
        ids += [t.id for t in page.tokens]
        cursor = page.next_after
    assert ids == sorted(t.info.id for t in issued)
    listing = repr(env.tokens.list_tokens())
    for t in issued:
        assert t.token not in listing
        assert t.token[22:] not in listing
    with pytest.raises(InvalidRequestError):
        env.tokens.list_tokens(limit=0)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ekms_",
        "Bearer ekms_0123456789abcdef_" + "A" * 43,
        "ekms_0123456789ABCDEF_" + "A" * 43,  # upper-case id
        "ekms_0123456789abcdef_" + "A" * 42,
        "ekms_0123456789abcdef_" + "A" * 44,
        "ekms_0123456789abcdef_" + "A" * 42 + "B",  # non-canonical base64url tail
        "ekms_0123456789abcdef_" + "A" * 42 + "=",
        "xkms_0123456789abcdef_" + "A" * 43,
        "ekms_0123456789abcdef_" + "A" * 43 + "\n",
        None,
        b"ekms_",
    ],
)
def test_malformed_tokens_are_unauthenticated(env: Env, token: Any) -> None:
    with pytest.raises(UnauthenticatedError, match="malformed token"):
        env.tokens.authenticate(token)


def test_unknown_and_wrong_secret(env: Env) -> None:
    real = env.tokens.create_token("t", [{"keys": ["*"], "operations": ["hmac"]}])
    with pytest.raises(UnauthenticatedError, match="invalid token"):
        env.tokens.authenticate("ekms_0123456789abcdef_" + "A" * 43)
    other_secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    forged = f"ekms_{real.info.id}_{other_secret}"
    with pytest.raises(UnauthenticatedError, match="invalid token") as info:
        env.tokens.authenticate(forged)
    assert other_secret not in str(info.value)
    assert real.info.id not in str(info.value)


@pytest.fixture(scope="module")
def shared_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    storage = SQLiteStorage(tmp_path_factory.mktemp("tok") / "t.sqlite")
    service = TokenService(RecordStore(storage, RecordCipher(os.urandom(32))))
    service.create_token("someone", [{"operations": ["random"]}])
    yield service
    storage.close()


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=80), st.from_regex(r"ekms_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")))
def test_arbitrary_strings_fail_as_unauthenticated(shared_tokens: TokenService, text: str) -> None:
    with pytest.raises(UnauthenticatedError):
        shared_tokens.authenticate(text)


def test_issuer_cannot_escalate(env: Env) -> None:
    manager = env.tokens.create_token(
        "manager",
        [
            {"keys": ["app-*", "db"], "operations": ["tokens.manage", "encrypt", "decrypt"]},
            {"operations": ["random"]},
        ],
    )
    issuer = env.tokens.authenticate(manager.token)
    allowed = [
        {"keys": ["app-*"], "operations": ["encrypt"]},
        {"keys": ["app-x*", "app-[ab]", "app-1", "db"], "operations": ["decrypt"]},
        {"operations": ["random"]},
    ]
    for policy in allowed:
        env.tokens.create_token("child", [policy], issuer=issuer)
    refused = [
        {"keys": ["*"], "operations": ["encrypt"]},
        {"keys": ["app*"], "operations": ["encrypt"]},
        {"keys": ["db*"], "operations": ["encrypt"]},
        {"keys": ["other"], "operations": ["decrypt"]},
        {"keys": ["app-*"], "operations": ["sign"]},
        {"operations": ["sys"]},
        {"keys": ["app-1"], "operations": ["keys.export"]},
    ]
    for policy in refused:
        with pytest.raises(PermissionDeniedError, match="beyond its own policies"):
            env.tokens.create_token("child", [policy], issuer=issuer)


def test_only_a_hash_is_stored_and_nothing_shows_the_token(env: Env) -> None:
    admin = env.tokens.init_admin()
    user = env.tokens.create_token("user", [{"keys": ["k"], "operations": ["encrypt"]}])
    for issued in (admin, user):
        secret = secret_of(issued.token)
        found = env.store.get("token", issued.info.id)
        assert found is not None
        sealed_value = cbor2.dumps(found.value)
        assert secret not in sealed_value
        assert issued.token.encode() not in sealed_value
        assert found.value["secret_sha256"] == hashlib.sha256(secret).digest()
        principal = env.tokens.authenticate(issued.token)
        shown = " ".join(
            [
                repr(issued),
                str(issued),
                f"{issued}",
                repr(issued.info),
                repr(principal),
                str(principal),
                repr(env.tokens.read_token(issued.info.id)),
            ]
        )
        assert issued.info.id in repr(issued)
        assert issued.token not in shown
        assert issued.token[22:] not in shown
    raw_db = env.path.read_bytes() + (env.path.parent / "kms.sqlite-wal").read_bytes()
    for issued in (admin, user):
        assert issued.token.encode() not in raw_db
        assert secret_of(issued.token) not in raw_db
    p = env.tokens.authenticate(user.token)
    with pytest.raises(PermissionDeniedError) as denied:
        env.tokens.authorize(p, "decrypt", "k")
    assert user.token not in str(denied.value)


def test_a_tampered_token_record_is_an_integrity_error(env: Env) -> None:
    a = env.tokens.create_token("a", [{"keys": ["*"], "operations": ["encrypt"]}])
    b = env.tokens.create_token("b", [{"keys": ["*"], "operations": ["encrypt"]}])
    raw = sqlite3.connect(env.path)
    blob_b = raw.execute("SELECT blob FROM records WHERE id=?", (b.info.id,)).fetchone()[0]
    raw.execute("UPDATE records SET blob=? WHERE id=?", (blob_b, a.info.id))
    raw.commit()
    raw.close()
    with pytest.raises(IntegrityError):
        env.tokens.authenticate(a.token)
    assert env.tokens.authenticate(b.token).name == "b"


def test_principal_and_policy_values(env: Env) -> None:
    policy = TokenPolicy.of({"keys": ["a", "b*"], "operations": ["sign", "encrypt", "sign"]})
    assert policy.operations == ("encrypt", "sign")
    assert policy.to_dict() == {"keys": ["a", "b*"], "operations": ["encrypt", "sign"]}
    assert TokenPolicy.of(policy) == policy
    p = Principal("0" * 16, "x", (policy,))
    assert TokenService.allowed(p, "sign", "bcd")
    assert not TokenService.allowed(p, "sign", "c")
    with pytest.raises(EnclaveKMSError):
        TokenPolicy.of(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------ authority is a tree

MANAGE_ORDERS = [{"keys": ["orders*"], "operations": ["encrypt", "tokens.manage"]}]


def _principal(env: Env, issued: IssuedToken) -> Principal:
    return env.tokens.authenticate(issued.token)


def test_managers_see_and_revoke_only_their_own_lineage(env: Env) -> None:
    admin = env.tokens.init_admin()
    root = _principal(env, admin)
    manager = env.tokens.create_token("orders-manager", MANAGE_ORDERS, issuer=root)
    sibling = env.tokens.create_token("sibling", MANAGE_ORDERS, issuer=root)
    m = _principal(env, manager)
    child = env.tokens.create_token("child", MANAGE_ORDERS, issuer=m)
    grandchild = env.tokens.create_token("grandchild", MANAGE_ORDERS, issuer=_principal(env, child))
    assert child.info.issuer == manager.info.id
    assert grandchild.info.ancestors == (admin.info.id, manager.info.id, child.info.id)

    seen = {t.id for t in env.tokens.list_tokens(caller=m, limit=1000).tokens}
    assert seen == {manager.info.id, child.info.id, grandchild.info.id}
    # Paging never names a token outside the lineage, even one page at a time.
    after, paged = "", []
    while True:
        page = env.tokens.list_tokens(caller=m, after=after, limit=1)
        paged += [t.id for t in page.tokens]
        if page.next_after is None:
            break
        assert page.next_after in seen
        after = page.next_after
    assert set(paged) == seen
    for outside in (admin.info.id, sibling.info.id):
        with pytest.raises(NotFoundError):
            env.tokens.read_token(outside, m)
        with pytest.raises(NotFoundError):
            env.tokens.revoke_token(outside, m)  # a manager's child revoked the admin: no more
        with pytest.raises(NotFoundError):
            env.tokens.revoke_token(outside, _principal(env, child))
    assert env.tokens.read_token(grandchild.info.id, m).name == "grandchild"
    # The admin sees everything it issued, transitively.
    everything = {t.id for t in env.tokens.list_tokens(caller=root, limit=1000).tokens}
    assert everything >= seen | {sibling.info.id, admin.info.id}


def test_revocation_cascades(env: Env) -> None:
    root = _principal(env, env.tokens.init_admin())
    manager = env.tokens.create_token("m", MANAGE_ORDERS, issuer=root)
    child = env.tokens.create_token("c", MANAGE_ORDERS, issuer=_principal(env, manager))
    grandchild = env.tokens.create_token("g", MANAGE_ORDERS, issuer=_principal(env, child))
    env.tokens.revoke_token(manager.info.id, root)
    for gone in (manager, child, grandchild):
        with pytest.raises(UnauthenticatedError, match="revoked"):
            env.tokens.authenticate(gone.token)


def test_children_never_outlive_their_issuer(env: Env) -> None:
    root = _principal(env, env.tokens.init_admin())
    manager = env.tokens.create_token("m", MANAGE_ORDERS, ttl=timedelta(seconds=120), issuer=root)
    assert manager.info.expires_at == START + timedelta(seconds=120)
    m = _principal(env, manager)
    forever = env.tokens.create_token("forever", MANAGE_ORDERS, issuer=m)
    longer = env.tokens.create_token("longer", MANAGE_ORDERS, ttl=timedelta(days=9), issuer=m)
    shorter = env.tokens.create_token("shorter", MANAGE_ORDERS, ttl=timedelta(seconds=60), issuer=m)
    assert forever.info.expires_at == manager.info.expires_at
    assert longer.info.expires_at == manager.info.expires_at
    assert shorter.info.expires_at == START + timedelta(seconds=60)
    env.clock.now = START + timedelta(seconds=121)
    for gone in (manager, forever, longer, shorter):
        with pytest.raises(UnauthenticatedError, match="expired"):
            env.tokens.authenticate(gone.token)


def test_the_last_full_admin_cannot_be_revoked(env: Env) -> None:
    admin = env.tokens.init_admin()
    root = _principal(env, admin)
    with pytest.raises(ConflictError, match="last full admin"):
        env.tokens.revoke_token(admin.info.id, root)
    # A full admin that expires does not count; nor does one below a manager.
    env.tokens.create_token("temp-admin", [ADMIN_POLICY], ttl=timedelta(days=1), issuer=root)
    with pytest.raises(ConflictError, match="last full admin"):
        env.tokens.revoke_token(admin.info.id, root)
    # A root admin issuing a never-expiring full admin makes a peer root: the first admin
    # can then be rotated out, and the new one is the last.
    second = env.tokens.create_token("second", [ADMIN_POLICY], issuer=root)
    assert second.info.ancestors == ()
    env.tokens.revoke_token(admin.info.id, _principal(env, second))
    with pytest.raises(UnauthenticatedError, match="revoked"):
        env.tokens.authenticate(admin.token)
    s = _principal(env, second)
    assert s.root
    with pytest.raises(ConflictError, match="last full admin"):
        env.tokens.revoke_token(second.info.id, s)
    # A manager's child with tokens.manage never becomes a root, whatever it asks.
    m = _principal(env, env.tokens.create_token("m", MANAGE_ORDERS, issuer=s))
    with pytest.raises(PermissionDeniedError):
        env.tokens.create_token("escalate", [ADMIN_POLICY], issuer=m)


def test_two_concurrent_revocations_never_leave_no_root_admin(env: Env) -> None:
    first = env.tokens.init_admin()
    second = env.tokens.create_token("second", [ADMIN_POLICY], issuer=_principal(env, first))
    p1, p2 = _principal(env, first), _principal(env, second)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def revoke(target: str, by: Principal) -> None:
        barrier.wait()
        try:
            env.tokens.revoke_token(target, by)
            outcomes.append("revoked")
        except ConflictError:
            outcomes.append("refused")

    threads = [
        threading.Thread(target=revoke, args=(second.info.id, p1)),
        threading.Thread(target=revoke, args=(first.info.id, p2)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["refused", "revoked"]
