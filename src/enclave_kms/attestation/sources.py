"""Where collateral comes from: a file, a fixed value, or a PCCS / Intel PCS over HTTPS.

Verification asks a `CollateralSource` for the collateral of a parsed quote by what selects
it: the TEE (`sgx` / `tdx`), the platform FMSPC and which PCK CA issued the leaf
(`processor` / `platform`). The PCCS client is the only network I/O of the attestation core;
it parses what it receives but verifies nothing (that is `verify.py`). Its optional cache
keeps a collateral set until its earliest nextUpdate, read from an injected clock.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx

from enclave_kms.attestation.collateral import (
    collateral_expiry,
    decode_issuer_chain,
    extract_signed_object,
    from_pcs_responses,
    load_collateral,
    normalize_crl,
)
from enclave_kms.attestation.tcb_info import EnclaveIdentity, TcbInfo
from enclave_kms.attestation.types import Collateral
from enclave_kms.errors import (
    CollateralError,
    CollateralUnavailableError,
    ConfigError,
    FormatError,
)

TEES = ("sgx", "tdx")
PCK_CAS = ("processor", "platform")
INTEL_PCS_URL = "https://api.trustedservices.intel.com"
INTEL_ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
AZURE_THIM_URL = "https://global.acccache.azure.net"

#: Where collateral comes from, chosen by name (`collateral_service`):
#:   intel-pcs   Intel's PCS; the root CA CRL from Intel's certificate site (PCS has no path
#:               for it: a PCCS-style /rootcacrl on PCS is a 404)
#:   pccs        a Provisioning Certificate Caching Service (yours, or a cloud's), which serves
#:               everything including /sgx/certification/v4/rootcacrl; URL required
#:   azure-thim  Azure's Trusted Hardware Identity Management cache, PCS v4 paths; the root CA
#:               CRL from Intel's certificate site (THIM documents no root CRL path)
COLLATERAL_SERVICES = ("intel-pcs", "pccs", "azure-thim")
_API_SUFFIX = re.compile(r"/(sgx|tdx)/certification/v[34]$", re.IGNORECASE)


def normalize_service_url(url: str) -> str:
    """The service's base URL: a URL pasted from sgx_default_qcnl.conf
    (`…/sgx/certification/v4/`) loses its API path, which this client adds per request."""
    text = url.strip() if isinstance(url, str) else ""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"collateral service URL {text[:80]!r}: expected https://host[:port]")
    if parts.query or parts.fragment:
        raise ConfigError(f"collateral service URL {text[:80]!r}: no query or fragment")
    path = _API_SUFFIX.sub("", parts.path.rstrip("/")).rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


# Response headers carrying the URL-encoded PEM issuer chain (PCS API v4, then v3 spelling).
TCB_INFO_CHAIN_HEADERS = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
QE_IDENTITY_CHAIN_HEADERS = ("SGX-Enclave-Identity-Issuer-Chain",)
PCK_CRL_CHAIN_HEADERS = ("SGX-PCK-CRL-Issuer-Chain",)


def check_request(tee: str, fmspc: bytes, pck_ca: str) -> tuple[str, bytes, str]:
    """Normalise a collateral request: tee lower-case, 6-byte FMSPC, known PCK CA."""
    tee_l = tee.lower() if isinstance(tee, str) else ""
    if tee_l not in TEES:
        raise CollateralError(f"collateral request: unknown TEE {str(tee)[:10]!r}")
    if not isinstance(fmspc, bytes) or len(fmspc) != 6:
        raise CollateralError("collateral request: FMSPC must be 6 bytes")
    ca = pck_ca.lower() if isinstance(pck_ca, str) else ""
    if ca not in PCK_CAS:
        raise CollateralError(f"collateral request: unknown PCK CA {str(pck_ca)[:12]!r}")
    return tee_l, fmspc, ca


class CollateralSource(Protocol):
    """Anything that can supply collateral for a quote's TEE, FMSPC and PCK CA."""

    def get_collateral(self, *, tee: str, fmspc: bytes, pck_ca: str) -> Collateral:
        """Collateral for `tee` ("sgx"/"tdx"), `fmspc` (6 bytes), `pck_ca`
        ("processor"/"platform"); raises CollateralError when it has none."""
        ...


class StaticCollateralSource:
    """Always the same collateral (tests, offline verification of one set). Verification
    checks that it matches the quote; this source does not."""

    def __init__(self, collateral: Collateral) -> None:
        self._collateral = collateral

    def get_collateral(self, *, tee: str, fmspc: bytes, pck_ca: str) -> Collateral:
        check_request(tee, fmspc, pck_ca)
        return self._collateral


