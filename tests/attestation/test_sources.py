"""Collateral sources: files, static values and the PCCS client against a local fake PCCS.

The fake PCCS is a real HTTP server on 127.0.0.1 (random port) serving the real collateral
files with Intel's response headers, so the client is exercised over an actual socket.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave_kms.attestation.collateral import collateral_from_parts, load_collateral
from enclave_kms.attestation.sources import (
    CollateralSource,
    FileCollateralSource,
    PccsClient,
    StaticCollateralSource,
    check_request,
)
from enclave_kms.attestation.types import Collateral
from enclave_kms.errors import CollateralError, ConfigError

Route = tuple[int, dict[str, str], bytes]


@dataclass
class FakePccs:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def pccs() -> Iterator[FakePccs]:
    fake = FakePccs(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append(self.path)
            status, headers, body = fake.routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _quoted(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode(), safe="")


def _pcs_body(key: str, signed: bytes, signature: bytes) -> bytes:
    return (
        b'{"' + key.encode() + b'":' + signed + b',"signature":"' + signature.hex().encode() + b'"}'
    )


def _serve_collateral(
    fake: FakePccs, c: Collateral, *, tee: str, fmspc: str, ca: str, tcb_header: str
) -> None:
    fake.routes.update(
        {
            f"/{tee}/certification/v4/tcb?fmspc={fmspc}": (
                200,
                {tcb_header: _quoted(c.tcb_info_issuer_chain)},
                _pcs_body("tcbInfo", c.tcb_info, c.tcb_info_signature),
            ),
            f"/{tee}/certification/v4/qe/identity": (
                200,
                {"SGX-Enclave-Identity-Issuer-Chain": _quoted(c.qe_identity_issuer_chain)},
                _pcs_body("enclaveIdentity", c.qe_identity, c.qe_identity_signature),
            ),
            f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der": (
                200,
                {"SGX-PCK-CRL-Issuer-Chain": _quoted(c.pck_crl_issuer_chain)},
                c.pck_crl,
            ),
            # older PCCS versions serve the root CA CRL as hex text
            "/sgx/certification/v4/rootcacrl": (200, {}, c.root_ca_crl.hex().encode()),
        }
    )


def _phala_sgx(root: Path) -> Collateral:
    return load_collateral((root / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes())


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# --------------------------------------------------------------------------- real PCS files


def test_mobilecoin_pcs_files_over_http(sgx_testdata: Path, pccs: FakePccs) -> None:
    """Real PCS response bodies, served with PCS v4 headers, come back as the same collateral."""
    d = sgx_testdata / "mobilecoin-attestation"
    root = (d / "root_ca.pem").read_bytes()
    signer_chain = (d / "tcb_signer.pem").read_bytes() + root
    ca_chain = (d / "processor_ca.pem").read_bytes() + root
    tcb_body = (d / "fmspc_00906ED50000_2023_07_12.json").read_bytes()
    qe_body = (d / "qe_identity.json").read_bytes()
    pccs.routes = {
        "/sgx/certification/v4/tcb?fmspc=00906ED50000": (
            200,
            {"TCB-Info-Issuer-Chain": _quoted(signer_chain), "Content-Type": "application/json"},
            tcb_body,
        ),
        "/sgx/certification/v4/qe/identity": (
            200,
            {"SGX-Enclave-Identity-Issuer-Chain": _quoted(signer_chain)},
            qe_body,
        ),
        "/sgx/certification/v4/pckcrl?ca=processor&encoding=der": (
            200,
            {"SGX-PCK-CRL-Issuer-Chain": _quoted(ca_chain)},
            (d / "processor_crl.der").read_bytes(),
        ),
        "/sgx/certification/v4/rootcacrl": (200, {}, (d / "root_crl.der").read_bytes()),
    }
    expected = collateral_from_parts(
        tcb_body,
        qe_body,
        signer_chain,
        (d / "root_crl.der").read_bytes(),
        (d / "processor_crl.der").read_bytes(),
        ca_chain,
    )
    with PccsClient(pccs.url + "/", timeout=5) as client:
        got = client.get_collateral(
            tee="SGX", fmspc=bytes.fromhex("00906ed50000"), pck_ca="processor"
        )
    assert got == expected
    assert sorted(pccs.requests) == sorted(pccs.routes)


def test_go_tdx_guest_files_over_http_with_v3_header_names(
    sgx_testdata: Path, pccs: FakePccs
) -> None:
    d = sgx_testdata / "google-go-tdx-guest"
    root = (d / "trusted_root.pem").read_bytes()
    signer_chain = (sgx_testdata / "mobilecoin-attestation" / "tcb_signer.pem").read_bytes() + root
    automata_chain = (sgx_testdata / "automata-dcap-rs" / "pck_certchain.pem").read_text()
    platform_ca = (
        "-----BEGIN CERTIFICATE-----" + automata_chain.split("-----BEGIN CERTIFICATE-----")[2]
    )
    pccs.routes = {
        "/tdx/certification/v4/tcb?fmspc=50806F000000": (
            200,
            {"SGX-TCB-Info-Issuer-Chain": _quoted(signer_chain)},
            (d / "sample_tcbInfo_response").read_bytes(),
        ),
        "/tdx/certification/v4/qe/identity": (
            200,
            {"SGX-Enclave-Identity-Issuer-Chain": _quoted(signer_chain)},
            (d / "sample_qeIdentity_response").read_bytes(),
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": (
            200,
            {"SGX-PCK-CRL-Issuer-Chain": _quoted(platform_ca.encode() + root)},
            (d / "pckcrl").read_bytes(),
        ),
        "/sgx/certification/v4/rootcacrl": (200, {}, (d / "rootcrl.der").read_bytes()),
    }
    client = PccsClient(pccs.url, cache=False)
    got = client.get_collateral(tee="tdx", fmspc=bytes.fromhex("50806F000000"), pck_ca="platform")
    client.close()
    assert got.pck_crl == (d / "pckcrl").read_bytes()
    assert got.tcb_info_issuer_chain == signer_chain
    assert b'"id":"TDX"' in got.tcb_info
    assert got.qe_identity.startswith(b'{"id":"TD_QE"')


def test_root_ca_crl_url_can_point_elsewhere(sgx_testdata: Path, pccs: FakePccs) -> None:
    c = _phala_sgx(sgx_testdata)
    _serve_collateral(pccs, c, tee="sgx", fmspc="00A067110000", ca="processor",
                      tcb_header="TCB-Info-Issuer-Chain")  # fmt: skip
    pccs.routes["/IntelSGXRootCA.der"] = (200, {}, c.root_ca_crl)
    del pccs.routes["/sgx/certification/v4/rootcacrl"]
    client = PccsClient(pccs.url, root_ca_crl_url=pccs.url + "/IntelSGXRootCA.der")
    got = client.get_collateral(tee="sgx", fmspc=bytes.fromhex("00A067110000"), pck_ca="processor")
    assert got == c
    assert "/IntelSGXRootCA.der" in pccs.requests


# --------------------------------------------------------------------------- cache


def test_cache_holds_until_earliest_next_update(sgx_testdata: Path, pccs: FakePccs) -> None:
    c = _phala_sgx(sgx_testdata)
    _serve_collateral(pccs, c, tee="sgx", fmspc="00A067110000", ca="processor",
                      tcb_header="TCB-Info-Issuer-Chain")  # fmt: skip
    now = [_utc("2025-07-01T00:00:00Z")]
    client = PccsClient(pccs.url, clock=lambda: now[0])
    source: CollateralSource = client
    fmspc = bytes.fromhex("00A067110000")

    assert source.get_collateral(tee="sgx", fmspc=fmspc, pck_ca="processor") == c
    assert len(pccs.requests) == 4
    assert source.get_collateral(tee="SGX", fmspc=fmspc, pck_ca="Processor") == c
    assert len(pccs.requests) == 4  # served from the cache

    now[0] = _utc("2025-07-19T10:01:17Z")  # one second before the QE identity's nextUpdate
    source.get_collateral(tee="sgx", fmspc=fmspc, pck_ca="processor")
    assert len(pccs.requests) == 4
    now[0] += timedelta(seconds=1)  # at nextUpdate: fetch again
    source.get_collateral(tee="sgx", fmspc=fmspc, pck_ca="processor")
    assert len(pccs.requests) == 8
    # already expired collateral is returned (verification rejects it) but never cached
    source.get_collateral(tee="sgx", fmspc=fmspc, pck_ca="processor")
    assert len(pccs.requests) == 12

    now[0] = _utc("2025-07-01T00:00:00Z")
    client.get_collateral(tee="sgx", fmspc=fmspc, pck_ca="processor")
    client.clear_cache()
    client.get_collateral(tee="sgx", fmspc=fmspc, pck_ca="processor")
    assert len(pccs.requests) == 20
    client.close()


def test_cache_can_be_disabled(sgx_testdata: Path, pccs: FakePccs) -> None:
    c = _phala_sgx(sgx_testdata)
    _serve_collateral(pccs, c, tee="sgx", fmspc="00A067110000", ca="processor",
                      tcb_header="TCB-Info-Issuer-Chain")  # fmt: skip
    client = PccsClient(pccs.url, cache=False, clock=lambda: _utc("2025-07-01T00:00:00Z"))
    for _ in range(2):
        client.get_collateral(tee="sgx", fmspc=bytes.fromhex("00A067110000"), pck_ca="processor")
    assert len(pccs.requests) == 8


# --------------------------------------------------------------------------- failures


def _error(client: PccsClient) -> str:
    with pytest.raises(CollateralError) as info:
        client.get_collateral(tee="sgx", fmspc=bytes.fromhex("00A067110000"), pck_ca="processor")
    message = str(info.value)
    assert "\n" not in message
    assert info.value.step == "collateral"
    return message


@pytest.mark.parametrize(
    ("path_part", "route", "needle"),
    [
        ("/tcb?", (404, {"Error-Code": "NotFound"}, b""), "PCCS tcb info: HTTP 404 (NotFound)"),
        ("/qe/identity", (500, {}, b"oops"), "PCCS qe identity: HTTP 500"),
        ("/pckcrl", (503, {}, b""), "PCCS pck crl: HTTP 503"),
        ("/rootcacrl", (404, {}, b""), "PCCS root ca crl: HTTP 404"),
        ("/tcb?", (200, {"TCB-Info-Issuer-Chain": "x"}, b"<html>"), "tcb info"),
        ("/qe/identity", (200, {"SGX-Enclave-Identity-Issuer-Chain": "x"}, b"{}"), "qe identity"),
        ("/tcb?", (200, {}, b"{}"), "missing TCB-Info-Issuer-Chain header"),
        ("/pckcrl", (200, {"SGX-PCK-CRL-Issuer-Chain": "%%%"}, b"garbage"), "pck crl: not a CRL"),
        ("/rootcacrl", (200, {}, b"30zz"), "root ca crl: not a CRL"),
        ("/pckcrl", (302, {"Location": "http://example.invalid/"}, b""), "pck crl: HTTP 302"),
    ],
)
def test_http_failures_are_one_line_collateral_errors(
    sgx_testdata: Path, pccs: FakePccs, path_part: str, route: Route, needle: str
) -> None:
    c = _phala_sgx(sgx_testdata)
    _serve_collateral(pccs, c, tee="sgx", fmspc="00A067110000", ca="processor",
                      tcb_header="TCB-Info-Issuer-Chain")  # fmt: skip
    (path,) = [p for p in pccs.routes if path_part in p]
    pccs.routes[path] = route
    assert needle in _error(PccsClient(pccs.url))


def test_wrong_fmspc_or_tee_in_the_answer(sgx_testdata: Path, pccs: FakePccs) -> None:
    c = _phala_sgx(sgx_testdata)
    _serve_collateral(pccs, c, tee="sgx", fmspc="00A067110000", ca="processor",
                      tcb_header="TCB-Info-Issuer-Chain")  # fmt: skip
    pccs.routes["/sgx/certification/v4/tcb?fmspc=00906ED50000"] = pccs.routes[
        "/sgx/certification/v4/tcb?fmspc=00A067110000"
    ]
    with pytest.raises(CollateralError, match="got SGX FMSPC 00A067110000, asked for SGX FMSPC"):
        PccsClient(pccs.url).get_collateral(
            tee="sgx", fmspc=bytes.fromhex("00906ED50000"), pck_ca="processor"
        )
    tdx = load_collateral(
        (sgx_testdata / "phala-dcap-qvl" / "tdx_quote_collateral.json").read_bytes()
    )
    pccs.routes["/sgx/certification/v4/qe/identity"] = (
        200,
        {"SGX-Enclave-Identity-Issuer-Chain": _quoted(tdx.qe_identity_issuer_chain)},
        _pcs_body("enclaveIdentity", tdx.qe_identity, tdx.qe_identity_signature),
    )
    assert "got id TD_QE, expected QE" in _error(PccsClient(pccs.url))


def test_oversized_response(sgx_testdata: Path, pccs: FakePccs) -> None:
    _serve_collateral(pccs, _phala_sgx(sgx_testdata), tee="sgx", fmspc="00A067110000",
                      ca="processor", tcb_header="TCB-Info-Issuer-Chain")  # fmt: skip
    assert "larger than 1000 B" in _error(PccsClient(pccs.url, max_response_bytes=1000))


def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert "ConnectError" in _error(PccsClient(f"http://127.0.0.1:{port}", timeout=2))


def test_transport_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = PccsClient("https://pccs.invalid", transport=httpx.MockTransport(handler))
    assert _error(client) == "PCCS tcb info: ReadTimeout"


def test_requests_use_pcs_v4_paths() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(404)

    client = PccsClient("https://pccs.example:8081/", transport=httpx.MockTransport(handler))
    for call in (
        lambda: client.get_tcb_info("tdx", bytes.fromhex("b0c06f000000")),
        lambda: client.get_qe_identity("TDX"),
        lambda: client.get_pck_crl("platform"),
        client.get_root_ca_crl,
    ):
        with pytest.raises(CollateralError):
            call()
    assert seen == [
        "https://pccs.example:8081/tdx/certification/v4/tcb?fmspc=B0C06F000000",
        "https://pccs.example:8081/tdx/certification/v4/qe/identity",
        "https://pccs.example:8081/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
        "https://pccs.example:8081/sgx/certification/v4/rootcacrl",
    ]


# --------------------------------------------------------------------------- file / static


def test_file_source_rereads_the_file(sgx_testdata: Path, tmp_path: Path) -> None:
    target = tmp_path / "collateral.json"
    sgx = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes()
    tdx = (sgx_testdata / "phala-dcap-qvl" / "tdx_quote_collateral.json").read_bytes()
    source: CollateralSource = FileCollateralSource(target)
    with pytest.raises(CollateralError, match=r"cannot read collateral file collateral\.json"):
        source.get_collateral(tee="sgx", fmspc=bytes(6), pck_ca="processor")
    target.write_bytes(sgx)
    assert source.get_collateral(tee="sgx", fmspc=bytes(6), pck_ca="processor") == load_collateral(
        sgx
    )
    target.write_bytes(tdx)
    assert source.get_collateral(tee="tdx", fmspc=bytes(6), pck_ca="platform") == load_collateral(
        tdx
    )
    target.write_bytes(b"garbage")
    with pytest.raises(CollateralError, match="unrecognised format"):
        source.get_collateral(tee="tdx", fmspc=bytes(6), pck_ca="platform")


def test_static_source(sgx_testdata: Path) -> None:
    c = _phala_sgx(sgx_testdata)
    source: CollateralSource = StaticCollateralSource(c)
    assert source.get_collateral(tee="tdx", fmspc=bytes(6), pck_ca="platform") is c
    with pytest.raises(CollateralError, match="unknown TEE"):
        source.get_collateral(tee="sev", fmspc=bytes(6), pck_ca="platform")


@pytest.mark.parametrize(
    ("tee", "fmspc", "ca", "needle"),
    [
        ("sev", bytes(6), "platform", "unknown TEE"),
        ("sgx", bytes(5), "platform", "FMSPC must be 6 bytes"),
        ("sgx", "00a067110000", "platform", "FMSPC must be 6 bytes"),
        ("sgx", bytes(6), "root", "unknown PCK CA"),
        (None, bytes(6), "platform", "unknown TEE"),
    ],
)
def test_bad_requests(tee: object, fmspc: object, ca: str, needle: str) -> None:
    with pytest.raises(CollateralError, match=needle):
        check_request(tee, fmspc, ca)  # type: ignore[arg-type]


@given(tee=st.text(max_size=5), fmspc=st.binary(max_size=8), ca=st.text(max_size=10))
def test_check_request_raises_only_collateral_errors(tee: str, fmspc: bytes, ca: str) -> None:
    try:
        normalised = check_request(tee, fmspc, ca)
    except CollateralError:
        return
    assert normalised == (tee.lower(), fmspc, ca.lower())


def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        PccsClient("https://pccs.example", verify_tls=str(tmp_path / "missing.pem"))
