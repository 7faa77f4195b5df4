"""`enclave-kms key create|list|show|rotate|config|delete|restore|import|export`.

Every command attests the server first (see `enclave-kms attest`) and then talks only to the
attested key. Metadata is shown as tables; private material never is (`export` writes it to
a 0600 file, and only for keys created exportable).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enclave_kms.cli.config import (
    connection,
    stderr_console,
    stdout_console,
    write_private,
)
from enclave_kms.errors import KeyStateError, UsageError

if TYPE_CHECKING:
    from enclave_kms.client.types import KeyInfo

app = typer.Typer(no_args_is_help=True)
LIST_PAGE = 1000
"""Keys per listing request: the server's largest page (10,000 keys in 10 round trips). Every
page's records that failed authentication are reported, not only the first page's."""

NameArg = Annotated[str, typer.Argument(help="Key name.")]
KEY_TYPES_HELP = (
    "aes256-gcm (default), hmac-sha256, rsa-2048, rsa-3072, rsa-4096, ec-p256, ec-p384, ed25519"
)


def _when(value: object, fmt: str = "%Y-%m-%d %H:%M") -> str:
    from datetime import datetime

    return value.strftime(fmt) if isinstance(value, datetime) else "-"


def _state(key: KeyInfo) -> str:
    if key.deletion_scheduled_at is not None:
        return f"deletion scheduled {_when(key.deletion_scheduled_at)}"
    return "enabled" if key.enabled else "disabled"


def keys_table(keys: tuple[KeyInfo, ...], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("name", "type", "version", "min decrypt", "state", "exportable", "created"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            k.name,
            k.type,
            str(k.latest_version),
            str(k.min_decryption_version),
            _state(k),
            "yes" if k.exportable else "no",
            _when(k.created, "%Y-%m-%d"),
        )
    stdout_console().print(table)


def key_details(key: KeyInfo) -> None:
    from rich.table import Table

    keys_table((key,), f"key {key.name}")
    versions = Table(title="versions", title_justify="left")
    for column in ("version", "created", "imported"):
        versions.add_column(column)
    for v in key.versions:
        versions.add_row(str(v.version), _when(v.created), "yes" if v.imported else "no")
    console = stdout_console()
    console.print(versions)
    console.print(f"operations: {', '.join(key.operations)}")
    if key.public_key_pem:
        console.print(key.public_key_pem.rstrip(), markup=False)


@contextmanager
def restore_hint(name: str) -> Iterator[None]:
    """The one rule for changing a key (docs/cli.md, "Key states"): a disabled key can still
    be rotated and configured; a key scheduled for deletion is frozen until it is restored."""
    try:
        yield
    except KeyStateError as exc:
        if "scheduled for deletion" not in exc.message:
            raise
        raise KeyStateError(
            f"key {name!r} is scheduled for deletion: nothing changes it until "
            f"`enclave-kms key restore {name}` cancels the deletion"
        ) from None


@app.command("create")
def create_cmd(
    *,
    name: NameArg,
    type: Annotated[str, typer.Option("--type", "-t", help=KEY_TYPES_HELP)] = "aes256-gcm",
    exportable: Annotated[
        bool,
        typer.Option("--exportable", help="Allow export of the material (can never be undone)."),
    ] = False,
    ctx: typer.Context,
) -> None:
    """Create a key; its material is generated inside the enclave and never leaves it."""
    settings = connection(ctx)
    with settings.client() as kms:
        if type.startswith("rsa-"):
            with stderr_console().status(
                f"generating an {type.upper()} key inside the enclave (this can take seconds)…"
            ):
                key = kms.create_key(name, type, exportable=exportable)
        else:
            key = kms.create_key(name, type, exportable=exportable)
    keys_table((key,), "created")


@app.command("list")
def list_cmd(
    ctx: typer.Context,
) -> None:
    """List the keys your token may read."""
    from enclave_kms.client.sync import every_page

    settings = connection(ctx)
    with settings.client() as kms:
        pages = tuple(every_page(kms.list_keys, LIST_PAGE))
    keys = tuple(key for page in pages for key in page.keys)
    unreadable = [name for page in pages for name in page.unreadable]
    keys_table(keys, f"{len(keys)} key(s)")
    if unreadable:
        stderr_console().print(
            f"[red]records failed authentication[/red] (altered by the host?): "
            f"{', '.join(unreadable)}"
        )


@app.command("show")
def show_cmd(
    name: NameArg,
    ctx: typer.Context,
) -> None:
    """Show a key's metadata, versions and public key."""
    settings = connection(ctx)
    with settings.client() as kms:
        key = kms.get_key(name)
    key_details(key)


