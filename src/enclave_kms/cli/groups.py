"""Registry of CLI command groups: one module per group, listed here once."""

from __future__ import annotations

import importlib

import typer

# (command name, module under enclave_kms.cli, help)
_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("quote", "quote", "Inspect and verify attestation evidence."),
    ("platform", "platform", "Create and drive the simulated SGX platform."),
    ("enclave", "enclave", "Build, sign and measure enclave images."),
    ("serve", "serve", "Start the KMS (simulation: host and enclave processes)."),
    ("channel", "channel", "Secure channel between two enclaves."),
)


def all_groups() -> list[tuple[str, typer.Typer, str]]:
    out = []
    for name, module, help_text in _GROUPS:
        mod = importlib.import_module(f"enclave_kms.cli.{module}")
        out.append((name, mod.app, help_text))
    return out
