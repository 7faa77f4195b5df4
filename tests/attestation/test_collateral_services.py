"""Collateral services chosen by name (issue 18): Intel PCS, a PCCS, Azure THIM. Each is asked
for the same real PCS response bodies (mobilecoin's recorded Intel PCS files, with PCS v4
headers) at its own URLs; a URL pasted from sgx_default_qcnl.conf does not double the API path;
a local PCCS with its own self-signed certificate is reachable only through a CA bundle."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_kms.attestation.collateral import collateral_from_parts
from enclave_kms.attestation.sources import (
    AZURE_THIM_URL,
    INTEL_PCS_URL,
    INTEL_ROOT_CA_CRL_URL,
    PccsClient,
    collateral_service,
    normalize_service_url,
)
from enclave_kms.attestation.types import Collateral
from enclave_kms.errors import CollateralError, ConfigError

FMSPC = bytes.fromhex("00906ed50000")
Routes = dict[str, tuple[dict[str, str], bytes]]


def _quoted(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode(), safe="")


def recorded(sgx_testdata: Path) -> tuple[Routes, Collateral]:
    """Intel PCS v4 responses (path → headers, body) from mobilecoin's recorded files."""
    d = sgx_testdata / "mobilecoin-attestation"
    root = (d / "root_ca.pem").read_bytes()
    signer_chain = (d / "tcb_signer.pem").read_bytes() + root
    ca_chain = (d / "processor_ca.pem").read_bytes() + root
    tcb = (d / "fmspc_00906ED50000_2023_07_12.json").read_bytes()
    qe = (d / "qe_identity.json").read_bytes()
    pck_crl, root_crl = (d / "processor_crl.der").read_bytes(), (d / "root_crl.der").read_bytes()
    routes: Routes = {
        "/sgx/certification/v4/tcb?fmspc=00906ED50000": (
            {"TCB-Info-Issuer-Chain": _quoted(signer_chain)},
            tcb,
        ),
        "/sgx/certification/v4/qe/identity": (
            {"SGX-Enclave-Identity-Issuer-Chain": _quoted(signer_chain)},
            qe,
        ),
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der": (
            {"SGX-PCK-CRL-Issuer-Chain": _quoted(ca_chain)},
            pck_crl,
        ),
        "/rootcrl": ({}, root_crl),
    }
    expected = collateral_from_parts(tcb, qe, signer_chain, root_crl, pck_crl, ca_chain)
    return routes, expected


def transport(routes: Routes, root_crl_at: str, seen: list[str]) -> httpx.MockTransport:
    """Serves `routes` on any host under their PCS paths, the root CRL only at `root_crl_at`."""

    def handle(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        seen.append(url)
        if url == root_crl_at:
            return httpx.Response(200, content=routes["/rootcrl"][1])
        target = request.url.raw_path.decode()
        if target in routes and target != "/rootcrl":
            headers, body = routes[target]
            return httpx.Response(200, headers=headers, content=body)
        return httpx.Response(404)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("service", "url", "host", "root_crl_at"),
    [
        ("intel-pcs", None, INTEL_PCS_URL, INTEL_ROOT_CA_CRL_URL),
        ("azure-thim", None, AZURE_THIM_URL, INTEL_ROOT_CA_CRL_URL),
        (
            "pccs",
            "https://pccs.example:8081",
            "https://pccs.example:8081",
            "https://pccs.example:8081/sgx/certification/v4/rootcacrl",
        ),
    ],
)
def test_each_service_fetches_the_same_collateral_at_its_own_urls(
    sgx_testdata: Path, service: str, url: str | None, host: str, root_crl_at: str
) -> None:
    routes, expected = recorded(sgx_testdata)
    seen: list[str] = []
    client = collateral_service(service, url, transport=transport(routes, root_crl_at, seen))
    got = client.get_collateral(tee="sgx", fmspc=FMSPC, pck_ca="processor")
    assert got == expected
    assert root_crl_at in seen
    assert all(u.startswith(host + "/") or u == root_crl_at for u in seen), seen


