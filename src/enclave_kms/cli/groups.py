"""Registry of CLI command groups: one module per group, listed here once."""

from __future__ import annotations

import importlib

import typer

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


def all_groups() -> list[tuple[str, typer.Typer, str]]:
    out = []
    for name, spec, help_text in _GROUPS:
        module, _, attribute = spec.partition(":")
        mod = importlib.import_module(f"enclave_kms.cli.{module}")
        out.append((name, getattr(mod, attribute or "app"), help_text))
    return out
