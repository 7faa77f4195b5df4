"""TLS plumbing of the attested connection: read the peer's certificate, then pin it.

An RA-TLS certificate is self-signed: no CA vouches for it, its *evidence* does. So the first
handshake deliberately verifies nothing (`unverified_context`); it only reads the certificate,
and no request is sent over it. Once the evidence is verified, `pinned_context` trusts exactly
that certificate as the only trust anchor: every later connection's handshake fails unless the
server presents it (OpenSSL then checks the server holds its private key). Host names are not
checked, because the server's identity is its attested key, not a DNS name.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from enclave_kms.errors import ConfigError, ServerError, ServerUnreachableError


@dataclass(frozen=True)
class Endpoint:
    """An https URL split into what a socket needs; `base` has no trailing slash."""

    base: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        try:
            parts = urlsplit(url.strip())
            port = parts.port or 443
        except ValueError:
            raise ConfigError(f"server URL {url!r} is not a valid URL") from None
        if parts.scheme != "https":
            raise ConfigError(
                f"server URL {url!r} must start with https:// (the KMS only speaks attested TLS)"
            )
        if not parts.hostname:
            raise ConfigError(f"server URL {url!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"server URL {url!r} must not have a path, query or fragment")
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(base=f"https://{shown}:{port}", host=host, port=port)


def unverified_context() -> ssl.SSLContext:
    """For the first handshake only: read the certificate, trust nothing, send nothing."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned_context(certificate_pem: str) -> ssl.SSLContext:
    """A client context whose only trust anchor is the attested certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=certificate_pem)
    return ctx


def _unreachable(endpoint: Endpoint, exc: BaseException) -> ServerError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return ServerUnreachableError(f"cannot reach {endpoint.base}: {reason}")


def peer_certificate(endpoint: Endpoint, *, timeout: float) -> bytes:
    """DER certificate the server presents (blocking)."""
    try:
        with (
            socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock,
            unverified_context().wrap_socket(sock, server_hostname=endpoint.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise _unreachable(endpoint, exc) from None
    if not der:
        raise ServerError(f"{endpoint.base} presented no certificate")
    return der


async def apeer_certificate(endpoint: Endpoint, *, timeout: float) -> bytes:
    """DER certificate the server presents (asyncio: imported here, as only the asyncio
    client calls this; a blocking client's process never loads it)."""
    import asyncio

    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                endpoint.host,
                endpoint.port,
                ssl=unverified_context(),
                server_hostname=endpoint.host,
            ),
            timeout,
        )
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        raise _unreachable(endpoint, exc) from None
    try:
        tls = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True) if tls is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if not der:
        raise ServerError(f"{endpoint.base} presented no certificate")
    return bytes(der)


def is_pin_failure(exc: BaseException) -> bool:
    """Whether a transport error is the pinned handshake refusing the server's certificate."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
