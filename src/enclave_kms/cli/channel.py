"""`enclave-kms channel demo`: the secure channel between two real enclave processes."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from enclave_kms.errors import EnclaveKMSError

app = typer.Typer(no_args_is_help=True)

_DEFAULT_WORK = (
    Path(
        os.environ.get("ENCLAVE_KMS_DATA_DIR", Path.home() / ".local/share/enclave-kms/data")
    ).parent
    / "channel-demo"
)


@app.command()
def demo(
    attack: str | None = typer.Option(
        None,
        help="Make the relay or the peer hostile: replay, reorder, tamper, truncate, "
        "bad-signature, wrong-signer, wrong-product, low-svn, debug-peer.",
    ),
    work_dir: Path = typer.Option(_DEFAULT_WORK, help="Platform, images and enclave state."),
    messages: int = typer.Option(3, min=1, max=100, help="Messages each way."),
) -> None:
    """Two enclaves attest each other and talk; the host relays bytes it cannot read.

    Exit code 0 when the channel works, 2 when an attack is rejected by the protocol,
    4 when it is rejected by the peer policy.
    """
    from enclave_kms.host.channel_demo import run_demo

    console = Console(highlight=False)
    result = run_demo(
        work_dir,
        attack=attack,
        messages=messages,
        say=lambda line: console.print(f"  {line}", markup=False),
        stderr_sink=lambda _line: None,
    )
    if result.rejected is not None:
        raise result.rejected
    if attack is not None:
        raise EnclaveKMSError(f"attack {attack!r} was NOT detected: this is a bug")
    console.print(
        f"secure channel OK: {result.messages_a_to_b} message(s) A → B, "
        f"{result.messages_b_to_a} B → A; the host saw only ciphertext"
    )
