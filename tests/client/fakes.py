"""Small fake KMS servers for the client's refusal tests.

A `FakeServer` is a real HTTPS server on 127.0.0.1 presenting a crafted RA-TLS certificate
whose quote comes from a simulated SGX platform (real DCAP quotes, real collateral), and
answering `GET /v1/attestation` in a chosen way: honestly, with a recorded (replayed) answer,
from another enclave, or about another key. Each connection is closed after one answer, so
every request of a client is a new TLS handshake; `swap` changes the certificate presented
to new connections (a host that swapped the enclave's certificate for its own).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_kms.attestation.collateral import collateral_to_json
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.ratls import make_ratls_certificate
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.pcs import SimPcs, TcbScenario
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes

GOOD_MR_ENCLAVE = hashlib.sha256(b"enclave-kms test enclave").digest()
OTHER_MR_ENCLAVE = hashlib.sha256(b"some other enclave").digest()
MR_SIGNER = hashlib.sha256(b"enclave-kms test signer").digest()


def identity(*, mr_enclave: bytes = GOOD_MR_ENCLAVE, debug: bool = False) -> EnclaveIdentity:
    flags = AttributeFlags.INIT | AttributeFlags.MODE64BIT
    if debug:
        flags |= AttributeFlags.DEBUG
    return EnclaveIdentity(
        mr_enclave=mr_enclave,
        mr_signer=MR_SIGNER,
        isv_prod_id=1,
        isv_svn=2,
        attributes=Attributes(int(flags), 0x3),
    )


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class World:
    """One simulated platform for every fake server of the session."""

    platform: SimPlatform
    workdir: Path

    @property
    def root(self) -> TrustRoot:
        return self.platform.trust_root()

    def policy(self, **overrides: Any) -> Policy:
        """A policy naming this world's simulated root and the good enclave."""
        values: dict[str, Any] = {
            "mr_enclave": (GOOD_MR_ENCLAVE,),
            "mr_signer": MR_SIGNER,
            "simulated_root": self.root.spki_sha256,
        }
        values.update(overrides)
        return Policy(**values)

    def policy_toml(self, name: str, **overrides: Any) -> Path:
        path = self.workdir / f"{name}.toml"
        path.write_text(self.policy(**overrides).to_toml())
        return path

    @property
    def root_pem_path(self) -> Path:
        path = self.workdir / "sim-root.pem"
        if not path.exists():
            path.write_bytes(self.platform.root_pem())
        return path

    def quote(self, ident: EnclaveIdentity, report_data: bytes) -> bytes:
        return self.platform.quote(ident, report_data.ljust(64, b"\0"))

    def collateral(self, scenario: TcbScenario, *, age: timedelta = timedelta(0)) -> dict[str, Any]:
        pcs = SimPcs(
            self.platform.pki,
            self.platform.config.tcb,
            self.platform.config.qe_identity,
            scenario=scenario,
            revoke_pck=False,
        )
        doc = json.loads(collateral_to_json(pcs.collateral(datetime.now(UTC) - age)))
        assert isinstance(doc, dict)
        return doc

    def certificate(
        self,
        key: ec.EllipticCurvePrivateKey,
        ident: EnclaveIdentity | None,
        *,
        bound_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        """An RA-TLS certificate for `key` whose quote binds `bound_key` (default: `key`);
        without an identity, a plain self-signed certificate with no evidence at all."""
        now = datetime.now(UTC)
        if ident is None:
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave-kms")])
            return (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=1))
                .sign(key, hashes.SHA256())
            )
        held = spki(bound_key or key)
        quote = self.quote(ident, hashlib.sha256(held).digest())
        return make_ratls_certificate(
            key,
            quote,
            subject_cn="enclave-kms",
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=1),
            dns_names=("localhost",),
        )


# --------------------------------------------------------------------------- the server


@dataclass
class Behaviour:
    """How the fake answers. `answer`: fresh | replay | other-enclave | other-key."""

    answer: str = "fresh"
    scenario: TcbScenario = TcbScenario.UP_TO_DATE
    failures: list[tuple[int, str]] = field(default_factory=list)  # (status, code) to answer first
    collateral_age: timedelta = timedelta(0)  # how long ago the collateral was issued


