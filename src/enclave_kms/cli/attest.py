"""`enclave-kms attest URL`: verify a KMS server's enclave and show who it is.

The same steps the SDK runs before every first request (see `enclave_kms.client.attest`):
RA-TLS certificate and its key binding, DCAP verification at the trust root, the policy, and a
fresh-nonce liveness answer. Failures exit with the codes of `cli/exits.py`: 2 evidence
invalid (no evidence, another key, a replayed answer, an untrusted or simulated root),
3 collateral, 4 policy not met, 5 server unreachable.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enclave_kms.cli.config import (
    Settings,
    command_app,
    connection,
    stderr_console,
    stdout_console,
)
from enclave_kms.errors import ServerError

if TYPE_CHECKING:
    from enclave_kms.client.attest import AttestedServer
    from enclave_kms.client.sync import KMSClient

app = command_app()

UrlArg = Annotated[
    str | None,
    typer.Argument(help="Server URL, https://HOST:PORT (default: ENCLAVE_KMS_URL or config)."),
]
WaitOpt = Annotated[
    float,
    typer.Option("--wait", help="Keep trying this many seconds while the server is not up yet."),
]

_LABELS = (
    ("mr_enclave", "MRENCLAVE"),
    ("mr_signer", "MRSIGNER"),
    ("isv_prod_id", "ProductID"),
    ("isv_svn", "SVN"),
    ("debug", "Debug enclave"),
    ("tcb_status", "TCB status"),
    ("advisory_ids", "Advisories"),
    ("root", "Root of trust"),
    ("certificate_spki_sha256", "TLS key (SPKI SHA-256)"),
    ("certificate_not_after", "Certificate valid until"),
    ("collateral_expiry", "Collateral valid until"),
    ("second_opinion", "dcap-qvl second opinion"),
    ("policy", "Policy"),
)


def wait_for_trust_root(settings: Settings, wait: float) -> float:
    """With --wait, also wait for the trust-root file to appear (a server started a moment
    ago writes its simulated root on start-up). Returns the seconds of `wait` left."""
    path = settings.trust_root
    if wait <= 0 or path is None or path.exists():
        return wait
    deadline = time.monotonic() + wait
    with stderr_console().status(f"waiting for {path} …"):
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    return max(0.0, deadline - time.monotonic())  # none left: loading it says what is missing


def connect_with_wait(client: KMSClient, wait: float) -> AttestedServer:
    """Attest, retrying only "cannot reach the server" until `wait` seconds have passed."""
    deadline = time.monotonic() + max(0.0, wait)
    if wait <= 0:
        return client.connect()
    with stderr_console().status(f"waiting for {client.url} …"):
        while True:
            try:
                return client.connect()
            except ServerError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)


def describe(server: AttestedServer, settings: Settings) -> dict[str, Any]:
    facts = server.summary()
    facts["root"] = (
        f"SIMULATED root {facts['root_spki_sha256'][:16]}… (simulation protects nothing)"
        if server.simulated
        else f"Intel SGX Root CA {facts['root_spki_sha256'][:16]}… (hardware)"
    )
    facts["policy"] = str(settings.policy) if settings.policy else "built-in default (strict)"
    return facts


def print_identity(server: AttestedServer, settings: Settings, title: str) -> None:
    from rich.table import Table

    facts = describe(server, settings)
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, label in _LABELS:
        if key not in facts:
            continue
        value = facts[key]
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif isinstance(value, list):
            shown = ", ".join(value) or "none"
        else:
            shown = "-" if value is None else str(value)
        table.add_row(label, shown)
    stdout_console().print(table)


@app.callback(invoke_without_command=True)
def attest_cmd(
    *,
    ctx: typer.Context,
    url: UrlArg = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the tutorial's enclave-info JSON of the evidence."),
    ] = False,
    verified_json: Annotated[
        bool, typer.Option("--verified-json", help="Print the verified facts as JSON.")
    ] = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Verify the server's enclave (evidence, policy, liveness) and show its identity."""
    import json

    settings = connection(ctx, url=url)
    wait = wait_for_trust_root(settings, wait)
    client = settings.client(with_token=False)
    try:
        server = connect_with_wait(client, wait)
    finally:
        client.close()
    if as_json:
        typer.echo(server.enclave_info().to_json().decode(), nl=False)
        return
    if verified_json:
        typer.echo(json.dumps(describe(server, settings), indent=2))
        return
    print_identity(server, settings, f"Verified enclave at {server.url}")
    stdout_console().print(
        "[green]attested[/green]: the evidence verifies, binds this TLS key and a fresh nonce, "
        "and meets the policy"
    )
