"""`enclave-kms proxy`: attest and pin a KMS server, then serve it on a loopback port to
clients that know nothing of attestation (hvac, OpenBao's transit seal, SOPS, curl)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import typer
from rich.console import Console

from enclave_kms.cli.config import connection, write_private

app = typer.Typer()


@app.callback(invoke_without_command=True)
def proxy(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="The KMS server, https://HOST:PORT."),
    *,
    listen: str = typer.Option(
        "127.0.0.1:8200", help="Loopback HOST:PORT to serve plain HTTP on (Vault's port)."
    ),
    certificate_out: Path | None = typer.Option(
        None, help="Also write the attested certificate (PEM) here, for clients that pin it."
    ),
) -> None:
    """Attest the server against the policy, pin it, and forward local requests over the
    pinned connection; refuse to forward once the server's identity changes. The policy,
    trust root and PCCS are the root's connection options (`--policy P` etc.)."""
    from enclave_kms.attestation.sources import PccsClient
    from enclave_kms.client.proxy import AttestingProxy, ProxyApp, loopback_listen, server_config

    host, port = loopback_listen(listen)
    settings = connection(ctx, url=url)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    console = Console(highlight=False, stderr=True)

    async def run() -> None:
        import uvicorn

        attesting = AttestingProxy(
            settings.require_url(),
            policy=settings.load_policy(),
            trust_root=settings.load_trust_root(),
            collateral_source=PccsClient(settings.pccs) if settings.pccs else None,
            timeout=settings.timeout,
        )
        server = await attesting.start()
        summary = server.summary()
        console.print(f"attested {server.url}: MRENCLAVE {summary.get('mr_enclave', '-')}")
        console.print(f"  pinned TLS key {server.spki_sha256.hex()}")
        if certificate_out is not None:
            write_private(certificate_out, server.certificate_pem.encode("ascii"))
            console.print(f"  attested certificate written to {certificate_out}")
        console.print(f"forwarding http://{host}:{port} -> {server.url}")
        await uvicorn.Server(server_config(ProxyApp(attesting), host, port)).serve()

    asyncio.run(run())
