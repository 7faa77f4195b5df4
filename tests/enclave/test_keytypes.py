"""Key types: generation, sealed serialisation, loading, BYOK checks and signature schemes."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keytypes import KEY_TYPES, KeyType, LoadedKey
from enclave_kms.errors import IntegrityError, InvalidRequestError

ASYMMETRIC = [n for n, t in KEY_TYPES.items() if t.asymmetric]


@pytest.fixture(scope="module")
def generated() -> dict[str, tuple[bytes, LoadedKey]]:
    """One key of every type for the whole module (the only RSA-4096 generation here)."""
    return {name: keytypes.generate_key(kt) for name, kt in KEY_TYPES.items()}


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_the_catalogue_is_the_designed_one() -> None:
    assert list(KEY_TYPES) == [
        "aes256-gcm",
        "hmac-sha256",
        "rsa-2048",
        "rsa-3072",
        "rsa-4096",
        "ec-p256",
        "ec-p384",
        "ed25519",
    ]
    assert keytypes.DEFAULT_KEY_TYPE == "aes256-gcm"
    assert KEY_TYPES["aes256-gcm"].operations == {"encrypt", "decrypt", "rewrap", "datakey"}
    assert KEY_TYPES["hmac-sha256"].operations == {"hmac"}
    for name in ASYMMETRIC:
        assert KEY_TYPES[name].operations == {"sign", "verify"}
    with pytest.raises(InvalidRequestError, match="unknown key type"):
        keytypes.key_type("aes128-gcm")


@pytest.mark.parametrize("name", list(KEY_TYPES))
def test_generated_material_round_trips(
    name: str, generated: dict[str, tuple[bytes, LoadedKey]]
) -> None:
    kt = KEY_TYPES[name]
    material, loaded = generated[name]
    reloaded = keytypes.load_key(kt, material)
    if kt.family == "aes":
        assert len(material) == 32
        assert isinstance(loaded, AESGCM)
        assert isinstance(reloaded, AESGCM)
        nonce = bytes(12)
        assert reloaded.decrypt(nonce, loaded.encrypt(nonce, b"x", None), None) == b"x"
        assert keytypes.public_key_pem(kt, reloaded) is None
        return
    if kt.family == "hmac":
        assert loaded == reloaded == material
        assert len(material) == 32
        assert keytypes.public_key_pem(kt, reloaded) is None
        return
    # Asymmetric: PKCS#8 DER, and the reload is the same key.
    assert serialization.load_der_private_key(material, None) is not None
    pem = keytypes.public_key_pem(kt, reloaded)
    assert pem is not None
    assert pem == keytypes.public_key_pem(kt, loaded)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    if kt.family == "rsa":
        assert isinstance(reloaded, rsa.RSAPrivateKey)
        assert reloaded.key_size == kt.bits
        assert reloaded.public_key().public_numbers().e == 65537
    elif kt.family == "ec":
        assert isinstance(reloaded, ec.EllipticCurvePrivateKey)
        assert reloaded.curve.key_size == kt.bits
    else:
        assert isinstance(reloaded, ed25519.Ed25519PrivateKey)


def test_generation_is_fresh_every_time() -> None:
    kt = KEY_TYPES["aes256-gcm"]
    assert keytypes.generate_key(kt)[0] != keytypes.generate_key(kt)[0]


@pytest.mark.parametrize("name", [n for n in KEY_TYPES if n != "hmac-sha256"])
def test_stored_garbage_is_an_integrity_error(
    name: str, generated: dict[str, tuple[bytes, LoadedKey]]
) -> None:
    """Material from a sealed record that does not load is corruption, not a client error."""
    kt = KEY_TYPES[name]
    with pytest.raises(IntegrityError, match=name):
        keytypes.load_key(kt, generated[name][0][:-1])
    other = "ec-p256" if kt.family != "ec" else "rsa-2048"
    if kt.asymmetric:
        with pytest.raises(IntegrityError, match=name):
            keytypes.load_key(kt, generated[other][0])


# --------------------------------------------------------------------------- BYOK validation


@pytest.mark.parametrize("name", ASYMMETRIC)
def test_import_accepts_its_own_type_and_canonicalises(
    name: str, generated: dict[str, tuple[bytes, LoadedKey]]
) -> None:
    kt = KEY_TYPES[name]
    material, loaded = keytypes.validate_import(kt, generated[name][0])
    assert material == generated[name][0]
    assert keytypes.public_key_pem(kt, loaded) == keytypes.public_key_pem(kt, generated[name][1])


def test_import_reencodes_traditional_der_as_pkcs8(
    generated: dict[str, tuple[bytes, LoadedKey]],
) -> None:
    key = generated["rsa-2048"][1]
    assert isinstance(key, rsa.RSAPrivateKey)
    pkcs1 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    material, _ = keytypes.validate_import(KEY_TYPES["rsa-2048"], pkcs1)
    assert material == generated["rsa-2048"][0]


@pytest.mark.parametrize(
    ("declared", "actual", "message"),
    [
        ("rsa-2048", "ec-p256", "not an RSA key"),
        ("rsa-3072", "rsa-2048", "2048 bits"),
        ("rsa-4096", "rsa-3072", "3072 bits"),
        ("ec-p256", "ec-p384", "secp384r1"),
        ("ec-p384", "ec-p256", "secp256r1"),
        ("ec-p256", "ed25519", "not an EC key"),
        ("ed25519", "ec-p256", "not an Ed25519 key"),
        ("ed25519", "rsa-2048", "not an Ed25519 key"),
    ],
)
def test_import_refuses_material_of_another_type(
    declared: str, actual: str, message: str, generated: dict[str, tuple[bytes, LoadedKey]]
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        keytypes.validate_import(KEY_TYPES[declared], generated[actual][0])


def test_import_refuses_rsa_exponent_3() -> None:
    key = rsa.generate_private_key(3, 2048)
    with pytest.raises(InvalidRequestError, match="65537"):
        keytypes.validate_import(KEY_TYPES["rsa-2048"], _pkcs8(key))


def test_import_refuses_encrypted_and_garbage_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    for bad in (encrypted, b"", b"not der", _pkcs8(key)[:-1]):
        with pytest.raises(InvalidRequestError, match="DER private key"):
            keytypes.validate_import(KEY_TYPES["ec-p256"], bad)


@pytest.mark.parametrize(
    ("name", "length", "ok"),
    [
        ("aes256-gcm", 32, True),
        ("aes256-gcm", 16, False),
        ("aes256-gcm", 33, False),
        ("hmac-sha256", 31, False),
        ("hmac-sha256", 32, True),
        ("hmac-sha256", 64, True),
        ("hmac-sha256", 65, False),
    ],
)
def test_import_symmetric_sizes(name: str, length: int, ok: bool) -> None:
    raw = bytes(range(length))
    if ok:
        assert keytypes.validate_import(KEY_TYPES[name], raw)[0] == raw
    else:
        with pytest.raises(InvalidRequestError, match="bytes"):
            keytypes.validate_import(KEY_TYPES[name], raw)


def test_import_requires_bytes() -> None:
    with pytest.raises(InvalidRequestError, match="must be bytes"):
        keytypes.validate_import(KEY_TYPES["aes256-gcm"], "0" * 32)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), name=st.sampled_from(list(KEY_TYPES)))
def test_import_of_arbitrary_bytes_fails_only_typed(data: bytes, name: str) -> None:
    """Anything that is not a valid key fails as InvalidRequestError, nothing else."""
    with contextlib.suppress(InvalidRequestError):
        keytypes.validate_import(KEY_TYPES[name], data)


@settings(max_examples=100, deadline=None)
@given(name=st.text(max_size=20))
def test_unknown_type_names_are_typed_errors(name: str) -> None:
    if name in KEY_TYPES:
        assert keytypes.key_type(name).name == name
    else:
        with pytest.raises(InvalidRequestError):
            keytypes.key_type(name)


# --------------------------------------------------------------------------- signature schemes


def _kt(name: str) -> KeyType:
    return KEY_TYPES[name]


def test_scheme_defaults() -> None:
    assert keytypes.signature_scheme(_kt("rsa-2048")) == keytypes.SignatureScheme(
        "rsa", "pss", "sha256", False
    )
    assert keytypes.signature_scheme(_kt("ec-p256")).hash_name == "sha256"
    assert keytypes.signature_scheme(_kt("ec-p384")).hash_name == "sha384"
    assert keytypes.signature_scheme(_kt("ed25519")) == keytypes.SignatureScheme(
        "ed25519", "ed25519", None, False
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("aes256-gcm", {}, "do not sign"),
        ("hmac-sha256", {}, "do not sign"),
        ("rsa-2048", {"signature_algorithm": "ecdsa"}, "pss or pkcs1v15"),
        ("rsa-2048", {"hash_algorithm": "md5"}, "unknown hash"),
        ("ec-p256", {"signature_algorithm": "pss"}, "ecdsa"),
        ("ed25519", {"hash_algorithm": "sha512"}, "no hash"),
        ("ed25519", {"prehashed": True}, "no prehash"),
        ("ed25519", {"signature_algorithm": "pss"}, "only with ed25519"),
    ],
)
def test_scheme_refuses_what_does_not_apply(
    name: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        keytypes.signature_scheme(_kt(name), **kwargs)  # type: ignore[arg-type]


def test_pss_uses_digest_length_salt_and_prehash_matches_message(
    generated: dict[str, tuple[bytes, LoadedKey]],
) -> None:
    key = generated["rsa-2048"][1]
    assert isinstance(key, rsa.RSAPrivateKey)
    message = b"the message"
    for hname, halg in (("sha256", hashes.SHA256()), ("sha512", hashes.SHA512())):
        scheme = keytypes.signature_scheme(_kt("rsa-2048"), hash_algorithm=hname)
        sig = scheme.sign(key, message)
        # An independent verifier with an explicit salt length = digest length accepts it.
        key.public_key().verify(
            sig,
            message,
            padding.PSS(mgf=padding.MGF1(halg), salt_length=halg.digest_size),
            halg,
        )
        pre = keytypes.signature_scheme(_kt("rsa-2048"), hash_algorithm=hname, prehashed=True)
        digest = hashlib.new(hname, message).digest()
        assert pre.verify(key.public_key(), digest, sig)
        assert scheme.verify(key.public_key(), message, pre.sign(key, digest))
        with pytest.raises(InvalidRequestError, match="digest"):
            pre.sign(key, message)


def test_ecdsa_signatures_are_der_and_verify_independently(
    generated: dict[str, tuple[bytes, LoadedKey]],
) -> None:
    key = generated["ec-p384"][1]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    sig = keytypes.signature_scheme(_kt("ec-p384")).sign(key, b"m")
    assert sig[0] == 0x30  # DER SEQUENCE
    key.public_key().verify(sig, b"m", ec.ECDSA(hashes.SHA384()))
    scheme = keytypes.signature_scheme(_kt("ec-p384"))
    assert not scheme.verify(key.public_key(), b"other", sig)
    assert not scheme.verify(key.public_key(), b"m", b"\x30\x00")
    assert not scheme.verify(key.public_key(), b"m", b"")
