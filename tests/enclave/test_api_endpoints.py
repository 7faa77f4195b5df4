"""The HTTP API over a real context: every endpoint, every key type, lifecycle, BYOK, tokens,
the audit head, attestation and the tutorial endpoints."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from enclave_kms.enclave.keys.keytypes import KEY_TYPES
from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.enclave.state.tokens import OPERATIONS
from enclave_kms.wire import KeyTypeName, OperationName
from tests.enclave.api_world import (
    CERTIFICATE_PEM,
    COLLATERAL,
    IDENTITY,
    QUOTE,
    World,
    b64,
    make_world,
    unb64,
    world_fixture,
)

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
SIGNING_TYPES = ["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ed25519"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("api"))


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _create(world: World, name: str, type: str = "aes256-gcm", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "type": type, **extra}
    created = _ok(world.post("/v1/keys", body), 201)
    assert isinstance(created, dict)
    return created


def test_literals_match_the_service() -> None:
    from typing import get_args

    assert set(get_args(KeyTypeName)) == set(KEY_TYPES)
    assert set(get_args(OperationName)) == set(OPERATIONS)


# --------------------------------------------------------------------------- sys


def test_health_before_and_after_init(tmp_path: Path) -> None:
    fresh = make_world(tmp_path, init=False)
    body = _ok(fresh.client.get("/v1/health"))
    assert body == {"status": "ok", "initialized": False, "identity": IDENTITY, "worker": 0}
    token = _ok(fresh.client.post("/v1/sys/init"), 201)
    assert token["token"].startswith(f"ekms_{token['info']['id']}_")
    assert token["info"]["name"] == "admin"
    assert _ok(fresh.client.get("/v1/health"))["initialized"] is True
    again = fresh.client.post("/v1/sys/init")
    assert again.status_code == 409
    assert again.json() == {"error": {"code": "conflict", "message": "already initialised"}}
    # The first token works; init was audited as anonymous, naming the token it issued.
    assert _ok(fresh.client.get("/v1/keys", headers=fresh.bearer(token["token"])))["keys"] == []
    inits = [e for e in fresh.audit_events() if e["op"] == "sys.init"]
    assert [(e["actor"], e["target"], e["outcome"]) for e in inits] == [
        ("anonymous", token["info"]["id"], "ok"),
        ("anonymous", "", "conflict"),
    ]
    fresh.storage.close()


def test_attestation_returns_fresh_evidence(world: World) -> None:
    nonce = os.urandom(32)
    body = _ok(world.client.get("/v1/attestation", params={"nonce": nonce.hex().upper()}))
    assert world.attestation.nonces[-1] == nonce
    assert unb64(body["quote"]) == QUOTE
    assert body["collateral"] == COLLATERAL
    assert body["certificate_pem"].encode() == CERTIFICATE_PEM
    cert = x509.load_pem_x509_certificate(CERTIFICATE_PEM)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert body["spki_sha256"] == hashlib.sha256(spki).hexdigest()
    assert body["nonce"] == nonce.hex()
    assert "SHA-256" in body["report_data_formula"]


@pytest.mark.parametrize(
    "nonce", ["", "00" * 15, "00" * 65, "0" * 33, "zz" * 16, "00 " * 16, "%00" * 16]
)
def test_attestation_refuses_bad_nonces(world: World, nonce: str) -> None:
    calls = len(world.attestation.nonces)
    r = world.client.get("/v1/attestation", params={"nonce": nonce})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert len(world.attestation.nonces) == calls


def test_attestation_with_broken_collateral_is_a_server_failure(world: World) -> None:
    world.attestation.collateral = b"not json"
    try:
        r = world.client.get("/v1/attestation", params={"nonce": "11" * 16})
    finally:
        world.attestation.collateral = b"{}"
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "attestation_unavailable"


# --------------------------------------------------------------------------- keys


def test_key_lifecycle(world: World) -> None:
    created = _create(world, "life")
    assert created["type"] == "aes256-gcm"
    assert created["latest_version"] == 1
    assert created["exportable"] is False
    assert created["operations"] == ["datakey", "decrypt", "encrypt", "rewrap"]
    assert _ok(world.client.get("/v1/keys/life", headers=world.auth)) == created
    dup = world.post("/v1/keys", {"name": "life"})
    assert dup.status_code == 409
    assert dup.json()["error"]["code"] == "conflict"

    old = _ok(world.post("/v1/keys/life/encrypt", {"plaintext": b64(b"v1 data")}))["ciphertext"]
    rotated = _ok(world.post("/v1/keys/life/rotate"))
    assert rotated["latest_version"] == 2
    assert len(rotated["versions"]) == 2
    new = _ok(world.post("/v1/keys/life/encrypt", {"plaintext": b64(b"v2 data")}))["ciphertext"]
    assert old.startswith("ekms:v1:")
    assert new.startswith("ekms:v2:")
    assert unb64(_ok(world.post("/v1/keys/life/decrypt", {"ciphertext": old}))["plaintext"]) == (
        b"v1 data"
    )
    rewrapped = _ok(world.post("/v1/keys/life/rewrap", {"ciphertext": old}))["ciphertext"]
    assert rewrapped.startswith("ekms:v2:")

    conf = world.client.patch(
        "/v1/keys/life", json={"min_decryption_version": 2}, headers=world.auth
    )
    assert _ok(conf)["min_decryption_version"] == 2
    below = world.post("/v1/keys/life/decrypt", {"ciphertext": old})
    assert below.status_code == 409
    assert below.json()["error"]["code"] == "key_state"
    too_high = world.client.patch(
        "/v1/keys/life", json={"min_decryption_version": 3}, headers=world.auth
    )
    assert too_high.status_code == 400

    disabled = world.client.patch("/v1/keys/life", json={"enabled": False}, headers=world.auth)
    assert _ok(disabled)["enabled"] is False
    refused = world.post("/v1/keys/life/encrypt", {"plaintext": b64(b"x")})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "key_state"
    world.client.patch("/v1/keys/life", json={"enabled": True}, headers=world.auth)
    unchanged = _ok(world.client.patch("/v1/keys/life", json={}, headers=world.auth))
    assert unchanged["enabled"] is True

    scheduled = _ok(world.client.delete("/v1/keys/life?waiting_period_days=3", headers=world.auth))
    assert scheduled["deletion_scheduled_at"] is not None
    blocked = world.post("/v1/keys/life/encrypt", {"plaintext": b64(b"x")})
    assert blocked.status_code == 409
    twice = world.client.delete("/v1/keys/life", headers=world.auth)
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "conflict"
    restored = _ok(world.post("/v1/keys/life/restore"))
    assert restored["deletion_scheduled_at"] is None
    again = world.post("/v1/keys/life/decrypt", {"ciphertext": rewrapped})
    assert unb64(_ok(again)["plaintext"]) == b"v1 data"

    _ok(world.client.delete("/v1/keys/life?waiting_period_days=1", headers=world.auth))
    world.clock.advance(timedelta(days=1, seconds=1))
    gone = world.client.get("/v1/keys/life", headers=world.auth)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


def test_list_keys_pages(world: World) -> None:
    for name in ("page-a", "page-b", "page-c"):
        _create(world, name)
    first = _ok(world.client.get("/v1/keys?limit=2&after=page-", headers=world.auth))
    assert [k["name"] for k in first["keys"]] == ["page-a", "page-b"]
    assert first["next_after"] == "page-b"
    rest = _ok(world.client.get("/v1/keys?limit=2&after=page-b", headers=world.auth))
    assert [k["name"] for k in rest["keys"]][:1] == ["page-c"]


def test_encrypt_decrypt_datakey_and_batch(world: World) -> None:
    _create(world, "data")
    ad = b64(b"context")
    ct = _ok(world.post("/v1/keys/data/encrypt", {"plaintext": b64(b""), "associated_data": ad}))
    dec = world.post("/v1/keys/data/decrypt", {**ct, "associated_data": ad})
    assert unb64(_ok(dec)["plaintext"]) == b""
    wrong_ad = world.post("/v1/keys/data/decrypt", ct)
    assert wrong_ad.status_code == 400
    assert wrong_ad.json()["error"]["code"] == "crypto_failed"

    dk = _ok(world.post("/v1/keys/data/datakey", {}))
    assert len(unb64(dk["plaintext"])) == 32
    opened = _ok(world.post("/v1/keys/data/decrypt", {"ciphertext": dk["ciphertext"]}))
    assert opened["plaintext"] == dk["plaintext"]
    wrapped_only = _ok(world.post("/v1/keys/data/datakey", {"include_plaintext": False}))
    assert wrapped_only["plaintext"] is None

    items = [{"plaintext": b64(bytes([i]) * i)} for i in range(5)]
    batch = _ok(world.post("/v1/keys/data/encrypt-batch", {"items": items}))["results"]
    assert all(set(r) == {"ciphertext"} for r in batch)
    altered = batch[1]["ciphertext"][:-2] + ("A=" if batch[1]["ciphertext"][-2] != "A" else "B=")
    decrypt_items = [
        {"ciphertext": batch[0]["ciphertext"]},
        {"ciphertext": altered},
        {"ciphertext": "not a ciphertext"},
        {"ciphertext": batch[4]["ciphertext"]},
    ]
    results = _ok(world.post("/v1/keys/data/decrypt-batch", {"items": decrypt_items}))["results"]
    assert unb64(results[0]["plaintext"]) == b""
    assert results[1]["error"]["code"] in ("crypto_failed", "invalid_request")
    assert set(results[1]) == {"error"}
    assert results[2]["error"]["code"] == "invalid_request"
    assert unb64(results[3]["plaintext"]) == bytes([4]) * 4
    empty = world.post("/v1/keys/data/encrypt-batch", {"items": []})
    assert empty.status_code == 400


def test_hmac_and_verify_hmac(world: World) -> None:
    _create(world, "mac", "hmac-sha256")
    mac = _ok(world.post("/v1/keys/mac/hmac", {"input": b64(b"message")}))["mac"]
    assert mac.startswith("ekms:v1:")
    assert len(unb64(mac.split(":")[2])) == 32
    good = world.post("/v1/keys/mac/verify-hmac", {"input": b64(b"message"), "mac": mac})
    assert _ok(good) == {"valid": True}
    bad = world.post("/v1/keys/mac/verify-hmac", {"input": b64(b"other"), "mac": mac})
    assert _ok(bad) == {"valid": False}
    wrong_op = world.post("/v1/keys/mac/encrypt", {"plaintext": b64(b"x")})
    assert wrong_op.status_code == 409
    assert wrong_op.json()["error"]["code"] == "key_state"


def _public_key(pem: str) -> Any:
    return serialization.load_pem_public_key(pem.encode())


@pytest.mark.parametrize("key_type", SIGNING_TYPES)
def test_sign_and_verify_every_signing_type(world: World, key_type: str) -> None:
    name = f"sig-{key_type}"
    meta = _create(world, name, key_type)
    public = _public_key(meta["public_key_pem"])
    message = b"sign me " + key_type.encode()
    signed = _ok(world.post(f"/v1/keys/{name}/sign", {"input": b64(message)}))["signature"]
    raw = unb64(signed.split(":", 2)[2])
    # The signature is standard: the exported public key verifies it with any library.
    if isinstance(public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(raw, message, pss, hashes.SHA256())
    elif isinstance(public, ec.EllipticCurvePublicKey):
        digest = hashes.SHA256() if key_type == "ec-p256" else hashes.SHA384()
        public.verify(raw, message, ec.ECDSA(digest))
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        public.verify(raw, message)
    body = {"input": b64(message), "signature": signed}
    assert _ok(world.post(f"/v1/keys/{name}/verify", body)) == {"valid": True}
    tampered = {"input": b64(message + b"!"), "signature": signed}
    assert _ok(world.post(f"/v1/keys/{name}/verify", tampered)) == {"valid": False}


def test_sign_options(world: World) -> None:
    _create(world, "opts-rsa", "rsa-2048")
    _create(world, "opts-ec", "ec-p256")
    digest = hashlib.sha512(b"m").digest()
    body = {
        "input": b64(digest),
        "prehashed": True,
        "hash_algorithm": "sha512",
        "signature_algorithm": "pkcs1v15",
    }
    sig = _ok(world.post("/v1/keys/opts-rsa/sign", body))["signature"]
    verify = {**body, "signature": sig}
    assert _ok(world.post("/v1/keys/opts-rsa/verify", verify)) == {"valid": True}
    pss_instead = {**verify, "signature_algorithm": "pss"}
    assert _ok(world.post("/v1/keys/opts-rsa/verify", pss_instead)) == {"valid": False}
    short = world.post("/v1/keys/opts-ec/sign", {"input": b64(b"x"), "prehashed": True})
    assert short.status_code == 400
    assert short.json()["error"]["code"] == "invalid_request"
    mismatch = world.post(
        "/v1/keys/opts-ec/sign", {"input": b64(b"x"), "signature_algorithm": "pss"}
    )
    assert mismatch.status_code == 400


# --------------------------------------------------------------------------- BYOK, export


def _wrapping_key(world: World) -> rsa.RSAPublicKey:
    body = _ok(world.client.get("/v1/sys/wrapping-key", headers=world.auth))
    assert body["schemes"] == ["RSA-OAEP-SHA256", "RSA-OAEP-SHA256+AES-KWP"]
    key = _public_key(body["public_key_pem"])
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 4096
    return key


def test_byok_import_export(world: World) -> None:
    wrapping = _wrapping_key(world)
    material = os.urandom(32)
    imported = _ok(
        world.post(
            "/v1/keys/import",
            {
                "name": "byok-aes",
                "type": "aes256-gcm",
                "wrapped_material": b64(wrapping.encrypt(material, OAEP)),
                "exportable": True,
            },
        ),
        201,
    )
    assert imported["versions"][0]["imported"] is True
    exported = _ok(world.client.get("/v1/keys/byok-aes/export", headers=world.auth))
    assert unb64(exported["material"]) == material
    assert exported["version"] == 1

    ec_key = ec.generate_private_key(ec.SECP256R1())
    der = ec_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    kek = os.urandom(32)
    wrapped = wrapping.encrypt(kek, OAEP) + aes_key_wrap_with_padding(kek, der)
    body = {"name": "byok-ec", "type": "ec-p256", "wrapped_material": b64(wrapped)}
    meta = _ok(world.post("/v1/keys/import", body), 201)
    assert _public_key(meta["public_key_pem"]).public_numbers() == (
        ec_key.public_key().public_numbers()
    )
    not_exportable = world.client.get("/v1/keys/byok-ec/export", headers=world.auth)
    assert not_exportable.status_code == 409
    assert not_exportable.json()["error"]["code"] == "key_state"

    second = os.urandom(32)
    version = world.post(
        "/v1/keys/byok-aes/import", {"wrapped_material": b64(wrapping.encrypt(second, OAEP))}
    )
    assert _ok(version)["latest_version"] == 2
    v1 = _ok(world.client.get("/v1/keys/byok-aes/export?version=1", headers=world.auth))
    v2 = _ok(world.client.get("/v1/keys/byok-aes/export", headers=world.auth))
    assert unb64(v1["material"]) == material
    assert unb64(v2["material"]) == second
    missing = world.client.get("/v1/keys/byok-aes/export?version=3", headers=world.auth)
    assert missing.status_code == 400

    foreign = os.urandom(512)  # not RSA-OAEP under the wrapping key
    wrong = world.post(
        "/v1/keys/import",
        {"name": "byok-x", "type": "aes256-gcm", "wrapped_material": b64(foreign)},
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "crypto_failed"


# --------------------------------------------------------------------------- keyless


def test_random(world: World) -> None:
    got = unb64(_ok(world.post("/v1/random", {"bytes": 48}))["random"])
    assert len(got) == 48
    for bad in (0, 1025, -1):
        r = world.post("/v1/random", {"bytes": bad})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_request"


def test_tutorial_endpoints(world: World) -> None:
    aes = _ok(world.post("/generate-aes-key"))
    assert len(unb64(aes["aes_key"])) == 32
    pair = _ok(world.post("/generate-rsa-key-pair"))
    private = serialization.load_pem_private_key(pair["private_key"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    public = _public_key(pair["public_key"])
    assert public.public_numbers() == private.public_key().public_numbers()
    assert world.client.post("/generate-aes-key").status_code == 401
    signer = world.token(["sign"], ["*"])
    denied = world.post("/generate-rsa-key-pair", token=signer)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    datakey_only = world.token(["datakey"], ["nothing-*"])
    assert world.post("/generate-aes-key", token=datakey_only).status_code == 200


# --------------------------------------------------------------------------- tokens, audit


def test_token_management_and_policies(world: World) -> None:
    _create(world, "app-one")
    _create(world, "other")
    limited = _ok(
        world.post(
            "/v1/tokens",
            {
                "name": "app",
                "policies": [{"keys": ["app-*"], "operations": ["encrypt", "keys.read"]}],
                "ttl_seconds": 3600,
            },
        ),
        201,
    )
    token, info = limited["token"], limited["info"]
    assert info["expires_at"] is not None
    assert info["revoked_at"] is None
    assert world.post("/v1/keys/app-one/encrypt", {"plaintext": "AA=="}, token).status_code == 200
    denied = world.post("/v1/keys/other/encrypt", {"plaintext": "AA=="}, token)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    no_decrypt = world.post("/v1/keys/app-one/decrypt", {"ciphertext": "x"}, token)
    assert no_decrypt.status_code == 403  # authorization comes before body checks
    listed = _ok(world.client.get("/v1/keys", headers=world.bearer(token)))
    assert {k["name"] for k in listed["keys"]} == {"app-one"}
    create = world.post("/v1/keys", {"name": "app-two"}, token)
    assert create.status_code == 403
    assert world.client.get("/v1/tokens", headers=world.bearer(token)).status_code == 403

    # A token manager cannot grant more than it holds.
    manager = world.token(["tokens.manage", "encrypt"], ["app-*"])
    wider = world.post(
        "/v1/tokens",
        {"name": "w", "policies": [{"keys": ["*"], "operations": ["encrypt"]}]},
        manager,
    )
    assert wider.status_code == 403
    narrower = world.post(
        "/v1/tokens",
        {"name": "n", "policies": [{"keys": ["app-one"], "operations": ["encrypt"]}]},
        manager,
    )
    assert narrower.status_code == 201

    ids = {
        t["id"]
        for t in _ok(world.client.get("/v1/tokens?limit=1000", headers=world.auth))["tokens"]
    }
    assert info["id"] in ids
    read = _ok(world.client.get(f"/v1/tokens/{info['id']}", headers=world.auth))
    assert read == info
    assert world.client.get("/v1/tokens/0123456789abcdef", headers=world.auth).status_code == 404
    revoked = _ok(world.client.delete(f"/v1/tokens/{info['id']}", headers=world.auth))
    assert revoked["revoked_at"] is not None
    after = world.post("/v1/keys/app-one/encrypt", {"plaintext": "AA=="}, token)
    assert after.status_code == 401
    assert after.json()["error"]["message"] == "token revoked"

    short = world.post(
        "/v1/tokens",
        {"name": "s", "policies": [{"operations": ["random"]}], "ttl_seconds": 60},
    )
    short_token = _ok(short, 201)["token"]
    assert world.post("/v1/random", {"bytes": 1}, short_token).status_code == 200
    world.clock.advance(timedelta(seconds=61))
    expired = world.post("/v1/random", {"bytes": 1}, short_token)
    assert expired.status_code == 401
    assert expired.json()["error"]["message"] == "token expired"


def test_audit_head_matches_the_stored_chain(world: World) -> None:
    head = _ok(world.client.get("/v1/audit", headers=world.auth))
    verified = verify_chain(world.storage.audit_records())
    # The head was read before this request's own record was appended.
    assert head["records"] == verified.records - 1
    assert head["head_seq"] == head["records"] - 1
    assert head["public_key_sha256"] == verified.public_key_sha256
    reader = world.token(["audit.read"])
    assert world.client.get("/v1/audit", headers=world.bearer(reader)).status_code == 200
    assert (
        world.client.get("/v1/audit", headers=world.bearer(world.token(["random"]))).status_code
        == 403
    )


def test_every_success_is_audited_with_actor_op_and_target(world: World) -> None:
    _create(world, "audited")
    r = world.post("/v1/keys/audited/encrypt", {"plaintext": b64(b"audit me")})
    request_id = r.headers["x-request-id"]
    events = {e["request_id"]: e for e in world.audit_events()}
    event = events[request_id]
    admin_id = world.admin.split("_")[1]
    assert (event["actor"], event["op"], event["target"], event["outcome"]) == (
        admin_id,
        "encrypt",
        "audited",
        "ok",
    )
    verify_chain(world.storage.audit_records())


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_documents_operations_and_our_errors(world: World) -> None:
    schema = _ok(world.client.get("/openapi.json"))
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    operations = [op for item in schema["paths"].values() for op in item.values()]
    assert len(operations) == 46  # 4 key release, 3 recovery, 4 replica join, 3 ready/replicas
    for op in operations:
        assert "x-operation" in op
        assert "422" not in op["responses"]
        assert op["responses"]["4XX"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"
        }
        assert ("security" in op) == ("x-permission" in op)
    docs = world.client.get("/docs")
    assert docs.status_code == 200
    # No third-party (or any) script: the page is rendered in the enclave, and says so.
    assert "<script" not in docs.text.lower()
    assert "script-src" not in docs.headers["content-security-policy"]
    assert docs.headers["content-security-policy"].startswith("default-src 'none'")
    assert "/v1/keys/{name}/encrypt" in docs.text


def test_routes_answer_alike_from_memory_and_from_storage(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inline routes run on the event loop when their records are held and on a worker
    thread when they must be read from storage: same answers either way."""
    import threading

    assert world.post("/v1/keys", {"name": "inline-k", "type": "aes256-gcm"}).status_code == 201
    reads: list[str] = []
    real_get = world.storage.get

    def get(kind: str, id: str) -> Any:
        reads.append(threading.current_thread().name)
        return real_get(kind, id)

    monkeypatch.setattr(world.storage, "get", get)
    plain = b64(b"same either way")
    ct = world.post("/v1/keys/inline-k/encrypt", {"plaintext": plain}).json()["ciphertext"]
    assert reads == []  # token and key held: no storage read at all
    world.forget()
    r = world.post("/v1/keys/inline-k/decrypt", {"ciphertext": ct})
    assert r.status_code == 200
    assert r.json()["plaintext"] == plain
    assert reads  # read from storage (on a worker thread: the loop's would raise WouldBlock)
    reads.clear()
    r = world.post("/v1/keys/inline-k/decrypt", {"ciphertext": ct})
    assert r.json()["plaintext"] == plain
    assert reads == []  # held again
