"""`enclave-kms enclave keygen|build|sign|measure`."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner, Result

from enclave_kms.cli import exits
from enclave_kms.cli.enclave import app
from enclave_kms.errors import ConfigError, ImageError, UsageError
from enclave_kms.platform.image import read_manifest
from enclave_kms.sgx.sigstruct import Sigstruct, mr_signer_from_public_key

runner = CliRunner()


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("enclave-cli")


@pytest.fixture(scope="module")
def signer(workdir: Path) -> Path:
    """One `keygen` run per module (RSA-3072 e=3 generation takes about a second)."""
    path = workdir / "signer.pem"
    result = invoke("keygen", "--out", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def built(workdir: Path) -> Path:
    config = workdir / "enclave.toml"
    config.write_text("debug = true\nproduct_id = 7\nsecurity_version = 3\nnum_tcs = 4\n")
    out = workdir / "built"
    result = invoke("build", "--config", config, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def image(built: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "image"))


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


# --------------------------------------------------------------------------- keygen


def test_keygen_writes_an_owner_only_rsa3072_e3_pkcs8_key(signer: Path) -> None:
    assert stat.S_IMODE(signer.stat().st_mode) == 0o600
    pem = signer.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = _load_key(signer)
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3


def test_keygen_refuses_to_overwrite(signer: Path) -> None:
    before = signer.read_bytes()
    result = invoke("keygen", "--out", signer)
    assert isinstance(result.exception, UsageError)
    assert "refusing to overwrite" in result.exception.message
    assert signer.read_bytes() == before


def test_keygen_into_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke("keygen", "--out", tmp_path / "no" / "such" / "key.pem")
    assert isinstance(result.exception, UsageError)


# --------------------------------------------------------------------------- build / sign / measure


def test_build_writes_the_measured_config(built: Path) -> None:
    manifest = read_manifest(built)
    assert (manifest.config.debug, manifest.config.product_id) == (True, 7)
    assert (manifest.config.security_version, manifest.config.num_tcs) == (3, 4)
    assert (built / "enclave.toml").read_text().startswith("# enclave-kms enclave config")
    assert not (built / "sigstruct.bin").exists()


def test_sign_then_measure(image: Path, signer: Path) -> None:
    result = invoke("sign", image, "--key", signer, "--date", "2024-05-06")
    assert result.exit_code == 0, result.output
    sigstruct = Sigstruct.parse((image / "sigstruct.bin").read_bytes())
    sigstruct.verify()
    mr_signer = mr_signer_from_public_key(_load_key(signer).public_key())
    mr_enclave = read_manifest(image).mr_enclave
    assert sigstruct.mr_enclave == mr_enclave
    assert sigstruct.mr_signer == mr_signer

    result = invoke("measure", image, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["mr_enclave"] == mr_enclave.hex()
    assert info["mr_signer"] == mr_signer.hex()
    assert (info["product_id"], info["security_version"], info["debug"]) == (7, 3, True)
    assert info["signed_date"] == "2024-05-06"
    assert info["trusted_files"] == len(read_manifest(image).files) > 100

    text = invoke("measure", image).output
    assert f"mr_enclave       {mr_enclave.hex()}\n" in text
    assert f"mr_signer        {mr_signer.hex()}\n" in text
    assert "product_id       7\n" in text
    assert "debug            true\n" in text


def test_measure_unsigned_image(image: Path) -> None:
    result = invoke("measure", image, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["mr_signer"] is None
    assert info["signed"] is False
    assert "mr_signer        (unsigned)" in invoke("measure", image).output


def test_measure_refuses_a_tampered_signature(image: Path, signer: Path) -> None:
    assert invoke("sign", image, "--key", signer).exit_code == 0
    raw = bytearray((image / "sigstruct.bin").read_bytes())
    raw[1024] ^= 0x01  # ISVPRODID
    (image / "sigstruct.bin").write_bytes(bytes(raw))
    result = invoke("measure", image)
    assert isinstance(result.exception, ImageError)
    assert "does not verify" in result.exception.message
    assert exits.exit_code_for(result.exception) != exits.OK


def test_sign_refuses_a_key_others_can_read(image: Path, signer: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.pem"
    shutil.copy(signer, loose)
    os.chmod(loose, 0o644)
    result = invoke("sign", image, "--key", loose)
    assert isinstance(result.exception, UsageError)
    assert "chmod 600" in result.exception.message
    assert not (image / "sigstruct.bin").exists()


def test_sign_refuses_keys_sgx_cannot_use(image: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(wrong, 0o600)
    result = invoke("sign", image, "--key", wrong)
    assert isinstance(result.exception, UsageError)
    assert "RSA-3072 with e=3" in result.exception.message
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    os.chmod(garbage, 0o600)
    result = invoke("sign", image, "--key", garbage)
    assert isinstance(result.exception, UsageError)
    assert "not a PEM private key" in result.exception.message


def test_bad_paths_and_flags_are_usage_errors(image: Path, signer: Path, tmp_path: Path) -> None:
    for args in (
        ("sign", image, "--key", signer, "--date", "06/05/2024"),
        ("sign", tmp_path / "nothing", "--key", signer),
        ("measure", tmp_path / "nothing"),
        ("build", "--config", tmp_path / "missing.toml", "--out", tmp_path / "x"),
    ):
        result = invoke(*args)
        assert isinstance(result.exception, UsageError), args
        assert exits.exit_code_for(result.exception) == exits.USAGE


def test_build_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "enclave.toml"
    config.write_text("NumHeapPages = 1024\n")
    result = invoke("build", "--config", config, "--out", tmp_path / "out")
    assert isinstance(result.exception, ConfigError)
    assert "NumHeapPages" in result.exception.message
