"""The connection options are declared once (the root callback) and reach every client command
in either place; the config file is written by a TOML library that tomllib reads back; the
CLI uses only typer's public API."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main

from enclave_kms.cli import config, main
from enclave_kms.cli.config import CONNECTION_FLAGS, read_config_file, write_config_file
from enclave_kms.cli.main import hoist

SRC = Path(__file__).resolve().parents[2] / "src" / "enclave_kms"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("ENCLAVE_KMS_URL", "ENCLAVE_KMS_TOKEN", "ENCLAVE_KMS_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("ENCLAVE_KMS_POLICY", "ENCLAVE_KMS_TRUST_ROOT", "ENCLAVE_KMS_PCCS"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("ENCLAVE_KMS_CONFIG", str(path))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main.main(list(args))
    out = capsys.readouterr()
    assert isinstance(exc.value.code, int)
    return exc.value.code, out.out, out.err


def _commands(
    command: Any, ctx: Any, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    """Every command under `command`, each group built as resolving its name builds it."""
    found = [(path, command)]
    for name in command.list_commands(ctx) if hasattr(command, "list_commands") else ():
        found += _commands(command.get_command(ctx, name), ctx, (*path, name))
    return found


def test_connection_options_are_declared_only_on_the_root() -> None:
    root = typer.main.get_command(main.app)
    ctx = root.make_context("enclave-kms", ["config", "path"], resilient_parsing=True)
    declared = {
        path: {opt for p in cmd.params for opt in p.opts} & set(CONNECTION_FLAGS)
        for path, cmd in _commands(root, ctx)
    }
    assert declared[()] == set(CONNECTION_FLAGS)
    # Only the offline evidence check has its own --policy/--trust-root (no server involved).
    others = {path: flags for path, flags in declared.items() if path and flags}
    assert set(others) == {("quote", "verify")}, others
    assert others[("quote", "verify")] <= {"--policy", "--trust-root"}
    for module in ("keys", "crypto", "tokens", "audit", "attest", "policy", "config"):
        text = (SRC / "cli" / f"{module}.py").read_text()
        assert "resolve(url=" not in text, module


@pytest.mark.parametrize(
    "args",
    [
        ("--url", "https://flag.example:1", "config", "show"),
        ("config", "show", "--url", "https://flag.example:1"),
        ("config", "show", "--url=https://flag.example:1"),
    ],
)
def test_a_connection_flag_before_or_after_the_command_is_used(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    code, out, _ = _run(capsys, *args)
    assert code == 0
    row = next(line for line in out.splitlines() if " url " in f" {line} ")
    assert "https://flag.example:1" in row
    assert "flag" in row.split("https://flag.example:1")[1]


def test_hoisting_leaves_a_command_s_own_option_and_a_missing_value_alone() -> None:
    root = typer.main.get_command(main.app)
    ctx = root.make_context("enclave-kms", ["config", "path"], resilient_parsing=True)
    assert hoist(root, ctx, ["key", "list", "--url", "U"]) == ["--url", "U", "key", "list"]
    verify = ["quote", "verify", "q.bin", "--policy", "p.toml"]
    assert hoist(root, ctx, verify) == verify  # quote verify's own --policy
    assert hoist(root, ctx, ["key", "list", "--url"]) == ["key", "list", "--url"]
    assert hoist(root, ctx, ["encrypt", "k", "--", "--url", "x"]) == [
        "encrypt",
        "k",
        "--",
        "--url",
        "x",
    ]


def test_usage_errors_and_bare_groups_keep_their_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _run(capsys, "key")[0] == 0  # help for a bare group is not an error
    assert _run(capsys, "--help")[0] == 0
    code, _, err = _run(capsys, "key", "list", "--no-such-flag")
    assert code == 1
    assert "No such option" in err


def test_an_astral_character_round_trips_through_tomllib(isolated: Path) -> None:
    values = {
        "url": "https://kms.example:8443",
        "policy": '/srv/policies/\U0001f510-prod "quoted" \\ back.toml',
        "trust_root": "/roots/\u00e9t\u00e9/\U00010348.pem",
    }
    path = write_config_file(values)
    raw = path.read_bytes()
    assert tomllib.loads(raw.decode("utf-8")) == values
    assert read_config_file(path) == values
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    merged = write_config_file({"pccs": "https://pccs.example:8081"})
    assert tomllib.loads(merged.read_text("utf-8")) == {
        **values,
        "pccs": "https://pccs.example:8081",
    }


def test_the_cli_uses_only_typer_s_public_api() -> None:
    private = re.compile(r"^\s*(from|import)\s+typer\._", re.M)
    offenders = [p.name for p in (SRC / "cli").glob("*.py") if private.search(p.read_text())]
    assert offenders == []
    assert config.write_config_file.__module__ == "enclave_kms.cli.config"
