"""scripts/sgx-hardware-smoke.sh is for a person on an SGX machine; here (no SGX) it must say
which prerequisites are missing, write its report, and exit non-zero, never half-run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "sgx-hardware-smoke.sh"


def test_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_without_sgx_it_reports_the_missing_prerequisites(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    env["ENCLAVE_KMS_CLI"] = str(REPO / ".venv" / "bin" / "enclave-kms")
    result = subprocess.run(
        ["bash", str(SCRIPT), "--work", str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = (tmp_path / "work" / "report.txt").read_text()
    assert report == result.stdout
    assert "FAIL prerequisites" in report
    assert "gramine-sgx" in report  # named among the missing
    if not os.path.exists("/dev/sgx_enclave"):
        assert "/dev/sgx_enclave" in report
    assert report.rstrip().splitlines()[-1].startswith("result: FAIL")
    assert not (tmp_path / "work" / "gramine").exists()  # stopped before building