@app.command("rotate")
def rotate_cmd(
    name: NameArg,
    ctx: typer.Context,
) -> None:
    """Add a version with fresh material; older versions still decrypt and verify."""
    settings = connection(ctx)
    with (
        restore_hint(name),
        settings.client() as kms,
        stderr_console().status(f"rotating {name}…"),
    ):
        key = kms.rotate_key(name)
    keys_table((key,), "rotated")


@app.command("config")
def config_cmd(
    *,
    name: NameArg,
    min_decryption_version: Annotated[
        int | None,
        typer.Option("--min-decryption-version", help="Refuse to decrypt older versions."),
    ] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Enable or disable the key.")
    ] = None,
    ctx: typer.Context,
) -> None:
    """Set the minimum decryption version, or enable/disable the key."""
    if min_decryption_version is None and enabled is None:
        raise UsageError("give --min-decryption-version and/or --enable/--disable")
    settings = connection(ctx)
    with restore_hint(name), settings.client() as kms:
        key = kms.configure_key(
            name, min_decryption_version=min_decryption_version, enabled=enabled
        )
    keys_table((key,), "configured")


@app.command("delete")
def delete_cmd(
    *,
    name: NameArg,
    days: Annotated[
        int, typer.Option("--days", help="Waiting period before the key is purged.")
    ] = 7,
    ctx: typer.Context,
) -> None:
    """Schedule deletion: unusable at once, purged after the waiting period (restorable)."""
    settings = connection(ctx)
    with settings.client() as kms:
        key = kms.delete_key(name, waiting_period_days=days)
    keys_table((key,), "deletion scheduled")


@app.command("restore")
def restore_cmd(
    name: NameArg,
    ctx: typer.Context,
) -> None:
    """Cancel a scheduled deletion."""
    settings = connection(ctx)
    with settings.client() as kms:
        key = kms.restore_key(name)
    keys_table((key,), "restored")


def read_material(path: Path, key_type: str) -> bytes:
    """Raw bytes for symmetric keys; a PEM or DER private key (→ PKCS#8 DER) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key material {path}: {exc.strerror or exc}") from None
    if key_type in ("aes256-gcm", "hmac-sha256"):
        return data
    from cryptography.hazmat.primitives import serialization

    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(
            f"{path}: not an unencrypted PEM or DER private key (needed for {key_type})"
        ) from None
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@app.command("import")
def import_cmd(
    *,
    name: NameArg,
    material: Annotated[
        Path, typer.Option("--material", help="Key material: raw bytes, or a private key PEM/DER.")
    ],
    type: Annotated[str | None, typer.Option("--type", "-t", help=KEY_TYPES_HELP)] = None,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="Add a version to an existing key instead.")
    ] = False,
    exportable: Annotated[bool, typer.Option("--exportable")] = False,
    ctx: typer.Context,
) -> None:
    """Bring your own key: the material is wrapped here, to the enclave's key, before it leaves."""
    settings = connection(ctx)
    with restore_hint(name), settings.client() as kms:
        if new_version:
            existing = kms.get_key(name)
            key = kms.import_key_version(name, read_material(material, existing.type))
        else:
            if type is None:
                raise UsageError("--type is required to import a new key")
            key = kms.import_key(name, type, read_material(material, type), exportable=exportable)
    keys_table((key,), "imported")


@app.command("export")
def export_cmd(
    *,
    name: NameArg,
    out: Annotated[Path, typer.Option("--out", help="File for the material (written 0600).")],
    version: Annotated[int | None, typer.Option("--version", help="Default: latest.")] = None,
    ctx: typer.Context,
) -> None:
    """Write an exportable key's material (raw bytes or PKCS#8 DER) to a 0600 file."""
    if out.exists():
        raise UsageError(f"{out} exists; choose another --out")
    settings = connection(ctx)
    with settings.client() as kms:
        exported = kms.export_key(name, version=version)
    write_private(out, exported.material)
    stdout_console().print(
        f"{exported.name} v{exported.version} ({exported.type}) written to {out}"
    )
