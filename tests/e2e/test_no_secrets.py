"""Nothing secret crosses the boundary: during a full flow on real processes, every EDL frame
(both directions, as bytes on the wire), every enclave stderr line, every host log line and
the host's files are searched for the secrets of that flow — the admin and other tokens,
every client plaintext and message, data keys, exported and imported key material, random
bytes, generated keys — in raw, hex and base64 forms (at every base64 alignment).

The search is not vacuous: every secret is found, by the same search, in the HTTPS exchange
where it legitimately travels, and non-secret values that do cross the boundary (key names,
token ids, sealed blobs) are found in the frames.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from enclave_kms.client.release import Recipient, ReleaseAnswer
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.tdx import TdIdentity
from tests.e2e.conftest import Recorder, Server, b64, fails, ok, unb64

pytestmark = pytest.mark.slow

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_MIN_NEEDLE = 16


def b64_cores(secret: bytes, *, urlsafe: bool) -> list[bytes]:
    """The base64 text of `secret` as it appears inside any longer base64 string: for each of
    the three alignments, only the characters that depend on `secret` alone."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    cores = []
    for shift in range(3):
        text = encode(bytes(shift) + secret)
        start = 4 if shift else 0  # the first group mixes in the bytes before the secret
        end = (shift + len(secret)) // 3 * 4  # the last partial group mixes in what follows
        cores.append(text[start:end].rstrip(b"="))
    return cores


def forms(secret: bytes) -> list[bytes]:
    """Raw, hex (both cases), standard and URL-safe base64 at every alignment."""
    found = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    found += b64_cores(secret, urlsafe=False) + b64_cores(secret, urlsafe=True)
    return [f for f in dict.fromkeys(found) if len(f) >= _MIN_NEEDLE]


