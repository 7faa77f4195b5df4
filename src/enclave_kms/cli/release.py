"""`enclave-kms release policy-set|policy-show|demo`: key release to attested workloads.

`policy-set` / `policy-show` are the admin side (they attest the server first, like every
client command). The workload side is the SDK (`enclave_kms.client.release`): evidence is
made inside the workload's TEE, which a CLI on the host cannot do. `demo` runs the KMS and a
workload enclave as real processes (docs/release.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from enclave_kms.cli.config import connection, stdout_console
from enclave_kms.errors import EnclaveKMSError, UsageError

app = typer.Typer(no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Key name.")]
_DEFAULT_WORK = (
    Path(
        os.environ.get("ENCLAVE_KMS_DATA_DIR", Path.home() / ".local/share/enclave-kms/data")
    ).parent
    / "release-demo"
)


@app.command("policy-set")
def policy_set(
    name: NameArg,
    policy_file: Annotated[Path, typer.Argument(help="Appraisal policy TOML (docs/release.md).")],
    ctx: typer.Context,
    immutable: bool = typer.Option(
        False, "--immutable", help="From now on the policy may only be tightened (one-way)."
    ),
) -> None:
    """Attach or replace the key's release policy (needs keys.write on the key)."""
    from enclave_kms.client.release import set_release_policy

    try:
        text = policy_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{policy_file}: cannot read the policy ({exc})") from None
    with connection(ctx).client() as kms:
        spec = kms.call(set_release_policy(name, text, immutable=immutable))
    assert spec is not None
    stdout_console().print(
        f"release policy of {name}: revision {spec.revision}"
        f"{', immutable' if spec.immutable else ''}"
    )


@app.command("policy-show")
def policy_show(name: NameArg, ctx: typer.Context) -> None:
    """Print the key's release policy as TOML (nothing is released without one)."""
    from enclave_kms.client.release import read_release_policy

    with connection(ctx).client() as kms:
        spec = kms.call(read_release_policy(name))
    console = stdout_console()
    if spec is None:
        console.print(f"# key {name} has no release policy: it is released to no workload")
        return
    flag = "immutable" if spec.immutable else "mutable"
    console.print(f"# revision {spec.revision}, {flag}, updated {spec.updated:%Y-%m-%d %H:%M}")
    console.print(spec.policy_toml.rstrip(), markup=False)


@app.command()
def demo(
    attack: str | None = typer.Option(
        None,
        help="Make the host or the workload hostile: replay, other-key (exit 2); "
        "wrong-measurement, debug-workload, out-of-date-tcb, no-policy, loosen-immutable "
        "(exit 4).",
    ),
    work_dir: Path = typer.Option(_DEFAULT_WORK, help="Platform, images and demo state."),
) -> None:
    """The KMS and a workload enclave as real processes: keys reach the workload sealed.

    Exit code 0 on release, 2 when the evidence is refused, 4 when the release policy is not
    met (or missing, or an immutable one would be loosened).
    """
    from rich.console import Console

    from enclave_kms.host.release_demo import run_demo

    console = Console(highlight=False)
    result = run_demo(
        work_dir,
        attack=attack,
        say=lambda line: console.print(f"  {line}", markup=False),
        stderr_sink=lambda _line: None,
    )
    if result.rejected is not None:
        raise result.rejected
    if attack is not None:
        raise EnclaveKMSError(f"attack {attack!r} was NOT refused: this is a bug")
    released = ", ".join(what for what, _ in result.released)
    console.print(
        f"key release OK ({released}); the host relayed only HPKE ciphertext and never saw "
        "a released secret"
    )
