"""KMSService over RecordStore + SQLite: every key type, every operation, lifecycle, BYOK,
restart, hostile storage, and no secret in any repr or error message."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keytypes import KEY_TYPES, LoadedKey
from enclave_kms.enclave.keys.service import (
    DecryptItem,
    EncryptItem,
    KeyMetadata,
    KMSService,
)
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.errors import (
    ConflictError,
    CryptoOperationError,
    IntegrityError,
    InvalidRequestError,
    KeyStateError,
    KMSError,
    NotFoundError,
)
from enclave_kms.host.storage.sqlite import SQLiteStorage

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class World:
    path: Path
    root: bytes
    clock: FakeClock
    kms: KMSService
    storages: list[SQLiteStorage] = field(default_factory=list)

    def service(self, **kwargs: Any) -> KMSService:
        """A new KMSService over the same file and root key (a restart)."""
        storage = SQLiteStorage(self.path)
        self.storages.append(storage)
        return KMSService(RecordStore(storage, RecordCipher(self.root)), self.clock, **kwargs)


def _world(path: Path, **kwargs: Any) -> World:
    w = World(path, os.urandom(32), FakeClock(), None)  # type: ignore[arg-type]
    w.kms = w.service(**kwargs)
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One store with a key of every type (the module's only RSA-4096 key and wrapping key)."""
    w = _world(tmp_path_factory.mktemp("kms") / "kms.sqlite")
    for name in KEY_TYPES:
        w.kms.create_key(f"k-{name}", name)
    yield w
    for s in w.storages:
        s.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[World]:
    w = _world(tmp_path / "kms.sqlite")
    yield w
    for s in w.storages:
        s.close()


def wrap(wrapping_pem: str, material: bytes, *, hybrid: bool) -> bytes:
    """The client side of BYOK, as documented in KMSService.import_key."""
    pub = serialization.load_pem_public_key(wrapping_pem.encode())
    assert isinstance(pub, rsa.RSAPublicKey)
    if not hybrid:
        return pub.encrypt(material, OAEP)
    ephemeral = os.urandom(32)
    return pub.encrypt(ephemeral, OAEP) + aes_key_wrap_with_padding(ephemeral, material)


def untag(value: str) -> tuple[int, bytes]:
    prefix, version, b64 = value.split(":")
    assert prefix == "ekms"
    return int(version[1:]), base64.b64decode(b64, validate=True)


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def verify_independently(
    pem: str, sig: bytes, message: bytes, algorithm: str | None, hash_name: str | None
) -> None:
    pub = serialization.load_pem_public_key(pem.encode())
    h = keytypes.HASHES[hash_name]() if hash_name else None
    if isinstance(pub, rsa.RSAPublicKey):
        assert h is not None
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
            if algorithm in (None, "pss")
            else padding.PKCS1v15()
        )
        pub.verify(sig, message, pad, h)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        assert h is not None
        pub.verify(sig, message, ec.ECDSA(h))
    else:
        assert isinstance(pub, ed25519.Ed25519PublicKey)
        pub.verify(sig, message)


SIGN_OPTIONS: dict[str, list[tuple[str | None, str | None]]] = {
    "rsa": [("pss", "sha256"), ("pkcs1v15", "sha256"), ("pss", "sha512"), ("pkcs1v15", "sha384")],
    "ec": [(None, None), ("ecdsa", "sha512")],
    "ed25519": [(None, None)],
}


# --------------------------------------------------------------------------- every type, every op