@dataclass
class Needles:
    secrets: dict[str, bytes] = field(default_factory=dict)

    def add(self, label: str, secret: bytes | str) -> None:
        value = secret.encode() if isinstance(secret, str) else secret
        assert len(value) >= _MIN_NEEDLE, label
        self.secrets[label] = value

    def add_token(self, label: str, token: str) -> None:
        self.add(label, token)
        secret = token.split("_", 2)[2]  # ekms_<id>_<secret>; the secret may hold "_"
        self.add(f"{label} (secret part)", secret)
        self.add(f"{label} (secret bytes)", base64.urlsafe_b64decode(secret + "="))

    def add_pem(self, label: str, pem: str) -> None:
        """A PEM private key: its DER, and each body line but the first (the first holds
        the algorithm header shared by every key of the type)."""
        self.add(
            label,
            serialization.load_pem_private_key(pem.encode(), None).private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
        for index, line in enumerate(lines[1:-1], start=1):
            self.add(f"{label} PEM line {index}", line)

    def found_in(self, haystacks: list[tuple[str, bytes]]) -> list[str]:
        """'secret label in haystack name' for every secret found in any form."""
        hits = []
        for label, secret in self.secrets.items():
            for form in forms(secret):
                hits += [f"{label} in {name}" for name, hay in haystacks if form in hay]
        return hits


class Transcript:
    """The HTTPS exchange on the client side: where secrets legitimately travel."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def on_request(self, request: httpx.Request) -> None:
        self.parts.append(request.headers.get("authorization", "").encode())
        self.parts.append(request.read())

    def on_response(self, response: httpx.Response) -> None:
        self.parts.append(response.read())

    def attach(self, client: httpx.Client) -> httpx.Client:
        client.event_hooks = {"request": [self.on_request], "response": [self.on_response]}
        return client


@pytest.fixture
def transcript() -> Transcript:
    return Transcript()


@pytest.fixture
def c(kms: Server, transcript: Transcript) -> Iterator[httpx.Client]:
    with transcript.attach(kms.client()) as client:
        yield client


def test_search_finds_every_form() -> None:
    secret = os.urandom(32)
    for shift in range(3):
        text = base64.b64encode(os.urandom(shift) + secret + os.urandom(5))
        assert any(core in text for core in b64_cores(secret, urlsafe=False))
    wrapped = b"prefix" + secret.hex().upper().encode() + b"suffix"
    assert any(form in wrapped for form in forms(secret))
    assert not any(form in os.urandom(4096) for form in forms(secret))


def test_no_secret_crosses_the_boundary(
    kms: Server, flow_recorder: Recorder, c: httpx.Client, transcript: Transcript
) -> None:
    tag = os.urandom(4).hex()
    needles = Needles()
    needles.add_token("admin token", kms.token)
    names = {}

    # Keys of every type (exportable, so their material can be searched for too).
    for key_type in ("aes256-gcm", "hmac-sha256", "rsa-2048", "ec-p256", "ec-p384", "ed25519"):
        name = f"nosecret-{key_type}-{tag}"
        names[key_type] = name
        ok(c.post("/v1/keys", json={"name": name, "type": key_type, "exportable": True}), 201)
        material = unb64(ok(c.get(f"/v1/keys/{name}/export"))["material"])
        needles.add(f"{key_type} key material", material)
    aes, mac_key, signer = names["aes256-gcm"], names["hmac-sha256"], names["rsa-2048"]

    # Encryption in every form.
    for index in range(3):
        plain = os.urandom(48)
        needles.add(f"plaintext {index}", plain)
        ct = ok(c.post(f"/v1/keys/{aes}/encrypt", json={"plaintext": b64(plain)}))["ciphertext"]
        assert (
            unb64(ok(c.post(f"/v1/keys/{aes}/decrypt", json={"ciphertext": ct}))["plaintext"])
            == plain
        )
        ok(c.post(f"/v1/keys/{aes}/rewrap", json={"ciphertext": ct}))
    batch = [os.urandom(40) for _ in range(4)]
    for index, plain in enumerate(batch):
        needles.add(f"batch plaintext {index}", plain)
    enc = ok(
        c.post(
            f"/v1/keys/{aes}/encrypt-batch", json={"items": [{"plaintext": b64(p)} for p in batch]}
        )
    )
    items = [{"ciphertext": r["ciphertext"]} for r in enc["results"]] + [
        {"ciphertext": "ekms:v1:AAAA"}
    ]
    ok(c.post(f"/v1/keys/{aes}/decrypt-batch", json={"items": items}))
    ok(c.post(f"/v1/keys/{aes}/rotate"))
    dk = ok(c.post(f"/v1/keys/{aes}/datakey", json={}))
    needles.add("data key", unb64(dk["plaintext"]))
    wrapped_only = ok(c.post(f"/v1/keys/{aes}/datakey", json={"include_plaintext": False}))
    hidden = unb64(
        ok(c.post(f"/v1/keys/{aes}/decrypt", json={"ciphertext": wrapped_only["ciphertext"]}))[
            "plaintext"
        ]
    )
    needles.add("data key (wrapped only)", hidden)

    # Failures must not leak what was sent either.
    leaked = os.urandom(40)
    needles.add("plaintext of refused requests", leaked)
    fails(
        c.post(f"/v1/keys/{aes}/encrypt", json={"plaintext": b64(leaked), "extra": 1}),
        400,
        "invalid_request",
    )
    fails(
        c.post(f"/v1/keys/{aes}/encrypt", json={"plaintext": b64(leaked)[:-1]}),
        400,
        "invalid_request",
    )
    fails(
        c.post(f"/v1/keys/{aes}/encrypt", json={"plaintext": leaked.hex() + "@"}),
        400,
        "invalid_request",
    )
    fails(
        c.post(f"/v1/keys/nosecret-none-{tag}/encrypt", json={"plaintext": b64(leaked)}),
        404,
        "not_found",
    )
    ct = ok(
        c.post(
            f"/v1/keys/{aes}/encrypt", json={"plaintext": b64(leaked), "associated_data": "YQ=="}
        )
    )
    fails(
        c.post(f"/v1/keys/{aes}/decrypt", json={"ciphertext": ct["ciphertext"]}),
        400,
        "crypto_failed",
    )

    # Signatures and MACs over secret messages.
    for key_type in ("rsa-2048", "ec-p256", "ec-p384", "ed25519"):
        message = os.urandom(64)
        needles.add(f"message signed by {key_type}", message)
        sig = ok(c.post(f"/v1/keys/{names[key_type]}/sign", json={"input": b64(message)}))[
            "signature"
        ]
        body = {"input": b64(message), "signature": sig}
        assert ok(c.post(f"/v1/keys/{names[key_type]}/verify", json=body))["valid"]
    digest = os.urandom(32)
    needles.add("prehashed digest", digest)
    ok(
        c.post(
            f"/v1/keys/{signer}/sign",
            json={"input": b64(digest), "prehashed": True, "signature_algorithm": "pkcs1v15"},
        )
    )
    mac_input = os.urandom(64)
    needles.add("HMAC input", mac_input)
    mac = ok(c.post(f"/v1/keys/{mac_key}/hmac", json={"input": b64(mac_input)}))["mac"]
    assert ok(
        c.post(f"/v1/keys/{mac_key}/verify-hmac", json={"input": b64(mac_input), "mac": mac})
    )["valid"]

    # Keyless: random bytes and the tutorial's generated keys.
    needles.add("random bytes", unb64(ok(c.post("/v1/random", json={"bytes": 64}))["random"]))
    needles.add("tutorial AES key", unb64(ok(c.post("/generate-aes-key"))["aes_key"]))
    needles.add_pem("tutorial RSA private key", ok(c.post("/generate-rsa-key-pair"))["private_key"])

    # BYOK: material wrapped on the client side.
    wrapping = ok(c.get("/v1/sys/wrapping-key"))
    public = serialization.load_pem_public_key(wrapping["public_key_pem"].encode())
    assert isinstance(public, rsa.RSAPublicKey)
    byok_aes, byok_mac = os.urandom(32), os.urandom(64)
    byok_ec = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    needles.add("imported AES material", byok_aes)
    needles.add("imported HMAC key", byok_mac)
    needles.add("imported EC private key", byok_ec)
    kek = os.urandom(32)
    needles.add("BYOK key-encryption key", kek)
    imports = [
        ("aes256-gcm", public.encrypt(byok_aes, _OAEP)),
        ("hmac-sha256", public.encrypt(byok_mac, _OAEP)),
        ("ec-p384", public.encrypt(kek, _OAEP) + aes_key_wrap_with_padding(kek, byok_ec)),
    ]
    for key_type, wrapped in imports:
        body = {
            "name": f"nosecret-byok-{key_type}-{tag}",
            "type": key_type,
            "wrapped_material": b64(wrapped),
            "exportable": True,
        }
        ok(c.post("/v1/keys/import", json=body), 201)
    ok(c.post(f"/v1/keys/nosecret-byok-hmac-sha256-{tag}/hmac", json={"input": b64(mac_input)}))
    for key_type, material in (
        ("aes256-gcm", byok_aes),
        ("hmac-sha256", byok_mac),
        ("ec-p384", byok_ec),
    ):
        exported = ok(c.get(f"/v1/keys/nosecret-byok-{key_type}-{tag}/export"))
        assert unb64(exported["material"]) == material

    # Key release to a (simulated) TD: the released data key reaches only the TD's key.
    platform = SimPlatform.open(kms.data_dir / "platform")
    root = platform.trust_root().spki_sha256
    td = TdIdentity(mr_td=hashlib.sha384(tag.encode()).digest())
    policy = f'mr_td = ["{td.mr_td.hex()}"]\nsimulated_root = "{root}"\n'
    ok(c.put(f"/v1/keys/{aes}/release-policy", json={"policy_toml": policy}))
    recipient = Recipient.generate()
    nonce = unb64(ok(c.post("/v1/release/nonce"))["nonce"])
    body = {
        "operation": "datakey",
        "nonce": b64(nonce),
        "evidence": b64(platform.td_quote(td, recipient.report_data(nonce))),
        "recipient_public_key": b64(recipient.public_key),
    }
    doc = ok(c.post(f"/v1/keys/{aes}/release", json=body))
    answer = ReleaseAnswer.parse(doc, nonce)
    assert answer.operation == "datakey"
    needles.add("released data key", recipient.open(answer))

    # Tokens: issued ones, and ones clients present that the server does not know.
    issued = ok(
        c.post(
            "/v1/tokens",
            json={
                "name": f"nosecret-{tag}",
                "policies": [{"keys": [aes], "operations": ["encrypt"]}],
            },
        ),
        201,
    )
    needles.add_token("issued token", issued["token"])
    with transcript.attach(kms.client(issued["token"])) as app:
        ok(app.post(f"/v1/keys/{aes}/encrypt", json={"plaintext": b64(batch[0])}))
        fails(
            app.post(f"/v1/keys/{signer}/sign", json={"input": b64(batch[0])}),
            403,
            "permission_denied",
        )
    ok(c.delete(f"/v1/tokens/{issued['info']['id']}"))
    unknown = (
        "ekms_"
        + os.urandom(8).hex()
        + "_"
        + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    )
    needles.add_token("unknown token", unknown)
    for presented in (issued["token"], unknown, "Basic " + unknown):
        with transcript.attach(kms.client(presented)) as bad:
            fails(bad.get(f"/v1/keys/{aes}"), 401, "unauthenticated")

    # ---- the search
    frames, lines = flow_recorder.snapshot()
    assert {d for d, _ in frames} == {"send", "recv"}
    boundary = [(f"EDL frame {i} ({d})", wire) for i, (d, wire) in enumerate(frames)]
    boundary.append(("enclave stderr and host logs", "\n".join(lines).encode()))
    data_dir = kms.data_dir
    for path in sorted(data_dir.glob("kms.sqlite*")) + sorted(data_dir.glob("*.json")):
        boundary.append((f"host file {path.name}", path.read_bytes()))
    assert needles.found_in(boundary) == []

    # ---- the search is not vacuous
    exchange = [("HTTPS exchange", b"\n".join(transcript.parts))]
    found = {hit.split(" in ")[0] for hit in needles.found_in(exchange)}
    # The key-encryption key never travels in clear, not even to the enclave; the tutorial's
    # private key travels as PEM, whose lines are needles of their own.
    # A released key travels only HPKE-sealed to the workload: not even the client sees it.
    never_in_clear = {
        "BYOK key-encryption key",
        "tutorial RSA private key",
        "released data key",
    }
    assert found == set(needles.secrets) - never_in_clear, set(needles.secrets) - found
    # Non-secret values that do cross are found by the same search: names, ids, sealed blobs.
    controls = Needles()
    controls.add("a key name", aes)
    controls.add("a token id", issued["info"]["id"])
    with sqlite3.connect(data_dir / "kms.sqlite") as db:
        (blob,) = db.execute(
            "SELECT blob FROM records WHERE kind='key' AND id=?", (aes,)
        ).fetchone()
    controls.add("a sealed blob", bytes(blob))
    hits = {hit.split(" in ")[0] for hit in controls.found_in(boundary[: len(frames)])}
    assert hits == set(controls.secrets)
    assert any("serving HTTPS" in line for line in lines)
