"""`enclave-kms replicas …`: the replica policy (admin token) and a one-shot join.

`policy show` / `policy set` talk to a server over attested TLS like every client command;
`join` runs an enclave of this host that obtains the storage root key from a running replica
and seals it to this CPU (then `serve` finds it), as `serve --join` does before serving.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from enclave_kms.cli.config import connection, stdout_console
from enclave_kms.cli.serve import DEFAULT_DATA_DIR, require_server_extra
from enclave_kms.errors import UsageError

app = typer.Typer(no_args_is_help=True)
policy_app = typer.Typer(no_args_is_help=True)
app.add_typer(policy_app, name="policy", help="Show or change the installation's replica policy.")


def _print(policy: object) -> None:
    out = stdout_console()
    for name in ("mr_signer", "isv_prod_id", "min_isv_svn", "mr_enclave", "accepted_tcb_statuses"):
        value = getattr(policy, name)
        if isinstance(value, tuple):
            value = " ".join(value) if value else "(any build of this signer and product)"
        out.print(f"{name:22} {value}", markup=False)


@policy_app.command("show")
def show_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which builds may join and hold the storage root key (needs the `sys` permission)."""
    with connection(ctx).client() as kms:
        policy = kms.replica_policy()
    if as_json:
        from enclave_kms.wire import to_json

        typer.echo(json.dumps(to_json(policy)))
    else:
        _print(policy)


@policy_app.command("set")
def set_cmd(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    ctx: typer.Context,
    allow_mr_enclave: Annotated[
        list[str] | None, typer.Option(help="Add an allowed MRENCLAVE (hex; repeatable).")
    ] = None,
    only_mr_enclave: Annotated[
        list[str] | None, typer.Option(help="Replace the allowed MRENCLAVEs (repeatable).")
    ] = None,
    any_mr_enclave: Annotated[
        bool, typer.Option(help="Allow any MRENCLAVE of the signer and product.")
    ] = False,
    min_isv_svn: Annotated[int | None, typer.Option(help="Minimum ISVSVN.")] = None,
    accept_tcb_status: Annotated[
        list[str] | None,
        typer.Option(help="Accepted TCB statuses (repeatable; default UpToDate only)."),
    ] = None,
) -> None:
    """Change the replica policy (audited), starting from the current one."""
    if bool(allow_mr_enclave) + bool(only_mr_enclave) + any_mr_enclave > 1:
        raise UsageError("give one of --allow-mr-enclave, --only-mr-enclave, --any-mr-enclave")
    with connection(ctx).client() as kms:
        policy = kms.replica_policy()
        if allow_mr_enclave:
            extra = tuple(m.lower() for m in allow_mr_enclave if m.lower() not in policy.mr_enclave)
            policy = replace(policy, mr_enclave=policy.mr_enclave + extra)
        if only_mr_enclave:
            policy = replace(policy, mr_enclave=tuple(m.lower() for m in only_mr_enclave))
        if any_mr_enclave:
            policy = replace(policy, mr_enclave=())
        if min_isv_svn is not None:
            policy = replace(policy, min_isv_svn=min_isv_svn)
        if accept_tcb_status:
            policy = replace(policy, accepted_tcb_statuses=tuple(accept_tcb_status))
        policy = kms.set_replica_policy(policy)
    _print(policy)


@app.command("join")
def join_cmd(
    peer: Annotated[str, typer.Option(help="A running replica: https://HOST:PORT.")],
    data_dir: Annotated[Path, typer.Option(help="This replica's data directory.")] = (
        DEFAULT_DATA_DIR
    ),
    storage: Annotated[
        str | None, typer.Option(help="The installation's storage (postgresql://… or SQLite).")
    ] = None,
    platform_dir: Annotated[Path | None, typer.Option(help="Simulated platform.")] = None,
    image: Annotated[Path | None, typer.Option(help="A signed enclave image.")] = None,
) -> None:
    """Obtain the storage root key from PEER by mutual attestation and seal it to this CPU
    (simulation), then exit; `serve` with the same storage finds it."""
    from enclave_kms.host.replica_join import join_once
    from enclave_kms.host.service import ServeOptions

    require_server_extra()
    claims = join_once(
        ServeOptions(
            data_dir=data_dir,
            storage=storage,
            platform_dir=platform_dir,
            image=image,
            join_url=peer,
        )
    )
    typer.echo(
        f"joined: the storage root key is sealed to this CPU for enclave "
        f"{claims['mr_enclave'][:16]}… (isv_svn {claims['isv_svn']})"
    )
