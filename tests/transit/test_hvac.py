"""hvac, unchanged, against the transit face of a real enclave-kms server: directly over
TLS (the attested certificate as its CA file) and through `enclave-kms proxy`.

Every answer is checked on real bytes: signatures verify with `cryptography` under the
public key the face reports, HMACs equal those computed from the exported key, and
ciphertexts written by the native SDK open on this face and back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_mod
import ssl
from collections.abc import Callable
from typing import Any

import httpx
import hvac
import hvac.exceptions
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

from tests.transit.conftest import Proxy, Transit

pytestmark = pytest.mark.slow

MSG = base64.b64encode(b"attack at dawn").decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sig_bytes(value: str) -> bytes:
    prefix, version, encoded = value.split(":", 2)
    assert prefix == "vault"
    assert version.startswith("v")
    return base64.b64decode(encoded)


@pytest.fixture(scope="module")
def client(transit: Transit) -> hvac.Client:
    c = transit.hvac()
    for name, kind in (
        ("hv-aes", "aes256-gcm96"),
        ("hv-ec256", "ecdsa-p256"),
        ("hv-ec384", "ecdsa-p384"),
        ("hv-ed", "ed25519"),
        ("hv-rsa", "rsa-2048"),
    ):
        c.secrets.transit.create_key(name, key_type=kind)
    # hvac's create_key does not know Vault's `hmac` type; its generic writer does.
    c.adapter.post("/v1/transit/keys/hv-hmac", json={"type": "hmac", "exportable": True})
    return c


def test_encrypt_decrypt_and_key_versions(client: hvac.Client) -> None:
    t = client.secrets.transit
    ct = t.encrypt_data("hv-aes", plaintext=MSG)["data"]["ciphertext"]
    assert ct.startswith("vault:v1:")
    assert t.decrypt_data("hv-aes", ciphertext=ct)["data"]["plaintext"] == MSG
    aad = b64(b"order-17")
    with_aad = t.encrypt_data("hv-aes", plaintext=MSG, associated_data=aad)["data"]["ciphertext"]
    assert t.decrypt_data("hv-aes", ciphertext=with_aad, associated_data=aad)["data"][
        "plaintext"
    ] == (MSG)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authenticate"):
        t.decrypt_data("hv-aes", ciphertext=with_aad, associated_data=b64(b"order-18"))
    # A flipped byte of the sealed bytes is refused, not decrypted.
    raw = bytearray(sig_bytes(ct))
    raw[-1] ^= 1
    with pytest.raises(hvac.exceptions.InvalidRequest):
        t.decrypt_data("hv-aes", ciphertext="vault:v1:" + b64(bytes(raw)))


def test_batch_encrypt_decrypt_with_a_bad_item(client: hvac.Client) -> None:
    t = client.secrets.transit
    items = [{"plaintext": MSG, "reference": "a"}, {"plaintext": b64(b""), "reference": "b"}]
    results = t.encrypt_data("hv-aes", batch_input=items)["data"]["batch_results"]
    assert [r["reference"] for r in results] == ["a", "b"]
    cts = [r["ciphertext"] for r in results]
    back = t.decrypt_data("hv-aes", batch_input=[{"ciphertext": c} for c in cts])
    assert [r["plaintext"] for r in back["data"]["batch_results"]] == [MSG, ""]
    # One altered item: Vault answers 400 with the per-item results, hvac raises.
    bad = cts[0][:-6] + ("AAAA==" if not cts[0].endswith("AAAA==") else "BBBB==")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        t.decrypt_data("hv-aes", batch_input=[{"ciphertext": cts[1]}, {"ciphertext": bad}])


def test_rotate_rewrap_min_decryption_version(client: hvac.Client) -> None:
    t = client.secrets.transit
    t.create_key("hv-rot")
    old = t.encrypt_data("hv-rot", plaintext=MSG)["data"]["ciphertext"]
    t.rotate_key("hv-rot")
    info = t.read_key("hv-rot")["data"]
    assert info["latest_version"] == 2
    assert sorted(info["keys"]) == ["1", "2"]
    assert t.encrypt_data("hv-rot", plaintext=MSG)["data"]["ciphertext"].startswith("vault:v2:")
    new = t.rewrap_data("hv-rot", ciphertext=old)["data"]["ciphertext"]
    assert new.startswith("vault:v2:")
    assert t.decrypt_data("hv-rot", ciphertext=new)["data"]["plaintext"] == MSG
    t.update_key_configuration("hv-rot", min_decryption_version=2)
    assert sorted(t.read_key("hv-rot")["data"]["keys"]) == ["2"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="min_decryption_version"):
        t.decrypt_data("hv-rot", ciphertext=old)


def test_datakey_plaintext_and_wrapped(client: hvac.Client) -> None:
    t = client.secrets.transit
    plain = t.generate_data_key("hv-aes", key_type="plaintext")["data"]
    assert len(base64.b64decode(plain["plaintext"])) == 32
    opened = t.decrypt_data("hv-aes", ciphertext=plain["ciphertext"])["data"]["plaintext"]
    assert opened == plain["plaintext"]
    wrapped = t.generate_data_key("hv-aes", key_type="wrapped")["data"]
    assert "plaintext" not in wrapped
    assert (
        len(
            base64.b64decode(
                t.decrypt_data("hv-aes", ciphertext=wrapped["ciphertext"])["data"]["plaintext"]
            )
        )
        == 32
    )


def _public(client: hvac.Client, name: str) -> Any:
    info = client.secrets.transit.read_key(name)["data"]
    value = info["keys"][str(info["latest_version"])]["public_key"]
    if info["type"] == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(value))
    return serialization.load_pem_public_key(value.encode())


@pytest.mark.parametrize(
    ("name", "options", "check"),
    [
        ("hv-ec256", {}, lambda k, s, m: k.verify(s, m, ec.ECDSA(hashes.SHA256()))),
        # Vault's default hash is SHA-256 for every key type, P-384 included.
        ("hv-ec384", {}, lambda k, s, m: k.verify(s, m, ec.ECDSA(hashes.SHA256()))),
        ("hv-ed", {}, lambda k, s, m: k.verify(s, m)),
        (
            "hv-rsa",
            {"signature_algorithm": "pss", "hash_algorithm": "sha2-512"},
            lambda k, s, m: k.verify(
                s, m, padding.PSS(padding.MGF1(hashes.SHA512()), 64), hashes.SHA512()
            ),
        ),
        (
            "hv-rsa",
            {"signature_algorithm": "pkcs1v15"},
            lambda k, s, m: k.verify(s, m, padding.PKCS1v15(), hashes.SHA256()),
        ),
    ],
)
def test_sign_verify(
    client: hvac.Client, name: str, options: dict[str, str], check: Callable[..., None]
) -> None:
    t = client.secrets.transit
    signature = t.sign_data(name, hash_input=MSG, **options)["data"]["signature"]
    check(_public(client, name), sig_bytes(signature), base64.b64decode(MSG))  # standard bytes
    assert t.verify_signed_data(name, hash_input=MSG, signature=signature, **options)["data"][
        "valid"
    ]
    other = b64(b"attack at dusk")
    assert not t.verify_signed_data(name, hash_input=other, signature=signature, **options)["data"][
        "valid"
    ]


def test_sign_prehashed_and_jws(client: hvac.Client) -> None:
    t = client.secrets.transit
    digest = b64(hashlib.sha256(base64.b64decode(MSG)).digest())
    sig = t.sign_data("hv-ec256", hash_input=digest, prehashed=True)["data"]["signature"]
    key = _public(client, "hv-ec256")
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(sig_bytes(sig), base64.b64decode(MSG), ec.ECDSA(hashes.SHA256()))
    jws = t.sign_data("hv-ec256", hash_input=MSG, marshaling_algorithm="jws")["data"]["signature"]
    assert "+" not in jws.split(":", 2)[2]
    assert "=" not in jws.split(":", 2)[2]
    assert len(base64.urlsafe_b64decode(jws.split(":", 2)[2] + "==")) == 64  # r || s
    assert t.verify_signed_data(
        "hv-ec256", hash_input=MSG, signature=jws, marshaling_algorithm="jws"
    )["data"]["valid"]


def test_hmac_matches_the_exported_key(client: hvac.Client) -> None:
    t = client.secrets.transit
    mac = t.generate_hmac("hv-hmac", hash_input=MSG)["data"]["hmac"]
    exported = t.export_key("hv-hmac", key_type="hmac-key")["data"]["keys"]["1"]
    expected = hmac_mod.new(base64.b64decode(exported), b"attack at dawn", hashlib.sha256)
    assert sig_bytes(mac) == expected.digest()
    assert t.verify_signed_data("hv-hmac", hash_input=MSG, hmac=mac)["data"]["valid"]
    assert not t.verify_signed_data("hv-hmac", hash_input=b64(b"x"), hmac=mac)["data"]["valid"]


def test_read_list_random_hash_delete(client: hvac.Client) -> None:
    t = client.secrets.transit
    info = t.read_key("hv-ec256")["data"]
    assert info["type"] == "ecdsa-p256"
    assert info["supports_signing"]
    assert not info["supports_encryption"]
    assert {"hv-aes", "hv-ec256", "hv-hmac"} <= set(t.list_keys()["data"]["keys"])
    assert len(base64.b64decode(t.generate_random_bytes(n_bytes=48)["data"]["random_bytes"])) == 48
    summed = t.hash_data(hash_input=MSG, algorithm="sha2-512")["data"]["sum"]
    assert summed == hashlib.sha512(b"attack at dawn").hexdigest()
    with pytest.raises(hvac.exceptions.InvalidPath):
        t.read_key("hv-missing")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not exportable"):
        t.export_key("hv-aes", key_type="encryption-key")
    t.create_key("hv-doomed")
    t.delete_key("hv-doomed")  # scheduled: unusable at once
    assert t.read_key("hv-doomed")["data"]["soft_deleted"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="scheduled for deletion"):
        t.encrypt_data("hv-doomed", plaintext=MSG)


def test_vault_and_ekms_ciphertexts_are_the_same_bytes(
    transit: Transit, client: hvac.Client
) -> None:
    with transit.sdk() as kms:
        native = kms.encrypt("hv-aes", b"attack at dawn")
        assert native.startswith("ekms:v1:")
        face = "vault:" + native.removeprefix("ekms:")
        assert client.secrets.transit.decrypt_data("hv-aes", ciphertext=face)["data"][
            "plaintext"
        ] == (MSG)
        vault_ct = client.secrets.transit.encrypt_data("hv-aes", plaintext=MSG)["data"][
            "ciphertext"
        ]
        assert kms.decrypt("hv-aes", "ekms:" + vault_ct.removeprefix("vault:")) == b"attack at dawn"


def test_a_token_for_one_key_cannot_use_another(transit: Transit, client: hvac.Client) -> None:
    """Every transit path that names a key, batch included, checks the token's grant."""
    client.secrets.transit.create_key("hv-mine")
    token = transit.restricted(["hv-mine"], ["encrypt", "decrypt", "rewrap", "keys.read"])
    mine = transit.hvac(token)
    t = mine.secrets.transit
    ct = t.encrypt_data("hv-mine", plaintext=MSG)["data"]["ciphertext"]
    assert t.decrypt_data("hv-mine", ciphertext=ct)["data"]["plaintext"] == MSG
    foreign_ct = client.secrets.transit.encrypt_data("hv-aes", plaintext=MSG)["data"]["ciphertext"]
    attempts: list[Callable[[], object]] = [
        lambda: t.encrypt_data("hv-aes", plaintext=MSG),
        lambda: t.encrypt_data("hv-aes", batch_input=[{"plaintext": MSG}]),
        lambda: t.decrypt_data("hv-aes", ciphertext=foreign_ct),
        lambda: t.decrypt_data("hv-aes", batch_input=[{"ciphertext": foreign_ct}]),
        lambda: t.rewrap_data("hv-aes", ciphertext=foreign_ct),
        lambda: t.rewrap_data("hv-aes", ciphertext="", batch_input=[{"ciphertext": foreign_ct}]),
        lambda: t.generate_data_key("hv-aes", key_type="plaintext"),
        lambda: t.read_key("hv-aes"),
        lambda: t.rotate_key("hv-aes"),
        lambda: t.update_key_configuration("hv-aes", min_decryption_version=1),
        lambda: t.delete_key("hv-aes"),
        lambda: t.export_key("hv-aes", key_type="encryption-key"),
        lambda: mine.adapter.get("/v1/transit/export/public-key/hv-ec256"),
        lambda: t.sign_data("hv-ec256", hash_input=MSG),
        lambda: t.sign_data("hv-ec256", batch_input=[{"input": MSG}]),
        lambda: t.verify_signed_data("hv-ec256", hash_input=MSG, signature="vault:v1:AAAA"),
        lambda: t.generate_hmac("hv-hmac", hash_input=MSG),
        lambda: t.verify_signed_data("hv-hmac", hash_input=MSG, hmac="vault:v1:AAAA"),
        lambda: t.create_key("hv-not-mine"),
        lambda: t.generate_random_bytes(n_bytes=8),
        # A key of its own, but an operation it was not granted:
        lambda: t.generate_data_key("hv-mine", key_type="plaintext"),
        lambda: t.rotate_key("hv-mine"),
    ]
    for attempt in attempts:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
    assert t.list_keys()["data"]["keys"] == ["hv-mine"]  # lists only what it may read


