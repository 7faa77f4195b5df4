"""Enclave image manifests: what is measured, canonical bytes, MRENCLAVE sensitivity."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.errors import ConfigError, ImageError
from enclave_kms.platform.image import (
    MANIFEST_FORMAT,
    EnclaveConfig,
    Manifest,
    TrustedFile,
    build_manifest,
    distribution_closure,
    environment_roots,
    read_manifest,
    write_manifest,
)
from enclave_kms.sgx.report import AttributeFlags

REPO = Path(__file__).resolve().parents[2]


def _dist(site: Path, name: str, files: dict[str, str], requires: list[str]) -> None:
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(metadata)
    record = [f"{rel},," for rel in files]
    record += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,", "../../bin/tool,,"]
    record += [f"{name}/__pycache__/__init__.cpython-311.pyc,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


def make_site(base: Path) -> Path:
    """A small installed tree: one package walked whole, and distributions with metadata."""
    site = base / "site"
    pkg = site / "mypkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text('VALUE = "good"\n')
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")
    (pkg / "anchor.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    (pkg / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"derived, never measured")
    _dist(
        site,
        "rootdist",
        {"rootdist/__init__.py": "import depdist\n"},
        ["depdist>=1", 'extradep; extra == "fancy"', 'missingdep; python_version < "3"'],
    )
    _dist(site, "depdist", {"depdist/__init__.py": "", "depdist/data.txt": "data"}, [])
    _dist(site, "extradep", {"extradep/__init__.py": ""}, [])
    _dist(site, "unrelated", {"unrelated/__init__.py": ""}, [])
    _dist(site, "meta", {"meta/__init__.py": ""}, ["rootdist[fancy]"])
    return site


def build(site: Path, config: EnclaveConfig | None = None, **options: object) -> Manifest:
    kwargs: dict[str, object] = {
        "packages": ("mypkg",),
        "distributions": ("rootdist",),
        "stdlib": False,
        "interpreter": False,
        "roots": {"site": (site,)},
    }
    kwargs.update(options)
    return build_manifest(config or EnclaveConfig(), **kwargs)  # type: ignore[arg-type]


SYNTHETIC_FILES = [
    "depdist/__init__.py",
    "depdist/data.txt",
    "mypkg/__init__.py",
    "mypkg/anchor.pem",
    "mypkg/mod.py",
    "mypkg/sub/__init__.py",
    "rootdist/__init__.py",
]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path)


# --------------------------------------------------------------------------- what is measured


def test_synthetic_tree_measures_package_and_closure(site: Path) -> None:
    manifest = build(site)
    assert [f.key for f in manifest.files] == [f"site:{p}" for p in SYNTHETIC_FILES]
    for entry in manifest.files:
        assert entry.sha256 == hashlib.sha256((site / entry.path).read_bytes()).digest()


def test_requested_extras_are_followed(site: Path) -> None:
    names = {d.metadata["Name"] for d in distribution_closure(["meta"], [site])}
    assert names == {"meta", "rootdist", "depdist", "extradep"}


def test_missing_root_distribution_is_an_error(site: Path) -> None:
    with pytest.raises(ImageError, match="nosuchdist"):
        build(site, distributions=("nosuchdist",))


def test_measurement_does_not_depend_on_location(site: Path, tmp_path: Path) -> None:
    moved = shutil.copytree(site, tmp_path / "elsewhere" / "site")
    a, b = build(site), build(moved, roots={"site": (moved,)})
    assert a.to_bytes() == b.to_bytes()
    assert a.mr_enclave == b.mr_enclave == hashlib.sha256(a.to_bytes()).digest()


@pytest.mark.parametrize("relpath", SYNTHETIC_FILES)
def test_one_changed_byte_in_any_trusted_file_changes_mr_enclave(site: Path, relpath: str) -> None:
    before = build(site).mr_enclave
    path = site / relpath
    data = bytearray(path.read_bytes() or b"\n")
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert build(site).mr_enclave != before


def test_added_module_changes_mr_enclave_but_bytecode_cache_does_not(site: Path) -> None:
    before = build(site).mr_enclave
    (site / "mypkg" / "__pycache__" / "sub.cpython-311.pyc").write_bytes(b"cache")
    assert build(site).mr_enclave == before
    (site / "mypkg" / "extra.py").write_text("")
    assert build(site).mr_enclave != before


@pytest.mark.parametrize(
    "change",
    [
        {"debug": True},
        {"product_id": 2},
        {"security_version": 2},
        {"heap_size": 512 << 20},
        {"stack_size": 4 << 20},
        {"num_tcs": 4},
    ],
)
def test_every_config_field_is_measured(site: Path, change: dict[str, object]) -> None:
    base = EnclaveConfig()
    changed = dataclasses.replace(base, **change)  # type: ignore[arg-type]
    assert build(site, base).mr_enclave != build(site, changed).mr_enclave


def test_entrypoint_is_measured(site: Path) -> None:
    assert build(site).mr_enclave != build(site, entrypoint="mypkg.mod").mr_enclave


def test_real_environment_manifest() -> None:
    """The default image: enclave_kms, the enclave's distributions, stdlib, interpreter;
    not the host/CLI-only dependencies, not the stdlib's tests."""
    roots = environment_roots()
    names = {
        d.metadata["Name"].lower().replace("_", "-")
        for d in distribution_closure(
            ("cryptography", "cbor2", "pyasn1", "dcap-qvl", "fastapi", "uvicorn"), roots["site"]
        )
    }
    assert {"cryptography", "cffi", "fastapi", "starlette", "pydantic", "pydantic-core"} <= names
    assert {"uvicorn", "h11", "anyio", "idna", "cbor2", "pyasn1", "dcap-qvl"} <= names
    assert names.isdisjoint({"typer", "rich", "httpx", "psycopg", "pytest", "enclave-kms"})
    manifest = build_manifest(EnclaveConfig())
    keys = {f.key for f in manifest.files}
    for expected in (
        "site:enclave_kms/errors.py",
        "site:enclave_kms/attestation/intel_sgx_root_ca.pem",
        "site:enclave_kms/platform/sim/loader.py",
        "site:cryptography/__init__.py",
        "site:fastapi/__init__.py",
        "stdlib:os.py",
        "stdlib:json/__init__.py",
    ):
        assert expected in keys
    assert any(k.startswith("interpreter:python") for k in keys)
    assert any(k.startswith("stdlib:lib-dynload/") and k.endswith(".so") for k in keys)
    assert not any(k.startswith(("site:typer/", "site:httpx/", "site:rich/")) for k in keys)
    assert not any(k.startswith(("stdlib:test/", "stdlib:idlelib/")) for k in keys)
    assert not any("__pycache__" in k or k.endswith(".pyc") for k in keys)


