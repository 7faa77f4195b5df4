"""`enclave-kms policy from-server|show`: write and read attestation policies.

`from-server` is trust on first use: it verifies the server's evidence cryptographically (the
chain to the root, collateral, signatures, key binding, liveness) but *accepts whatever enclave
it finds* and writes a policy pinning it: MRENCLAVE, MRSIGNER, ProductID, the current SVN as
the minimum, debug only if the enclave is a debug one, and the TCB statuses seen now. The
policy is only as good as the moment it was taken, so the command says so, loudly; compare the
MRENCLAVE with a reproducible build before relying on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from enclave_kms.cli.attest import (
    UrlArg,
    WaitOpt,
    connect_with_wait,
    print_identity,
    wait_for_trust_root,
)
from enclave_kms.cli.config import (
    connection,
    stderr_console,
    stdout_console,
    write_private,
)
from enclave_kms.errors import PolicyError, UsageError

app = typer.Typer(no_args_is_help=True)


@app.command("from-server")
def from_server_cmd(
    *,
    ctx: typer.Context,
    url: UrlArg = None,
    out: Annotated[Path, typer.Option("--out", help="Where to write the policy TOML.")] = Path(
        "policy.toml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
    wait: WaitOpt = 0.0,
) -> None:
    """Write a policy pinning the enclave the server runs now (trust on first use)."""
    from dataclasses import replace

    from enclave_kms.attestation.policy import Policy, validate
    from enclave_kms.attestation.types import TcbStatus

    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    settings = replace(connection(ctx, url=url), policy=None)  # the policy is the output
    wait = wait_for_trust_root(settings, wait)
    root = settings.load_trust_root()
    # Appraise everything cryptographically (the SDK's connect is `appraise`), but accept any
    # enclave: that is what TOFU means, and the policy says so by its unsafe name.
    observe = Policy(
        any_enclave_unsafe=True,
        allow_debug=True,
        accepted_tcb_statuses=tuple(TcbStatus),
        simulated_root=root.spki_sha256 if root is not None and root.simulated else None,
    )
    from enclave_kms.attestation.sources import PccsClient
    from enclave_kms.client.sync import KMSClient

    client = KMSClient(
        settings.require_url(),
        policy=observe,
        trust_root=root,
        collateral_source=PccsClient(settings.pccs) if settings.pccs else None,
        timeout=settings.timeout,
    )
    try:
        server = connect_with_wait(client, wait)
    finally:
        client.close()
    verified = server.verified
    if verified.tcb_status is TcbStatus.REVOKED:
        raise PolicyError(["tcb_status Revoked: refusing to write a policy for a revoked platform"])
    statuses = tuple(dict.fromkeys((TcbStatus.UP_TO_DATE, verified.tcb_status)))
    pinned = Policy(
        mr_enclave=(verified.mr_enclave,),
        mr_signer=verified.mr_signer,
        isv_prod_id=verified.isv_prod_id,
        min_isv_svn=verified.isv_svn,
        allow_debug=verified.debug,
        accepted_tcb_statuses=statuses,
        simulated_root=verified.root_spki_sha256 if verified.simulated_root else None,
    )
    validate(verified, pinned)  # the policy we write must accept what we just saw
    header = (
        f"# enclave-kms policy pinned from {server.url}\n"
        f"# TRUST ON FIRST USE: this pins what the server ran when the policy was written.\n"
        f"# Compare mr_enclave with a reproducible build of the enclave before relying on it.\n"
    )
    write_private(out, (header + pinned.to_toml()).encode())

    err = stderr_console()
    err.print(
        "[bold red]WARNING — trust on first use.[/bold red] This policy pins whatever enclave "
        f"{server.url} runs [bold]right now[/bold]. If that server was already compromised or "
        "is not the one you meant, the policy trusts the wrong enclave. Check the MRENCLAVE "
        "it shows against a reproducible build of the enclave before relying on it."
    )
    if verified.simulated_root:
        err.print(
            "[bold yellow]SIMULATED[/bold yellow]: the policy names the simulated root "
            f"{verified.root_spki_sha256[:16]}…; simulated evidence protects nothing."
        )
    if verified.debug:
        err.print("[bold yellow]DEBUG ENCLAVE[/bold yellow]: its memory is readable by the host.")
    if verified.tcb_status is not TcbStatus.UP_TO_DATE:
        err.print(
            f"[bold yellow]TCB {verified.tcb_status.value}[/bold yellow] is accepted by this "
            f"policy (advisories: {', '.join(verified.advisory_ids) or 'none'})."
        )
    print_identity(server, replace(settings, policy=out), f"Pinned in {out}")
    stdout_console().print(f"wrote {out}")


@app.command("show")
def show_cmd(
    file: Annotated[Path, typer.Argument(help="Policy TOML file.")],
) -> None:
    """Parse a policy file and print what it requires (an invalid file exits 1)."""
    from enclave_kms.attestation.policy import Policy

    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read policy file {file}: {exc.strerror or exc}") from None
    policy = Policy.from_toml(data)
    typer.echo(policy.to_toml(), nl=False)