@pytest.mark.parametrize("type_name", list(KEY_TYPES))
def test_every_key_type_and_its_operations(world: World, type_name: str) -> None:
    kms, name, kt = world.kms, f"k-{type_name}", KEY_TYPES[type_name]
    meta = kms.read_key(name)
    assert (meta.type, meta.latest_version, meta.min_decryption_version) == (type_name, 1, 1)
    assert meta.enabled
    assert not meta.exportable
    assert meta.deletion_scheduled_at is None
    assert set(meta.operations) == kt.operations
    assert meta.created == START
    assert (meta.public_key_pem is not None) == kt.asymmetric

    if kt.family == "aes":
        ct = kms.encrypt(name, b"hello")
        assert ct.startswith("ekms:v1:")
        assert kms.decrypt(name, ct) == b"hello"
        assert kms.encrypt(name, b"hello") != ct  # fresh nonce every time
        ct_aad = kms.encrypt(name, b"", associated_data=b"ctx")
        assert kms.decrypt(name, ct_aad, associated_data=b"ctx") == b""
        assert kms.decrypt(name, kms.rewrap(name, ct)) == b"hello"
        dk = kms.generate_data_key(name)
        assert dk.plaintext is not None
        assert len(dk.plaintext) == 32
        assert kms.decrypt(name, dk.ciphertext) == dk.plaintext
        wrapped_only = kms.generate_data_key(name, include_plaintext=False)
        assert wrapped_only.plaintext is None
        assert len(kms.decrypt(name, wrapped_only.ciphertext)) == 32
    elif kt.family == "hmac":
        mac = kms.hmac(name, b"data")
        assert mac.startswith("ekms:v1:")
        assert len(untag(mac)[1]) == 32
        assert kms.verify_hmac(name, b"data", mac)
        assert not kms.verify_hmac(name, b"datA", mac)
        assert kms.hmac(name, b"data") == mac  # deterministic
    else:
        assert meta.public_key_pem is not None
        for algorithm, hash_name in SIGN_OPTIONS[kt.family]:
            sig = kms.sign(name, b"msg", signature_algorithm=algorithm, hash_algorithm=hash_name)
            version, raw = untag(sig)
            assert version == 1
            opts: dict[str, Any] = {"signature_algorithm": algorithm, "hash_algorithm": hash_name}
            assert kms.verify(name, b"msg", sig, **opts)
            assert not kms.verify(name, b"msh", sig, **opts)
            used_hash = hash_name or ("sha384" if type_name == "ec-p384" else "sha256")
            if kt.family == "ed25519":
                used_hash = ""
            verify_independently(meta.public_key_pem, raw, b"msg", algorithm, used_hash or None)
        if kt.family != "ed25519":
            default_hash = "sha384" if type_name == "ec-p384" else "sha256"
            digest = hashlib.new(default_hash, b"msg").digest()
            pre = kms.sign(name, digest, prehashed=True)
            assert kms.verify(name, b"msg", pre)
            assert kms.verify(name, digest, kms.sign(name, b"msg"), prehashed=True)
            with pytest.raises(InvalidRequestError, match="digest"):
                kms.sign(name, b"short", prehashed=True)

    for op, call in (
        ("encrypt", lambda: kms.encrypt(name, b"x")),
        ("decrypt", lambda: kms.decrypt(name, "ekms:v1:" + "A" * 40)),
        ("datakey", lambda: kms.generate_data_key(name)),
        ("sign", lambda: kms.sign(name, b"x")),
        ("verify", lambda: kms.verify(name, b"x", "ekms:v1:AAAA")),
        ("hmac", lambda: kms.hmac(name, b"x")),
    ):
        if op not in kt.operations:
            with pytest.raises(KeyStateError, match=f"does not support {op}"):
                call()


def test_signing_options_that_do_not_apply_are_refused(world: World) -> None:
    kms = world.kms
    with pytest.raises(InvalidRequestError):
        kms.sign("k-ed25519", b"m", prehashed=True)
    with pytest.raises(InvalidRequestError):
        kms.sign("k-ec-p256", b"m", signature_algorithm="pss")
    with pytest.raises(InvalidRequestError):
        kms.sign("k-rsa-2048", b"m", hash_algorithm="sha1")
    with pytest.raises(InvalidRequestError):
        kms.sign("k-rsa-2048", b"m", prehashed="yes")  # type: ignore[arg-type]
    # Signing with one scheme and verifying with another is simply not valid.
    sig = kms.sign("k-rsa-2048", b"m", signature_algorithm="pkcs1v15")
    assert not kms.verify("k-rsa-2048", b"m", sig)
    # A signature from another key does not verify; a too-new version is not ours.
    other = kms.sign("k-ec-p256", b"m")
    assert not kms.verify("k-ec-p384", b"m", other)
    assert not kms.verify("k-ec-p256", b"m", "ekms:v9:" + other.split(":")[2])
    for bad in ("", "ekms:v1", "ekms:v0:AAAA", "ekms:v1:AA=A", "sig"):
        with pytest.raises(InvalidRequestError):
            kms.verify("k-ec-p256", b"m", bad)


