"""The documentation is executable: docs/sdk.md's Python examples run against the real
simulated KMS, and docs/quickstart.md's shell commands run verbatim, as a new user would.

The quickstart uses the documented port 8443. When this process may create a network
namespace (root, `unshare -n`), the quickstart runs in its own, so it neither collides with
nor disturbs anything else listening on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.client.real_server import RealKMS

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def fenced(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def test_sdk_examples_run(
    real_kms: RealKMS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = fenced((DOCS / "sdk.md").read_text(), "python")
    assert len(blocks) >= 8
    policy = tmp_path / "policy.toml"
    policy.write_text(real_kms.policy.to_toml())
    monkeypatch.setenv("ENCLAVE_KMS_URL", real_kms.url)
    monkeypatch.setenv("ENCLAVE_KMS_TOKEN", real_kms.token)
    monkeypatch.setenv("ENCLAVE_KMS_POLICY", str(policy))
    monkeypatch.setenv("ENCLAVE_KMS_TRUST_ROOT", str(real_kms.root_path))
    monkeypatch.chdir(tmp_path)  # the examples write files (an officer's share)
    namespace: dict[str, object] = {"__name__": "sdk_examples"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"docs/sdk.md python block {number}", "exec")
        exec(code, namespace)  # executing our own documentation is the point


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.slow
def test_quickstart_runs_verbatim(tmp_path: Path) -> None:
    blocks = fenced((DOCS / "quickstart.md").read_text(), "sh")
    assert len(blocks) >= 7
    script = tmp_path / "quickstart.sh"
    script.write_text("\n".join(blocks))
    (tmp_path / ".venv").symlink_to(REPO / ".venv")  # a clone where `make` has run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENCLAVE_KMS_", "VIRTUAL_ENV"))}
    env["HOME"] = str(tmp_path / "home")
    runner = ["bash", "-euo", "pipefail", str(script)]
    if _can_unshare():
        runner = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *runner]
    else:
        import socket

        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 8443)) == 0:
                pytest.fail("port 8443 is in use and no private network namespace is possible")
    proc = subprocess.Popen(
        runner,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the server, if `kill %1` did not finish it
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out
    for expected in (
        "refused: exit code 1",  # no policy: identity required
        "pins no enclave identity",
        "refused: exit code 2",  # pinned, but the simulated root is not trusted by default
        "TRUST ON FIRST USE",
        "wrote policy.toml",
        "attested: the evidence verifies",
        "-rw------- ",
        "card 4111 1111 1111 1111",
        "valid",
        "audit log OK",
        "matches the enclave's head",
    ):
        assert expected in out, f"{expected!r} missing from the quickstart's output:\n{out}"
    assert "Traceback" not in out
    assert "ekms_" not in out  # the admin token is never printed


CLIENT_COMMANDS = (
    "attest",
    "policy from-server",
    "policy show",
    "init",
    "token create",
    "token list",
    "token show",
    "token revoke",
    "key create",
    "key list",
    "key show",
    "key rotate",
    "key config",
    "key delete",
    "key restore",
    "key import",
    "key export",
    "encrypt",
    "decrypt",
    "rewrap",
    "datakey",
    "sign",
    "verify",
    "hmac",
    "random",
    "audit verify",
    "audit head",
    "config show",
    "config path",
)


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
def test_the_cli_reference_covers_every_client_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from enclave_kms.cli.main import main

    reference = (DOCS / "cli.md").read_text()
    words = command.split()
    documented = f"enclave-kms {command}" in reference or f"`{command}" in reference
    assert documented, f"docs/cli.md does not describe `{command}`"
    with pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    assert f" {command} [OPTIONS]" in " ".join(capsys.readouterr().out.split())
