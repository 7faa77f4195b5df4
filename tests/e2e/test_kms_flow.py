"""End to end on real processes: serve, init, every key type and operation, rotation,
`min_decryption_version`, disable, scheduled deletion, BYOK, batch, tokens with narrow
policies; then a restart on the same data directory after which every key still works.

Each test leaves checks in `memo` that the last test runs again after the restart (old
ciphertexts still decrypt, signatures still verify with the same public keys, tokens keep
their rights), so the restart is checked against everything the earlier tests did.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import cbor2
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.ratls import (
    OE_FORMAT_UUID_SGX_ECDSA,
    RaTlsForm,
    verify_ratls_certificate,
)
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.errors import ConfigError, UnsupportedFormatError
from enclave_kms.host.service import ServeOptions, start
from enclave_kms.sgx.oe import OeEvidence
from tests.e2e.conftest import CLI, Server, b64, fails, ok, unb64

pytestmark = pytest.mark.slow

Check = Callable[[httpx.Client], None]
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass
class Memo:
    """What must still hold after the restart, and each key's metadata before it."""

    checks: list[tuple[str, Check]] = field(default_factory=list)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    def later(self, what: str, check: Check) -> None:
        self.checks.append((what, check))

    def remember(self, c: httpx.Client, name: str) -> None:
        self.keys[name] = ok(c.get(f"/v1/keys/{name}"))


@pytest.fixture(scope="module")
def memo() -> Memo:
    return Memo()


@pytest.fixture
def c(kms: Server) -> Iterator[httpx.Client]:
    with kms.client() as client:
        yield client


def create(c: httpx.Client, name: str, type: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, **extra}
    if type is not None:
        body["type"] = type
    meta: dict[str, Any] = ok(c.post("/v1/keys", json=body), 201)
    assert meta["name"] == name
    assert meta["latest_version"] == 1
    return meta


def encrypt(c: httpx.Client, key: str, plaintext: bytes, aad: bytes | None = None) -> str:
    body: dict[str, Any] = {"plaintext": b64(plaintext)}
    if aad is not None:
        body["associated_data"] = b64(aad)
    ciphertext: str = ok(c.post(f"/v1/keys/{key}/encrypt", json=body))["ciphertext"]
    return ciphertext


def decrypt_resp(c: httpx.Client, key: str, ciphertext: str, aad: bytes | None) -> httpx.Response:
    body: dict[str, Any] = {"ciphertext": ciphertext}
    if aad is not None:
        body["associated_data"] = b64(aad)
    return c.post(f"/v1/keys/{key}/decrypt", json=body)


def decrypt(c: httpx.Client, key: str, ciphertext: str, aad: bytes | None = None) -> bytes:
    return unb64(ok(decrypt_resp(c, key, ciphertext, aad))["plaintext"])


def version_of(tagged: str) -> int:
    prefix, version, _ = tagged.split(":", 2)
    assert prefix == "ekms"
    return int(version.removeprefix("v"))


def decrypts_later(
    memo: Memo, key: str, ciphertext: str, plaintext: bytes, aad: bytes | None
) -> None:
    def check(c: httpx.Client) -> None:
        assert decrypt(c, key, ciphertext, aad) == plaintext

    memo.later(f"{key}: {ciphertext[:12]}… decrypts", check)


# --------------------------------------------------------------------------- attestation


def test_served_certificate_carries_evidence_that_verifies(kms: Server, c: httpx.Client) -> None:
    parts = urlsplit(kms.url)
    assert parts.hostname is not None
    assert parts.port is not None
    served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((parts.hostname, parts.port)))
    now = datetime.now(UTC)
    quote, form = verify_ratls_certificate(served, now=now)
    # DICE tagged evidence (appraised) beside Gramine's legacy quote, as Gramine >= 1.8.
    assert form is RaTlsForm.DICE
    oids = {e.oid.dotted_string for e in x509.load_der_x509_certificate(served).extensions}
    assert {"2.23.133.5.4.9", "1.2.840.113741.1337.6"} <= oids

    nonce = os.urandom(32)
    att = ok(c.get("/v1/attestation", params={"nonce": nonce.hex()}))
    collateral = load_collateral(json.dumps(att["collateral"]).encode())
    root = TrustRoot.from_pem(kms.live.root_path.read_bytes())
    verified = verify_quote(quote, collateral, trust_root=root, now=now)
    assert verified.simulated_root
    identity = kms.live.identity
    assert verified.report_body.mr_enclave.hex() == identity["mr_enclave"]
    assert verified.report_body.mr_signer.hex() == identity["mr_signer"]
    assert ok(c.get("/v1/health"))["identity"] == identity

    # Liveness evidence: fresh, bound to the served key and to our nonce.
    cert = x509.load_der_x509_certificate(served)
    assert x509.load_pem_x509_certificate(att["certificate_pem"].encode()) == cert
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_hash = hashlib.sha256(spki).digest()
    assert att["spki_sha256"] == spki_hash.hex()
    fresh = verify_quote(unb64(att["quote"]), collateral, trust_root=root, now=now)
    assert fresh.report_body.report_data[:32] == hashlib.sha256(spki_hash + nonce).digest()
    assert fresh.report_body.mr_enclave == verified.report_body.mr_enclave


