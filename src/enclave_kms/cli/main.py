"""`enclave-kms` console entry point: assembles the command groups and maps errors once.

Only the group a command names is imported (`groups.py`): start-up is most of what a client
command costs once its server's attestation is pinned.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from enclave_kms.cli import exits, groups
from enclave_kms.cli.config import (
    CONNECTION_FLAGS,
    Connection,
    PccsOpt,
    PolicyOpt,
    TokenFileOpt,
    TrustRootOpt,
    UrlOpt,
)
from enclave_kms.errors import EnclaveKMSError


class _RootGroup(TyperGroup):
    """The root: its command groups are built when first resolved (`groups.command`), and
    the connection options, declared once on the root callback, may also follow the command.

    Until then each group is a stand-in with its name and help line, which is all the root's
    own help shows; resolving a name for any other purpose builds the real group.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unbuilt = {name for name in groups.HELP if name not in self.commands}
        for name, help_text in groups.HELP.items():  # in --help order
            if name in self._unbuilt:
                self.commands[name] = TyperGroup(name=name, help=help_text)
        self._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self._unbuilt and not self._listing:
            self.commands[cmd_name] = groups.command(cmd_name)
            self._unbuilt.discard(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True  # the list of commands needs their names and help lines only
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """`enclave-kms key list --url U` as every client command used to accept: the
        connection options are moved in front of the command before parsing, unless that
        command declares an option of the same name itself (`quote verify --policy` checks
        evidence offline)."""
        return super().parse_args(ctx, hoist(self, ctx, args))


def hoist(group: Any, ctx: Any, args: list[str]) -> list[str]:
    own = {opt: param for param in group.params for opt in param.opts}
    movable = {opt for opt in own if opt in CONNECTION_FLAGS}
    # Walk down to the command the arguments name, and keep the options it declares.
    command, taken = group, set()
    for token in args:
        if token.startswith("-") or not hasattr(command, "get_command"):
            continue
        sub = command.get_command(ctx, token)
        if sub is None:
            break
        command = sub
        taken |= {opt for param in sub.params for opt in param.opts}
    movable -= taken
    front: list[str] = []
    rest: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--":
            rest += [word, *words]
            break
        if rest and word.split("=", 1)[0] in movable:
            value = [] if "=" in word else [next(words, None)]
            if None in value:  # no value: let the parser say so
                rest.append(word)
            else:
                front += [word, *(v for v in value if v is not None)]
        else:
            rest.append(word)
    return front + rest


app = typer.Typer(
    cls=_RootGroup,
    name="enclave-kms",
    help="A key management service whose keys are plaintext only inside an SGX enclave.",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    *,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
    url: UrlOpt = None,
    token_file: TokenFileOpt = None,
    policy: PolicyOpt = None,
    trust_root: TrustRootOpt = None,
    pccs: PccsOpt = None,
) -> None:
    """The connection options are given once, before the command; every client command
    reads them from the context (`config.connection`)."""
    _state["verbose"] = verbose
    ctx.obj = Connection(url, token_file, policy, trust_root, pccs)
    groups.show_help_if_bare(ctx)


_CLICK_USAGE = 2  # click's exit code for a usage error; ours is exits.USAGE


# The server names the request fields it refuses (`query.waiting_period_days: …`); a CLI user
# typed flags. Field (any of body./query./path.) → what the user gave.
FIELD_FLAGS = {
    "waiting_period_days": "--days",
    "min_decryption_version": "--min-decryption-version",
    "enabled": "--enable/--disable",
    "exportable": "--exportable",
    "type": "--type",
    "ttl_seconds": "--ttl",
    "policies": "--ops/--keys",
    "operations": "--ops",
    "keys": "--keys",
    "version": "--version",
    "associated_data": "--aad",
    "hash_algorithm": "--hash",
    "signature_algorithm": "--algorithm",
    "prehashed": "--prehashed",
    "signature": "--signature",
    "mac": "--verify",
    "plaintext": "the input (--in)",
    "ciphertext": "the input (--in)",
    "input": "the input (--in)",
    "bytes": "LENGTH",
    "name": "NAME",
}
_FIELD = re.compile(r"^(?:body|query|path)\.([A-Za-z_]+)(?:\.[\w.]+)?: ")


def in_cli_terms(message: str) -> str:
    """A server message about a request field, reworded to name the flag instead."""
    match = _FIELD.match(message)
    if match is None or match.group(1) not in FIELD_FLAGS:
        return message
    return f"{FIELD_FLAGS[match.group(1)]}: {message[match.end() :]}"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every EnclaveKMSError becomes one line on stderr and its exit code."""
    args = sys.argv[1:] if argv is None else argv
    _state["verbose"] = "--verbose" in args or "-v" in args
    try:
        # Standalone: typer reports its own usage errors and help, then exits (2 = usage).
        app(args=args, standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else exits.USAGE
        raise SystemExit(exits.USAGE if code == _CLICK_USAGE else code) from None
    except EnclaveKMSError as exc:
        err = _stderr()
        if _state["verbose"]:
            err.print_exception()
        err.print(f"error: {in_cli_terms(exc.message)}", markup=False)
        raise SystemExit(exits.exit_code_for(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: opaque, exit 5
        err = _stderr()
        if _state["verbose"]:
            err.print_exception()
        err.print(f"internal error: {type(exc).__name__} (run with --verbose for details)")
        raise SystemExit(exits.SERVER) from None
    raise SystemExit(exits.OK)


def _stderr() -> Any:
    """The console for an error line (rich is imported only when there is one to print)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
