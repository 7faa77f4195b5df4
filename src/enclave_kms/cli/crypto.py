"""`enclave-kms encrypt|decrypt|rewrap|datakey|sign|verify|hmac|random`.

Data comes from `--in FILE` (default: stdin) and goes to `--out FILE` (default: stdout), raw
by default, base64 with `--base64`. Ciphertexts, signatures and MACs are the service's text
form ``ekms:v<N>:<base64>`` followed by a newline, so they paste into shell variables. A
signature or MAC that does not verify exits 2 (the same code as invalid evidence).
"""

from __future__ import annotations

import base64
import binascii
import sys
from pathlib import Path
from typing import Annotated

import typer

from enclave_kms.cli.config import (
    command_app,
    connection,
    write_private,
)
from enclave_kms.errors import SignatureError, UsageError

encrypt_app = command_app()
decrypt_app = command_app()
rewrap_app = command_app()
datakey_app = command_app()
sign_app = command_app()
verify_app = command_app()
hmac_app = command_app()
random_app = command_app()

KeyArg = Annotated[str, typer.Argument(help="Key name.")]
InOpt = Annotated[str, typer.Option("--in", "-i", help="Input file ('-' = stdin).")]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output file ('-' = stdout).")]
B64Opt = Annotated[
    bool, typer.Option("--base64", help="Binary input/output as base64 text instead of raw.")
]
AadOpt = Annotated[
    str | None, typer.Option("--aad", help="Associated data (UTF-8 text), bound to the result.")
]
HashOpt = Annotated[
    str | None, typer.Option("--hash", help="sha256, sha384 or sha512 (default: per key type).")
]
AlgOpt = Annotated[
    str | None,
    typer.Option("--algorithm", help="pss or pkcs1v15 for RSA (default pss); ecdsa; ed25519."),
]
PrehashedOpt = Annotated[
    bool, typer.Option("--prehashed", help="The input is already a digest of the message.")
]


# --------------------------------------------------------------------------- I/O


def read_input(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None


def read_data(source: str, as_base64: bool) -> bytes:
    data = read_input(source)
    if not as_base64:
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"--base64: the input from {source} is not valid base64") from None


def read_text(source: str, what: str) -> str:
    data = read_input(source).strip()
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} from {source} is not ASCII text") from None


def write_output(target: str, data: bytes, *, private: bool = False) -> None:
    if target == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if private:
        write_private(Path(target), data)
        return
    try:
        Path(target).write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


def write_data(target: str, data: bytes, as_base64: bool, *, private: bool = False) -> None:
    if as_base64:
        data = base64.b64encode(data) + b"\n"
    write_output(target, data, private=private)


def _aad(aad: str | None) -> bytes | None:
    return None if aad is None else aad.encode("utf-8")


# --------------------------------------------------------------------------- commands


@encrypt_app.callback(invoke_without_command=True)
def encrypt_cmd(
    *,
    key: KeyArg,
    source: InOpt = "-",
    target: OutOpt = "-",
    as_base64: B64Opt = False,
    aad: AadOpt = None,
    ctx: typer.Context,
) -> None:
    """Encrypt data with a key (AES-256-GCM inside the enclave); prints ekms:v<N>:…"""
    plaintext = read_data(source, as_base64)
    settings = connection(ctx)
    with settings.client() as kms:
        ciphertext = kms.encrypt(key, plaintext, associated_data=_aad(aad))
    write_output(target, ciphertext.encode() + b"\n")


@decrypt_app.callback(invoke_without_command=True)
def decrypt_cmd(
    *,
    key: KeyArg,
    source: InOpt = "-",
    target: OutOpt = "-",
    as_base64: B64Opt = False,
    aad: AadOpt = None,
    ctx: typer.Context,
) -> None:
    """Decrypt an ekms:v<N>:… ciphertext; writes the plaintext."""
    ciphertext = read_text(source, "ciphertext")
    settings = connection(ctx)
    with settings.client() as kms:
        plaintext = kms.decrypt(key, ciphertext, associated_data=_aad(aad))
    write_data(target, plaintext, as_base64, private=True)


@rewrap_app.callback(invoke_without_command=True)
def rewrap_cmd(
    *,
    key: KeyArg,
    source: InOpt = "-",
    target: OutOpt = "-",
    aad: AadOpt = None,
    ctx: typer.Context,
) -> None:
    """Re-encrypt a ciphertext under the key's latest version (plaintext stays inside)."""
    ciphertext = read_text(source, "ciphertext")
    settings = connection(ctx)
    with settings.client() as kms:
        rewrapped = kms.rewrap(key, ciphertext, associated_data=_aad(aad))
    write_output(target, rewrapped.encode() + b"\n")


