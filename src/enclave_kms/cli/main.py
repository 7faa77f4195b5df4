"""`enclave-kms` console entry point: assembles the command groups and maps errors once."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from typer._click import exceptions as click_exc  # typer vendors its own click

from enclave_kms.cli import exits
from enclave_kms.errors import EnclaveKMSError

app = typer.Typer(
    name="enclave-kms",
    help="A key management service whose keys are plaintext only inside an SGX enclave.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
) -> None:
    _state["verbose"] = verbose


_registered = False


def _register() -> None:
    """Attach the command groups once (main() may run many times in one process in tests)."""
    global _registered  # noqa: PLW0603 - one-time registration of a module-level app
    if _registered:
        return
    from enclave_kms.cli import groups

    for name, sub, help_text in groups.all_groups():
        app.add_typer(sub, name=name, help=help_text)
    _registered = True


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every EnclaveKMSError becomes one line on stderr and its exit code."""
    _register()
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    args = sys.argv[1:] if argv is None else argv
    _state["verbose"] = "--verbose" in args or "-v" in args
    try:
        app(args=args, standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()  # help text for a bare group: not an error
        raise SystemExit(exits.OK) from None
    except click_exc.ClickException as exc:
        exc.show()
        raise SystemExit(exits.USAGE) from None
    except typer.Abort:
        err.print("aborted")
        raise SystemExit(exits.USAGE) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except EnclaveKMSError as exc:
        if _state["verbose"]:
            err.print_exception()
        err.print(f"error: {exc.message}", markup=False)
        raise SystemExit(exits.exit_code_for(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: opaque, exit 5
        if _state["verbose"]:
            err.print_exception()
        err.print(f"internal error: {type(exc).__name__} (run with --verbose for details)")
        raise SystemExit(exits.SERVER) from None
    raise SystemExit(exits.OK)


if __name__ == "__main__":  # pragma: no cover
    main()
