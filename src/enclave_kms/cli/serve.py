"""`enclave-kms serve`: start the KMS (host process + enclave process) and wait for a signal."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from enclave_kms.errors import UsageError

if TYPE_CHECKING:
    from enclave_kms.host.service import GramineRunning, Running

app = typer.Typer()

DEFAULT_DATA_DIR = Path(
    os.environ.get("ENCLAVE_KMS_DATA_DIR", Path.home() / ".local/share/enclave-kms/data")
)


SERVER_PACKAGES = ("fastapi", "uvicorn", "uvloop", "httptools")
"""The `server` extra: the enclave's HTTP stack, not needed by the SDK, verifier or CLI."""


def require_server_extra() -> None:
    import importlib

    missing = []
    for name in SERVER_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(
            f"serving needs the server extra ({', '.join(missing)} not installed): "
            "pip install 'enclave-kms[server]'"
        )


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


@app.callback(invoke_without_command=True)
def serve(
    *,
    listen: str = typer.Option("127.0.0.1:8443", help="Address the enclave serves HTTPS on."),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, help="Where sealed state and the image live."),
    platform: str = typer.Option(
        "sim", help="TEE platform: 'sim' (simulated SGX) or 'gramine' (SGX hardware)."
    ),
    image: Path | None = typer.Option(None, help="A signed enclave image to run as is."),
    platform_dir: Path | None = typer.Option(None, help="Simulated platform directory."),
    gramine_dir: Path | None = typer.Option(
        None, help="Hardware: the directory with the signed enclave-kms.manifest.sgx."
    ),
    pccs_url: str | None = typer.Option(
        None,
        help="Hardware: the collateral service's URL (required for a PCCS; a URL from "
        "sgx_default_qcnl.conf works as is).",
    ),
    collateral_service: str = typer.Option(
        "pccs", help="Hardware: where collateral comes from: pccs, intel-pcs or azure-thim."
    ),
    collateral_ca_bundle: Path | None = typer.Option(
        None, help="Hardware: PEM CAs for the collateral service's TLS certificate."
    ),
    storage: str | None = typer.Option(
        None,
        help="Where records and the audit log live: postgresql://USER@HOST:PORT/DB or a SQLite "
        "file (default DATA_DIR/kms.sqlite; env ENCLAVE_KMS_STORAGE). One server per database, "
        "or several replicas (--replica-id).",
        show_default=False,
    ),
    workers: int = typer.Option(
        1,
        help="Enclave worker processes sharing the store and the port (one core each; "
        "each keeps its own audit chain).",
    ),
    join: str | None = typer.Option(
        None,
        "--join",
        "--migrate-from",
        help="A running replica (https://HOST:PORT) to obtain the storage root key from by "
        "mutual attestation when no sealed copy opens here: a replica on another CPU, or an "
        "upgrade whose seal key changed (docs/replicas.md, docs/sgx-hardware.md).",
    ),
    transit_mount: str = typer.Option(
        "transit",
        help="Path of the Vault/OpenBao transit face: /v1/<mount>/ (docs/compatibility.md).",
    ),
    recovery: bool = typer.Option(
        False,
        "--recovery",
        help="If this CPU cannot unseal the storage root key (every replica lost), serve only "
        "k-of-n recovery until k officers submit their shares (docs/replicas.md).",
    ),
    replica_id: int | None = typer.Option(
        None,
        help="Serve as replica N (0-1023, distinct and stable per replica) of several on one "
        "PostgreSQL database (docs/replicas.md).",
        show_default=False,
    ),
    peer: list[str] = typer.Option(
        [],
        help="Replicas: another replica's URL (repeat); a majority of the replicas must "
        "confirm the latest state before this one serves.",
        show_default=False,
    ),
) -> None:
    """Start the KMS: the enclave serves HTTPS itself; this host process only moves bytes."""
    from enclave_kms.host.service import GramineRunning, ServeOptions, start, start_gramine

    if platform not in ("sim", "gramine"):
        raise UsageError(f"--platform {platform!r}: expected 'sim' or 'gramine'")
    host, port = _listen(listen)
    require_server_extra()
    # soft_wrap: the next-step commands must stay one line each, whatever the width.
    console = Console(highlight=False, soft_wrap=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = ServeOptions(
        data_dir=data_dir,
        host=host,
        port=port,
        platform=platform,
        image=image,
        platform_dir=platform_dir,
        gramine_dir=gramine_dir,
        pccs_url=pccs_url,
        collateral_service=collateral_service,
        collateral_ca_bundle=collateral_ca_bundle,
        workers=workers,
        storage=storage,
        transit_mount=transit_mount,
        recovery=recovery,
        join_url=join,
        replica_id=replica_id,
        peers=tuple(peer),
    )
    with console.status("starting the enclave (measuring and loading the image)…"):
        running = start(options) if platform == "sim" else start_gramine(options)
    ident = running.identity
    console.print(f"[bold]enclave-kms[/bold] is serving on {running.url}")
    if running.others:
        console.print(f"  {1 + len(running.others)} enclave workers on one port")
    if ident.get("recovery"):
        console.print(
            "  [yellow]RECOVERY MODE[/yellow]: serving only /v1/sys/recovery until k officers "
            f"run `enclave-kms recovery submit --url {running.url} ...`"
        )
    if replica_id is not None:
        console.print(
            f"  replica {replica_id}; ready once a majority confirms the state: "
            f"{running.url}/v1/sys/ready"
        )
    console.print(f"  MRENCLAVE   {ident['mr_enclave']}")
    console.print(f"  MRSIGNER    {ident['mr_signer']}")
    console.print(
        f"  ProductID {ident['isv_prod_id']}, SVN {ident['isv_svn']}, debug {ident['debug']}"
    )
    console.print(f"  enclave info (tutorial JSON): {running.info_path}")
    if isinstance(running, GramineRunning):
        console.print("  SGX hardware (Gramine); clients verify against Intel's root")
    else:
        console.print(
            f"  [yellow]SIMULATION[/yellow]: no SGX here; the simulated root is {running.root_path}"
        )
    root = None if isinstance(running, GramineRunning) else running.root_path
    for line in next_steps(running.url, root, initialized=_initialized(running.url)):
        console.print(line, markup=False)
    _wait(running, console)


def next_steps(url: str, root: Path | None, *, initialized: bool | None) -> list[str]:
    """What to run next, one copy-pasteable command per line (absolute, quoted paths)."""
    trust = f" --trust-root {shlex.quote(str(root.resolve()))}" if root is not None else ""
    if initialized:
        return [
            "next, in another shell: this store is already initialized; with the admin token "
            "and settings `enclave-kms init` saved:",
            "  enclave-kms attest",
            "  enclave-kms key list",
        ]
    named = " (the policy names this simulated root explicitly)" if root is not None else ""
    lines = [
        f"next, in another shell{named}:",
        f"  enclave-kms policy from-server {url}{trust} --out policy.toml",
        f"  enclave-kms init {url}{trust} --policy policy.toml",
    ]
    if initialized is None:
        lines[0] += " (init only if this store was never initialized)"
    return lines


def _initialized(url: str) -> bool | None:
    """Whether the store already has its admin token, as the enclave's health answer says
    (a hint for the next-step lines, not a trust decision: nothing is sent but the GET)."""
    import httpx

    from enclave_kms.client.tls import unverified_context

    try:
        answer = httpx.get(f"{url}/v1/health", verify=unverified_context(), timeout=5)
        value = answer.json().get("initialized")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def _wait(running: Running | GramineRunning, console: Console) -> None:
    """Serve until SIGINT/SIGTERM or the enclave's exit, then stop everything."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        if not all(w.alive() for w in (running.enclave, *running.others)):
            console.print("[red]an enclave process exited[/red]")
            break
    console.print("stopping…")
    code = running.stop()
    console.print(f"enclave stopped (status {code})")