class FakeServer:
    def __init__(
        self,
        world: World,
        ident: EnclaveIdentity | None,
        behaviour: Behaviour | None = None,
        *,
        bound_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        self.world = world
        self.ident = ident or identity()
        self.behaviour = behaviour or Behaviour()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = world.certificate(self.key, ident, bound_key=bound_key)
        self.requests: list[tuple[str, str]] = []
        self.replayed: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._context = self._make_context(self.key, self.cert)
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _make_context(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> ssl.SSLContext:
        pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.world.workdir / f"server-{id(cert)}.pem"
        path.write_bytes(pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(path)
        path.unlink()
        return ctx

    @property
    def context(self) -> ssl.SSLContext:
        with self._lock:
            return self._context

    def swap(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        """Present another certificate to every new connection."""
        context = self._make_context(key, cert)
        with self._lock:
            self.key, self.cert, self._context = key, cert, context

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # ------------------------------------------------------------------ answers

    def attestation(self, nonce_hex: str) -> dict[str, Any]:
        b = self.behaviour
        if b.answer == "replay":
            if self.replayed is None:  # recorded once, for a nonce the client never chose
                self.replayed = self._fresh(bytes(32).hex(), self.ident, self.key, self.cert)
            return dict(self.replayed, nonce=nonce_hex)
        if b.answer == "other-enclave":
            other = identity(mr_enclave=OTHER_MR_ENCLAVE)
            return self._fresh(nonce_hex, other, self.key, self.cert)
        if b.answer == "other-key":
            key = ec.generate_private_key(ec.SECP256R1())
            return self._fresh(nonce_hex, self.ident, key, self.world.certificate(key, self.ident))
        return self._fresh(nonce_hex, self.ident, self.key, self.cert)

    def _fresh(
        self,
        nonce_hex: str,
        ident: EnclaveIdentity,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
    ) -> dict[str, Any]:
        spki_hash = hashlib.sha256(spki(key)).digest()
        report_data = hashlib.sha256(spki_hash + bytes.fromhex(nonce_hex)).digest()
        quote = self.world.quote(ident, report_data)
        return {
            "nonce": nonce_hex,
            "quote": base64.b64encode(quote).decode(),
            "collateral": self.world.collateral(
                self.behaviour.scenario, age=self.behaviour.collateral_age
            ),
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "spki_sha256": spki_hash.hex(),
            "report_data_formula": "SHA-256(SHA-256(SPKI) || nonce)",
        }

    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        with self._lock:
            self.requests.append((method, parts.path))
            if self.behaviour.failures and parts.path != "/v1/attestation":
                status, code = self.behaviour.failures.pop(0)
                return status, {"error": {"code": code, "message": f"fake {code}"}}
        if method == "GET" and parts.path == "/v1/attestation":
            nonce = parse_qs(parts.query).get("nonce", [""])[0]
            return 200, self.attestation(nonce)
        if method == "POST" and parts.path == "/v1/sys/init":
            return 201, _issued("admin", "ekms_0123456789abcdef_fake-admin-secret")
        if method == "GET" and parts.path == "/v1/health":
            return 200, {"status": "ok", "initialized": True, "identity": {}}
        if method == "POST" and parts.path.endswith("/encrypt"):
            plaintext = base64.b64decode(json.loads(body)["plaintext"])
            return 200, {"ciphertext": "ekms:v1:" + base64.b64encode(plaintext[::-1]).decode()}
        if method == "POST" and parts.path.endswith("/decrypt"):
            if "/missing/" in parts.path:
                return 404, {"error": {"code": "not_found", "message": "key 'missing' not found"}}
            ciphertext = json.loads(body)["ciphertext"].removeprefix("ekms:v1:")
            plaintext = base64.b64decode(ciphertext)[::-1]
            return 200, {"plaintext": base64.b64encode(plaintext).decode()}
        return 404, {"error": {"code": "route_not_found", "message": "no such endpoint"}}


def _issued(name: str, token: str) -> dict[str, Any]:
    info = {
        "id": "0123456789abcdef",
        "name": name,
        "policies": [{"keys": ["*"], "operations": ["sys"]}],
        "created": "2025-01-01T00:00:00Z",
        "expires_at": None,
        "revoked_at": None,
    }
    return {"token": token, "info": info}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, fake: FakeServer) -> None:
        self.fake = fake
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        tls = self.fake.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that refuse our certificate abort the handshake: expected here


def _handler_for(fake: FakeServer) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: every request handshakes

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            status, doc = fake.route(self.command, self.path, body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