# --------------------------------------------------------------------------- canonical bytes


def _document(manifest: Manifest) -> dict[str, object]:
    decoded = cbor2.loads(manifest.to_bytes())
    assert isinstance(decoded, dict)
    return decoded


def test_round_trip_and_image_directory(site: Path, tmp_path: Path) -> None:
    manifest = build(site)
    assert Manifest.parse(manifest.to_bytes()) == manifest
    write_manifest(tmp_path / "img", manifest)
    assert read_manifest(tmp_path / "img").mr_enclave == manifest.mr_enclave
    assert (tmp_path / "img" / "enclave.toml").is_file()
    assert _document(manifest)["format"] == MANIFEST_FORMAT


def test_non_canonical_encoding_is_refused(site: Path) -> None:
    document = _document(build(site))
    reordered = {k: document[k] for k in sorted(document, reverse=True)}
    data = cbor2.dumps(reordered, canonical=False)
    assert data != build(site).to_bytes()
    with pytest.raises(ImageError, match="canonical"):
        Manifest.parse(data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(extra=1), "expected a map"),
        (lambda d: d.update(format="other/v9"), "format"),
        (
            lambda d: d["files"].append(["site", "../etc/passwd", bytes(32)]),
            "bad trusted file path",
        ),
        (lambda d: d["files"].append(["site", "/abs", bytes(32)]), "bad trusted file path"),
        (lambda d: d["files"].append(["Site!", "x", bytes(32)]), "bad root"),
        (lambda d: d["files"].insert(0, ["zzz", "x", bytes(32)]), "sorted"),
        (lambda d: d["files"].append(list(d["files"][-1])), "sorted"),
        (lambda d: d["files"].append(["zzz", "x", bytes(31)]), "32 bytes"),
        (lambda d: d["files"].append(["zzz", "x"]), "root, path, sha256"),
        (lambda d: d["config"].update(debug=1), "debug"),
        (lambda d: d["config"].update(product_id=70000), "product_id"),
        (lambda d: d["config"].pop("num_tcs"), "expected exactly"),
        (lambda d: d.update(entrypoint="not a module"), "entrypoint"),
    ],
)
def test_invalid_manifests_are_refused(site: Path, mutate: object, message: str) -> None:
    document = _document(build(site))
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ImageError, match=message):
        Manifest.parse(cbor2.dumps(document, canonical=True))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_image_error(data: bytes) -> None:
    try:
        manifest = Manifest.parse(data)
    except ImageError:
        return
    assert manifest.to_bytes() == data


def test_trusted_file_validation() -> None:
    with pytest.raises(ImageError):
        TrustedFile("site", "a//b", bytes(32))
    with pytest.raises(ImageError):
        TrustedFile("site", "a\\b", bytes(32))


# --------------------------------------------------------------------------- config


def test_config_defaults() -> None:
    config = EnclaveConfig.from_toml(b"")
    assert config == EnclaveConfig()
    assert (config.debug, config.product_id, config.security_version) == (False, 1, 1)
    assert (config.heap_size, config.stack_size, config.num_tcs) == (256 << 20, 8 << 20, 8)


def test_config_from_toml_and_back() -> None:
    text = (
        b'debug = true\nproduct_id = 7\nsecurity_version = 3\nheap_size = "64M"\n'
        b"stack_size = 1048576\nnum_tcs = 2\n"
    )
    config = EnclaveConfig.from_toml(text)
    assert config == EnclaveConfig(True, 7, 3, 64 << 20, 1 << 20, 2)
    assert EnclaveConfig.from_toml(config.to_toml().encode()) == config


@pytest.mark.parametrize(
    "text",
    [
        b"debugg = true\n",
        b"debug = 1\n",
        b"product_id = true\n",
        b"product_id = 65536\n",
        b"security_version = -1\n",
        b"num_tcs = 0\n",
        b"heap_size = 1000\n",
        b'heap_size = "lots"\n',
        b"stack_size = 4097\n",
        b"not toml = = \n",
        b"\xff\xfe",
    ],
)
def test_bad_config_is_refused(text: bytes) -> None:
    with pytest.raises(ConfigError):
        EnclaveConfig.from_toml(text)


def test_debug_config_signs_debug_attribute() -> None:
    release = EnclaveConfig().sigstruct_config()
    debug = EnclaveConfig(debug=True).sigstruct_config()
    assert not release.attributes.flags & AttributeFlags.DEBUG
    assert debug.attributes.flags & AttributeFlags.DEBUG
    assert release.attribute_mask.flags & AttributeFlags.DEBUG  # enforced, not ignored
