"""Newcomer defects found from a fresh clone (issue 16), each pinned by a test: `make run`
takes the port, the quickstart's files stay out of git, `platform tcb` says when it applies,
and the docs promise nothing that does not exist (PostgreSQL only with its backend) and
work with an old curl."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from enclave_kms.cli.main import main
from enclave_kms.platform.sim.platform import SimPlatform

REPO = Path(__file__).resolve().parents[1]


def test_make_run_takes_a_port_and_a_data_dir() -> None:
    def dry(*args: str) -> str:
        out = subprocess.run(
            ["make", "-s", "-n", "-o", ".venv/.installed", "run", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line for line in out.splitlines() if " serve " in line)

    assert dry().endswith("--data-dir data --listen 127.0.0.1:8443")
    assert dry("PORT=9443", "DATA=/tmp/kms").endswith("--data-dir /tmp/kms --listen 127.0.0.1:9443")


def _ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    top = path.split("/", maxsplit=1)[0]
    return any(p.strip("/") == top for p in patterns)


def test_the_quickstart_and_make_run_leave_nothing_for_git_to_pick_up() -> None:
    quickstart = (REPO / "docs" / "quickstart.md").read_text()
    cleaned = re.search(r"^rm -rf (.+?)\s+#", quickstart, re.M)
    assert cleaned is not None
    created = [*cleaned.group(1).split(), "serve.log", "data"]  # + `make run`'s data dir
    assert "serve.log" in quickstart
    for path in created:
        assert _ignored(path), path
    if (REPO / ".git").exists() and shutil.which("git"):
        for path in (f"{p}/secret" if "." not in p else p for p in created):
            found = subprocess.run(
                ["git", "check-ignore", "-q", path], cwd=REPO, check=False
            ).returncode
            assert found == 0, path


def test_platform_tcb_says_a_running_server_needs_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SimPlatform.init(tmp_path / "platform")
    with pytest.raises(SystemExit) as exc:
        main(["platform", "tcb", "OutOfDate", "--dir", str(tmp_path / "platform")])
    assert exc.value.code == 0
    out = capsys.readouterr()
    assert out.out.strip() == "tcb_scenario OutOfDate"
    assert "restart" in out.err


def _docs() -> dict[str, str]:
    return {
        p.name: p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    }


def test_the_docs_promise_postgresql_only_because_the_backend_exists() -> None:
    mentioned = [name for name, text in _docs().items() if "postgres" in text.lower()]
    if mentioned:
        backend = REPO / "src" / "enclave_kms" / "host" / "storage" / "postgres.py"
        assert backend.is_file(), mentioned
        assert "psycopg" in backend.read_text()


def test_api_curl_examples_work_with_curl_before_7_82_and_say_where_the_token_is() -> None:
    api = (REPO / "docs" / "api.md").read_text()
    curl_lines = [line for line in api.splitlines() if line.startswith("curl ")]
    assert len(curl_lines) > 20
    assert not [line for line in curl_lines if "--json" in line]  # curl 7.82+ only
    for line in curl_lines:
        if " -d " in line:
            assert '-H "$J"' in line, line  # the JSON content type, given by hand
    assert 'J="Content-Type: application/json"' in api
    assert "T=$(cat ~/.config/enclave-kms/token)" in api
    assert "enclave-kms config show" in api