def test_random_and_tutorial_data_keys(world: World) -> None:
    kms = world.kms
    assert len(kms.random_bytes(1)) == 1
    assert len(kms.random_bytes(1024)) == 1024
    assert kms.random_bytes(32) != kms.random_bytes(32)
    for bad in (0, 1025, -1, True, "5", 2.0):
        with pytest.raises(InvalidRequestError, match=r"1\.\.1024"):
            kms.random_bytes(bad)  # type: ignore[arg-type]
    aes = base64.b64decode(kms.generate_aes_key(), validate=True)
    assert len(aes) == 32
    assert aes != base64.b64decode(kms.generate_aes_key())
    pair = kms.generate_rsa_key_pair()
    private = serialization.load_pem_private_key(pair.private_key_pem.encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    assert private.public_key().public_numbers().e == 65537
    assert (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        == pair.public_key_pem
    )
    assert "PRIVATE" not in repr(pair)


# --------------------------------------------------------------------------- ciphertext format


def test_ciphertext_format_is_the_documented_one(fresh: World) -> None:
    """A client holding the material can open the ciphertext with the documented AAD."""
    kms = fresh.kms
    kms.create_key("exp", exportable=True)
    material = kms.export_key("exp").material
    version, raw = untag(kms.encrypt("exp", b"payload", associated_data=b"ctx"))
    aad = cbor2.dumps(["enclave-kms/encrypt/v1", "exp", version, b"ctx"], canonical=True)
    assert AESGCM(material).decrypt(raw[:12], raw[12:], aad) == b"payload"
    assert len(raw) == 12 + len(b"payload") + 16


def test_foreign_altered_and_malformed_ciphertext(world: World) -> None:
    kms = world.kms
    same = os.urandom(32)
    pem = kms.wrapping_key().public_key_pem
    kms.import_key("fa", "aes256-gcm", wrap(pem, same, hybrid=False))
    kms.import_key("fb", "aes256-gcm", wrap(pem, same, hybrid=True))
    ct = kms.encrypt("fa", b"secret", associated_data=b"ctx")
    # Same material, other key name: the AAD binds the name, so it does not open.
    with pytest.raises(CryptoOperationError, match="'fb' version 1"):
        kms.decrypt("fb", ct, associated_data=b"ctx")
    with pytest.raises(CryptoOperationError):
        kms.decrypt("fa", ct)  # associated data missing
    with pytest.raises(CryptoOperationError):
        kms.decrypt("fa", ct, associated_data=b"cty")
    version, raw = untag(ct)
    for i in (0, 11, 12, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[i] ^= 1
        altered = f"ekms:v{version}:{base64.b64encode(bytes(flipped)).decode()}"
        with pytest.raises(CryptoOperationError):
            kms.decrypt("fa", altered, associated_data=b"ctx")
    with pytest.raises(CryptoOperationError, match="no version 2"):
        kms.decrypt("fa", ct.replace("ekms:v1:", "ekms:v2:"), associated_data=b"ctx")
    for bad in (
        "",
        "ekms:v1:",
        "ekms:v0:" + raw.hex(),
        "ekms:v01:AAAA",
        "ekms:x1:AAAA",
        "ekms:v1:AAA",  # bad padding
        "ekms:v1:AAAA AAAA",
        "ekms:v1:" + base64.b64encode(b"x" * 27).decode(),  # shorter than nonce + tag
        "EKMS:v1:AAAA",
        "ekms:v1:AAAA\n",
    ):
        with pytest.raises(InvalidRequestError):
            kms.decrypt("fa", bad)
    with pytest.raises(InvalidRequestError):
        kms.decrypt("fa", b"ekms:v1:AAAA")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        kms.encrypt("fa", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        kms.encrypt("fa", b"x", associated_data="ctx")  # type: ignore[arg-type]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.one_of(st.text(max_size=80), st.from_regex(r"ekms:v[0-9]{1,3}:[A-Za-z0-9+/=]{0,60}"))
)
def test_arbitrary_ciphertext_strings_fail_typed(world: World, text: str) -> None:
    """Whatever a client sends as ciphertext or signature, only typed KMS errors come back."""
    with pytest.raises(KMSError) as info:
        world.kms.decrypt("k-aes256-gcm", text)
    assert isinstance(info.value, InvalidRequestError | CryptoOperationError | KeyStateError)
    with contextlib.suppress(InvalidRequestError):
        assert world.kms.verify("k-ec-p256", b"m", text) is False


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    "name", ["", ".a", "-a", "a" * 129, "a\n", "a/b", "a b", "ä", "a:b", None, 7]
)
def test_bad_key_names(fresh: World, name: Any) -> None:
    with pytest.raises(InvalidRequestError, match="key name"):
        fresh.kms.create_key(name)
    with pytest.raises(InvalidRequestError, match="key name"):
        fresh.kms.read_key(name)


def test_create_read_list_and_conflicts(fresh: World) -> None:
    kms = fresh.kms
    assert kms.create_key("a" * 128).name == "a" * 128
    kms.create_key("A.b_c-9", "ec-p256")
    with pytest.raises(ConflictError, match="already exists"):
        kms.create_key("A.b_c-9")
    with pytest.raises(InvalidRequestError, match="unknown key type"):
        kms.create_key("x", "des")
    with pytest.raises(InvalidRequestError, match="exportable"):
        kms.create_key("x", exportable="yes")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="'missing'"):
        kms.read_key("missing")
    with pytest.raises(NotFoundError):
        kms.encrypt("missing", b"x")
    for i in range(5):
        kms.create_key(f"p{i}")
    page = kms.list_keys(after="p", limit=2)
    assert [k.name for k in page.keys] == ["p0", "p1"]
    assert page.next_after == "p1"
    names = [k.name for k in page.keys]
    cursor: str | None = page.next_after
    while cursor is not None:
        page = kms.list_keys(after=cursor, limit=2)
        names += [k.name for k in page.keys]
        cursor = page.next_after
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    everything = kms.list_keys()
    assert [k.name for k in everything.keys] == ["A.b_c-9", "a" * 128, "p0", "p1", "p2", "p3", "p4"]
    assert everything.next_after is None
    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": True}, {"after": 5}):
        with pytest.raises(InvalidRequestError):
            kms.list_keys(**bad)