@datakey_app.callback(invoke_without_command=True)
def datakey_cmd(
    *,
    key: KeyArg,
    plaintext_out: Annotated[
        str | None,
        typer.Option("--plaintext-out", help="Write the raw data key to this file (0600)."),
    ] = None,
    no_plaintext: Annotated[
        bool, typer.Option("--no-plaintext", help="Only the encrypted data key.")
    ] = False,
    aad: AadOpt = None,
    ctx: typer.Context,
) -> None:
    """A fresh 256-bit data key: prints its ciphertext; the key itself goes to --plaintext-out
    (or, without it, as JSON {"ciphertext", "plaintext": base64} on stdout)."""
    import json

    settings = connection(ctx)
    include = not no_plaintext
    with settings.client() as kms:
        found = kms.generate_data_key(key, include_plaintext=include, associated_data=_aad(aad))
    if found.plaintext is not None and plaintext_out is not None:
        write_output(plaintext_out, found.plaintext, private=True)
    if found.plaintext is None or plaintext_out is not None:
        typer.echo(found.ciphertext)
        return
    doc = {"ciphertext": found.ciphertext, "plaintext": base64.b64encode(found.plaintext).decode()}
    typer.echo(json.dumps(doc))


@sign_app.callback(invoke_without_command=True)
def sign_cmd(
    *,
    key: KeyArg,
    source: InOpt = "-",
    target: OutOpt = "-",
    as_base64: B64Opt = False,
    hash_algorithm: HashOpt = None,
    algorithm: AlgOpt = None,
    prehashed: PrehashedOpt = False,
    ctx: typer.Context,
) -> None:
    """Sign a message (or a digest with --prehashed); prints ekms:v<N>:…"""
    message = read_data(source, as_base64)
    settings = connection(ctx)
    with settings.client() as kms:
        signature = kms.sign(
            key,
            message,
            hash_algorithm=hash_algorithm,
            signature_algorithm=algorithm,
            prehashed=prehashed,
        )
    write_output(target, signature.encode() + b"\n")


def _signature_arg(value: str | None, path: Path | None, what: str) -> str:
    if (value is None) == (path is None):
        raise UsageError(f"give exactly one of --{what} and --{what}-file")
    if value is not None:
        return value
    assert path is not None
    return read_text(str(path), what)


@verify_app.callback(invoke_without_command=True)
def verify_cmd(
    *,
    key: KeyArg,
    signature: Annotated[
        str | None, typer.Option("--signature", help="The ekms:v<N>:… signature.")
    ] = None,
    signature_file: Annotated[
        Path | None, typer.Option("--signature-file", help="File holding the signature.")
    ] = None,
    source: InOpt = "-",
    as_base64: B64Opt = False,
    hash_algorithm: HashOpt = None,
    algorithm: AlgOpt = None,
    prehashed: PrehashedOpt = False,
    ctx: typer.Context,
) -> None:
    """Check a signature over a message; prints "valid", or exits 2 if it is not."""
    chosen = _signature_arg(signature, signature_file, "signature")
    message = read_data(source, as_base64)
    settings = connection(ctx)
    with settings.client() as kms:
        valid = kms.verify(
            key,
            message,
            chosen,
            hash_algorithm=hash_algorithm,
            signature_algorithm=algorithm,
            prehashed=prehashed,
        )
    if not valid:
        raise SignatureError(f"the signature is NOT valid for this message and key {key!r}")
    typer.echo("valid")


@hmac_app.callback(invoke_without_command=True)
def hmac_cmd(
    *,
    key: KeyArg,
    check: Annotated[
        str | None, typer.Option("--verify", help="Check this MAC instead of computing one.")
    ] = None,
    source: InOpt = "-",
    target: OutOpt = "-",
    as_base64: B64Opt = False,
    ctx: typer.Context,
) -> None:
    """HMAC-SHA256 of the input (prints ekms:v<N>:…), or check one with --verify."""
    data = read_data(source, as_base64)
    settings = connection(ctx)
    with settings.client() as kms:
        if check is None:
            write_output(target, kms.hmac(key, data).encode() + b"\n")
            return
        valid = kms.verify_hmac(key, data, check)
    if not valid:
        raise SignatureError(f"the MAC is NOT valid for this data and key {key!r}")
    typer.echo("valid")


@random_app.callback(invoke_without_command=True)
def random_cmd(
    *,
    length: Annotated[int, typer.Argument(help="Number of bytes (1-1024).", min=1)],
    target: OutOpt = "-",
    as_base64: B64Opt = False,
    as_hex: Annotated[bool, typer.Option("--hex", help="Hexadecimal text.")] = False,
    ctx: typer.Context,
) -> None:
    """Random bytes from the enclave's CSPRNG (raw, --base64 or --hex)."""
    if as_base64 and as_hex:
        raise UsageError("choose one of --base64 and --hex")
    settings = connection(ctx)
    with settings.client() as kms:
        data = kms.random(length)
    if as_hex:
        write_output(target, data.hex().encode() + b"\n")
    else:
        write_data(target, data, as_base64)
