"""Enclave images: the manifest of trusted files and launch config, and MRENCLAVE over it.

On SGX hardware MRENCLAVE is the hash of every page EADDed to the enclave. A Python enclave
under a library OS (Gramine) measures instead a manifest that lists every file the enclave may
load with its SHA-256, and the library OS refuses any file whose bytes differ. We use the same
idea for the simulated platform, with the manifest as the measured object:

    MRENCLAVE = SHA-256(canonical CBOR of {format, entrypoint, config, files})

Canonical CBOR (RFC 8949 §4.2, cbor2 `canonical=True`) rather than sorted JSON: hashes are
bytes, integers have exactly one encoding, there is no escaping or whitespace to agree on, and
any CBOR library in any language can recompute the value. `Manifest.parse` refuses bytes that
are not already canonical, so each manifest has exactly one MRENCLAVE.

What is measured (`build_manifest`):
- `site`: the `enclave_kms` package tree, and every file of the installed distributions in the
  closure of `ENCLAVE_DISTRIBUTIONS` under `Requires-Dist` (not enclave-kms's own requirements,
  which include host/CLI-only packages: typer, rich, httpx, psycopg);
- `stdlib`: the standard library's .py and extension modules, minus test/idlelib/tkinter/...;
- `interpreter` and `libdir`: the interpreter binary and libpython, which run all of the above.
Paths are relative to their root, so the measurement does not depend on where the tree lives.
Bytecode caches and `*.dist-info` metadata are not measured: caches are derived (the guard never
reads them) and metadata varies with the installer; neither is code the enclave runs.

Everything is hashed eagerly at build time: the default image is ≈1400 files, ≈85 MB (stdlib
≈760 files / 26 MB of it), measured in ≈0.3 s on a warm cache — well under the point where
listing without hashes (and hashing lazily at import) would be worth its weaker measurement.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
import re
import sys
import sysconfig
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.errors import ConfigError, ImageError
from enclave_kms.sgx.report import AttributeFlags, Attributes
from enclave_kms.sgx.sigstruct import DEFAULT_XFRM, Sigstruct, SigstructConfig

MANIFEST_FORMAT = "enclave-kms/manifest/v1"
MANIFEST_FILE = "manifest.cbor"
SIGSTRUCT_FILE = "sigstruct.bin"
CONFIG_FILE = "enclave.toml"
DEFAULT_ENTRYPOINT = "enclave_kms.enclave"

#: Import packages measured as whole directory trees (editable installs have no useful RECORD).
ENCLAVE_PACKAGES: tuple[str, ...] = ("enclave_kms",)
#: Distributions the enclave process imports; their Requires-Dist closure is measured too.
ENCLAVE_DISTRIBUTIONS: tuple[str, ...] = (
    "cryptography",
    "cbor2",
    "pyasn1",
    "dcap-qvl",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "shamir-mnemonic",  # k-of-n recovery of the storage root key (enclave/custody)
)
#: Standard-library directories an enclave never needs (tests, GUIs, installers, 2to3).
STDLIB_EXCLUDED = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages"}
)

MiB = 1 << 20
PAGE = 4096
MAX_MANIFEST_BYTES = 64 * MiB

#: Root name → directories searched in order (like sys.path) to find a manifest path.
Roots = Mapping[str, Sequence[Path]]

_CONFIG_KEYS = ("debug", "product_id", "security_version", "heap_size", "stack_size", "num_tcs")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.IGNORECASE)
_ROOT_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# --------------------------------------------------------------------------- config


def _parse_size(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"enclave config {name}: expected a size, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]
        return int(m.group(1)) * unit
    raise ConfigError(f"enclave config {name}: {value!r} is not a size (bytes, or '256M')")


@dataclass(frozen=True)
class EnclaveConfig:
    """The tutorial's enclave config (OE's Debug, ProductID, SecurityVersion, sizes, NumTCS)."""

    debug: bool = False
    product_id: int = 1
    security_version: int = 1
    heap_size: int = 256 * MiB
    stack_size: int = 8 * MiB
    num_tcs: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.debug, bool):
            raise ConfigError("enclave config debug: expected true or false")
        for name, low, high in (
            ("product_id", 0, 0xFFFF),
            ("security_version", 0, 0xFFFF),
            ("num_tcs", 1, 1024),
            ("heap_size", PAGE, 1 << 40),
            ("stack_size", PAGE, 1 << 32),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"enclave config {name}: {value!r} is not in {low}..{high}")
        for name in ("heap_size", "stack_size"):
            if getattr(self, name) % PAGE:
                raise ConfigError(f"enclave config {name}: must be a multiple of {PAGE} bytes")

    @classmethod
    def from_toml(cls, data: bytes) -> EnclaveConfig:
        """Load `enclave.toml` (flat keys; sizes in bytes or like "256M"); unknown keys refused."""
        try:
            table = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"enclave config: not valid TOML ({exc})") from None
        unknown = sorted(set(table) - set(_CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"enclave config: unknown keys {', '.join(unknown)}")
        values: dict[str, Any] = dict(table)
        for name in ("heap_size", "stack_size"):
            if name in values:
                values[name] = _parse_size(name, values[name])
        return cls(**values)

    def to_toml(self) -> str:
        return (
            "# enclave-kms enclave config (measured: part of MRENCLAVE)\n"
            f"debug = {'true' if self.debug else 'false'}\n"
            f"product_id = {self.product_id}\n"
            f"security_version = {self.security_version}\n"
            f"heap_size = {self.heap_size}\n"
            f"stack_size = {self.stack_size}\n"
            f"num_tcs = {self.num_tcs}\n"
        )

    def as_dict(self) -> dict[str, bool | int]:
        return {name: getattr(self, name) for name in _CONFIG_KEYS}

    @property
    def secs_attributes(self) -> Attributes:
        """SECS.ATTRIBUTES before EINIT: 64-bit mode, DEBUG if asked, x87+SSE state."""
        flags = AttributeFlags.MODE64BIT | (AttributeFlags.DEBUG if self.debug else 0)
        return Attributes(int(flags), DEFAULT_XFRM)

    def sigstruct_config(self) -> SigstructConfig:
        """What the author signs besides MRENCLAVE.

        The attribute mask enforces every flag, so an image signed for release can never be
        launched in debug mode (or the reverse), and XFRM's x87/SSE bits must be enabled.
        """
        return SigstructConfig(
            isv_prod_id=self.product_id,
            isv_svn=self.security_version,
            attributes=self.secs_attributes,
            attribute_mask=Attributes((1 << 64) - 1, DEFAULT_XFRM),
        )


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True, order=True)
class TrustedFile:
    """One measured file: `path` (POSIX, relative) under the directories of root `root`."""

    root: str
    path: str
    sha256: bytes = field(compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or not _ROOT_RE.match(self.root):
            raise ImageError(f"manifest: bad root name {self.root!r}")
        if not _valid_relpath(self.path):
            raise ImageError(f"manifest: bad trusted file path {self.path!r}")
        if not isinstance(self.sha256, bytes) or len(self.sha256) != 32:
            raise ImageError(f"manifest: {self.key}: sha256 must be 32 bytes")

    @property
    def key(self) -> str:
        """`root:path`, the name used in messages."""
        return f"{self.root}:{self.path}"


def _valid_relpath(path: object) -> bool:
    if not isinstance(path, str) or not path or "\\" in path or "\0" in path:
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts)


@dataclass(frozen=True)
class Manifest:
    """The measured enclave image. `files` is sorted by (root, path) and has no duplicates."""

    config: EnclaveConfig
    files: tuple[TrustedFile, ...]
    entrypoint: str = DEFAULT_ENTRYPOINT

    def __post_init__(self) -> None:
        if not isinstance(self.entrypoint, str) or not _MODULE_RE.match(self.entrypoint):
            raise ImageError(f"manifest: entrypoint {self.entrypoint!r} is not a module name")
        keys = [(f.root, f.path) for f in self.files]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise ImageError("manifest: trusted files must be sorted by (root, path), unique")

    def to_bytes(self) -> bytes:
        """The canonical CBOR encoding: the exact bytes MRENCLAVE is computed over."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        document = {
            "format": MANIFEST_FORMAT,
            "entrypoint": self.entrypoint,
            "config": self.config.as_dict(),
            "files": [[f.root, f.path, f.sha256] for f in self.files],
        }
        return cbor2.dumps(document, canonical=True)

    @cached_property
    def mr_enclave(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @cached_property
    def _index(self) -> dict[tuple[str, str], TrustedFile]:
        return {(f.root, f.path): f for f in self.files}

    def lookup(self, root: str, path: str) -> TrustedFile | None:
        return self._index.get((root, path))

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Parse canonical CBOR strictly: unknown fields, wrong types or a non-canonical
        encoding are refused, so the bytes hashed are exactly the manifest enforced."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise ImageError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            document = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False)
        except Exception as exc:  # noqa: BLE001 - semantic tags raise anything (ZeroDivision…)
            raise ImageError(f"manifest: not valid CBOR ({type(exc).__name__})") from None
        manifest = cls._from_document(document)
        if manifest.to_bytes() != bytes(data):
            raise ImageError("manifest: not in canonical CBOR encoding")
        return manifest

    @classmethod
    def _from_document(cls, document: object) -> Manifest:
        if not isinstance(document, dict) or set(document) != {
            "format",
            "entrypoint",
            "config",
            "files",
        }:
            raise ImageError("manifest: expected a map of format, entrypoint, config, files")
        if document["format"] != MANIFEST_FORMAT:
            raise ImageError(f"manifest: format {document['format']!r} is not {MANIFEST_FORMAT}")
        config = document["config"]
        if not isinstance(config, dict) or set(config) != set(_CONFIG_KEYS):
            raise ImageError(f"manifest config: expected exactly {', '.join(_CONFIG_KEYS)}")
        try:
            parsed_config = EnclaveConfig(**config)
        except ConfigError as exc:
            raise ImageError(f"manifest: {exc.message}") from None
        files = document["files"]
        if not isinstance(files, list):
            raise ImageError("manifest files: expected an array")
        entries = []
        for item in files:
            if not (isinstance(item, list) and len(item) == 3):
                raise ImageError("manifest files: each entry must be [root, path, sha256]")
            entries.append(TrustedFile(*item))
        entrypoint = document["entrypoint"]
        if not isinstance(entrypoint, str):
            raise ImageError("manifest entrypoint: expected a string")
        return cls(config=parsed_config, files=tuple(entries), entrypoint=entrypoint)


# --------------------------------------------------------------------------- roots


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def interpreter_path() -> Path:
    """The real interpreter binary (venv `python` is a symlink to it)."""
    return Path(sys.executable).resolve()


def _libpython() -> Path | None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname:
        return None
    candidate = Path(libdir) / soname
    return candidate if candidate.is_file() else None


def environment_roots(site: Sequence[Path] | None = None) -> dict[str, tuple[Path, ...]]:
    """The roots of the running interpreter: stdlib, site-packages (+ where enclave_kms lives,
    for editable installs), the interpreter's directory and libpython's. Independent of cwd
    and of sys.path tweaks (pytest's, for instance), so build and load agree. `site` overrides
    the site directories (a process started with -S cannot find its venv by itself)."""
    if site is None:
        paths = sysconfig.get_paths()
        site = [Path(paths["purelib"]), Path(paths["platlib"])]
        site.append(Path(__file__).resolve().parents[2])  # …/enclave_kms/platform/image.py
    roots: dict[str, tuple[Path, ...]] = {
        "stdlib": (_stdlib_dir(),),
        "site": tuple(dict.fromkeys(Path(d).resolve() for d in site)),
        "interpreter": (interpreter_path().parent,),
    }
    lib = _libpython()
    if lib is not None:
        roots["libdir"] = (lib.parent.resolve(),)
    return roots


def locate(roots: Roots, entry: TrustedFile) -> Path | None:
    """The first existing file for `entry` under its root's directories (sys.path order)."""
    for directory in roots.get(entry.root, ()):
        candidate = Path(directory, *entry.path.split("/"))
        if candidate.is_file():
            return candidate
    return None


def hash_file(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


# --------------------------------------------------------------------------- collection


def _walk(base: Path, *, skip_dirs: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Files under `base`, sorted, without bytecode caches (they are derived, never trusted)."""
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d != "__pycache__"
            and not (
                Path(dirpath) == base
                and (d in skip_dirs or (bool(skip_dirs) and d.startswith("config-")))
            )
        )
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(dirpath, name)


def _relative(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _package_files(name: str, site_dirs: Sequence[Path]) -> list[tuple[Path, Path]]:
    for directory in site_dirs:
        package = directory / name
        if (package / "__init__.py").is_file():
            return [(directory, p) for p in _walk(package)]
        module = directory / f"{name}.py"
        if module.is_file():
            return [(directory, module)]
    raise ImageError(f"enclave package {name!r} not found under the site roots")


def normalize_name(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQ_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _follow(requirement: str, extras: frozenset[str]) -> tuple[str, frozenset[str]] | None:
    """(name, extras) of a Requires-Dist line to follow, or None.

    Markers are not evaluated (that needs `packaging`, which the enclave does not ship);
    instead a requirement is followed unless its marker names an `extra` we did not ask
    for, and `distribution_closure` skips requirements that are not installed. This can
    only over-approximate the set actually imported: an extra file measured, never one missed.
    """
    requirement_part, _, marker = requirement.partition(";")
    match = _REQ_RE.match(requirement_part)
    if match is None:
        raise ImageError(f"cannot parse requirement {requirement!r}")
    if "extra" in marker and not any(f'"{e}"' in marker or f"'{e}'" in marker for e in extras):
        return None
    wanted = frozenset(
        normalize_name(e.strip()) for e in (match.group(2) or "").split(",") if e.strip()
    )
    return normalize_name(match.group(1)), wanted


def distribution_closure(names: Iterable[str], site_dirs: Sequence[Path]) -> list[Any]:
    """The installed distributions reachable from `names` through Requires-Dist, sorted."""
    import importlib.metadata as md  # only the builder needs it

    installed: dict[str, md.Distribution] = {}
    for dist in md.distributions(path=[str(d) for d in site_dirs]):
        name = dist.metadata["Name"]
        if name:
            installed.setdefault(normalize_name(name), dist)
    seen: dict[str, frozenset[str]] = {}
    queue = [(normalize_name(n), frozenset[str]()) for n in names]
    for name, _ in queue:
        if name not in installed:
            raise ImageError(f"enclave distribution {name!r} is not installed")
    while queue:
        name, extras = queue.pop()
        if name not in installed or (name in seen and extras <= seen[name]):
            continue
        seen[name] = seen.get(name, frozenset()) | extras
        for requirement in installed[name].requires or ():
            followed = _follow(requirement, seen[name])
            if followed is not None:
                queue.append(followed)
    return [installed[n] for n in sorted(seen)]


def _distribution_files(dist: Any, site_dirs: Sequence[Path]) -> list[tuple[Path, Path]]:
    name = dist.metadata["Name"]
    if dist.files is None:
        raise ImageError(f"distribution {name} has no RECORD: cannot list its files")
    base = Path(dist.locate_file("")).resolve()
    if base not in site_dirs:
        raise ImageError(f"distribution {name} is installed outside the site roots ({base})")
    out = []
    for record_path in dist.files:
        parts = record_path.parts
        if (
            not parts
            or parts[0] == ".."
            or parts[0].endswith((".dist-info", ".egg-info"))
            or "__pycache__" in parts
            or record_path.suffix in (".pyc", ".pyo")
        ):
            continue
        path = base.joinpath(*parts)
        if not path.is_file():
            raise ImageError(f"distribution {name}: file {record_path} listed but missing")
        out.append((base, path))
    return out


def _stdlib_files(stdlib: Path) -> list[tuple[Path, Path]]:
    return [
        (stdlib, p)
        for p in _walk(stdlib, skip_dirs=STDLIB_EXCLUDED)
        if p.suffix == ".py" or p.name.endswith(".so")
    ]


def build_manifest(
    config: EnclaveConfig,
    *,
    packages: Sequence[str] = ENCLAVE_PACKAGES,
    distributions: Sequence[str] = ENCLAVE_DISTRIBUTIONS,
    stdlib: bool = True,
    interpreter: bool = True,
    roots: Roots | None = None,
    entrypoint: str = DEFAULT_ENTRYPOINT,
) -> Manifest:
    """Measure an image: hash every trusted file now (eagerly; see the loader for the cost).

    `roots` defaults to `environment_roots()`; tests pass a synthetic `{"site": [dir]}` and
    `stdlib=False, interpreter=False` to measure a small tree instead of the real venv.
    """
    roots = environment_roots() if roots is None else roots
    site_dirs = [Path(d).resolve() for d in roots.get("site", ())]
    selected: list[tuple[str, Path, Path]] = []
    for package in packages:
        selected += [("site", b, p) for b, p in _package_files(package, site_dirs)]
    for dist in distribution_closure(distributions, site_dirs) if distributions else []:
        selected += [("site", b, p) for b, p in _distribution_files(dist, site_dirs)]
    for wanted, key in ((stdlib, "stdlib"), (interpreter, "interpreter")):
        if wanted and key not in roots:
            raise ImageError(f"cannot measure the {key}: the roots have no {key!r} entry")
    if stdlib:
        for directory in roots["stdlib"]:
            selected += [("stdlib", b, p) for b, p in _stdlib_files(Path(directory).resolve())]
    if interpreter:
        exe = interpreter_path()
        selected.append(("interpreter", exe.parent, exe))
        lib = _libpython()
        if lib is not None and "libdir" in roots:
            selected.append(("libdir", lib.parent.resolve(), lib))
    entries: dict[tuple[str, str], TrustedFile] = {}
    for root, base, path in selected:
        rel = _relative(path, base)
        if (root, rel) not in entries:
            try:
                digest = hash_file(path)
            except OSError as exc:
                raise ImageError(f"cannot read trusted file {root}:{rel}: {exc}") from None
            entries[(root, rel)] = TrustedFile(root, rel, digest)
    return Manifest(config=config, files=tuple(sorted(entries.values())), entrypoint=entrypoint)


# --------------------------------------------------------------------------- image directory


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write `manifest.cbor` and a rendering of the config; drop a SIGSTRUCT it would orphan."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    (directory / CONFIG_FILE).write_text(manifest.config.to_toml(), encoding="utf-8")
    (directory / SIGSTRUCT_FILE).unlink(missing_ok=True)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the image manifest ({exc.strerror})") from None
    return Manifest.parse(data)


def build_image(directory: Path, config: EnclaveConfig, **options: Any) -> Manifest:
    """`enclave build`: measure (see `build_manifest` for `options`) and write the image."""
    manifest = build_manifest(config, **options)
    write_manifest(directory, manifest)
    return manifest


def sign_image(directory: Path, private_key: rsa.RSAPrivateKey, date: dt.date) -> Sigstruct:
    """`enclave sign`: SIGSTRUCT over the image's MRENCLAVE and config → `sigstruct.bin`."""
    manifest = read_manifest(directory)
    sigstruct = Sigstruct.sign(
        manifest.mr_enclave, manifest.config.sigstruct_config(), private_key, date
    )
    (directory / SIGSTRUCT_FILE).write_bytes(sigstruct.to_bytes())
    return sigstruct
