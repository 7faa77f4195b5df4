"""`serve --platform gramine`: the host launches `gramine-sgx enclave-kms` in the deployment
directory and serves collateral from a PCCS. No SGX here, so a fake `gramine-sgx` on PATH
records how it was started."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from enclave_kms.errors import EnclaveKMSError, PlatformError, UsageError
from enclave_kms.host.service import ServeOptions, start_gramine


def _deployment(tmp_path: Path) -> Path:
    gramine_dir = tmp_path / "deploy"
    gramine_dir.mkdir()
    (gramine_dir / "enclave-kms.manifest.sgx").write_bytes(b"signed manifest")
    return gramine_dir


def test_missing_deployment_or_pccs_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--gramine-dir"):
        start_gramine(ServeOptions(data_dir=tmp_path / "d", platform="gramine"))
    with pytest.raises(UsageError, match="--pccs-url"):
        start_gramine(
            ServeOptions(
                data_dir=tmp_path / "d", platform="gramine", gramine_dir=_deployment(tmp_path)
            )
        )


def test_host_runs_gramine_sgx_in_the_deployment_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "started"
    fake = bin_dir / "gramine-sgx"
    fake.write_text(f'#!/bin/sh\necho "$PWD $*" > {record}\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    gramine_dir = _deployment(tmp_path)
    with pytest.raises(EnclaveKMSError):
        start_gramine(
            ServeOptions(
                data_dir=tmp_path / "d",
                platform="gramine",
                gramine_dir=gramine_dir,
                pccs_url="https://127.0.0.1:1",
            )
        )
    assert record.read_text().split() == [str(gramine_dir), "enclave-kms"]


def test_without_gramine_installed_the_error_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PlatformError, match="cannot start the enclave"):
        start_gramine(
            ServeOptions(
                data_dir=tmp_path / "d",
                platform="gramine",
                gramine_dir=_deployment(tmp_path),
                pccs_url="https://127.0.0.1:1",
            )
        )
