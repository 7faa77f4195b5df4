"""DESIGN §5 import rules, enforced by import-linter's contracts in pyproject.toml."""

import subprocess
import sys
from pathlib import Path


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


# One probe per rule: a module that breaks it. Each must be reported, by module and import.
PROBES = {
    "sgx/_probe_runtime.py": "enclave_kms.enclave",
    "sgx/_probe_attestation.py": "enclave_kms.attestation",
    "client/_probe.py": "enclave_kms.host",
    "host/_probe.py": "enclave_kms.enclave.runtime",
    "channel/_probe.py": "enclave_kms.platform.sim",
    "attestation/_probe_platform.py": "enclave_kms.platform",
    "enclave/_probe.py": "enclave_kms.host.ocalls",
    "platform/_probe.py": "enclave_kms.enclave",
    "sgx/_probe_io.py": "socket",
    "attestation/_probe_io.py": "subprocess",
    "channel/_probe_io.py": "httpx",
    "attestation/_probe_files.py": "pathlib",
    "wire/_probe.py": "enclave_kms.client",
}
# enclave.keys imports enclave.state: this import back makes a cycle between the two rooms.
CYCLE_PROBE = "enclave/state/_probe_cycle.py"


def test_a_probe_import_breaking_each_rule_is_caught(tmp_path: Path) -> None:
    import shutil
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(
        repo / "src" / "enclave_kms",
        tmp_path / "src" / "enclave_kms",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(repo / "pyproject.toml", tmp_path / "pyproject.toml")
    for relative, target in PROBES.items():
        (tmp_path / "src" / "enclave_kms" / relative).write_text(f"import {target}\n")
    (tmp_path / "src" / "enclave_kms" / CYCLE_PROBE).write_text("import enclave_kms.enclave.keys\n")
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    for relative, target in PROBES.items():
        module = "enclave_kms." + relative.removesuffix(".py").replace("/", ".")
        assert f"{module} -> {target} (l.1)" in out, (module, out)
    assert "No cycles are allowed in enclave_kms.enclave.\n" in out, out
    assert "- .state -> .keys (1 import)" in out, out
    contracts = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["importlinter"]
    for contract in contracts["contracts"]:
        assert f"{contract['name']} BROKEN" in out, contract["name"]


def test_the_runtime_and_the_channel_ecalls_import_one_way() -> None:
    """The runtime builds the channel ECALLs; they never import it back (not even for types)."""
    import grimp

    graph = grimp.build_graph("enclave_kms")
    runtime, channel = "enclave_kms.enclave.runtime", "enclave_kms.enclave.channel_ecalls"
    assert graph.direct_import_exists(importer=runtime, imported=channel)
    assert graph.find_shortest_chain(importer=channel, imported=runtime) is None


def test_the_architecture_page_names_every_room_and_every_contract() -> None:
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    page = (repo / "docs" / "architecture.md").read_text()
    package = repo / "src" / "enclave_kms"
    for room in sorted(p for p in package.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        assert f"  {room.name}/" in page, room.relative_to(package)
    contracts = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["importlinter"]
    for contract in contracts["contracts"]:
        assert f'"{contract["name"]}"' in page, contract["name"]


def test_the_sdk_imports_no_command_line_and_no_asyncio_client() -> None:
    """A new process's first answer pays for every import (issue 12): the SDK path loads
    neither the CLI stack (typer, click, rich, pygments: httpx's own CLI would pull them in)
    nor the asyncio client until it is asked for."""
    probe = (
        "import sys, enclave_kms.client as c\n"
        "cli = {'typer', 'click', 'rich', 'pygments'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & cli))\n"
        "print('enclave_kms.client.aio' in sys.modules)\n"
        "c.AsyncKMSClient\n"
        "print('enclave_kms.client.aio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split("\n")[:3] == ["[]", "False", "True"]


# What a client command after `init` has no use for (issue 12: its start-up is most of what it
# costs): the server, simulation and evidence tools, the appraisal (a pinned server is not
# appraised again), the parsers only evidence needs, and rich's syntax highlighting.
NOT_FOR_A_CLIENT_COMMAND = (
    "enclave_kms.enclave",
    "enclave_kms.host",
    "enclave_kms.platform",
    "enclave_kms.channel",
    "enclave_kms.attestation.verify",
    "enclave_kms.attestation.second_opinion",
    "enclave_kms.attestation.evidence",
    "enclave_kms.attestation.ratls",
    "enclave_kms.attestation.collateral",
    "enclave_kms.sgx.quote",
    "enclave_kms.sgx.pck",
    "enclave_kms.sgx.oe",
    "enclave_kms.cli.quote",
    "enclave_kms.cli.platform",
    "enclave_kms.cli.enclave",
    "enclave_kms.cli.serve",
    "enclave_kms.cli.replicas",
    "dcap_qvl",
    "pyasn1",
    "asyncio",
    "pygments",
    "rich.syntax",
    "fastapi",
    "uvicorn",
    # typer 0.29 coerces options through pydantic (60-65 ms per command): pinned below it.
    "pydantic",
    "pydantic_core",
)
# The CLI in a new process; prints the modules it loaded (as JSON) on its last stderr line.
CLI_PROBE = (
    "import json, sys\n"
    "from enclave_kms.cli.main import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    "    print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
)


def cli_modules(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, set[str]]:
    """Run `enclave-kms ARGS` in a new interpreter: exit code, stdout, modules it imported."""
    result = subprocess.run(
        [sys.executable, "-c", CLI_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    import json

    loaded = set(json.loads(result.stderr.strip().splitlines()[-1]))
    return result.returncode, result.stdout, loaded


def heavy(loaded: set[str]) -> list[str]:
    return sorted(
        m for m in loaded if any(m == h or m.startswith(h + ".") for h in NOT_FOR_A_CLIENT_COMMAND)
    )


def test_a_client_command_imports_only_its_own_group(tmp_path: Path) -> None:
    """`key list` runs up to its request (here refused: no server URL configured) with the
    key group alone: no other group's module, nothing of the enclave, the platform or the
    verifier. (tests/cli/test_client_cli.py runs it against a real server, over a pin.)"""
    env = {"PATH": "/usr/bin:/bin", "ENCLAVE_KMS_CONFIG": str(tmp_path / "config.toml")}
    code, _out, loaded = cli_modules("key", "list", env=env)
    assert code == 1  # exits.USAGE: no server URL
    assert {"enclave_kms.cli.keys", "enclave_kms.client.sync"} <= loaded
    assert heavy(loaded) == []
    assert {m for m in loaded if m.startswith("enclave_kms.cli.")} == {
        "enclave_kms.cli.main",
        "enclave_kms.cli.groups",
        "enclave_kms.cli.exits",
        "enclave_kms.cli.config",
        "enclave_kms.cli.keys",
    }


def test_the_root_help_lists_every_group_without_importing_one() -> None:
    """`enclave-kms --help` shows each group's name and help line from the registry alone."""
    code, out, loaded = cli_modules("--help", env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert code == 0
    from enclave_kms.cli import groups

    for name, help_text in groups.HELP.items():
        assert any(f" {name} " in line and help_text in line for line in out.splitlines()), name
    assert {m for m in loaded if m.startswith("enclave_kms.")} == {
        "enclave_kms.cli",
        "enclave_kms.cli.main",
        "enclave_kms.cli.groups",
        "enclave_kms.cli.exits",
        "enclave_kms.cli.config",
        "enclave_kms.errors",
    }
