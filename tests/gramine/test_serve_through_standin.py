"""`enclave gramine` then `serve --platform gramine`, as far as it goes without SGX: stand-ins for
gramine-manifest (Gramine's Jinja step for our template), gramine-sgx-sign and gramine-sgx
(Gramine's descriptors; the manifest's argv with only its env) run the real host and the real
enclave process from the generated manifest. The EDL channel opens and carries `initialize`;
the enclave then reports, as a typed error over the channel, that /dev/attestation is absent."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enclave_kms.cli.enclave import app
from enclave_kms.errors import PlatformError
from enclave_kms.host.service import ServeOptions, start_gramine

STANDIN = Path(__file__).with_name("gramine_sgx_standin.py")


def _tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport sys, shutil, pathlib\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_generated_manifest_runs_the_enclave_and_its_channel_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(
        bin_dir,
        "gramine-manifest",
        "from enclave_kms.platform.gramine_manifest import preview_gramine_jinja\n"
        "src, dst = sys.argv[-2], sys.argv[-1]\n"
        "pathlib.Path(dst).write_text(preview_gramine_jinja(pathlib.Path(src).read_text()))",
    )
    _tool(bin_dir, "gramine-sgx-sign", "shutil.copy(sys.argv[4], sys.argv[6])")
    _tool(bin_dir, "gramine-sgx", f"import runpy; sys.argv[0] = {str(STANDIN)!r}\n"
          f"runpy.run_path({str(STANDIN)!r}, run_name='__main__')")  # fmt: skip
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runner = CliRunner()
    key, out = tmp_path / "signer.pem", tmp_path / "deploy"
    assert runner.invoke(app, ["keygen", "--out", str(key)]).exit_code == 0
    built = runner.invoke(app, ["gramine", "--key", str(key), "--out", str(out)])
    assert built.exit_code == 0, built.output
    assert (out / "enclave-kms.manifest.sgx").is_file()

    lines: list[str] = []
    lock = threading.Lock()

    def sink(line: str) -> None:
        with lock:
            lines.append(line)

    options = ServeOptions(
        data_dir=tmp_path / "data",
        platform="gramine",
        gramine_dir=out,
        collateral_service="intel-pcs",
        port=_free_port(),
        stderr_sink=sink,
    )
    with pytest.raises(PlatformError, match="/dev/attestation is not available"):
        start_gramine(options)
    with lock:
        assert any("Gramine is starting" in line for line in lines), lines
