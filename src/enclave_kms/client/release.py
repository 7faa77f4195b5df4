"""Key release from the SDK (DESIGN §15, docs/release.md): both sides of it.

Admin side: `set_release_policy` / `read_release_policy` (calls for `KMSClient.call`).

Workload side, inside the workload's TEE:

    recipient = Recipient.generate()                    # fresh X25519 key, never leaves
    nonce = client.call(release_nonce()).nonce
    quote = my_tee.get_quote(recipient.report_data(nonce))   # binds nonce and key
    answer = client.call(release_key("db-key", "export", nonce, quote, recipient))
    key = recipient.open(answer)                        # only this TEE can

The host relaying these requests, the network and the token holder see only `answer.sealed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave_kms.client.core import Call, _key_path, b64
from enclave_kms.wire import ReleaseNonce, ReleaseOut, ReleasePolicy, decode
from enclave_kms.wire import release as release_wire

EVIDENCE_FORMS = ("raw-quote", "oe-evidence")


@dataclass(frozen=True)
class ReleaseAnswer(ReleaseOut):
    """The server's answer (`wire.ReleaseOut`, the one definition of its fields) and the nonce
    of the request it answers, which the sealed secret's HPKE `info` binds."""

    nonce: bytes = field(kw_only=True)

    @classmethod
    def parse(cls, doc: Any, nonce: bytes) -> ReleaseAnswer:
        """The answer's JSON (ServerError naming a field that does not fit)."""
        out = decode(ReleaseOut, doc)
        return cls(nonce=nonce, **{f.name: getattr(out, f.name) for f in fields(out)})

    def info(self) -> bytes:
        return release_wire.answer_info(self.name, self.version, self.operation, self.nonce)


@dataclass(frozen=True)
class Recipient:
    """The workload's fresh HPKE recipient key (X25519). Make one per request, in the TEE."""

    private_key: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> Recipient:
        return cls(X25519PrivateKey.generate())

    @property
    def public_key(self) -> bytes:
        return release_wire.raw_public_key(self.private_key)

    def report_data(self, nonce: bytes) -> bytes:
        """The 64 bytes to put in the workload's evidence (binding, then zeros)."""
        return release_wire.binding(nonce, self.public_key).ljust(64, b"\0")

    def open(self, answer: ReleaseAnswer) -> bytes:
        """The released secret; CryptoOperationError if the answer is not for this key and
        this request (name, version, operation, nonce)."""
        return release_wire.open_sealed(answer.sealed, self.private_key, answer.info())


def _policy(doc: Any) -> ReleasePolicy | None:
    raw = doc.get("release_policy") if isinstance(doc, dict) else None
    return None if raw is None else decode(ReleasePolicy, raw)


def read_release_policy(name: str) -> Call[ReleasePolicy | None]:
    return Call("GET", _key_path(name, "/release-policy"), _policy, idempotent=True)


def set_release_policy(
    name: str, policy_toml: str, *, immutable: bool = False
) -> Call[ReleasePolicy | None]:
    body = {"policy_toml": policy_toml, "immutable": immutable}
    return Call("PUT", _key_path(name, "/release-policy"), _policy, body=body, idempotent=True)


def release_nonce() -> Call[ReleaseNonce]:
    def parse(doc: Any) -> ReleaseNonce:
        return decode(ReleaseNonce, doc)

    return Call("POST", "/v1/release/nonce", parse)


def release_key(
    name: str,
    operation: str,
    nonce: bytes,
    evidence: bytes,
    recipient: Recipient | bytes,
    *,
    evidence_form: str = "raw-quote",
    version: int | None = None,
    ciphertext: str | None = None,
    associated_data: bytes | None = None,
) -> Call[ReleaseAnswer]:
    """(a) operation "export": an exportable key's material (`version`, default latest);
    (b) "decrypt": the plaintext of `ciphertext`; (c) "datakey": a fresh data key (its
    ciphertext is `answer.ciphertext`). Never retried: the nonce is single-use."""
    public = recipient.public_key if isinstance(recipient, Recipient) else recipient
    body: dict[str, Any] = {
        "operation": operation,
        "nonce": b64(nonce),
        "evidence": b64(evidence),
        "evidence_form": evidence_form,
        "recipient_public_key": b64(public),
    }
    if version is not None:
        body["version"] = version
    if ciphertext is not None:
        body["ciphertext"] = ciphertext
    if associated_data is not None:
        body["associated_data"] = b64(associated_data)

    def parse(doc: Any) -> ReleaseAnswer:
        return ReleaseAnswer.parse(doc, nonce)

    return Call("POST", _key_path(name, "/release"), parse, body=body)