class FileCollateralSource:
    """Collateral from a file (dcap-qvl JSON or OE endorsements), re-read on every request so
    a refreshed file is picked up. Verification checks that it matches the quote."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def get_collateral(self, *, tee: str, fmspc: bytes, pck_ca: str) -> Collateral:
        check_request(tee, fmspc, pck_ca)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise CollateralUnavailableError(
                f"cannot read collateral file {self.path.name}: {exc.strerror or 'error'}"
            ) from None
        return load_collateral(data)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PccsClient:
    """Intel PCS / PCCS client (API v4).

    Paths: `/{sgx|tdx}/certification/v4/tcb?fmspc=…`, `/{sgx|tdx}/certification/v4/qe/identity`,
    `/sgx/certification/v4/pckcrl?ca=…&encoding=der`, and the root CA CRL at
    `/sgx/certification/v4/rootcacrl` (a PCCS endpoint; for Intel PCS itself pass
    `root_ca_crl_url=INTEL_ROOT_CA_CRL_URL`). Every failure is a one-line CollateralError
    naming the object and the HTTP status or transport error.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        verify_tls: bool | str | ssl.SSLContext = True,
        root_ca_crl_url: str | None = None,
        cache: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        max_response_bytes: int = 4 * 1024 * 1024,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalize_service_url(base_url)
        if root_ca_crl_url is None and urllib.parse.urlsplit(self.base_url).hostname in (
            urllib.parse.urlsplit(INTEL_PCS_URL).hostname,
            urllib.parse.urlsplit(AZURE_THIM_URL).hostname,
        ):
            root_ca_crl_url = INTEL_ROOT_CA_CRL_URL  # neither serves PCCS's /rootcacrl
        self.root_ca_crl_url = root_ca_crl_url or f"{self.base_url}/sgx/certification/v4/rootcacrl"
        self._max = max_response_bytes
        self._clock = clock
        self._cache_enabled = cache
        self._cache: dict[tuple[str, bytes, str], tuple[Collateral, datetime]] = {}
        self._lock = threading.Lock()
        verify: bool | ssl.SSLContext = verify_tls if not isinstance(verify_tls, str) else True
        if isinstance(verify_tls, str):
            try:
                verify = ssl.create_default_context(cafile=verify_tls)
            except (OSError, ssl.SSLError):
                raise ConfigError("PCCS CA bundle cannot be loaded") from None
        self._client = httpx.Client(
            timeout=timeout, verify=verify, transport=transport, follow_redirects=False
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PccsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def _get(
        self, what: str, url: str, params: dict[str, str] | None = None
    ) -> tuple[bytes, httpx.Headers]:
        try:
            with self._client.stream("GET", url, params=params) as response:
                if response.status_code != 200:
                    code = response.headers.get("Error-Code", "")
                    detail = f" ({code[:40]})" if code.isprintable() and code else ""
                    raise CollateralUnavailableError(
                        f"PCCS {what}: HTTP {response.status_code}{detail}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self._max:
                        raise CollateralError(f"PCCS {what}: response larger than {self._max} B")
                return bytes(body), response.headers
        except httpx.HTTPError as exc:
            raise CollateralUnavailableError(f"PCCS {what}: {type(exc).__name__}") from None

    @staticmethod
    def _chain(headers: httpx.Headers, names: tuple[str, ...], what: str) -> bytes:
        for name in names:
            value = headers.get(name)
            if value is not None:
                return decode_issuer_chain(value, what=f"PCCS {what} {name}")
        raise CollateralError(f"PCCS {what}: missing {names[0]} header")

    def get_tcb_info(self, tee: str, fmspc: bytes) -> tuple[bytes, bytes]:
        """(raw PCS body, issuer chain PEM) of the TCB Info for `fmspc`."""
        tee, fmspc, _ = check_request(tee, fmspc, "platform")
        url = f"{self.base_url}/{tee}/certification/v4/tcb"
        body, headers = self._get("tcb info", url, {"fmspc": fmspc.hex().upper()})
        return body, self._chain(headers, TCB_INFO_CHAIN_HEADERS, "tcb info")

    def get_qe_identity(self, tee: str) -> tuple[bytes, bytes]:
        """(raw PCS body, issuer chain PEM) of the QE Identity (TD_QE for TDX)."""
        tee, _, _ = check_request(tee, bytes(6), "platform")
        url = f"{self.base_url}/{tee}/certification/v4/qe/identity"
        body, headers = self._get("qe identity", url)
        return body, self._chain(headers, QE_IDENTITY_CHAIN_HEADERS, "qe identity")

    def get_pck_crl(self, pck_ca: str) -> tuple[bytes, bytes]:
        """(DER CRL, issuer chain PEM) of the PCK Processor or Platform CA."""
        _, _, ca = check_request("sgx", bytes(6), pck_ca)
        url = f"{self.base_url}/sgx/certification/v4/pckcrl"
        body, headers = self._get("pck crl", url, {"ca": ca, "encoding": "der"})
        der = normalize_crl(body, what="PCCS pck crl")
        return der, self._chain(headers, PCK_CRL_CHAIN_HEADERS, "pck crl")

    def get_root_ca_crl(self) -> bytes:
        """DER CRL of the Intel SGX Root CA (PCCS serves DER or hex; both are accepted)."""
        body, _ = self._get("root ca crl", self.root_ca_crl_url)
        return normalize_crl(body, what="PCCS root ca crl")

    # ------------------------------------------------------------------ source

    def fetch_collateral(self, *, tee: str, fmspc: bytes, pck_ca: str) -> Collateral:
        """Fetch a fresh collateral set (no cache) and check it is the one asked for."""
        tee, fmspc, ca = check_request(tee, fmspc, pck_ca)
        tcb_body, tcb_chain = self.get_tcb_info(tee, fmspc)
        qe_body, qe_chain = self.get_qe_identity(tee)
        pck_crl, pck_chain = self.get_pck_crl(ca)
        root_crl = self.get_root_ca_crl()
        try:
            tcb_signed, _ = extract_signed_object(tcb_body, "tcbInfo", what="PCCS tcb info")
            tcb = TcbInfo.parse(tcb_signed)
            qe_signed, _ = extract_signed_object(
                qe_body, "enclaveIdentity", what="PCCS qe identity"
            )
            qe = EnclaveIdentity.parse(qe_signed)
        except FormatError as exc:
            raise CollateralError(f"PCCS: {exc.message}") from None
        if tcb.fmspc != fmspc or tcb.id.lower() != tee:
            raise CollateralError(
                f"PCCS tcb info: got {tcb.id} FMSPC {tcb.fmspc.hex().upper()}, "
                f"asked for {tee.upper()} FMSPC {fmspc.hex().upper()}"
            )
        expected_qe = "TD_QE" if tee == "tdx" else "QE"
        if qe.id != expected_qe:
            raise CollateralError(f"PCCS qe identity: got id {qe.id}, expected {expected_qe}")
        return from_pcs_responses(
            tcb_info_body=tcb_body,
            tcb_info_issuer_chain=tcb_chain,
            qe_identity_body=qe_body,
            qe_identity_issuer_chain=qe_chain,
            pck_crl=pck_crl,
            pck_crl_issuer_chain=pck_chain,
            root_ca_crl=root_crl,
        )

    def get_collateral(self, *, tee: str, fmspc: bytes, pck_ca: str) -> Collateral:
        """Collateral for the request, from the cache while it is before its nextUpdate."""
        key = check_request(tee, fmspc, pck_ca)
        if self._cache_enabled:
            with self._lock:
                hit = self._cache.get(key)
            if hit is not None and self._clock() < hit[1]:
                return hit[0]
        collateral = self.fetch_collateral(tee=key[0], fmspc=key[1], pck_ca=key[2])
        if self._cache_enabled:
            expiry = collateral_expiry(collateral)
            with self._lock:
                if self._clock() < expiry:
                    self._cache[key] = (collateral, expiry)
                else:
                    self._cache.pop(key, None)
        return collateral

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def collateral_service(
    service: str,
    url: str | None = None,
    *,
    ca_bundle: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
    cache: bool = True,
    transport: httpx.BaseTransport | None = None,
) -> PccsClient:
    """A client for the named service (`COLLATERAL_SERVICES`). `url` overrides the service's
    default (required for `pccs`); `ca_bundle` is a PEM file of CAs to trust for its TLS
    certificate instead of the system's (a local PCCS with its own certificate). TLS
    verification is never switched off: collateral is signed, but a MITM could still starve
    the verifier of fresh CRLs."""
    if service not in COLLATERAL_SERVICES:
        raise ConfigError(
            f"collateral service {str(service)[:20]!r}: expected one of "
            f"{', '.join(COLLATERAL_SERVICES)}"
        )
    if service == "pccs" and not url:
        raise ConfigError("collateral service pccs: its URL is required (https://host:8081)")
    base = url or (INTEL_PCS_URL if service == "intel-pcs" else AZURE_THIM_URL)
    root_crl = None if service == "pccs" else INTEL_ROOT_CA_CRL_URL
    verify: bool | str = True if ca_bundle is None else os.fspath(ca_bundle)
    return PccsClient(
        base,
        verify_tls=verify,
        root_ca_crl_url=root_crl,
        timeout=timeout,
        cache=cache,
        transport=transport,
    )
