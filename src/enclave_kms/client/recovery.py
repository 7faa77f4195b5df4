"""k-of-n recovery for the storage root key, as a recovery officer uses it (docs/replicas.md).

    private_pem, public_pem = generate_officer_key()
    split(admin_client, 2, [pub_a, pub_b, pub_c])          # a root admin, once
    share = fetch_share(client, officer_key)               # each officer, keep the file
    submit_share(recovering_client, share, officer_key)    # after every replica is lost

`submit_share` is where the officer's trust decision is made: the recovering enclave's
session evidence goes through `appraise` with the client's own policy (which pins the
allowed build) and must bind the session key; only then is the officer's share opened
(locally, with the officer's private key) and sealed to that key. The host in between sees
only ciphertext. Formats and the construction: `enclave_kms.wire.custody`.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave_kms.attestation.appraise import Appraisal, appraise
from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.evidence import EvidenceForm
from enclave_kms.client.core import Call
from enclave_kms.client.sync import KMSClient
from enclave_kms.errors import ConfigError, RecoveryError, RecoveryShareError, ServerError
from enclave_kms.wire import RecoveryProgress, RecoverySetInfo, RecoveryStatus, decode
from enclave_kms.wire import custody as wire

STATUS_PATH = "/v1/sys/recovery"


def generate_officer_key() -> tuple[bytes, bytes]:
    """(private key PEM, public key PEM) of a new recovery officer (X25519). The private key
    never leaves the officer: keep it in a file only its owner reads (the CLI writes 0600)."""
    key = x25519.X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, officer_public_pem(key)


def officer_public_pem(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_officer_key(pem: bytes) -> x25519.X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("the officer key file is not an unencrypted PEM private key") from None
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ConfigError("the officer key is not an X25519 key")
    return key


@dataclass(frozen=True)
class ShareFile:
    """One officer's sealed share and what it belongs to (the file `fetch_share` writes)."""

    set_id: str
    index: int
    threshold: int
    shares: int
    commitment: str
    digest: str
    officer: str
    sealed: str

    @classmethod
    def parse(cls, doc: Any) -> ShareFile:
        if not isinstance(doc, dict) or doc.get("format") != wire.SHARE_FILE_FORMAT:
            raise RecoveryShareError(f"not a share file ({wire.SHARE_FILE_FORMAT})")
        try:
            share = cls(**{name: doc[name] for name in cls.__dataclass_fields__})
            bytes.fromhex(share.set_id), bytes.fromhex(share.commitment)
            bytes.fromhex(share.digest), wire.unb64(share.sealed)
        except (KeyError, TypeError, ValueError):
            raise RecoveryShareError("the share file is incomplete or corrupted") from None
        if not all(isinstance(v, int) for v in (share.index, share.threshold, share.shares)):
            raise RecoveryShareError("the share file is incomplete or corrupted")
        return share

    def to_json(self) -> bytes:
        return json.dumps({"format": wire.SHARE_FILE_FORMAT, **asdict(self)}, indent=2).encode()

    def open(self, key: x25519.X25519PrivateKey) -> bytes:
        """The share itself (a SLIP-39 mnemonic): only the officer's key opens it, and only
        at the index, set and commitment it was made for; its digest must match."""
        if wire.officer_fingerprint(key.public_key()) != self.officer:
            raise RecoveryShareError("this share is sealed to another officer's key")
        set_id, digest = bytes.fromhex(self.set_id), bytes.fromhex(self.digest)
        info = wire.share_info(
            set_id,
            self.index,
            threshold=self.threshold,
            shares=self.shares,
            commitment=bytes.fromhex(self.commitment),
            digest=digest,
        )
        try:
            share = wire.SUITE.decrypt(wire.unb64(self.sealed), key, info=info)
        except (InvalidTag, ValueError):
            raise RecoveryShareError(
                "the share does not open with this officer's key (swapped or corrupted)"
            ) from None
        if not hmac.compare_digest(wire.share_digest(set_id, self.index, share), digest):
            raise RecoveryShareError("the share does not match its digest (corrupted)")
        return share