def test_a_second_server_on_the_same_data_dir_is_refused(kms: Server, c: httpx.Client) -> None:
    """The enclave holds records in memory as their only writer: a second server on the same
    store would make that untrue (and fork the audit chain), so it is refused up front."""
    with pytest.raises(ConfigError, match="in use by another enclave-kms server"):
        start(ServeOptions(data_dir=kms.data_dir, port=0))
    assert ok(c.get("/v1/health"))["status"] == "ok"  # the running one is untouched


def test_tutorial_enclave_info_shows_a_good_binding(kms: Server) -> None:
    info = kms.live.info_path
    as_json = subprocess.run(
        [str(CLI), "quote", "inspect", str(info), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["held_data_bound"] is True
    assert summary["mr_enclave"] == kms.live.identity["mr_enclave"]

    shown = subprocess.run(
        [str(CLI), "quote", "inspect", str(info)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    bound = [line for line in shown.stdout.splitlines() if "Held data bound" in line]
    assert len(bound) == 1, shown.stdout
    cells = [cell.strip() for cell in bound[0].split("│") if cell.strip()]
    assert cells == ["Held data bound by report_data", "yes"], bound[0]


# --------------------------------------------------------------------------- symmetric


def test_aes_encrypt_decrypt_rewrap_datakey(c: httpx.Client, memo: Memo) -> None:
    meta = create(c, "flow-aes")  # the default type
    assert meta["type"] == "aes256-gcm"
    assert meta["public_key_pem"] is None

    plain, aad = os.urandom(50), b"order 42"
    bare = encrypt(c, "flow-aes", plain)
    with_aad = encrypt(c, "flow-aes", plain, aad)
    assert version_of(bare) == 1
    assert bare != encrypt(c, "flow-aes", plain)  # a fresh nonce every time
    assert decrypt(c, "flow-aes", bare) == plain
    assert decrypt(c, "flow-aes", with_aad, aad) == plain
    fails(decrypt_resp(c, "flow-aes", with_aad, None), 400, "crypto_failed")
    fails(decrypt_resp(c, "flow-aes", with_aad, b"order 43"), 400, "crypto_failed")
    fails(decrypt_resp(c, "flow-aes", bare, aad), 400, "crypto_failed")
    assert decrypt(c, "flow-aes", encrypt(c, "flow-aes", b"")) == b""

    rewrapped = ok(
        c.post(
            "/v1/keys/flow-aes/rewrap", json={"ciphertext": with_aad, "associated_data": b64(aad)}
        )
    )["ciphertext"]
    assert rewrapped != with_aad
    assert decrypt(c, "flow-aes", rewrapped, aad) == plain

    dk = ok(c.post("/v1/keys/flow-aes/datakey", json={}))
    assert len(unb64(dk["plaintext"])) == 32
    assert decrypt(c, "flow-aes", dk["ciphertext"]) == unb64(dk["plaintext"])
    wrapped_only = ok(
        c.post(
            "/v1/keys/flow-aes/datakey",
            json={"include_plaintext": False, "associated_data": b64(aad)},
        )
    )
    assert wrapped_only["plaintext"] is None
    assert len(decrypt(c, "flow-aes", wrapped_only["ciphertext"], aad)) == 32

    # A ciphertext of another key never opens here, even with equal versions.
    create(c, "flow-aes-other")
    foreign = encrypt(c, "flow-aes-other", plain)
    fails(decrypt_resp(c, "flow-aes", foreign, None), 400, "crypto_failed")
    fails(c.post("/v1/keys/flow-aes/sign", json={"input": b64(b"m")}), 409, "key_state")
    fails(decrypt_resp(c, "flow-nope", bare, None), 404, "not_found")

    decrypts_later(memo, "flow-aes", bare, plain, None)
    decrypts_later(memo, "flow-aes", with_aad, plain, aad)
    decrypts_later(memo, "flow-aes", dk["ciphertext"], unb64(dk["plaintext"]), None)
    decrypts_later(memo, "flow-aes-other", foreign, plain, None)
    memo.remember(c, "flow-aes")
    memo.remember(c, "flow-aes-other")


def test_batch_reports_per_item_errors(c: httpx.Client, memo: Memo) -> None:
    create(c, "flow-batch")
    create(c, "flow-batch-other")
    plains = [os.urandom(n) for n in (1, 17, 64)]
    aad = b"batch-aad"
    enc = ok(
        c.post(
            "/v1/keys/flow-batch/encrypt-batch",
            json={
                "items": [
                    {"plaintext": b64(plains[0])},
                    {"plaintext": b64(plains[1]), "associated_data": b64(aad)},
                    {"plaintext": b64(plains[2])},
                ]
            },
        )
    )["results"]
    assert [set(r) for r in enc] == [{"ciphertext"}] * 3
    cts = [r["ciphertext"] for r in enc]
    raw = bytearray(unb64(cts[2].split(":", 2)[2]))
    raw[-1] ^= 1
    altered = f"ekms:v1:{b64(bytes(raw))}"
    foreign = encrypt(c, "flow-batch-other", plains[0])
    dec = ok(
        c.post(
            "/v1/keys/flow-batch/decrypt-batch",
            json={
                "items": [
                    {"ciphertext": cts[0]},
                    {"ciphertext": cts[1], "associated_data": b64(aad)},
                    {"ciphertext": altered},
                    {"ciphertext": "not-a-ciphertext"},
                    {"ciphertext": cts[1]},  # the associated data is missing
                    {"ciphertext": foreign},
                    {"ciphertext": cts[2]},
                ]
            },
        )
    )["results"]
    assert [unb64(dec[i]["plaintext"]) for i in (0, 1, 6)] == [plains[0], plains[1], plains[2]]
    codes = [dec[i]["error"]["code"] for i in (2, 3, 4, 5)]
    assert codes == ["crypto_failed", "invalid_request", "crypto_failed", "crypto_failed"]
    assert all("plaintext" not in dec[i] for i in (2, 3, 4, 5))
    # A malformed request fails as a whole; so does a key-level failure.
    fails(c.post("/v1/keys/flow-batch/decrypt-batch", json={"items": []}), 400, "invalid_request")
    fails(
        c.post("/v1/keys/flow-unknown/encrypt-batch", json={"items": [{"plaintext": "YQ=="}]}),
        404,
        "not_found",
    )
    decrypts_later(memo, "flow-batch", cts[1], plains[1], aad)
    memo.remember(c, "flow-batch")


def test_rotation_min_decryption_version_disable_and_deletion(c: httpx.Client, memo: Memo) -> None:
    create(c, "flow-rotate")
    plain = os.urandom(40)
    cts = [encrypt(c, "flow-rotate", plain)]
    for expected in (2, 3):
        meta = ok(c.post("/v1/keys/flow-rotate/rotate"))
        assert meta["latest_version"] == expected
        assert [v["version"] for v in meta["versions"]] == list(range(1, expected + 1))
        cts.append(encrypt(c, "flow-rotate", plain))
    assert [version_of(ct) for ct in cts] == [1, 2, 3]
    assert all(decrypt(c, "flow-rotate", ct) == plain for ct in cts)  # old versions still work
    rewrapped = ok(c.post("/v1/keys/flow-rotate/rewrap", json={"ciphertext": cts[0]}))
    assert version_of(rewrapped["ciphertext"]) == 3

    meta = ok(c.patch("/v1/keys/flow-rotate", json={"min_decryption_version": 2}))
    assert meta["min_decryption_version"] == 2
    fails(decrypt_resp(c, "flow-rotate", cts[0], None), 409, "key_state")
    fails(c.post("/v1/keys/flow-rotate/rewrap", json={"ciphertext": cts[0]}), 409, "key_state")
    assert decrypt(c, "flow-rotate", cts[1]) == plain
    fails(
        c.patch("/v1/keys/flow-rotate", json={"min_decryption_version": 4}), 400, "invalid_request"
    )

    def still_below_minimum(c: httpx.Client) -> None:
        fails(decrypt_resp(c, "flow-rotate", cts[0], None), 409, "key_state")

    memo.later("flow-rotate: v1 stays below min_decryption_version", still_below_minimum)
    decrypts_later(memo, "flow-rotate", cts[1], plain, None)
    decrypts_later(memo, "flow-rotate", cts[2], plain, None)
    memo.remember(c, "flow-rotate")

    # Disable and enable.
    create(c, "flow-disabled")
    ct = encrypt(c, "flow-disabled", plain)
    assert ok(c.patch("/v1/keys/flow-disabled", json={"enabled": False}))["enabled"] is False
    fails(c.post("/v1/keys/flow-disabled/encrypt", json={"plaintext": "YQ=="}), 409, "key_state")
    fails(decrypt_resp(c, "flow-disabled", ct, None), 409, "key_state")
    assert ok(c.patch("/v1/keys/flow-disabled", json={"enabled": True}))["enabled"] is True
    assert decrypt(c, "flow-disabled", ct) == plain
    ok(c.patch("/v1/keys/flow-disabled", json={"enabled": False}))  # stays disabled over restart
    memo.remember(c, "flow-disabled")

    def disabled_then_enabled(c: httpx.Client) -> None:
        fails(decrypt_resp(c, "flow-disabled", ct, None), 409, "key_state")
        ok(c.patch("/v1/keys/flow-disabled", json={"enabled": True}))
        assert decrypt(c, "flow-disabled", ct) == plain

    memo.later("flow-disabled: still disabled, then enabled", disabled_then_enabled)

    # Scheduled deletion and its cancellation.
    create(c, "flow-deleted")
    ct_deleted = encrypt(c, "flow-deleted", plain)
    meta = ok(c.delete("/v1/keys/flow-deleted", params={"waiting_period_days": 1}))
    assert meta["deletion_scheduled_at"] is not None
    fails(decrypt_resp(c, "flow-deleted", ct_deleted, None), 409, "key_state")
    fails(c.post("/v1/keys/flow-deleted/rotate"), 409, "key_state")
    assert ok(c.post("/v1/keys/flow-deleted/restore"))["deletion_scheduled_at"] is None
    fails(c.post("/v1/keys/flow-deleted/restore"), 409, "conflict")
    assert decrypt(c, "flow-deleted", ct_deleted) == plain
    ok(c.delete("/v1/keys/flow-deleted"))  # stays scheduled over the restart
    memo.remember(c, "flow-deleted")

    def scheduled_then_restored(c: httpx.Client) -> None:
        fails(decrypt_resp(c, "flow-deleted", ct_deleted, None), 409, "key_state")
        ok(c.post("/v1/keys/flow-deleted/restore"))
        assert decrypt(c, "flow-deleted", ct_deleted) == plain

    memo.later("flow-deleted: still scheduled, then restored", scheduled_then_restored)


def test_hmac(c: httpx.Client, memo: Memo) -> None:
    create(c, "flow-hmac", "hmac-sha256")
    data = os.urandom(70)
    mac = ok(c.post("/v1/keys/flow-hmac/hmac", json={"input": b64(data)}))["mac"]
    assert len(unb64(mac.split(":", 2)[2])) == 32

    def verifies(c: httpx.Client, payload: bytes, tag: str) -> bool:
        answer = ok(
            c.post("/v1/keys/flow-hmac/verify-hmac", json={"input": b64(payload), "mac": tag})
        )
        valid: bool = answer["valid"]
        return valid

    assert verifies(c, data, mac)
    assert not verifies(c, data + b"!", mac)
    ok(c.post("/v1/keys/flow-hmac/rotate"))
    mac2 = ok(c.post("/v1/keys/flow-hmac/hmac", json={"input": b64(data)}))["mac"]
    assert version_of(mac2) == 2
    assert mac2 != mac
    assert verifies(c, data, mac)
    assert verifies(c, data, mac2)
    fails(c.post("/v1/keys/flow-hmac/encrypt", json={"plaintext": "YQ=="}), 409, "key_state")
    memo.remember(c, "flow-hmac")

    def both_verify(c: httpx.Client) -> None:
        assert verifies(c, data, mac)
        assert verifies(c, data, mac2)

    memo.later("flow-hmac: both versions still verify", both_verify)


# --------------------------------------------------------------------------- signatures


def _default_hash(key_type: str) -> str:
    return "sha384" if key_type == "ec-p384" else "sha256"


def local_verify(
    pem: str, message: bytes, signature: bytes, key_type: str, opts: dict[str, Any]
) -> None:
    """Verify with `cryptography` alone (raises InvalidSignature), as any client could."""
    public = serialization.load_pem_public_key(pem.encode())
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, message)
        return
    algorithm = _HASHES[opts.get("hash_algorithm") or _default_hash(key_type)]()
    if isinstance(public, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if opts.get("signature_algorithm") == "pkcs1v15"
            else padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
        )
        public.verify(signature, message, pad, algorithm)
        return
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, message, ec.ECDSA(algorithm))


_RSA_OPTS: list[dict[str, Any]] = [
    {},
    {"signature_algorithm": "pss", "hash_algorithm": "sha384"},
    {"signature_algorithm": "pkcs1v15"},
    {"signature_algorithm": "pkcs1v15", "hash_algorithm": "sha512"},
    {"prehashed": True},
    {"prehashed": True, "signature_algorithm": "pkcs1v15", "hash_algorithm": "sha384"},
]
_EC_OPTS: list[dict[str, Any]] = [{}, {"hash_algorithm": "sha512"}, {"prehashed": True}]
_SIGNING: dict[str, list[dict[str, Any]]] = {
    "rsa-2048": _RSA_OPTS,
    "rsa-3072": _RSA_OPTS[:3],
    "rsa-4096": _RSA_OPTS[2:3],
    "ec-p256": _EC_OPTS,
    "ec-p384": _EC_OPTS,
    "ed25519": [{}],
}


def sign_and_check(
    c: httpx.Client, key: str, key_type: str, pem: str, message: bytes, opts: dict[str, Any]
) -> str:
    """Sign through the API, check it with the API and locally; returns the signature."""
    digest_name = opts.get("hash_algorithm") or _default_hash(key_type)
    data = hashlib.new(digest_name, message).digest() if opts.get("prehashed") else message
    body = {"input": b64(data), **opts}
    signature: str = ok(c.post(f"/v1/keys/{key}/sign", json=body))["signature"]
    assert ok(c.post(f"/v1/keys/{key}/verify", json={**body, "signature": signature}))["valid"]
    local_verify(pem, message, unb64(signature.split(":", 2)[2]), key_type, opts)
    return signature


@pytest.mark.parametrize("key_type", list(_SIGNING))
def test_signing_key_types(c: httpx.Client, memo: Memo, key_type: str) -> None:
    name = f"flow-sign-{key_type}"
    meta = create(c, name, key_type)
    assert meta["type"] == key_type
    pem = meta["public_key_pem"]
    assert pem
    assert "PRIVATE" not in json.dumps(meta)
    message = os.urandom(100)
    signatures = [
        (opts, sign_and_check(c, name, key_type, pem, message, opts)) for opts in _SIGNING[key_type]
    ]

    # A wrong signature, or one over other data, is simply not valid.
    opts, good = signatures[0]
    raw = bytearray(unb64(good.split(":", 2)[2]))
    raw[len(raw) // 2] ^= 0x40
    bad = f"ekms:v1:{b64(bytes(raw))}"
    for sig, data in ((bad, message), (good, message + b"x")):
        answer = ok(
            c.post(f"/v1/keys/{name}/verify", json={"input": b64(data), "signature": sig, **opts})
        )
        assert answer["valid"] is False
    if key_type == "ed25519":
        fails(
            c.post(f"/v1/keys/{name}/sign", json={"input": "YQ==", "prehashed": True}),
            400,
            "invalid_request",
        )
    fails(c.post(f"/v1/keys/{name}/encrypt", json={"plaintext": "YQ=="}), 409, "key_state")
    memo.remember(c, name)

    def still_verifies(c: httpx.Client) -> None:
        now_meta = ok(c.get(f"/v1/keys/{name}"))
        assert now_meta["versions"][0]["public_key_pem"] == pem
        for opts, signature in signatures:
            digest_name = opts.get("hash_algorithm") or _default_hash(key_type)
            data = hashlib.new(digest_name, message).digest() if opts.get("prehashed") else message
            body = {"input": b64(data), "signature": signature, **opts}
            assert ok(c.post(f"/v1/keys/{name}/verify", json=body))["valid"]
        sign_and_check(c, name, key_type, now_meta["public_key_pem"], message, signatures[0][0])

    memo.later(f"{name}: signatures verify with the same public key", still_verifies)


def test_signing_key_rotation_keeps_old_signatures(c: httpx.Client, memo: Memo) -> None:
    name = "flow-sign-rotated"
    pem1 = create(c, name, "ec-p256")["public_key_pem"]
    message = os.urandom(30)
    sig1 = sign_and_check(c, name, "ec-p256", pem1, message, {})
    meta = ok(c.post(f"/v1/keys/{name}/rotate"))
    pem2 = meta["public_key_pem"]
    assert pem2 != pem1
    assert meta["versions"][0]["public_key_pem"] == pem1
    sig2 = sign_and_check(c, name, "ec-p256", pem2, message, {})
    assert (version_of(sig1), version_of(sig2)) == (1, 2)
    for sig in (sig1, sig2):
        assert ok(
            c.post(f"/v1/keys/{name}/verify", json={"input": b64(message), "signature": sig})
        )["valid"]
    memo.remember(c, name)


# --------------------------------------------------------------------------- keyless


def test_random_and_the_tutorial_endpoints(c: httpx.Client) -> None:
    first = unb64(ok(c.post("/v1/random", json={"bytes": 48}))["random"])
    second = unb64(ok(c.post("/v1/random", json={"bytes": 48}))["random"])
    assert len(first) == len(second) == 48
    assert first != second
    fails(c.post("/v1/random", json={"bytes": 0}), 400, "invalid_request")

    aes = unb64(ok(c.post("/generate-aes-key"))["aes_key"])
    assert len(aes) == 32
    pair = ok(c.post("/generate-rsa-key-pair"))
    private = serialization.load_pem_private_key(pair["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public.decode() == pair["public_key"]
    fails(c.post("/generate-aes-key", headers={"Authorization": ""}), 401, "unauthenticated")


# --------------------------------------------------------------------------- BYOK


def test_byok_import_and_export(c: httpx.Client, memo: Memo) -> None:
    wrapping = ok(c.get("/v1/sys/wrapping-key"))
    assert set(wrapping["schemes"]) >= {"RSA-OAEP-SHA256", "RSA-OAEP-SHA256+AES-KWP"}
    public = serialization.load_pem_public_key(wrapping["public_key_pem"].encode())
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 4096

    def wrap(material: bytes) -> bytes:
        return public.encrypt(material, _OAEP)

    def wrap_kwp(material: bytes) -> bytes:
        kek = os.urandom(32)
        return public.encrypt(kek, _OAEP) + aes_key_wrap_with_padding(kek, material)

    def import_key(name: str, key_type: str, wrapped: bytes, **extra: Any) -> dict[str, Any]:
        body = {"name": name, "type": key_type, "wrapped_material": b64(wrapped), **extra}
        meta: dict[str, Any] = ok(c.post("/v1/keys/import", json=body), 201)
        assert meta["versions"][-1]["imported"] is True
        return meta

    # AES, exportable: what the service encrypts opens locally with our material.
    aes1, aes2 = os.urandom(32), os.urandom(32)
    import_key("flow-byok-aes", "aes256-gcm", wrap(aes1), exportable=True)
    plain, aad = os.urandom(33), b"byok"
    ct = encrypt(c, "flow-byok-aes", plain, aad)
    raw = unb64(ct.split(":", 2)[2])
    local_aad = cbor2.dumps(["enclave-kms/encrypt/v1", "flow-byok-aes", 1, aad], canonical=True)
    assert AESGCM(aes1).decrypt(raw[:12], raw[12:], local_aad) == plain
    meta = ok(
        c.post("/v1/keys/flow-byok-aes/import", json={"wrapped_material": b64(wrap_kwp(aes2))})
    )
    assert meta["latest_version"] == 2
    exported = ok(c.get("/v1/keys/flow-byok-aes/export", params={"version": 1}))
    assert unb64(exported["material"]) == aes1
    assert unb64(ok(c.get("/v1/keys/flow-byok-aes/export"))["material"]) == aes2
    decrypts_later(memo, "flow-byok-aes", ct, plain, aad)
    memo.remember(c, "flow-byok-aes")

    # HMAC, not exportable: the service's MAC is ours.
    mac_key = os.urandom(48)
    import_key("flow-byok-hmac", "hmac-sha256", wrap(mac_key))
    data = os.urandom(20)
    mac = ok(c.post("/v1/keys/flow-byok-hmac/hmac", json={"input": b64(data)}))["mac"]
    assert unb64(mac.split(":", 2)[2]) == hmac.new(mac_key, data, hashlib.sha256).digest()
    fails(c.get("/v1/keys/flow-byok-hmac/export"), 409, "key_state")
    memo.remember(c, "flow-byok-hmac")

    def same_mac(c: httpx.Client) -> None:
        assert ok(c.post("/v1/keys/flow-byok-hmac/hmac", json={"input": b64(data)}))["mac"] == mac

    memo.later("flow-byok-hmac: the imported key still MACs", same_mac)

    # Asymmetric: PKCS#8 EC and PKCS#1 RSA, wrapped with AES-KWP.
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_der = ec_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ec_pem = (
        ec_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert import_key("flow-byok-ec", "ec-p256", wrap_kwp(ec_der))["public_key_pem"] == ec_pem
    sign_and_check(c, "flow-byok-ec", "ec-p256", ec_pem, b"imported", {})
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_der = rsa_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    rsa_pem = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert import_key("flow-byok-rsa", "rsa-2048", wrap_kwp(rsa_der))["public_key_pem"] == rsa_pem
    sign_and_check(
        c, "flow-byok-rsa", "rsa-2048", rsa_pem, b"imported", {"signature_algorithm": "pkcs1v15"}
    )
    memo.remember(c, "flow-byok-ec")
    memo.remember(c, "flow-byok-rsa")

    def imported_sign(c: httpx.Client) -> None:
        sign_and_check(c, "flow-byok-ec", "ec-p256", ec_pem, b"after restart", {})
        sign_and_check(c, "flow-byok-rsa", "rsa-2048", rsa_pem, b"after restart", {})

    memo.later("imported asymmetric keys sign with the imported keys", imported_sign)

    # Refusals: wrapped to another key; material of the wrong type; not exportable.
    other = rsa.generate_private_key(65537, 4096).public_key()
    foreign = other.encrypt(os.urandom(32), _OAEP)
    body = {"name": "flow-byok-bad", "type": "aes256-gcm", "wrapped_material": b64(foreign)}
    fails(c.post("/v1/keys/import", json=body), 400, "crypto_failed")
    body = {"name": "flow-byok-bad", "type": "ec-p384", "wrapped_material": b64(wrap_kwp(ec_der))}
    fails(c.post("/v1/keys/import", json=body), 400, "invalid_request")
    fails(c.get("/v1/keys/flow-aes/export"), 409, "key_state")
    fails(c.get("/v1/keys/flow-byok-bad"), 404, "not_found")


# --------------------------------------------------------------------------- tokens


def test_tokens_with_narrow_policies(kms: Server, c: httpx.Client, memo: Memo) -> None:
    create(c, "app-orders")
    create(c, "flow-private")
    issued = ok(
        c.post(
            "/v1/tokens",
            json={
                "name": "orders-app",
                "policies": [{"keys": ["app-*"], "operations": ["encrypt", "decrypt"]}],
            },
        ),
        201,
    )
    app_token = issued["token"]
    assert app_token not in json.dumps(ok(c.get("/v1/tokens")))
    with kms.client(app_token) as app:
        ct = encrypt(app, "app-orders", b"order")
        assert decrypt(app, "app-orders", ct) == b"order"
        fails(
            app.post("/v1/keys/flow-private/encrypt", json={"plaintext": "YQ=="}),
            403,
            "permission_denied",
        )
        fails(app.post("/v1/keys/app-orders/rotate"), 403, "permission_denied")
        fails(app.post("/v1/keys", json={"name": "app-new"}), 403, "permission_denied")
        fails(app.get("/v1/tokens"), 403, "permission_denied")
        fails(app.post("/v1/random", json={"bytes": 8}), 403, "permission_denied")
        fails(app.post("/generate-aes-key"), 403, "permission_denied")

    # A token manager cannot hand out more than it holds.
    manager = ok(
        c.post(
            "/v1/tokens",
            json={
                "name": "app-manager",
                "policies": [{"keys": ["app-*"], "operations": ["encrypt", "tokens.manage"]}],
            },
        ),
        201,
    )["token"]
    with kms.client(manager) as m:
        wider = {"name": "wider", "policies": [{"keys": ["*"], "operations": ["encrypt"]}]}
        fails(m.post("/v1/tokens", json=wider), 403, "permission_denied")
        narrower = {
            "name": "narrower",
            "policies": [{"keys": ["app-o*"], "operations": ["encrypt"]}],
        }
        ok(m.post("/v1/tokens", json=narrower), 201)

    # 401: none, malformed, unknown, revoked, expired.
    with kms.client(anonymous=True) as anon:
        resp = anon.post("/v1/keys/app-orders/encrypt", json={"plaintext": "YQ=="})
        fails(resp, 401, "unauthenticated")
        assert resp.headers["www-authenticate"].startswith("Bearer")
    for bogus in ("garbage", "ekms_0123456789abcdef_" + "A" * 43):
        with kms.client(bogus) as bad:
            fails(bad.get("/v1/keys/app-orders"), 401, "unauthenticated")
    revoked = ok(
        c.post(
            "/v1/tokens",
            json={"name": "revoked", "policies": [{"keys": ["*"], "operations": ["encrypt"]}]},
        ),
        201,
    )
    ok(c.delete(f"/v1/tokens/{revoked['info']['id']}"))
    assert ok(c.get(f"/v1/tokens/{revoked['info']['id']}"))["revoked_at"] is not None
    short = ok(
        c.post(
            "/v1/tokens",
            json={
                "name": "short",
                "ttl_seconds": 1,
                "policies": [{"keys": ["*"], "operations": ["encrypt"]}],
            },
        ),
        201,
    )
    time.sleep(2.5)  # past the token's lifetime (not a timing assertion)
    for dead in (revoked["token"], short["token"]):
        with kms.client(dead) as d:
            fails(
                d.post("/v1/keys/app-orders/encrypt", json={"plaintext": "YQ=="}),
                401,
                "unauthenticated",
            )

    def rights_kept(c: httpx.Client) -> None:
        with kms.client(app_token) as app:
            assert decrypt(app, "app-orders", ct) == b"order"
            fails(
                app.post("/v1/keys/flow-private/encrypt", json={"plaintext": "YQ=="}),
                403,
                "permission_denied",
            )
        with kms.client(revoked["token"]) as d:
            fails(d.get("/v1/keys/app-orders"), 401, "unauthenticated")

    memo.later("tokens keep their rights; the revoked one stays revoked", rights_kept)
    memo.remember(c, "app-orders")


# --------------------------------------------------------------------------- restart


def test_restart_every_key_still_works(kms: Server, memo: Memo) -> None:
    assert memo.checks, "run with the tests above: they leave what the restart must keep"
    old_pid = kms.live.enclave.pid
    kms.restart()
    assert kms.live.enclave.pid != old_pid
    with kms.client() as c:
        health = ok(c.get("/v1/health"))
        assert health["initialized"] is True
        fails(c.post("/v1/sys/init"), 409, "conflict")
        listed: dict[str, dict[str, Any]] = {}
        after = ""
        while True:
            page = ok(c.get("/v1/keys", params={"after": after, "limit": 7}))
            assert page["unreadable"] == []
            listed.update({k["name"]: k for k in page["keys"]})
            if page["next_after"] is None:
                break
            after = page["next_after"]
        for name, before in memo.keys.items():
            assert listed[name] == before, name
        for _what, check in memo.checks:
            check(c)
        for name, before in memo.keys.items():
            if (
                before["type"] == "aes256-gcm"
                and before["enabled"]
                and not before["deletion_scheduled_at"]
            ):
                assert decrypt(c, name, encrypt(c, name, b"new")) == b"new"

        head = ok(c.get("/v1/audit"))
    records = kms.live.storage.audit_records()
    verified = verify_chain(records, head["public_key_sha256"])
    assert verified.records >= head["records"]
    assert verify_chain(records[: head["records"]]).last_hash.hex() == head["head_hash"]


def test_evidence_with_pub_key_carries_the_tutorial_claims(kms: Server, c: httpx.Client) -> None:
    """The tutorial's get_evidence_with_pub_key ECALL: OE evidence whose custom claims are
    "Event" and "Public key hash" (of the padded PEM key), bound by a quote that verifies."""
    reply = kms.live.enclave.call(
        "get_evidence_with_pub_key", format_id=OE_FORMAT_UUID_SGX_ECDSA, format_settings=None
    )
    evidence = OeEvidence.parse(reply["evidence"])
    evidence.check_binding()
    claims = {claim.name: claim.value for claim in evidence.custom_claims()}
    assert set(claims) == {"Event", "Public key hash"}
    assert claims["Public key hash"] == hashlib.sha256(reply["pem_key"]).digest()
    assert reply["pem_key"].startswith(b"-----BEGIN PUBLIC KEY-----")
    assert len(reply["pem_key"]) == 512
    att = ok(c.get("/v1/attestation", params={"nonce": os.urandom(16).hex()}))
    collateral = load_collateral(json.dumps(att["collateral"]).encode())
    root = TrustRoot.from_pem(kms.live.root_path.read_bytes())
    verified = verify_quote(
        evidence.quote.to_bytes(), collateral, trust_root=root, now=datetime.now(UTC)
    )
    assert verified.mr_enclave.hex() == kms.live.identity["mr_enclave"]
    with pytest.raises(UnsupportedFormatError, match="not SGX_ECDSA"):
        kms.live.enclave.call(
            "get_evidence_with_pub_key", format_id=bytes(16), format_settings=None
        )
