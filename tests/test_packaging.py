"""The SDK, the verifier and the CLI install and import without the server stack: the
enclave's HTTP packages are the `server` extra only."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# pydantic is not among them: typer itself requires it.
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools")

# A meta path finder placed first: any import of a server package fails, as it would on a
# machine where only `pip install enclave-kms` ran.
BLOCKER = f"""
import sys
BLOCKED = {SERVER_ONLY!r}

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None

sys.meta_path.insert(0, Blocker())
"""

CLIENT_SIDE = """
import enclave_kms.attestation
import enclave_kms.attestation.evidence
import enclave_kms.attestation.policy
import enclave_kms.attestation.ratls
import enclave_kms.attestation.sources
import enclave_kms.attestation.verify
import enclave_kms.client
import enclave_kms.client.attest
import enclave_kms.cli.main
from enclave_kms.attestation.policy import Policy
from enclave_kms.client import AsyncKMSClient, KMSClient
KMSClient("https://127.0.0.1:1", token="t", policy=Policy(mr_enclave=(bytes(32),))).close()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("ok")
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_the_client_and_the_verifier_import_without_the_server_packages() -> None:
    result = _python(CLIENT_SIDE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_blocker_really_blocks() -> None:
    result = _python("import enclave_kms.enclave.api.app")
    assert result.returncode != 0
    assert "(blocked)" in result.stderr


def test_the_cli_works_and_serve_names_the_missing_extra(tmp_path: Path) -> None:
    run_cli = "import sys\nfrom enclave_kms.cli.main import main\nmain(sys.argv[1:])\n"
    helped = _python(run_cli, "key", "--help")
    assert helped.returncode == 0, helped.stderr
    serve = _python(run_cli, "serve", "--data-dir", str(tmp_path / "data"))
    assert serve.returncode == 1, serve.stderr
    assert "pip install 'enclave-kms[server]'" in serve.stderr
    assert "Traceback" not in serve.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_the_base_requirements_hold_no_server_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {
        req.split(">")[0].split("[")[0].split("=")[0].strip() for req in project["dependencies"]
    }
    assert names.isdisjoint(SERVER_ONLY), names
    server = {r.split(">")[0] for r in project["optional-dependencies"]["server"]}
    assert {"fastapi", "uvicorn", "uvloop", "httptools"} <= server
    # The postgres extra is what the PostgreSQL backend imports, and only that.
    postgres = {r.split(">")[0].split("[")[0] for r in project["optional-dependencies"]["postgres"]}
    backend = (REPO / "src" / "enclave_kms" / "host" / "storage" / "postgres.py").read_text()
    assert postgres
    assert all(name.replace("-", "_") in backend for name in postgres), postgres
    makefile = (REPO / "Makefile").read_text()
    assert "-e '.[dev,server,postgres]'" in makefile  # make test installs all the tests need