def _doc(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ServerError("the recovery answer is not a JSON object")
    return doc


def _progress(doc: Any) -> RecoveryProgress:
    return decode(RecoveryProgress, doc)


def _status(doc: Any) -> RecoveryStatus | RecoveryProgress:
    """A running installation answers its recovery set (`RecoveryStatus`), an enclave in
    recovery mode its session (`RecoveryProgress`); `state` says which."""
    if _doc(doc).get("state") in ("recovering", "restored"):
        return _progress(doc)
    return decode(RecoveryStatus, doc)


def split(client: KMSClient, threshold: int, officers: list[bytes]) -> RecoverySetInfo:
    """Split the storage root key k-of-n to these officers' public keys (a root admin's
    token); replaces any earlier recovery set."""
    body = {"threshold": threshold, "officers": [o.decode("ascii") for o in officers]}

    def parse(doc: Any) -> RecoverySetInfo:
        return decode(RecoverySetInfo, doc)

    return client.call(Call("POST", f"{STATUS_PATH}/split", parse, body=body))


def status(client: KMSClient) -> RecoveryStatus | RecoveryProgress:
    """The recovery set (k, n, officers) or, on a recovering enclave, the session's progress."""
    return client.call(Call("GET", STATUS_PATH, _status, auth=False, idempotent=True))


def fetch_share(client: KMSClient, key: x25519.X25519PrivateKey) -> ShareFile:
    """This officer's sealed share, checked by opening it (it stays sealed in the result)."""
    fingerprint = wire.officer_fingerprint(key.public_key())
    doc = client.call(
        Call("GET", f"{STATUS_PATH}/shares/{fingerprint}", _doc, auth=False, idempotent=True)
    )
    share = ShareFile.parse(doc)
    share.open(key)
    return share


def appraise_session(
    client: KMSClient, progress: RecoveryProgress
) -> tuple[bytes, bytes, Appraisal]:
    """(session id, session key, appraisal) of a recovering enclave's status answer: its
    quote must satisfy the client's policy and bind the session key."""
    try:
        session_id = bytes.fromhex(progress.session_id)
    except ValueError:
        raise ServerError("the recovering enclave's session id is not hex") from None
    session_key = progress.session_key
    if progress.quote is None or progress.collateral is None:
        raise ServerError("the recovering enclave's answer carries no evidence")
    if len(session_id) != wire.SESSION_ID_BYTES or len(session_key) != 32:
        raise ServerError("the recovering enclave's session is malformed")
    settings = client.attestation_settings
    appraisal = appraise(
        progress.quote,
        settings.policy,
        expected_report_data=wire.session_binding(session_id, session_key),
        now=client.now(),
        collateral=settings.collateral_source or load_collateral(progress.collateral.encode()),
        cache=settings.cache,
        trust_root=settings.root,
        form=EvidenceForm.RAW_QUOTE,
        second_opinion=settings.second_opinion,
    )
    return session_id, session_key, appraisal


def submit_share(
    client: KMSClient, share: ShareFile, key: x25519.X25519PrivateKey
) -> RecoveryProgress:
    """Appraise the recovering enclave, then give it this officer's share, sealed to its
    attested session key. Returns the session's progress (`needed` 0 once restored)."""
    progress = status(client)
    if not isinstance(progress, RecoveryProgress) or progress.state != "recovering":
        raise RecoveryError(f"the server is not recovering (state {progress.state!r})")
    if progress.set_id != share.set_id:
        raise RecoveryShareError(
            "the recovering enclave holds another recovery set than this share's"
        )
    session_id, session_key, _ = appraise_session(client, progress)
    plain = share.open(key)
    sealed = wire.SUITE.encrypt(
        wire.encode_submission(bytes.fromhex(share.set_id), share.index, plain),
        x25519.X25519PublicKey.from_public_bytes(session_key),
        info=wire.submit_info(session_id),
    )
    body = {"session_id": session_id.hex(), "sealed": wire.b64(sealed)}
    return client.call(Call("POST", f"{STATUS_PATH}/submit", _progress, body=body, auth=False))
