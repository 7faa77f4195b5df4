"""The simulated loader refuses images whose signature, config or trusted files do not match,
and the import guard refuses modules that are not the measured bytes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.errors import ImageError
from enclave_kms.platform.image import (
    ENCLAVE_DISTRIBUTIONS,
    SIGSTRUCT_FILE,
    EnclaveConfig,
    Manifest,
    build_manifest,
    environment_roots,
    sign_image,
    write_manifest,
)
from enclave_kms.platform.sim.loader import (
    ImportGuard,
    enclave_argv,
    load_image,
)
from enclave_kms.sgx.report import AttributeFlags, Attributes
from enclave_kms.sgx.sigstruct import Sigstruct, generate_signing_key, mr_signer_from_public_key
from tests.platform.test_image import SYNTHETIC_FILES, build, make_site

DATE = dt.date(2024, 5, 6)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


def make_image(
    base: Path, key: rsa.RSAPrivateKey, config: EnclaveConfig | None = None
) -> tuple[Path, Path]:
    site = make_site(base)
    image = base / "image"
    write_manifest(image, build(site, config))
    sign_image(image, key, DATE)
    return site, image


def roots(site: Path) -> dict[str, tuple[Path, ...]]:
    return {"site": (site,)}


# --------------------------------------------------------------------------- load_image


def test_load_gives_the_measured_identity(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    site, image = make_image(tmp_path, key)
    loaded = load_image(image, roots=roots(site))
    assert loaded.mr_enclave == build(site).mr_enclave
    assert loaded.mr_signer == mr_signer_from_public_key(key.public_key())
    assert (loaded.isv_prod_id, loaded.isv_svn) == (1, 1)
    assert loaded.attributes == Attributes(int(AttributeFlags.INIT | AttributeFlags.MODE64BIT), 0x3)
    assert loaded.debug is False
    assert loaded.interpreter is None  # the synthetic image measures no interpreter


def test_debug_image_runs_with_debug_attribute(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    config = EnclaveConfig(debug=True, product_id=9, security_version=4)
    site, image = make_image(tmp_path, key, config)
    loaded = load_image(image, roots=roots(site))
    assert loaded.attributes.debug
    assert loaded.attributes.flags == AttributeFlags.INIT | AttributeFlags.MODE64BIT | 0x2
    assert (loaded.isv_prod_id, loaded.isv_svn) == (9, 4)


@pytest.mark.parametrize("relpath", SYNTHETIC_FILES)
def test_one_changed_byte_stops_the_launch_naming_the_file(
    tmp_path: Path, key: rsa.RSAPrivateKey, relpath: str
) -> None:
    site, image = make_image(tmp_path, key)
    path = site / relpath
    data = bytearray(path.read_bytes() or b"\n")
    data[0] ^= 0x20
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=f"trusted file site:{relpath} .*does not match"):
        load_image(image, roots=roots(site))


def test_missing_trusted_file_stops_the_launch(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    site, image = make_image(tmp_path, key)
    (site / "mypkg" / "anchor.pem").unlink()
    (site / "depdist" / "data.txt").write_text("changed")
    with pytest.raises(ImageError, match=r"site:depdist/data.txt .*\(and 1 more\)"):
        load_image(image, roots=roots(site))
    (site / "depdist" / "data.txt").write_text("data")
    with pytest.raises(ImageError, match=re.escape("site:mypkg/anchor.pem is missing")):
        load_image(image, roots=roots(site))


def test_rebuilt_manifest_does_not_match_old_signature(
    tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    site, image = make_image(tmp_path, key)
    old_sigstruct = (image / SIGSTRUCT_FILE).read_bytes()
    (site / "mypkg" / "mod.py").write_text('VALUE = "evil"\n')
    write_manifest(image, build(site))
    (image / SIGSTRUCT_FILE).write_bytes(old_sigstruct)
    with pytest.raises(ImageError, match=r"signed MRENCLAVE .* is not the manifest's"):
        load_image(image, roots=roots(site))


def test_edited_manifest_config_does_not_match_signature(
    tmp_path: Path, key: rsa.RSAPrivateKey
) -> None:
    site, image = make_image(tmp_path, key)
    manifest = Manifest.parse((image / "manifest.cbor").read_bytes())
    edited = dataclasses.replace(manifest, config=EnclaveConfig(debug=True))
    (image / "manifest.cbor").write_bytes(edited.to_bytes())
    with pytest.raises(ImageError, match="signed MRENCLAVE"):
        load_image(image, roots=roots(site))


def test_unsigned_and_damaged_sigstruct_are_refused(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    site, image = make_image(tmp_path, key)
    sigstruct = (image / SIGSTRUCT_FILE).read_bytes()
    (image / SIGSTRUCT_FILE).write_bytes(sigstruct[:-1])
    with pytest.raises(
        ImageError, match=re.escape("sigstruct.bin: sigstruct: expected 1808 bytes")
    ):
        load_image(image, roots=roots(site))
    flipped = bytearray(sigstruct)
    flipped[1024] ^= 0x01  # ISVPRODID, inside the signed body
    (image / SIGSTRUCT_FILE).write_bytes(bytes(flipped))
    with pytest.raises(ImageError, match=r"sigstruct.bin: .*does not verify"):
        load_image(image, roots=roots(site))
    (image / SIGSTRUCT_FILE).unlink()
    with pytest.raises(ImageError, match="not signed"):
        load_image(image, roots=roots(site))


def _resign(image: Path, key: rsa.RSAPrivateKey, **changes: object) -> None:
    manifest = Manifest.parse((image / "manifest.cbor").read_bytes())
    config = dataclasses.replace(manifest.config.sigstruct_config(), **changes)  # type: ignore[arg-type]
    sigstruct = Sigstruct.sign(manifest.mr_enclave, config, key, DATE)
    (image / SIGSTRUCT_FILE).write_bytes(sigstruct.to_bytes())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"isv_prod_id": 2}, "ISVPRODID 2 is not the manifest's product_id 1"),
        ({"isv_svn": 7}, "ISVSVN 7 is not the manifest's security_version 1"),
        (
            {"attributes": Attributes(int(AttributeFlags.MODE64BIT | AttributeFlags.DEBUG), 3)},
            "signed attributes",
        ),
        ({"misc_select": 1}, "MISCSELECT"),
    ],
)
def test_signed_config_must_match_the_manifest(
    tmp_path: Path, key: rsa.RSAPrivateKey, changes: dict[str, object], message: str
) -> None:
    site, image = make_image(tmp_path, key)
    _resign(image, key, **changes)
    with pytest.raises(ImageError, match=message):
        load_image(image, roots=roots(site))


def test_other_signer_changes_mr_signer_and_can_be_refused(
    tmp_path: Path, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    site, image = make_image(tmp_path, key)
    first = load_image(image, roots=roots(site))
    sign_image(image, other_key, DATE)
    second = load_image(image, roots=roots(site))
    assert second.mr_enclave == first.mr_enclave
    assert second.mr_signer != first.mr_signer
    assert second.mr_signer == mr_signer_from_public_key(other_key.public_key())
    load_image(image, roots=roots(site), signer_allowed={second.mr_signer})
    with pytest.raises(ImageError, match="is not allowed"):
        load_image(image, roots=roots(site), signer_allowed={first.mr_signer})


# --------------------------------------------------------------------------- guard, in-process


def _module(name: str, filename: Path) -> ModuleType:
    module = ModuleType(name)
    module.__file__ = str(filename)
    return module


def test_guard_maps_files_and_checks_bytes(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    guard = ImportGuard(build(site), roots(site))
    mod = site / "mypkg" / "mod.py"
    assert guard.verified_bytes("mypkg.mod", str(mod)) == mod.read_bytes()
    guard.check_loaded([_module("mypkg.mod", mod), ModuleType("no_file")])
    (site / "mypkg" / "extra.py").write_text("")
    with pytest.raises(ImageError, match=re.escape("site:mypkg/extra.py is not a trusted file")):
        guard.verified_bytes("mypkg.extra", str(site / "mypkg" / "extra.py"))
    outside = tmp_path / "outside.py"
    outside.write_text("")
    with pytest.raises(ImageError, match=re.escape("outside.py is not a trusted file")):
        guard.check_loaded([_module("outside", outside)])
    mod.write_text('VALUE = "evil"\n')
    with pytest.raises(ImageError, match=re.escape("site:mypkg/mod.py differs from the image")):
        guard.check_loaded([_module("mypkg.mod", mod)])


def test_guard_follows_symlinked_roots(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(site)
    guard = ImportGuard(build(site), roots(site))
    assert guard.entry_for(str(link / "mypkg" / "mod.py"))[0] == "site:mypkg/mod.py"


# --------------------------------------------------------------------------- guard, in a process

GUARD_SCRIPT = textwrap.dedent(
    """
    import importlib, json, sys
    from pathlib import Path
    site, image, extra, guarded = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    sys.path[:0] = [site]
    sys.path.extend(extra)
    from enclave_kms.platform.image import read_manifest
    from enclave_kms.platform.sim.loader import install_import_guard
    if guarded == "1":
        install_import_guard(
            read_manifest(Path(image)), roots={"site": (Path(site),)}, check_loaded=False
        )
    results = {}
    for name in sys.argv[5:]:
        try:
            module = importlib.import_module(name)
            results[name] = "ok " + str(getattr(module, "VALUE", ""))
        except ImportError as exc:
            results[name] = f"refused {type(exc.__cause__).__name__}: {exc}"
    print(json.dumps(results))
    """
)

MODULES = [
    "mypkg.mod",
    "mypkg.sub",
    "mypkg.extra",
    "mypkg._bisect",
    "mypkg.ext._bisect",
    "rootdist",
]


def _extension() -> Path:
    spec = importlib.util.find_spec("_bisect")
    if spec is None or not spec.origin or not spec.origin.endswith(".so"):
        pytest.skip("_bisect is not a shared object in this interpreter")
    return Path(spec.origin)


@pytest.fixture
def attacked_site(tmp_path: Path) -> tuple[Path, Path]:
    """A measured image, then the attacks: a module added, a module and a shared object
    altered, and a planted bytecode cache whose header matches the trusted source."""
    site = make_site(tmp_path)
    extension = _extension()
    shutil.copy(extension, site / "mypkg" / extension.name)
    (site / "mypkg" / "ext").mkdir()
    (site / "mypkg" / "ext" / "__init__.py").write_text("")
    shutil.copy(extension, site / "mypkg" / "ext" / extension.name)
    image = tmp_path / "image"
    write_manifest(image, build(site))
    (site / "mypkg" / "extra.py").write_text('VALUE = "not measured"\n')
    (site / "mypkg" / "sub" / "__init__.py").write_text('VALUE = "altered"\n')
    with (site / "mypkg" / "ext" / extension.name).open("ab") as fh:
        fh.write(b"\0")
    real = site / "mypkg" / "mod.py"
    evil = tmp_path / "evil.py"
    evil.write_text('VALUE = "evil"\n')  # same size as 'VALUE = "good"\n'
    assert evil.stat().st_size == real.stat().st_size
    os.utime(evil, ns=(real.stat().st_atime_ns, real.stat().st_mtime_ns))
    py_compile.compile(str(evil), cfile=importlib.util.cache_from_source(str(real)), doraise=True)
    return site, image


def _run_guard_script(tmp_path: Path, site: Path, image: Path, guarded: bool) -> dict[str, str]:
    script = tmp_path / "guard_script.py"
    script.write_text(GUARD_SCRIPT)
    extra = [str(p) for p in environment_roots()["site"]]
    argv = [sys.executable, "-I", "-S", "-B", str(script), str(site), str(image), json.dumps(extra)]
    argv += ["1" if guarded else "0", *MODULES]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    results: dict[str, str] = json.loads(done.stdout)
    return results


def test_without_the_guard_the_attacks_work(
    tmp_path: Path, attacked_site: tuple[Path, Path]
) -> None:
    """Control: the attacks are real — an unguarded interpreter runs the planted bytecode."""
    results = _run_guard_script(tmp_path, *attacked_site, guarded=False)
    assert results["mypkg.mod"] == "ok evil"
    assert results["mypkg.sub"] == "ok altered"
    assert results["mypkg.extra"] == "ok not measured"
    assert results["mypkg.ext._bisect"] == "ok "


def test_import_guard_refuses_unmeasured_and_altered_modules(
    tmp_path: Path, attacked_site: tuple[Path, Path]
) -> None:
    results = _run_guard_script(tmp_path, *attacked_site, guarded=True)
    assert results["mypkg.mod"] == "ok good"  # compiled from the verified source, not the .pyc
    assert results["rootdist"] == "ok "  # its import of depdist is trusted too
    assert results["mypkg._bisect"] == "ok "  # a trusted extension module loads
    assert results["mypkg.extra"] == (
        "refused ImageError: enclave image: module mypkg.extra: "
        "site:mypkg/extra.py is not a trusted file of the image"
    )
    assert results["mypkg.sub"] == (
        "refused ImageError: enclave image: module mypkg.sub: "
        "site:mypkg/sub/__init__.py differs from the image (SHA-256 mismatch)"
    )
    assert results["mypkg.ext._bisect"].startswith("refused ImageError: enclave image: module")
    assert "site:mypkg/ext/_bisect" in results["mypkg.ext._bisect"]
    assert "differs from the image" in results["mypkg.ext._bisect"]


# --------------------------------------------------------------------------- full launch


def test_launch_runs_the_entrypoint_and_guards_it(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """Host: build, sign, load; enclave: `enclave_argv` bootstraps, checks what it already
    imported, installs the guard and runs the measured entry point. A trusted module altered
    after the launch check is refused when the enclave imports it."""
    site = make_site(tmp_path)
    (site / "mypkg" / "main.py").write_text(
        "from mypkg import mod\nprint('enclave says', mod.VALUE)\n"
    )
    ekms = tmp_path / "ekms"  # a private copy: other work on the tree cannot race this test
    shutil.copytree(
        REPO / "src" / "enclave_kms",
        ekms / "enclave_kms",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    paths = sysconfig.get_paths()
    real = environment_roots()
    test_roots = {
        **real,
        "site": (site, ekms, *dict.fromkeys(Path(paths[k]) for k in ("purelib", "platlib"))),
    }
    manifest = build_manifest(
        EnclaveConfig(),
        packages=("mypkg", "enclave_kms"),
        distributions=ENCLAVE_DISTRIBUTIONS,
        roots=test_roots,
        entrypoint="mypkg.main",
    )
    image = tmp_path / "image"
    write_manifest(image, manifest)
    sign_image(image, key, DATE)
    loaded = load_image(image, roots=test_roots)
    assert loaded.interpreter is not None
    argv = enclave_argv(loaded, pycache_prefix=tmp_path / "pycache")
    assert argv[1:4] == ["-I", "-S", "-B"]

    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "enclave says good\n"

    (site / "mypkg" / "mod.py").write_text('VALUE = "evil"\n')
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "site:mypkg/mod.py differs from the image" in done.stderr
    assert "enclave says" not in done.stdout
