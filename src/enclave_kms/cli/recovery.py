"""`enclave-kms recovery officer-key|split|status|fetch-share|submit` (docs/replicas.md).

k-of-n recovery of the storage root key for when every replica is lost. An officer's private
key is written mode 0600 and never sent anywhere; a share file holds only the share sealed to
that key. `submit` appraises the recovering enclave with the connection's policy (`--policy`,
which must pin the allowed build) before anything leaves the officer's machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enclave_kms.cli.config import connection, stdout_console, write_private
from enclave_kms.errors import UsageError
from enclave_kms.wire import custody as wire

if TYPE_CHECKING:
    from enclave_kms.client.sync import KMSClient
    from enclave_kms.wire import RecoverySetInfo

app = typer.Typer(no_args_is_help=True)

KeyOpt = Annotated[
    Path, typer.Option("--key", help="The officer's private key file (from `officer-key`).")
]
OfficerOpt = Annotated[
    list[Path],
    typer.Option("--officer", help="An officer's public key PEM; repeat once per officer."),
]
ThresholdOpt = Annotated[
    int, typer.Option("--threshold", "-k", help="How many officers restore the key (k).")
]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _officer_key(path: Path) -> Any:
    from enclave_kms.client.recovery import load_officer_key

    if path.stat().st_mode & 0o077:
        raise UsageError(f"{path}: an officer key must be readable by its owner only (0600)")
    return load_officer_key(_read(path, "officer key"))


def _print(answer: Any, *, leave_out: tuple[str, ...] = ()) -> None:
    """A wire answer as JSON, without `leave_out` and null fields."""
    from enclave_kms.wire import to_json

    doc = {k: v for k, v in to_json(answer).items() if k not in leave_out and v is not None}
    stdout_console().print_json(json.dumps(doc))


def split_with(client: KMSClient, threshold: int, officers: list[Path]) -> RecoverySetInfo:
    """Also used by `enclave-kms init --recovery-officer ...`."""
    from enclave_kms.client import recovery

    pems = [_read(p, "officer public key") for p in officers]
    for path, pem in zip(officers, pems, strict=True):
        try:
            wire.load_officer_public(pem)
        except Exception:  # noqa: BLE001 - the message names the file, not the bytes
            raise UsageError(f"{path}: not an X25519 public key PEM") from None
    return recovery.split(client, threshold, pems)


@app.command("officer-key")
def officer_key(
    out: Annotated[Path, typer.Option("--out", help="Private key file (written 0600).")],
    public: Annotated[
        Path | None, typer.Option("--public", help="Public key file (default OUT.pub).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Create a recovery officer's X25519 key pair (no server involved)."""
    from enclave_kms.client.recovery import generate_officer_key

    public = public or out.with_name(out.name + ".pub")
    if not force and (out.exists() or public.exists()):
        raise UsageError(f"{out} or {public} exists; pass --force to replace them")
    private_pem, public_pem = generate_officer_key()
    write_private(out, private_pem)
    public.write_bytes(public_pem)
    fingerprint = wire.officer_fingerprint(wire.load_officer_public(public_pem))
    stdout_console().print(f"officer key {out} (0600), public key {public}")
    stdout_console().print(f"fingerprint {fingerprint}")


@app.command("split")
def split_cmd(ctx: typer.Context, threshold: ThresholdOpt, officer: OfficerOpt) -> None:
    """Split the storage root key k-of-n to the officers (a root admin's token)."""
    with connection(ctx).client() as client:
        _print(split_with(client, threshold, officer))


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """The recovery set, or a recovering enclave's progress (shares accepted, needed)."""
    from enclave_kms.client import recovery

    with connection(ctx).client(with_token=False) as client:
        answer = recovery.status(client)
    _print(answer, leave_out=("quote", "collateral"))


@app.command("fetch-share")
def fetch_share_cmd(
    ctx: typer.Context,
    key: KeyOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to keep the sealed share.")],
) -> None:
    """Fetch this officer's sealed share and check it opens with the officer's key."""
    from enclave_kms.client import recovery

    officer = _officer_key(key)
    with connection(ctx).client(with_token=False) as client:
        share = recovery.fetch_share(client, officer)
    write_private(out, share.to_json())
    stdout_console().print(
        f"share {share.index} of {share.shares} (threshold {share.threshold}) of set "
        f"{share.set_id} stored in {out}"
    )


@app.command("submit")
def submit_cmd(
    ctx: typer.Context,
    key: KeyOpt,
    share: Annotated[Path, typer.Option("--share", help="The share file from fetch-share.")],
) -> None:
    """Appraise the recovering enclave (--policy) and give it this officer's share."""
    from enclave_kms.client import recovery

    officer = _officer_key(key)
    try:
        share_file = recovery.ShareFile.parse(json.loads(_read(share, "share file")))
    except ValueError:
        raise UsageError(f"{share}: not a share file") from None
    with connection(ctx).client(with_token=False) as client:
        progress = recovery.submit_share(client, share_file, officer)
    if progress.state == "restored":
        stdout_console().print("accepted: the storage root key is restored")
    else:
        stdout_console().print(f"accepted: {progress.needed} more share(s) needed")
