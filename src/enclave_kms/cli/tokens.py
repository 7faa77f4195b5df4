"""`enclave-kms init URL` and `enclave-kms token create|list|show|revoke`.

`init` asks the attested enclave for the first admin token (`POST /v1/sys/init`, once per
store). The token travels only over the attested TLS connection and lands in a file only its
owner can read (0600); it is never printed. `init` also records the URL, policy and trust
root in the config file, so later commands need no flags.

`token create` prints the new token once on stdout (or writes it to `--out`, mode 0600):
the server keeps only its hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave_kms.cli.attest import UrlArg, WaitOpt, connect_with_wait, wait_for_trust_root
from enclave_kms.cli.config import (
    command_app,
    connection,
    stderr_console,
    stdout_console,
    write_config_file,
    write_private,
)
from enclave_kms.errors import UsageError

if TYPE_CHECKING:
    from enclave_kms.client.types import TokenInfo

app = typer.Typer(no_args_is_help=True)
init_app = command_app()


@init_app.callback(invoke_without_command=True)
def init_cmd(
    *,
    ctx: typer.Context,
    url: UrlArg = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing token file.")
    ] = False,
    save_config: Annotated[
        bool,
        typer.Option("--save-config/--no-save-config", help="Record URL, policy and root."),
    ] = True,
    wait: WaitOpt = 0.0,
    recovery_threshold: Annotated[
        int | None,
        typer.Option("--recovery-threshold", help="Also split the root key k-of-n (k)."),
    ] = None,
    recovery_officer: Annotated[
        list[Path] | None,
        typer.Option("--recovery-officer", help="A recovery officer's public key; repeat."),
    ] = None,
) -> None:
    """Issue the first admin token over attested TLS and store it in a 0600 file."""
    settings = connection(ctx, url=url)
    target = settings.token_file
    if target.exists() and not force:
        raise UsageError(f"token file {target} exists; pass --force to replace it")
    if (recovery_threshold is None) != (not recovery_officer):
        raise UsageError("--recovery-threshold and --recovery-officer go together")
    wait = wait_for_trust_root(settings, wait)
    client = settings.client(with_token=False)
    try:
        connect_with_wait(client, wait)
        issued = client.init()
        write_private(target, (issued.token + "\n").encode())
        if recovery_threshold is not None and recovery_officer:
            from enclave_kms.cli.recovery import split_with

            split = split_with(client, recovery_threshold, recovery_officer)
    finally:
        client.close()
    out = stdout_console()
    out.print(f"admin token [bold]{issued.info.id}[/bold] stored in {target} (mode 0600)")
    if recovery_threshold is not None:
        out.print(
            f"storage root key split {split.threshold}-of-{split.shares} "
            f"(recovery set {split.set_id}): each officer runs `enclave-kms recovery "
            "fetch-share`"
        )
    if save_config:
        values = {"url": client.url, "token_file": str(target.resolve())}
        if settings.policy is not None:
            values["policy"] = str(settings.policy.resolve())
        if settings.trust_root is not None:
            values["trust_root"] = str(settings.trust_root.resolve())
        if settings.pccs is not None:
            values["pccs"] = settings.pccs
        path = write_config_file(values)
        out.print(f"settings saved in {path}: later commands need no --url/--policy flags")


def _policy_arg(ops: str, keys: str) -> dict[str, list[str]]:
    operations = [o.strip() for o in ops.split(",") if o.strip()]
    patterns = [k.strip() for k in keys.split(",") if k.strip()]
    if not operations:
        raise UsageError("--ops: name at least one operation, e.g. encrypt,decrypt")
    return {"operations": operations, "keys": patterns}


def _operations(operations: tuple[str, ...]) -> str:
    from enclave_kms.client.types import OPERATIONS

    if set(operations) >= set(OPERATIONS):
        return "all"
    return ", ".join(operations)


def _tokens_table(tokens: tuple[TokenInfo, ...], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("id", "name", "keys", "operations", "created", "expires", "revoked"):
        table.add_column(column, overflow="fold")
    for t in tokens:
        table.add_row(
            t.id,
            t.name,
            "\n".join(", ".join(p.keys) or "-" for p in t.policies),
            "\n".join(_operations(p.operations) for p in t.policies),
            t.created.strftime("%Y-%m-%d"),
            t.expires_at.strftime("%Y-%m-%d %H:%M") if t.expires_at else "never",
            t.revoked_at.strftime("%Y-%m-%d %H:%M") if t.revoked_at else "-",
        )
    stdout_console().print(table)


@app.command("create")
def create_cmd(
    *,
    name: Annotated[str, typer.Argument(help="A name for the token (shown in lists and audit).")],
    ops: Annotated[
        str,
        typer.Option("--ops", help="Allowed operations, comma-separated (e.g. encrypt,decrypt)."),
    ],
    keys: Annotated[
        str, typer.Option("--keys", help="Key-name glob patterns, comma-separated.")
    ] = "",
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Lifetime in seconds (default: no expiry).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the token to this file (0600).")
    ] = None,
    ctx: typer.Context,
) -> None:
    """Issue a token limited to some keys and operations (no wider than your own)."""
    settings = connection(ctx)
    if out is not None and out.exists():
        raise UsageError(f"{out} exists; choose another --out")
    with settings.client() as kms:
        issued = kms.create_token(name, [_policy_arg(ops, keys)], ttl_seconds=ttl)
    if out is not None:
        write_private(out, (issued.token + "\n").encode())
        stderr_console().print(f"token {issued.info.id} written to {out} (mode 0600)")
    else:
        stderr_console().print(
            f"token {issued.info.id} (shown once; the server stores only its hash):"
        )
        typer.echo(issued.token)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
) -> None:
    """List tokens (metadata only, never a secret)."""
    settings = connection(ctx)
    found: list[TokenInfo] = []
    with settings.client() as kms:
        after = ""
        while True:
            page = kms.list_tokens(after=after)
            found.extend(page.tokens)
            if not page.next_after:
                break
            after = page.next_after
    _tokens_table(tuple(found), f"{len(found)} token(s)")


@app.command("show")
def show_cmd(
    token_id: Annotated[str, typer.Argument(help="Token id (16 hex digits).")],
    ctx: typer.Context,
) -> None:
    """Show one token's metadata."""
    settings = connection(ctx)
    with settings.client() as kms:
        info = kms.get_token(token_id)
    _tokens_table((info,), f"token {info.id}")


@app.command("revoke")
def revoke_cmd(
    token_id: Annotated[str, typer.Argument(help="Token id (16 hex digits).")],
    ctx: typer.Context,
) -> None:
    """Revoke a token for good."""
    settings = connection(ctx)
    with settings.client() as kms:
        info = kms.revoke_token(token_id)
    stdout_console().print(f"token {info.id} ({info.name}) revoked")