def test_bearer_header_and_bad_tokens(transit: Transit, client: hvac.Client) -> None:
    context = ssl.create_default_context(cafile=str(transit.ca_file))  # the usual way
    with httpx.Client(base_url=transit.url, verify=context) as http:
        ok = http.post(
            "/v1/transit/encrypt/hv-aes",
            json={"plaintext": MSG},
            headers={"Authorization": f"Bearer {transit.token}"},
        )
        assert ok.status_code == 200, ok.text
        for headers in (
            {},
            {"X-Vault-Token": "s.notatoken"},
            {"X-Vault-Token": transit.token[:-2] + "xx"},
        ):
            r = http.post("/v1/transit/encrypt/hv-aes", json={"plaintext": MSG}, headers=headers)
            assert r.status_code == 403, r.text
            assert list(r.json()) == ["errors"]
        r = http.get("/v1/transit/backup/hv-aes", headers={"X-Vault-Token": transit.token})
        assert (r.status_code, r.json()) == (404, {"errors": ["unsupported path"]})


def test_hvac_through_the_proxy(transit: Transit, proxy: Proxy) -> None:
    """Plain HTTP on loopback to the proxy; attested, pinned TLS from it to the enclave."""
    c = hvac.Client(url=proxy.url, token=transit.token)
    t = c.secrets.transit
    t.create_key("hv-proxied")
    ct = t.encrypt_data("hv-proxied", plaintext=MSG)["data"]["ciphertext"]
    assert t.decrypt_data("hv-proxied", ciphertext=ct)["data"]["plaintext"] == MSG
    results = t.encrypt_data("hv-proxied", batch_input=[{"plaintext": MSG}] * 3)["data"]
    assert len(results["batch_results"]) == 3
    t.rotate_key("hv-proxied")
    assert t.rewrap_data("hv-proxied", ciphertext=ct)["data"]["ciphertext"].startswith("vault:v2:")
    assert "hv-proxied" in t.list_keys()["data"]["keys"]  # LIST passes through
    response = httpx.get(
        proxy.url + "/v1/transit/keys/hv-proxied", headers={"X-Vault-Token": transit.token}
    )
    with transit.sdk() as kms:
        server = kms.connect()
        assert response.headers["x-enclave-kms-pinned-key"] == server.spki_sha256.hex()
    assert proxy.certificate.read_text() == server.certificate_pem  # --certificate-out
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=proxy.url, token="nope").secrets.transit.encrypt_data(
            "hv-proxied", plaintext=MSG
        )
