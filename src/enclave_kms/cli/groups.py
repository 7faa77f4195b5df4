"""Registry of CLI command groups: one module per group, listed here once, imported only when
its command runs (or its own help is asked for).

A command's start-up is most of what a client command costs after `init` (issue 12): the
server, simulation and evidence groups import the simulated platform, the quote parsers and
the DCAP verifier, which `enclave-kms key list` never needs. So the root knows each group by
name and help text alone (enough for `enclave-kms --help` and for suggesting a mistyped name),
and `command()` imports a module and builds its click command when it is first resolved.
"""

from __future__ import annotations

import importlib

import typer
import typer.main
from typer.core import TyperGroup

from enclave_kms.cli import exits

# (command name, module under enclave_kms.cli [":attribute", default "app"], help)
_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("quote", "quote", "Inspect and verify attestation evidence."),
    ("platform", "platform", "Create and drive the simulated SGX platform."),
    ("enclave", "enclave", "Build, sign and measure enclave images."),
    ("serve", "serve", "Start the KMS (simulation: host and enclave processes)."),
    ("channel", "channel", "Secure channel between two enclaves."),
    ("release", "release", "Key release to attested workloads: policies and the demo."),
    ("attest", "attest", "Verify a KMS server's enclave and show its identity."),
    ("policy", "policy", "Write (trust on first use) and check attestation policies."),
    ("init", "tokens:init_app", "Issue the first admin token over attested TLS."),
    ("key", "keys", "Create, list, rotate, import and delete keys."),
    ("encrypt", "crypto:encrypt_app", "Encrypt data with a key."),
    ("decrypt", "crypto:decrypt_app", "Decrypt an ekms:v<N>:... ciphertext."),
    ("rewrap", "crypto:rewrap_app", "Re-encrypt a ciphertext under the latest key version."),
    ("datakey", "crypto:datakey_app", "Generate a data key encrypted under a key."),
    ("sign", "crypto:sign_app", "Sign a message with a key."),
    ("verify", "crypto:verify_app", "Verify a signature."),
    ("hmac", "crypto:hmac_app", "Compute or check an HMAC-SHA256."),
    ("random", "crypto:random_app", "Random bytes from the enclave."),
    ("token", "tokens", "Issue, list and revoke bearer tokens."),
    ("audit", "audit", "Verify the audit log and show its head."),
    ("recovery", "recovery", "k-of-n recovery of the storage root key by recovery officers."),
    ("config", "config", "Show where the client's settings come from."),
    ("replicas", "replicas", "Replica policy and joining an installation (attested)."),
    ("proxy", "proxy", "Attest and pin a server; serve it locally to unmodified clients."),
)
HELP = {name: help_text for name, _spec, help_text in _GROUPS}
"""Every group's name (in `--help` order) and the one line `--help` shows for it."""
_SPECS = {name: spec for name, spec, _help in _GROUPS}


def show_help_if_bare(ctx: typer.Context) -> None:
    """A bare group prints its help and exits 0: asking what there is is not an error."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(exits.OK)


def group_app(name: str) -> typer.Typer:
    """The Typer of one group, its module imported now."""
    module, _, attribute = _SPECS[name].partition(":")
    sub: typer.Typer = getattr(
        importlib.import_module(f"enclave_kms.cli.{module}"), attribute or "app"
    )
    if sub.registered_callback is None:  # a group of commands, not a command itself
        sub.callback(invoke_without_command=True, no_args_is_help=False)(show_help_if_bare)
    return sub


def command(name: str) -> TyperGroup:
    """The click command for `name`, built as `Typer.add_typer` on the root would build it
    (same help, same settings), but alone: nothing of the other groups is imported."""
    holder = typer.Typer(add_completion=False)
    holder.add_typer(group_app(name), name=name, help=HELP[name])
    parent = typer.main.get_command(holder)
    built = parent.commands[name] if isinstance(parent, TyperGroup) else None
    if not isinstance(built, TyperGroup):  # pragma: no cover - typer builds groups so
        raise TypeError(f"typer built {type(built).__name__} for the {name} group")
    return built


def all_groups() -> list[tuple[str, typer.Typer, str]]:
    """Every group's Typer (imports every module: for tools that want the whole tree)."""
    return [(name, group_app(name), help_text) for name, help_text in HELP.items()]
