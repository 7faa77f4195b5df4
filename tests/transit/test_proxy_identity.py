"""The proxy from the hostile host's position: the host owns the network path between the
proxy and the enclave (here a TCP relay it can re-point), and swaps the server for

- an impostor TLS server without evidence, or
- another genuine enclave-kms installation (same enclave, valid evidence, its own TLS key):
  the policy alone accepts it; only the pinned identity refuses it.

Either way the proxy forwards nothing to it, and keeps refusing when the path is pointed
back (a changed identity is for a person to accept, by restarting the proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave_kms.client.proxy import AttestingProxy, loopback_listen
from enclave_kms.errors import BindingError, ConfigError
from enclave_kms.host.service import Running, ServeOptions, start
from tests.client.real_server import RealKMS, free_port
from tests.transit.conftest import Transit

pytestmark = pytest.mark.slow


class Relay:
    """host:port → whatever `target` says now (the host controls the path)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.open: list[asyncio.StreamWriter] = []

    async def switch(self, target: tuple[str, int]) -> None:
        """Point new connections at `target` and cut the current ones (then give the
        client's pool a moment to see its idle connections closed)."""
        self.target = target
        for writer in self.open:
            writer.close()
        self.open.clear()
        await asyncio.sleep(0.3)

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.open += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def _impostor_context(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclave-kms")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp / "impostor.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


@contextlib.asynccontextmanager
async def impostor(tmp: Path) -> AsyncIterator[tuple[str, int]]:
    """A TLS server that answers every request 200 {} and records that it got one."""
    hits: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
            hits.append(await reader.read(65536))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_impostor_context(tmp))
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()


def _addr(kms: RealKMS | Running) -> tuple[str, int]:
    return "127.0.0.1", int(kms.url.rsplit(":", 1)[1])


@dataclass
class Installation:
    """A server that a test may restart in place (same data, port and options)."""

    options: ServeOptions
    running: Running

    def restart(self) -> Running:
        self.running.stop()
        self.running = start(self.options)
        return self.running


@pytest.fixture(scope="module")
def other_installation(
    transit: Transit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installation]:
    """Another genuine installation of the same enclave on the same (simulated) CPU: its
    own data, TLS key and tokens, evidence that verifies under the same root and policy."""
    options = ServeOptions(
        data_dir=tmp_path_factory.mktemp("other-kms") / "data",
        port=free_port(),
        platform_dir=transit.kms.data_dir / "platform",
        image=transit.kms.data_dir / "image",  # the same signed enclave
    )
    installation = Installation(options, start(options))
    try:
        yield installation
    finally:
        installation.running.stop()


async def _health(proxy: AttestingProxy) -> int:
    return (await proxy.forward("GET", "/v1/health", [], b"")).status


def test_impostor_without_evidence_is_refused_for_good(transit: Transit, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Relay(_addr(transit.kms)) as relay, impostor(tmp_path) as fake:
            proxy = AttestingProxy(
                f"https://127.0.0.1:{relay.port}",
                policy=transit.kms.policy,
                trust_root=transit.kms.trust_root,
            )
            try:
                await proxy.start()
                assert await _health(proxy) == 200
                await relay.switch(fake)
                with pytest.raises(BindingError, match="re-attestation"):
                    await _health(proxy)
                await relay.switch(_addr(transit.kms))  # pointed back: still refused
                with pytest.raises(BindingError):
                    await _health(proxy)
                assert proxy.refused is not None
            finally:
                await proxy.close()

    asyncio.run(scenario())


def test_another_genuine_installation_is_refused(
    transit: Transit, other_installation: Installation
) -> None:
    async def scenario() -> None:
        async with Relay(_addr(transit.kms)) as relay:
            proxy = AttestingProxy(
                f"https://127.0.0.1:{relay.port}",
                policy=transit.kms.policy,  # the other installation satisfies it too
                trust_root=transit.kms.trust_root,
            )
            try:
                pinned = (await proxy.start()).spki_sha256
                assert await _health(proxy) == 200
                await relay.switch(_addr(other_installation.running))
                with pytest.raises(BindingError, match="identity changed"):
                    await _health(proxy)
                assert proxy.server is not None
                assert proxy.server.spki_sha256 == pinned  # never switched over
            finally:
                await proxy.close()

    asyncio.run(scenario())


def test_the_proxy_listens_on_loopback_only() -> None:
    assert loopback_listen("127.0.0.1:8200") == ("127.0.0.1", 8200)
    assert loopback_listen("[::1]:8200") == ("::1", 8200)
    for bad in ("0.0.0.0:8200", "10.0.0.5:8200", "kms.example:8200", "127.0.0.1", ":8200"):
        with pytest.raises(ConfigError):
            loopback_listen(bad)


def test_a_restarted_server_with_the_same_identity_is_followed(
    transit: Transit, other_installation: Installation
) -> None:
    """A restart re-issues the certificate (fresh evidence, same sealed TLS key): the proxy
    attests again if it must and keeps forwarding, without a person in the loop."""

    async def scenario() -> None:
        async with Relay(_addr(other_installation.running)) as relay:
            proxy = AttestingProxy(
                f"https://127.0.0.1:{relay.port}",
                policy=transit.kms.policy,
                trust_root=transit.kms.trust_root,
            )
            try:
                before = await proxy.start()
                assert await _health(proxy) == 200
                again = await asyncio.to_thread(other_installation.restart)
                await relay.switch(_addr(again))
                assert await _health(proxy) == 200
                assert proxy.refused is None
                assert proxy.server is not None
                assert proxy.server.spki_sha256 == before.spki_sha256
            finally:
                await proxy.close()

    asyncio.run(scenario())
