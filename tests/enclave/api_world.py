"""A real API context for the test_api_* modules: SQLite storage, sealed records, the KMS and
token services, a real audit chain, and a fake attestation provider returning fixed bytes."""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_kms.enclave.api.app import AppContext, AttestationBundle, create_app
from enclave_kms.enclave.custody.shares import RecoveryCustody
from enclave_kms.enclave.keys.service import KMSService
from enclave_kms.enclave.state.audit import AuditLog
from enclave_kms.enclave.state.cache import RecordCache
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.enclave.state.store import RecordStore
from enclave_kms.enclave.state.tokens import TokenService
from enclave_kms.host.storage.sqlite import SQLiteStorage

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the project has
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

COLLATERAL = {"pck_crl_issuer_chain": "-----BEGIN CERTIFICATE-----", "tcb_info": "{}"}
QUOTE = bytes(range(256)) * 4
IDENTITY: dict[str, object] = {
    "mr_enclave": "ab" * 32,
    "mr_signer": "cd" * 32,
    "isv_prod_id": 1,
    "isv_svn": 2,
    "debug": False,
    "simulated": True,
}


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave-kms test")])
    now = datetime(2025, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


CERTIFICATE_PEM = _certificate()


@dataclass
class FakeAttestation:
    nonces: list[bytes] = field(default_factory=list)
    collateral: bytes = json.dumps(COLLATERAL).encode()

    def attest(self, nonce: bytes) -> AttestationBundle:
        self.nonces.append(nonce)
        return AttestationBundle(QUOTE, self.collateral, CERTIFICATE_PEM)


class AuditSink:
    """storage.audit_append, with a switch that makes it fail (a host that stops storing)."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self.storage = storage
        self.fail = False

    def __call__(self, records: list[bytes]) -> None:
        if self.fail:
            raise OSError("audit storage gone")
        self.storage.audit_append(records)


@dataclass
class World:
    storage: SQLiteStorage
    clock: FakeClock
    ctx: AppContext
    sink: AuditSink
    attestation: FakeAttestation
    client: TestClient
    admin: str = ""
    cache: RecordCache | None = None
    store: RecordStore | None = None

    def forget(self) -> None:
        """Drop the enclave's memory of records, as a restart does: the next reads go to the
        (possibly tampered) storage."""
        if self.cache is not None:
            self.cache.clear()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any = None, token: str | None = None) -> Any:
        headers = self.bearer(token) if token is not None else self.auth
        return self.client.post(path, json=body, headers=headers)

    def audit_events(self) -> list[dict[str, Any]]:
        """Bodies of the durable audit records (the chain is checked separately)."""
        import cbor2

        out = []
        for blob in self.storage.audit_records():
            raw, _sig = cbor2.loads(blob)
            out.append(cbor2.loads(raw))
        return out

    def token(self, operations: list[str], keys: list[str] | None = None) -> str:
        policy: dict[str, Any] = {"operations": operations}
        if keys is not None:
            policy["keys"] = keys
        r = self.post("/v1/tokens", {"name": "t", "policies": [policy]})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert isinstance(token, str)
        return token


def make_world(
    tmp: Path, *, init: bool = True, max_body_bytes: int = 1 << 20, cache: bool = True
) -> World:
    """The API over real services and storage; with `cache` (as in the enclave) requests
    run on the event loop when their records are held, else on a worker thread."""
    storage = SQLiteStorage(tmp / "kms.sqlite")
    records = RecordCache() if cache else None
    srk = os.urandom(32)
    store = RecordStore(storage, RecordCipher(srk), cache=records)
    clock = FakeClock()
    sink = AuditSink(storage)
    attestation = FakeAttestation()
    ctx = AppContext(
        kms=KMSService(store, clock),
        tokens=TokenService(store, clock),
        audit=AuditLog(ec.generate_private_key(ec.SECP256R1()), sink),
        attestation=attestation,
        identity=IDENTITY,
        max_body_bytes=max_body_bytes,
        custody=RecoveryCustody(storage, srk, lambda report_data: b"quote over " + report_data),
    )
    client = TestClient(create_app(ctx))
    world = World(storage, clock, ctx, sink, attestation, client, cache=records, store=store)
    if init:
        r = client.post("/v1/sys/init")
        assert r.status_code == 201, r.text
        world.admin = r.json()["token"]
    return world


def world_fixture(tmp: Path) -> Iterator[World]:
    world = make_world(tmp)
    with world.client:
        yield world
    world.storage.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
