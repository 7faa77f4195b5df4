"""`enclave-kms enclave …`: build, sign and measure enclave images (like OE's `oesign`).

keygen --out signer.pem          RSA-3072, e=3, PKCS#8 PEM, mode 0600, never overwrites
build [--config enclave.toml] --out DIR
sign DIR --key signer.pem [--date YYYY-MM-DD]
measure DIR [--json]             MRENCLAVE, MRSIGNER, ProductID, SVN, debug, date, files
gramine --key signer.pem --out DIR [--config enclave.toml]
                                 the Gramine manifest for SGX hardware, checked, then
                                 gramine-manifest + gramine-sgx-sign (or the two commands)
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.errors import ImageError, UnsupportedFormatError, UsageError
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


#: The template in a source checkout (the documented install is `pip install -e .` of one).
DEFAULT_TEMPLATE = (
    Path(__file__).resolve().parents[3] / "deploy" / "gramine" / "enclave-kms.manifest.template"
)
MANIFEST_NAME = "enclave-kms"  # gramine-sgx enclave-kms → enclave-kms.manifest.sgx


def check_filled_template(
    text: str, config: EnclaveConfig, *, log_level: str, arch_libdir: str
) -> list[str]:
    """Gramine's rules (1.8 and 1.9) and ours on the filled template, after a preview of
    Gramine's Jinja step (gramine-manifest then checks it again with Gramine's own schema)."""
    from enclave_kms.platform.gramine_manifest import (
        GRAMINE_VERSIONS,
        apply_gramine_manifest_defaults,
        check_enclave_kms_manifest,
        check_gramine_manifest,
        preview_gramine_jinja,
    )

    text = preview_gramine_jinja(text, log_level=log_level, arch_libdir=arch_libdir)
    problems: list[str] = []
    for version in GRAMINE_VERSIONS:
        try:
            document = tomllib.loads(text)
            apply_gramine_manifest_defaults(document, version)
        except tomllib.TOMLDecodeError as exc:
            return [f"the filled template is not TOML: {exc}"]
        except ImageError as exc:
            problems.append(exc.message)
            continue
        problems += [f"Gramine {version}: {p}" for p in check_gramine_manifest(document, version)]
    problems += check_enclave_kms_manifest(tomllib.loads(text), config)
    return list(dict.fromkeys(problems))


@app.command()
def gramine(
    *,
    key: Annotated[Path, typer.Option("--key", help="Signing key (`enclave keygen`).")],
    out: Annotated[Path, typer.Option("--out", help="Deployment directory to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="enclave.toml (default: defaults).")
    ] = None,
    template: Annotated[
        Path, typer.Option("--template", help="Manifest template.")
    ] = DEFAULT_TEMPLATE,
    arch_libdir: Annotated[
        str, typer.Option("--arch-libdir", help="The distribution's library directory.")
    ] = "/lib/x86_64-linux-gnu",
    log_level: Annotated[
        str, typer.Option("--log-level", help="Gramine's loader.log_level.")
    ] = "error",
) -> None:
    """Build the Gramine deployment for SGX hardware from this installation's enclave.

    Measures the enclave (image/ with its simulated SIGSTRUCT, for the same MRSIGNER), fills
    the template, checks it against Gramine 1.8/1.9's manifest rules and ours, then runs
    gramine-manifest and gramine-sgx-sign when installed, else prints those two commands.
    `serve --platform gramine --gramine-dir DIR` runs the result."""
    from enclave_kms.platform.gramine_manifest import render_gramine_template

    private_key = load_signing_key(key)
    enclave_config = (
        EnclaveConfig.from_toml(_read(config, "enclave config")) if config else EnclaveConfig()
    )
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    text = _read(template, "manifest template").decode("utf-8", "replace")
    out.mkdir(parents=True, exist_ok=True)
    manifest = build_image(out / "image", enclave_config)
    sigstruct = sign_image(out / "image", private_key, dt.datetime.now(dt.UTC).date())
    filled = render_gramine_template(text, manifest, arch_libdir=arch_libdir)
    problems = check_filled_template(
        filled, enclave_config, log_level=log_level, arch_libdir=arch_libdir
    )
    if problems:
        raise ImageError("the Gramine manifest would be refused: " + "; ".join(problems[:8]))
    filled_path = out / f"{MANIFEST_NAME}.manifest.template"
    filled_path.write_text(filled)
    typer.echo(f"mrsigner {sigstruct.mr_signer.hex()} (the same on hardware)")
    typer.echo(f"trusted_files {len(manifest.files)} measured; wrote {filled_path}")
    commands = [
        [
            "gramine-manifest",
            f"-Dlog_level={log_level}",
            f"-Darch_libdir={arch_libdir}",
            filled_path.name,
            f"{MANIFEST_NAME}.manifest",
        ],
        [
            "gramine-sgx-sign",
            "--key",
            str(key.resolve()),
            "--manifest",
            f"{MANIFEST_NAME}.manifest",
            "--output",
            f"{MANIFEST_NAME}.manifest.sgx",
        ],
    ]
    if not all(shutil.which(argv[0]) for argv in commands):
        typer.echo("Gramine is not installed here; on the SGX machine, in " + str(out) + ":")
        for argv in commands:
            typer.echo("  " + shlex.join(argv))
        return
    for argv in commands:
        typer.echo("$ " + shlex.join(argv))
        result = subprocess.run(argv, cwd=out, check=False)  # noqa: S603 - fixed argv
        if result.returncode != 0:
            raise ImageError(f"{argv[0]} failed with status {result.returncode}")
    typer.echo(
        f"wrote {out / (MANIFEST_NAME + '.manifest.sgx')}; run: enclave-kms serve "
        f"--platform gramine --gramine-dir {out} --collateral-service intel-pcs"
    )
