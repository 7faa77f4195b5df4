"""`enclave-kms enclave …`: build, sign and measure enclave images (like OE's `oesign`).

keygen --out signer.pem          RSA-3072, e=3, PKCS#8 PEM, mode 0600, never overwrites
build [--config enclave.toml] --out DIR
sign DIR --key signer.pem [--date YYYY-MM-DD]
measure DIR [--json]             MRENCLAVE, MRSIGNER, ProductID, SVN, debug, date, files
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.errors import UnsupportedFormatError, UsageError
from enclave_kms.platform.image import (
    MANIFEST_FILE,
    SIGSTRUCT_FILE,
    EnclaveConfig,
    build_image,
    read_manifest,
    sign_image,
)
from enclave_kms.platform.sim.loader import check_sigstruct, read_sigstruct
from enclave_kms.sgx.sigstruct import (
    check_signing_key,
    generate_signing_key,
    mr_signer_from_public_key,
)

app = typer.Typer(no_args_is_help=True)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_signing_key(path: Path) -> rsa.RSAPrivateKey:
    """An unencrypted PEM RSA-3072 e=3 key that only its owner can read (as ssh insists)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the signing key ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"{path}: signing key is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600"
        )
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"{path}: encrypted signing keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"{path}: not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"{path}: SGX signing keys are RSA-3072 with e=3")
    try:
        check_signing_key(key)
    except UnsupportedFormatError as exc:
        raise UsageError(f"{path}: {exc.message}") from None
    return key


def _require_image(directory: Path) -> None:
    if not (directory / MANIFEST_FILE).is_file():
        raise UsageError(f"{directory}: not an image directory (no {MANIFEST_FILE})")


def _parse_date(value: str | None) -> dt.date:
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--date: {value!r} is not YYYY-MM-DD") from None


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Where to write the PEM key (0600).")],
) -> None:
    """Generate an enclave signing key: RSA-3072 with public exponent 3, as SGX requires."""
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out}: already exists; refusing to overwrite a signing key")
    key = generate_signing_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{out}: already exists; refusing to overwrite a signing key") from None
    except OSError as exc:
        raise UsageError(f"{out}: cannot create ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(pem)
    typer.echo(f"wrote {out}")
    typer.echo(f"mrsigner {mr_signer_from_public_key(key.public_key()).hex()}")


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", help="Image directory to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="enclave.toml (default: defaults).")
    ] = None,
) -> None:
    """Measure the enclave: hash every trusted file, write manifest.cbor and enclave.toml."""
    enclave_config = (
        EnclaveConfig.from_toml(_read(config, "enclave config")) if config else EnclaveConfig()
    )
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    manifest = build_image(out, enclave_config)
    typer.echo(f"mrenclave {manifest.mr_enclave.hex()}")
    typer.echo(f"trusted_files {len(manifest.files)}")
    typer.echo(f"wrote {out} (unsigned: run `enclave-kms enclave sign {out} --key …`)")


@app.command()
def sign(
    directory: Annotated[Path, typer.Argument(help="Image directory (`enclave build`).")],
    key: Annotated[Path, typer.Option("--key", help="Signing key (`enclave keygen`).")],
    date: Annotated[
        str | None, typer.Option("--date", help="Signing date YYYY-MM-DD (default today).")
    ] = None,
) -> None:
    """Sign the image: SIGSTRUCT over MRENCLAVE and the config → sigstruct.bin."""
    _require_image(directory)
    private_key = load_signing_key(key)
    sigstruct = sign_image(directory, private_key, _parse_date(date))
    typer.echo(f"mrenclave {sigstruct.mr_enclave.hex()}")
    typer.echo(f"mrsigner {sigstruct.mr_signer.hex()}")
    typer.echo(f"wrote {directory / SIGSTRUCT_FILE}")


def describe(directory: Path) -> dict[str, Any]:
    """The image's identity; a SIGSTRUCT, if present, must verify against the manifest."""
    manifest = read_manifest(directory)
    signed = (directory / SIGSTRUCT_FILE).exists()
    sigstruct = read_sigstruct(directory) if signed else None
    if sigstruct is not None:
        check_sigstruct(sigstruct, manifest)
    signed_date = sigstruct.signed_date if sigstruct else None
    config = manifest.config
    return {
        "mr_enclave": manifest.mr_enclave.hex(),
        "mr_signer": sigstruct.mr_signer.hex() if sigstruct else None,
        "product_id": config.product_id,
        "security_version": config.security_version,
        "debug": config.debug,
        "signed": sigstruct is not None,
        "signed_date": signed_date.isoformat() if signed_date else None,
        "trusted_files": len(manifest.files),
        "entrypoint": manifest.entrypoint,
        "heap_size": config.heap_size,
        "stack_size": config.stack_size,
        "num_tcs": config.num_tcs,
    }


@app.command()
def measure(
    directory: Annotated[Path, typer.Argument(help="Image directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print MRENCLAVE, MRSIGNER, ProductID, SVN, debug, signing date and file count."""
    _require_image(directory)
    info = describe(directory)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for name, value in info.items():
        if value is None:
            shown = "(unsigned)"
        elif isinstance(value, bool):
            shown = "true" if value else "false"
        else:
            shown = str(value)
        typer.echo(f"{name:<17}{shown}")
