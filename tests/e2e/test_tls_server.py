"""The served TLS, as a client sees it on the wire: TLS 1.3 only (so AEAD suites only), the
listen address as an IP SAN, and the RA-TLS certificate renewed with fresh evidence before it
expires, without a restart (DESIGN §9). Real server, real sockets."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from tests.e2e.conftest import Server, served
from tests.e2e.test_client_state_head import sdk

pytestmark = pytest.mark.slow


def _address(server: Server) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def handshake(server: Server, *, maximum: ssl.TLSVersion | None = None) -> x509.Certificate:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if maximum is not None:
        ctx.maximum_version = maximum
    with (
        socket.create_connection(_address(server), timeout=30) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert tls.version() == "TLSv1.3"
        return x509.load_der_x509_certificate(der)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data: Path = tmp_path_factory.mktemp("e2e-tls") / "data"
    with served(data) as s:
        yield s


def test_tls_1_2_is_refused(server: Server) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(server, maximum=ssl.TLSVersion.TLSv1_2)
    handshake(server)


def test_ip_addresses_are_ip_sans(server: Server) -> None:
    san = handshake(server).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "127.0.0.1" not in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)


def test_certificate_is_renewed_with_fresh_evidence_without_restart(tmp_path: Path) -> None:
    # 20 s: the shortest lifetime the enclave accepts; renewal at half of it
    with served(tmp_path / "data", cert_lifetime_seconds=20) as s:
        pid = s.live.enclave.pid
        first = handshake(s)
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        assert lifetime <= timedelta(seconds=20, minutes=5, milliseconds=1)
        with sdk(s) as kms:  # attested and pinned before the renewal
            kms.create_key("before-renewal")
            deadline = time.monotonic() + 60
            renewed = first
            while renewed.serial_number == first.serial_number and time.monotonic() < deadline:
                time.sleep(1)
                renewed = handshake(s)
            assert renewed.serial_number != first.serial_number, "never renewed"
            assert renewed.public_key() == first.public_key()  # same key: the pin holds
            assert renewed.not_valid_before_utc > first.not_valid_before_utc
            kms.create_key("after-renewal")  # the same client keeps working
        with sdk(s) as fresh:  # a new client attests the renewed certificate's evidence
            assert {k.name for k in fresh.list_keys().keys} >= {"before-renewal", "after-renewal"}
        assert s.live.enclave.pid == pid  # no restart
