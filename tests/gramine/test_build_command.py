"""`enclave-kms enclave gramine --key signer.pem --out DIR`: measure, fill, check, then run
gramine-manifest and gramine-sgx-sign (stand-ins here: scripts that record their argv and
check what they are given) or print the two commands when Gramine is not installed."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from enclave_kms.cli.enclave import app
from enclave_kms.errors import ImageError, UsageError
from enclave_kms.platform import threads
from enclave_kms.platform.gramine_manifest import (
    apply_gramine_manifest_defaults,
    check_gramine_manifest,
)
from enclave_kms.platform.image import read_manifest
from tests.gramine.manifest_world import TEMPLATE, gramine_render

runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gramine-build") / "signer.pem"
    assert invoke("keygen", "--out", path).exit_code == 0
    return path


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    tool = bin_dir / name
    tool.write_text(f"#!{sys.executable}\nimport sys, pathlib\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_without_gramine_the_two_commands_are_printed(
    signer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "deploy"
    result = invoke("gramine", "--key", signer, "--out", out)
    assert result.exit_code == 0, result.output
    assert "gramine-manifest -Dlog_level=error -Darch_libdir=/lib/x86_64-linux-gnu" in result.output
    assert f"gramine-sgx-sign --key {signer.resolve()}" in result.output
    filled = (out / "enclave-kms.manifest.template").read_text()
    assert not re.search(r"@EKMS_[A-Z_]+@", filled)
    for version in ("1.8", "1.9"):
        document = gramine_render(filled)
        apply_gramine_manifest_defaults(document, version)
        assert check_gramine_manifest(document, version) == []
    assert document["sgx"]["max_threads"] == threads.gramine_max_threads()
    assert read_manifest(out / "image").files  # the measured image, signed for MRSIGNER
    assert (out / "image" / "sigstruct.bin").is_file()


def test_with_gramine_installed_both_tools_run_in_the_deployment_directory(
    signer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    record = f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"
    _fake_tool(bin_dir, "gramine-manifest", f"{record}\npathlib.Path(sys.argv[-1]).write_text('m')")
    _fake_tool(
        bin_dir,
        "gramine-sgx-sign",
        f"{record}\nassert pathlib.Path('enclave-kms.manifest').read_text() == 'm'\n"
        "pathlib.Path('enclave-kms.manifest.sgx').write_text('signed')",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "deploy"
    result = invoke("gramine", "--key", signer, "--out", out)
    assert result.exit_code == 0, result.output
    calls = log.read_text().splitlines()
    assert calls[0] == (
        "-Dlog_level=error -Darch_libdir=/lib/x86_64-linux-gnu "
        "enclave-kms.manifest.template enclave-kms.manifest"
    )
    assert calls[1] == (
        f"--key {signer.resolve()} --manifest enclave-kms.manifest "
        "--output enclave-kms.manifest.sgx"
    )
    assert (out / "enclave-kms.manifest.sgx").read_text() == "signed"
    assert "--platform gramine --gramine-dir" in result.output


def test_a_failing_gramine_tool_fails_the_build(
    signer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "gramine-manifest", "sys.exit(1)")
    _fake_tool(bin_dir, "gramine-sgx-sign", "sys.exit(0)")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = invoke("gramine", "--key", signer, "--out", tmp_path / "deploy")
    assert isinstance(result.exception, ImageError)
    assert "gramine-manifest failed with status 1" in result.exception.message


def test_a_template_gramine_1_9_would_refuse_is_refused_before_gramine_runs(
    signer: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old.template"
    old.write_text(TEMPLATE.read_text().replace("loader.entrypoint.uri =", "loader.entrypoint ="))
    result = invoke("gramine", "--key", signer, "--out", tmp_path / "d", "--template", old)
    assert isinstance(result.exception, ImageError)
    assert "Unknown loader.entrypoint format" in result.exception.message
    assert not (tmp_path / "d" / "enclave-kms.manifest.template").exists()


def test_a_bad_key_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("not a key")
    key.chmod(0o600)
    result = invoke("gramine", "--key", key, "--out", tmp_path / "d")
    assert isinstance(result.exception, UsageError)