def test_intel_pcs_given_as_a_pccs_url_still_finds_the_root_crl(sgx_testdata: Path) -> None:
    """The old failure: `--pccs-url https://api.trustedservices.intel.com` asked PCS for the
    PCCS-only /sgx/certification/v4/rootcacrl (a 404 on every fetch)."""
    routes, expected = recorded(sgx_testdata)
    seen: list[str] = []
    client = PccsClient(
        INTEL_PCS_URL + "/sgx/certification/v4/",
        transport=transport(routes, INTEL_ROOT_CA_CRL_URL, seen),
    )
    assert client.get_collateral(tee="sgx", fmspc=FMSPC, pck_ca="processor") == expected
    assert not any("rootcacrl" in u for u in seen)


@pytest.mark.parametrize(
    ("pasted", "base"),
    [
        ("https://localhost:8081/sgx/certification/v4/", "https://localhost:8081"),
        ("https://localhost:8081/sgx/certification/v3", "https://localhost:8081"),
        (" https://pccs.corp:8443/ ", "https://pccs.corp:8443"),
        ("https://global.acccache.azure.net/sgx/certification/v4/", AZURE_THIM_URL),
        ("https://api.trustedservices.intel.com/tdx/certification/v4", INTEL_PCS_URL),
        ("https://gw.corp/pccs/sgx/certification/v4/", "https://gw.corp/pccs"),
    ],
)
def test_urls_pasted_from_qcnl_conf_are_normalised(pasted: str, base: str) -> None:
    assert normalize_service_url(pasted) == base


def test_a_pasted_url_does_not_double_the_path() -> None:
    seen: list[str] = []
    client = PccsClient(
        "https://localhost:8081/sgx/certification/v4/",
        transport=transport({"/rootcrl": ({}, b"")}, "-", seen),
    )
    with pytest.raises(CollateralError):
        client.get_qe_identity("sgx")
    assert seen == ["https://localhost:8081/sgx/certification/v4/qe/identity"]


@pytest.mark.parametrize(
    "bad",
    ["localhost:8081", "ftp://pccs", "https://", "https://pccs/?key=1", "https://pccs/#x", ""],
)
def test_bad_service_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="collateral service URL"):
        normalize_service_url(bad)


def test_service_must_be_named_and_a_pccs_needs_its_url() -> None:
    with pytest.raises(ConfigError, match="expected one of intel-pcs, pccs, azure-thim"):
        collateral_service("pcs")
    with pytest.raises(ConfigError, match="URL is required"):
        collateral_service("pccs")


# --------------------------------------------------------------------------- CA bundle


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A PCCS-style self-signed certificate for 127.0.0.1 (what PCCS's install generates)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local PCCS")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "pccs.pem", directory / "pccs.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def local_pccs(sgx_testdata: Path, tmp_path: Path) -> Iterator[tuple[str, Path, Collateral]]:
    routes, expected = recorded(sgx_testdata)
    routes["/sgx/certification/v4/rootcacrl"] = ({}, routes.pop("/rootcrl")[1].hex().encode())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers, body = routes.get(self.path, ({}, b""))
            self.send_response(200 if self.path in routes else 404)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/sgx/certification/v4/", cert, expected
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_local_pccs_with_a_self_signed_certificate_needs_its_ca_bundle(
    local_pccs: tuple[str, Path, Collateral],
) -> None:
    url, cert, expected = local_pccs
    with pytest.raises(CollateralError, match="ConnectError"):
        collateral_service("pccs", url, timeout=5).get_collateral(
            tee="sgx", fmspc=FMSPC, pck_ca="processor"
        )
    client = collateral_service("pccs", url, ca_bundle=cert, timeout=5)
    assert client.get_collateral(tee="sgx", fmspc=FMSPC, pck_ca="processor") == expected


def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        collateral_service("pccs", "https://127.0.0.1:8081", ca_bundle=tmp_path / "missing.pem")
