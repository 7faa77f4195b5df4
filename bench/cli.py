"""A CLI command from a new process, after `init`: what an operator waits for (issue 12, item 5).

`cli-command` runs `enclave-kms` (the console script of this interpreter's environment) against
the server the HTTP rows started, from a config directory laid out as `enclave-kms init`
leaves it: `config.toml` naming the URL, the policy TOML and the simulated root, and the token
file (0600) beside it. The warm-up runs the command once, which attests the server and pins the
appraisal in `attested/` (DESIGN §9: attest once per TLS key); every timed run is a new
process that reuses that pin, from its start (interpreter, imports, typer) to its exit after
printing the answer. So the figure is start-up plus one pinned round trip, as a user sees it;
rps = 1 / seconds per command. A run that exits non-zero fails the row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.measure import BenchError, Case, RunSample, timed_loop
from enclave_kms.cli.config import write_config_file, write_private

NAME = "cli-command"
GROUP = "attestation"
PLAINTEXT = b"secret"
#: (label, argv after `enclave-kms`): a table from the server, and an operation on a file. Not
#: `key list`: the create-key rows leave thousands of keys on this server, so it would time
#: rendering a table of however many keys the rows before it made.
COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("key show", ("key", "show", "{key}")),
    ("encrypt", ("encrypt", "{key}", "--in", "{plaintext}", "--out", "{ciphertext}")),
)


def executable() -> str:
    """The `enclave-kms` script installed beside this interpreter (the venv's), else PATH's."""
    beside = Path(sys.executable).with_name("enclave-kms")
    found = str(beside) if beside.is_file() else shutil.which("enclave-kms")
    if not found:
        raise BenchError("no enclave-kms command beside the interpreter or on PATH")
    return found


def config_dir(home: Path, *, url: str, token: str, policy: Path, root: Path) -> Path:
    """What `enclave-kms init` leaves: the config file and the token file, nothing pinned yet."""
    shutil.rmtree(home / "attested", ignore_errors=True)
    write_private(home / "token", (token + "\n").encode())
    settings = {"url": url, "token_file": "token", "policy": str(policy), "trust_root": str(root)}
    write_config_file(settings, home / "config.toml")
    (home / "plaintext").write_bytes(PLAINTEXT)
    return home


class Command:
    """One CLI command, a new process per call, over the pin the warm-up made."""

    def __init__(self, home: Path, argv: tuple[str, ...], key: str) -> None:
        places = {
            "key": key,
            "plaintext": str(home / "plaintext"),
            "ciphertext": str(home / "ciphertext"),
        }
        self.argv = [executable(), *(part.format(**places) for part in argv)]
        self.env = {**os.environ, "ENCLAVE_KMS_CONFIG": str(home / "config.toml")}
        for setting in ("URL", "TOKEN", "TOKEN_FILE", "POLICY", "TRUST_ROOT", "PCCS"):
            self.env.pop(f"ENCLAVE_KMS_{setting}", None)  # the config file decides, as after init

    def once(self) -> None:
        done = subprocess.run(
            self.argv, env=self.env, capture_output=True, timeout=120, check=False
        )
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise BenchError(f"{NAME} {' '.join(self.argv[1:3])}: exit {done.returncode}: {tail}")

    def pinned(self, home: Path) -> None:
        """The warm-up: the first command attests and pins; it must leave a pin behind."""
        self.once()
        if not any((home / "attested").glob("*")):
            raise BenchError(f"{NAME}: the first command left no pinned attestation")


def cases(
    home: Path, *, url: str, token: str, key: str, policy: Path, root: Path, seconds: float
) -> list[Case]:
    """A row per command in `COMMANDS`, each at least one new process per run."""
    config_dir(home, url=url, token=token, policy=policy, root=root)
    out = []
    for label, argv in COMMANDS:
        command = Command(home, argv, key)

        def run(command: Command = command) -> RunSample:
            return timed_loop(command.once, seconds, min_ops=1)

        def warm(command: Command = command) -> object:
            command.pinned(home)
            return None

        extra = {"command": label, "attestation": "pinned"}
        out.append(Case(NAME, "enclave-kms", GROUP, run, extra=extra, warmup=warm))
    return out
