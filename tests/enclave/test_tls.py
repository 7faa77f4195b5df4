"""The enclave's TLS identity: an RA-TLS certificate whose simulated quote binds the key,
served from a context loaded from memory."""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from enclave_kms.attestation import dice
from enclave_kms.attestation.ratls import RaTlsForm, verify_ratls_certificate
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.enclave import tls
from enclave_kms.errors import BindingError, PlatformError
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes

IDENTITY = EnclaveIdentity(
    mr_enclave=b"\x44" * 32,
    mr_signer=b"\x55" * 32,
    isv_prod_id=1,
    isv_svn=1,
    attributes=Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 3),
)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("tls") / "platform")


def test_certificate_evidence_binds_the_tls_key_and_verifies(platform: SimPlatform) -> None:
    enclave = platform.enclave(IDENTITY)
    now = datetime.now(UTC)
    identity = tls.issue_identity(tls.generate_tls_key(), enclave.get_quote, now)
    quote, form = verify_ratls_certificate(identity.certificate, now=now)
    # Both Gramine forms are emitted; the DICE tagged evidence is the one appraised, and its
    # quote binds the claims, which name the key (the legacy quote binds the key directly).
    assert form is RaTlsForm.DICE
    claims = dice.claims_for(tls.spki_der(identity.key))
    for evidence, bound in (
        (quote, hashlib.sha256(claims).digest()),
        (identity.quote, identity.spki_sha256),
    ):
        verified = verify_quote(
            evidence, platform.collateral(now), trust_root=platform.trust_root(), now=now
        )
        assert verified.mr_enclave == IDENTITY.mr_enclave
        assert verified.report_data[:32] == bound


def test_certificate_with_another_keys_quote_is_refused(platform: SimPlatform) -> None:
    enclave = platform.enclave(IDENTITY)
    now = datetime.now(UTC)
    other = tls.issue_identity(tls.generate_tls_key(), enclave.get_quote, now)
    forged = tls.issue_identity(tls.generate_tls_key(), lambda _rd: other.quote, now)
    with pytest.raises(BindingError):
        verify_ratls_certificate(forged.certificate, now=now)


def test_liveness_report_data_depends_on_the_nonce() -> None:
    spki = tls.spki_der(tls.generate_tls_key())
    a, b = tls.report_data_for_spki(spki, b"n1"), tls.report_data_for_spki(spki, b"n2")
    assert a != b
    assert len(a) == 64
    assert a[32:] == bytes(32)


def test_ssl_context_from_memory_serves_the_certificate(platform: SimPlatform) -> None:
    enclave = platform.enclave(IDENTITY)
    identity = tls.issue_identity(tls.generate_tls_key(), enclave.get_quote, datetime.now(UTC))
    server_ctx = tls.ssl_context(identity)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.sendall(b"ok")

    thread = threading.Thread(target=accept)
    thread.start()
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE  # the client verifies evidence, not a CA chain
    with socket.create_connection(("127.0.0.1", port)) as raw, client_ctx.wrap_socket(raw) as c:
        der = c.getpeercert(binary_form=True)
        assert c.recv(2) == b"ok"
    thread.join(5)
    listener.close()
    assert der == identity.certificate.public_bytes(serialization.Encoding.DER)


def test_key_from_der_refuses_other_keys(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="does not decode"):
        tls.key_from_der(b"\x30\x03garbage")