def test_rotation_keeps_old_versions_working(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("aes")
    kms.create_key("ec", "ec-p256")
    kms.create_key("mac", "hmac-sha256")
    ct1 = kms.encrypt("aes", b"one", associated_data=b"a")
    sig1 = kms.sign("ec", b"m")
    mac1 = kms.hmac("mac", b"m")
    pem1 = kms.read_key("ec").public_key_pem
    fresh.clock.advance(timedelta(hours=1))
    for name in ("aes", "ec", "mac"):
        kms.rotate_key(name)
        meta = kms.rotate_key(name)
        assert meta.latest_version == 3
        assert [v.version for v in meta.versions] == [1, 2, 3]
        assert meta.versions[2].created == START + timedelta(hours=1)
    assert kms.decrypt("aes", ct1, associated_data=b"a") == b"one"
    ct3 = kms.encrypt("aes", b"three")
    assert ct3.startswith("ekms:v3:")
    rewrapped = kms.rewrap("aes", ct1, associated_data=b"a")
    assert rewrapped.startswith("ekms:v3:")
    assert kms.decrypt("aes", rewrapped, associated_data=b"a") == b"one"
    assert kms.verify("ec", b"m", sig1)
    assert kms.sign("ec", b"m").startswith("ekms:v3:")
    meta = kms.read_key("ec")
    assert meta.versions[0].public_key_pem == pem1
    assert meta.public_key_pem != pem1
    assert kms.verify_hmac("mac", b"m", mac1)
    assert kms.hmac("mac", b"m").startswith("ekms:v3:")
    assert kms.hmac("mac", b"m") != mac1


def test_min_decryption_version(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("aes")
    kms.create_key("ed", "ed25519")
    kms.create_key("mac", "hmac-sha256")
    old = kms.encrypt("aes", b"old")
    old_sig, old_mac = kms.sign("ed", b"m"), kms.hmac("mac", b"m")
    for name in ("aes", "ed", "mac"):
        kms.rotate_key(name)
        assert kms.configure_key(name, min_decryption_version=2).min_decryption_version == 2
    with pytest.raises(KeyStateError, match="below min_decryption_version 2"):
        kms.decrypt("aes", old)
    with pytest.raises(KeyStateError):
        kms.rewrap("aes", old)
    with pytest.raises(KeyStateError):
        kms.verify("ed", b"m", old_sig)
    with pytest.raises(KeyStateError):
        kms.verify_hmac("mac", b"m", old_mac)
    new = kms.encrypt("aes", b"new")
    assert kms.decrypt("aes", new) == b"new"
    with pytest.raises(InvalidRequestError, match="exceeds the latest version 2"):
        kms.configure_key("aes", min_decryption_version=3)
    for bad in (0, -1, True, "2"):
        with pytest.raises(InvalidRequestError):
            kms.configure_key("aes", min_decryption_version=bad)  # type: ignore[arg-type]
    kms.configure_key("aes", min_decryption_version=1)  # lowering again is allowed
    assert kms.decrypt("aes", old) == b"old"


def test_disable_and_enable(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("aes", exportable=True)
    ct = kms.encrypt("aes", b"x")
    meta = kms.configure_key("aes", enabled=False)
    assert not meta.enabled
    for call in (
        lambda: kms.encrypt("aes", b"x"),
        lambda: kms.decrypt("aes", ct),
        lambda: kms.rewrap("aes", ct),
        lambda: kms.generate_data_key("aes"),
        lambda: kms.encrypt_batch("aes", [EncryptItem(b"x")]),
        lambda: kms.export_key("aes"),
    ):
        with pytest.raises(KeyStateError, match="disabled"):
            call()
    assert not kms.read_key("aes").enabled
    assert kms.rotate_key("aes").latest_version == 2  # rotation of a disabled key is allowed
    with pytest.raises(InvalidRequestError):
        kms.configure_key("aes", enabled="no")  # type: ignore[arg-type]
    kms.configure_key("aes", enabled=True)
    assert kms.decrypt("aes", ct) == b"x"


def test_scheduled_deletion_cancel_and_purge(fresh: World) -> None:
    kms, clock = fresh.kms, fresh.clock
    kms.create_key("doomed")
    kms.create_key("kept")
    ct = kms.encrypt("doomed", b"x")
    meta = kms.schedule_deletion("doomed")
    assert meta.deletion_scheduled_at == START + timedelta(days=7)
    for call in (
        lambda: kms.encrypt("doomed", b"x"),
        lambda: kms.decrypt("doomed", ct),
        lambda: kms.rotate_key("doomed"),
        lambda: kms.configure_key("doomed", enabled=False),
    ):
        with pytest.raises(KeyStateError, match="scheduled for deletion"):
            call()
    with pytest.raises(ConflictError, match="already scheduled"):
        kms.schedule_deletion("doomed")
    assert kms.read_key("doomed").deletion_scheduled_at is not None
    assert kms.cancel_deletion("doomed").deletion_scheduled_at is None
    with pytest.raises(ConflictError, match="not scheduled"):
        kms.cancel_deletion("doomed")
    assert kms.decrypt("doomed", ct) == b"x"

    for bad in (timedelta(hours=23), timedelta(days=31), 7):
        with pytest.raises(InvalidRequestError, match="waiting period"):
            kms.schedule_deletion("doomed", waiting_period=bad)  # type: ignore[arg-type]
    kms.schedule_deletion("doomed", waiting_period=timedelta(days=1))
    clock.advance(timedelta(hours=23, minutes=59))
    assert kms.read_key("doomed").name == "doomed"  # not yet
    clock.advance(timedelta(minutes=1))
    assert [k.name for k in kms.list_keys().keys] == ["kept"]  # listing purges
    with pytest.raises(NotFoundError):
        kms.read_key("doomed")
    with pytest.raises(NotFoundError):
        kms.cancel_deletion("doomed")
    # The name is free again, and the new key has nothing to do with the old ciphertext.
    kms.create_key("doomed")
    with pytest.raises(CryptoOperationError):
        kms.decrypt("doomed", ct)


def test_purge_by_access_sweep_and_test_override(fresh: World) -> None:
    kms = fresh.service(min_deletion_wait=timedelta(seconds=1))
    for name in ("a", "b", "c"):
        kms.create_key(name)
    kms.schedule_deletion("a", waiting_period=timedelta(seconds=1))
    kms.schedule_deletion("b", waiting_period=timedelta(days=2))
    fresh.clock.advance(timedelta(seconds=1))
    with pytest.raises(NotFoundError):
        kms.encrypt("a", b"x")  # access purges
    fresh.clock.advance(timedelta(days=2))
    assert kms.purge_due_keys() == 1
    assert [k.name for k in kms.list_keys().keys] == ["c"]
    with pytest.raises(InvalidRequestError):
        fresh.kms.schedule_deletion("c", waiting_period=timedelta(seconds=1))  # default minimum


def test_export_rules(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("sealed")
    with pytest.raises(KeyStateError, match="not exportable"):
        kms.export_key("sealed")
    kms.create_key("ec", "ec-p384", exportable=True)
    kms.rotate_key("ec")
    meta = kms.read_key("ec")
    assert meta.exportable
    for version in (1, 2):
        exported = kms.export_key("ec", version=version)
        key = serialization.load_der_private_key(exported.material, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert pem.decode() == meta.versions[version - 1].public_key_pem
    assert kms.export_key("ec").version == 2
    for bad in (0, 3, True):
        with pytest.raises(InvalidRequestError, match="no version"):
            kms.export_key("ec", version=bad)


# --------------------------------------------------------------------------- BYOK


def test_wrapping_key_is_rsa_4096_and_stable(world: World) -> None:
    first = world.kms.wrapping_key()
    pub = serialization.load_pem_public_key(first.public_key_pem.encode())
    assert isinstance(pub, rsa.RSAPublicKey)
    assert pub.key_size == 4096
    assert world.kms.wrapping_key() == first
    assert world.service().wrapping_key() == first  # read back from the sealed record


@pytest.mark.parametrize("hybrid", [False, True])
def test_byok_aes_and_hmac(world: World, hybrid: bool) -> None:
    kms = world.kms
    pem = kms.wrapping_key().public_key_pem
    material = os.urandom(32)
    name = f"byok-aes-{hybrid}"
    meta = kms.import_key(name, "aes256-gcm", wrap(pem, material, hybrid=hybrid))
    assert meta.versions[0].imported
    assert not meta.exportable
    version, raw = untag(kms.encrypt(name, b"payload"))
    aad = cbor2.dumps(["enclave-kms/encrypt/v1", name, version, b""], canonical=True)
    assert AESGCM(material).decrypt(raw[:12], raw[12:], aad) == b"payload"
    mac_key = os.urandom(48)
    kms.import_key(f"byok-mac-{hybrid}", "hmac-sha256", wrap(pem, mac_key, hybrid=hybrid))
    expected = hmac.new(mac_key, b"m", hashlib.sha256).digest()
    assert untag(kms.hmac(f"byok-mac-{hybrid}", b"m"))[1] == expected


def test_byok_rsa_and_ec(world: World) -> None:
    kms = world.kms
    pem = kms.wrapping_key().public_key_pem
    client_rsa = rsa.generate_private_key(65537, 2048)
    der = pkcs8(client_rsa)
    assert len(der) > 446  # too big for RSA-OAEP alone: the hybrid scheme is required
    meta = kms.import_key("byok-rsa", "rsa-2048", wrap(pem, der, hybrid=True), exportable=True)
    assert meta.exportable
    sig = untag(kms.sign("byok-rsa", b"m", signature_algorithm="pkcs1v15"))[1]
    client_rsa.public_key().verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())
    assert kms.export_key("byok-rsa").material == der

    client_ec = ec.generate_private_key(ec.SECP256R1())
    for hybrid in (False, True):
        name = f"byok-ec-{hybrid}"
        kms.import_key(name, "ec-p256", wrap(pem, pkcs8(client_ec), hybrid=hybrid))
        raw = untag(kms.sign(name, b"m"))[1]
        client_ec.public_key().verify(raw, b"m", ec.ECDSA(hashes.SHA256()))

    # BYOK rotation: a second imported version.
    client_ec2 = ec.generate_private_key(ec.SECP256R1())
    meta = kms.import_key_version("byok-ec-True", wrap(pem, pkcs8(client_ec2), hybrid=True))
    assert meta.latest_version == 2
    assert meta.versions[1].imported
    raw = untag(kms.sign("byok-ec-True", b"m"))[1]
    client_ec2.public_key().verify(raw, b"m", ec.ECDSA(hashes.SHA256()))


def test_one_rule_for_changes_disabled_manages_scheduled_freezes(world: World) -> None:
    """Issue 16: a disabled key takes every change (rotate, imported version, configure); a
    key scheduled for deletion takes none of them, and writes nothing, until cancelled."""
    kms = world.kms
    pem = kms.wrapping_key().public_key_pem
    kms.import_key("rule-aes", "aes256-gcm", wrap(pem, os.urandom(32), hybrid=False))
    kms.configure_key("rule-aes", enabled=False)
    assert kms.rotate_key("rule-aes").latest_version == 2
    assert (
        kms.import_key_version("rule-aes", wrap(pem, os.urandom(32), hybrid=True))
        .versions[2]
        .imported
    )
    assert kms.configure_key("rule-aes", min_decryption_version=2).min_decryption_version == 2
    kms.schedule_deletion("rule-aes")
    before = kms.read_key("rule-aes")
    changes: list[Callable[[], KeyMetadata]] = [
        lambda: kms.rotate_key("rule-aes"),
        lambda: kms.import_key_version("rule-aes", wrap(pem, os.urandom(32), hybrid=False)),
        lambda: kms.configure_key("rule-aes", enabled=True),
        lambda: kms.configure_key("rule-aes", min_decryption_version=3),
    ]
    for change in changes:
        with pytest.raises(KeyStateError, match="scheduled for deletion; cancel it first"):
            change()
    assert kms.read_key("rule-aes") == before
    kms.cancel_deletion("rule-aes")
    assert kms.rotate_key("rule-aes").latest_version == 4


def test_byok_refusals(world: World) -> None:
    kms = world.kms
    pem = kms.wrapping_key().public_key_pem
    ec_der = pkcs8(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidRequestError, match="not an RSA key"):
        kms.import_key("bad", "rsa-2048", wrap(pem, ec_der, hybrid=True))
    with pytest.raises(InvalidRequestError, match="secp256r1"):
        kms.import_key("bad", "ec-p384", wrap(pem, ec_der, hybrid=False))
    with pytest.raises(InvalidRequestError, match="32 bytes"):
        kms.import_key("bad", "aes256-gcm", wrap(pem, os.urandom(16), hybrid=False))
    # Material a caller chose never joins a key generated in the enclave (it could then
    # decrypt what others encrypt under it afterwards), whatever the material.
    with pytest.raises(KeyStateError, match="generated in the enclave"):
        kms.import_key_version("k-ec-p256", wrap(pem, ec_der, hybrid=True))
    kms.import_key("imported-ec", "ec-p256", wrap(pem, ec_der, hybrid=True))
    with pytest.raises(InvalidRequestError, match="not an EC key"):
        kms.import_key_version(
            "imported-ec", wrap(pem, pkcs8(ed25519.Ed25519PrivateKey.generate()), hybrid=True)
        )
    kms.import_key_version(
        "imported-ec", wrap(pem, pkcs8(ec.generate_private_key(ec.SECP256R1())), hybrid=True)
    )
    good = wrap(pem, os.urandom(32), hybrid=True)
    for position in (5, 530):  # inside the RSA-OAEP part, inside the AES-KWP part
        altered = bytearray(good)
        altered[position] ^= 1
        with pytest.raises(CryptoOperationError):
            kms.import_key("bad", "aes256-gcm", bytes(altered))
    with pytest.raises(InvalidRequestError, match="shorter than 512"):
        kms.import_key("bad", "aes256-gcm", good[:511])
    with pytest.raises(InvalidRequestError, match="bytes"):
        kms.import_key("bad", "aes256-gcm", good.hex())  # type: ignore[arg-type]
    # Wrapped to some other key (here: random bytes of the right size): does not decrypt.
    with pytest.raises(CryptoOperationError, match="wrapping key"):
        kms.import_key("bad", "aes256-gcm", os.urandom(512))
    # Hybrid with a non-256-bit ephemeral key.
    pub = serialization.load_pem_public_key(pem.encode())
    assert isinstance(pub, rsa.RSAPublicKey)
    short = os.urandom(16)
    with pytest.raises(CryptoOperationError, match="32-byte"):
        kms.import_key(
            "bad",
            "aes256-gcm",
            pub.encrypt(short, OAEP) + aes_key_wrap_with_padding(short, os.urandom(32)),
        )
    with pytest.raises(ConflictError):
        kms.import_key("k-aes256-gcm", "aes256-gcm", wrap(pem, os.urandom(32), hybrid=False))
    with pytest.raises(NotFoundError):
        kms.read_key("bad")


# --------------------------------------------------------------------------- batch


def test_batch_with_per_item_errors(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("aes")
    kms.create_key("other")
    results = kms.encrypt_batch(
        "aes",
        [
            EncryptItem(b"one"),
            EncryptItem(b"two", associated_data=b"ctx"),
            EncryptItem("three"),  # type: ignore[arg-type]
            DecryptItem("ekms:v1:AAAA"),  # type: ignore[list-item]
        ],
    )
    assert [r.ok for r in results] == [True, True, False, False]
    assert results[2].error is not None
    assert results[2].error.code == "invalid_request"
    assert results[3].error is not None
    assert "EncryptItem" in results[3].error.message
    ct1, ct2 = results[0].value, results[1].value
    assert isinstance(ct1, str)
    assert isinstance(ct2, str)
    foreign = kms.encrypt("other", b"x")
    raw = bytearray(base64.b64decode(ct1.split(":")[2]))
    raw[-1] ^= 0x01  # one bit of the GCM tag
    flipped = "ekms:v1:" + base64.b64encode(bytes(raw)).decode()
    decrypted = kms.decrypt_batch(
        "aes",
        [
            DecryptItem(ct1),
            DecryptItem(ct2, associated_data=b"ctx"),
            DecryptItem(ct2),
            DecryptItem(foreign),
            DecryptItem(flipped),
            DecryptItem("nonsense"),
        ],
    )
    assert [r.value for r in decrypted[:2]] == [b"one", b"two"]
    codes = [r.error.code if r.error else None for r in decrypted]
    assert codes == [
        None,
        None,
        "crypto_failed",
        "crypto_failed",
        "crypto_failed",
        "invalid_request",
    ]
    kms.rotate_key("aes")
    kms.configure_key("aes", min_decryption_version=2)
    [item] = kms.decrypt_batch("aes", [DecryptItem(ct1)])
    assert item.error is not None
    assert item.error.code == "key_state"
    for bad in ([], [EncryptItem(b"x")] * 1001, EncryptItem(b"x"), b"xx"):
        with pytest.raises(InvalidRequestError, match="batch"):
            kms.encrypt_batch("aes", bad)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        kms.encrypt_batch("nope", [EncryptItem(b"x")])
    kms.configure_key("other", enabled=False)
    with pytest.raises(KeyStateError):  # a key-level failure fails the whole batch
        kms.decrypt_batch("other", [DecryptItem(foreign)])


# --------------------------------------------------------------------------- concurrency, cache


def test_concurrent_rotations_all_land(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("busy")
    ciphertexts: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                kms.rotate_key("busy")
                ct = kms.encrypt("busy", b"v")
                with lock:
                    ciphertexts.append(ct)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert kms.read_key("busy").latest_version == 1 + 6 * 3
    assert all(kms.decrypt("busy", ct) == b"v" for ct in ciphertexts)


def test_concurrent_creates_of_one_name(fresh: World) -> None:
    kms = fresh.kms
    outcomes: list[str] = []

    def worker() -> None:
        try:
            kms.create_key("race")
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(outcomes) == ["conflict"] * 4 + ["ok"]


def test_loaded_keys_are_cached(fresh: World, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real = keytypes.load_key

    def counting(kt: keytypes.KeyType, material: bytes) -> LoadedKey:
        loads.append(kt.name)
        return real(kt, material)

    monkeypatch.setattr(keytypes, "load_key", counting)
    kms = fresh.kms
    kms.create_key("rsa", "rsa-2048")
    for _ in range(3):
        kms.sign("rsa", b"m")
    assert loads == []  # primed at creation: never reloaded
    restarted = fresh.service()
    for _ in range(3):
        restarted.sign("rsa", b"m")
    assert loads == ["rsa-2048"]  # loaded once after a restart
    small = fresh.service(cache_size=1)
    small.create_key("ed", "ed25519")
    small.sign("rsa", b"m")
    small.sign("ed", b"m")
    small.sign("rsa", b"m")
    assert loads == ["rsa-2048", "rsa-2048", "ed25519", "rsa-2048"]  # bounded: evicted


# --------------------------------------------------------------------------- hostile host, restart


def test_a_tampered_record_fails_only_that_key(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("a")
    kms.create_key("b")
    ct_b = kms.encrypt("b", b"x")
    raw = sqlite3.connect(fresh.path)
    blob_b = raw.execute("SELECT blob FROM records WHERE kind='key' AND id='b'").fetchone()[0]
    raw.execute("UPDATE records SET blob=? WHERE kind='key' AND id='a'", (blob_b,))
    raw.commit()
    raw.close()
    with pytest.raises(IntegrityError, match="key/a"):
        kms.encrypt("a", b"x")
    page = kms.list_keys()
    assert [k.name for k in page.keys] == ["b"]
    assert page.unreadable == ("a",)
    assert kms.decrypt("b", ct_b) == b"x"


def test_restart_every_key_still_works(world: World) -> None:
    kms = world.kms
    before: dict[str, str] = {}
    for type_name, kt in KEY_TYPES.items():
        name = f"k-{type_name}"
        if kt.family == "aes":
            before[name] = kms.encrypt(name, b"survives", associated_data=b"r")
        elif kt.family == "hmac":
            before[name] = kms.hmac(name, b"survives")
        else:
            before[name] = kms.sign(name, b"survives")
    pem = kms.wrapping_key().public_key_pem
    restarted = world.service()
    assert restarted.wrapping_key().public_key_pem == pem
    listed = {k.name for k in restarted.list_keys().keys}
    assert {f"k-{t}" for t in KEY_TYPES} <= listed
    for type_name, kt in KEY_TYPES.items():
        name = f"k-{type_name}"
        assert restarted.read_key(name) == kms.read_key(name)
        if kt.family == "aes":
            assert restarted.decrypt(name, before[name], associated_data=b"r") == b"survives"
            assert restarted.decrypt(name, restarted.encrypt(name, b"new")) == b"new"
        elif kt.family == "hmac":
            assert restarted.verify_hmac(name, b"survives", before[name])
            assert restarted.hmac(name, b"survives") == before[name]
        else:
            assert restarted.verify(name, b"survives", before[name])
            assert kms.verify(name, b"again", restarted.sign(name, b"again"))
    # A different storage root key opens nothing.
    storage = SQLiteStorage(world.path)
    world.storages.append(storage)
    stranger = KMSService(RecordStore(storage, RecordCipher(os.urandom(32))), world.clock)
    with pytest.raises(IntegrityError):
        stranger.read_key("k-aes256-gcm")


# --------------------------------------------------------------------------- no secrets anywhere


def test_no_secret_in_any_repr_or_error_message(fresh: World) -> None:
    kms = fresh.kms
    plaintext = b"TOP-SECRET-PLAINTEXT-4f1c2e"
    kms.create_key("aes", exportable=True)
    kms.create_key("ec", "ec-p256", exportable=True)
    kms.create_key("mac", "hmac-sha256", exportable=True)
    secrets = [plaintext]
    for name in ("aes", "ec", "mac"):
        secrets.append(kms.export_key(name).material)
    ct = kms.encrypt("aes", plaintext)
    dk = kms.generate_data_key("aes")
    assert dk.plaintext is not None
    secrets.append(dk.plaintext)
    pair = kms.generate_rsa_key_pair()
    secrets.append(pair.private_key_pem.encode())

    texts = [
        repr(x)
        for x in (
            dk,
            pair,
            kms.export_key("aes"),
            kms.export_key("ec"),
            EncryptItem(plaintext),
            kms.decrypt_batch("aes", [DecryptItem(ct)]),
            kms.encrypt_batch("aes", [EncryptItem(plaintext)]),
            kms.read_key("aes"),
            kms.list_keys(),
        )
    ]
    texts += [str(x) for x in (dk, pair)]
    version, raw = untag(ct)
    altered = f"ekms:v{version}:{base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 1])).decode()}"
    failing: list[Callable[[], object]] = [
        lambda: kms.decrypt("aes", altered),
        lambda: kms.decrypt("aes", ct, associated_data=plaintext),
        lambda: kms.decrypt("ec", ct),
        lambda: kms.sign("aes", plaintext),
        lambda: kms.sign("ec", plaintext, prehashed=True),
        lambda: kms.import_key("x", "aes256-gcm", secrets[1]),
        lambda: kms.decrypt("aes", plaintext.decode()),
        lambda: kms.create_key(plaintext.decode() + "/"),
    ]
    for call in failing:
        with pytest.raises(KMSError) as info:
            call()
        texts += [str(info.value), repr(info.value), info.value.message]
    kms.configure_key("aes", enabled=False)
    with pytest.raises(KeyStateError) as disabled:
        kms.encrypt("aes", plaintext)
    texts.append(str(disabled.value))

    haystack = "\n".join(texts)
    for secret in secrets:
        for form in (
            secret.hex(),
            base64.b64encode(secret).decode(),
            secret.decode("latin-1"),
            repr(secret),
        ):
            assert form[:24] not in haystack
    # And the storage file holds none of it either (records are sealed).
    stored = fresh.path.read_bytes() + (fresh.path.parent / "kms.sqlite-wal").read_bytes()
    for secret in secrets[:4]:
        assert secret not in stored


def test_a_wrapping_key_record_of_the_wrong_kind_is_refused(fresh: World) -> None:
    storage = SQLiteStorage(fresh.path)
    fresh.storages.append(storage)
    store = RecordStore(storage, RecordCipher(fresh.root))
    store.put(
        "config", "wrapping-key", 0, {"private_key": pkcs8(ec.generate_private_key(ec.SECP256R1()))}
    )
    with pytest.raises(IntegrityError, match="RSA-4096"):
        fresh.kms.wrapping_key()
    store.put("config", "wrapping-key", 1, {"private_key": b"junk"})
    with pytest.raises(IntegrityError, match="RSA-4096"):
        fresh.kms.wrapping_key()


def test_small_argument_checks(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("aes")
    kms.create_key("mac", "hmac-sha256")
    assert kms.configure_key("aes") == kms.read_key("aes")
    with pytest.raises(InvalidRequestError, match="include_plaintext"):
        kms.generate_data_key("aes", include_plaintext=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="data"):
        kms.hmac("mac", "text")  # type: ignore[arg-type]


def test_non_canonical_base64_is_refused(fresh: World) -> None:
    kms = fresh.kms
    kms.create_key("canon")
    ct = kms.encrypt("canon", b"x" * 6)  # 34 bytes: base64 ends "==" with 4 unused bits
    body = ct.split(":")[2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = body.rstrip("=")[-1]
    # Set the low (unused) bits of the last character: same bytes, other spelling.
    idx = alphabet.index(last)
    assert body.endswith("==")
    other = alphabet[idx ^ 0x01]
    respelled = ct[: ct.rindex(last)] + other + ct[ct.rindex(last) + 1 :]
    assert base64.b64decode(respelled.split(":")[2]) == base64.b64decode(body)
    with pytest.raises(InvalidRequestError, match="non-canonical"):
        kms.decrypt("canon", respelled)
