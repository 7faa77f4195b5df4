"""The simulated enclave loader: what `sgx_create_enclave` + EINIT, or Gramine, do at launch.

`load_image` (host side) refuses to launch an image unless:
1. `sigstruct.bin` parses and its RSA-3072 signature and Q1/Q2 verify (EINIT's check);
2. its ENCLAVEHASH equals MRENCLAVE = SHA-256 of the canonical manifest;
3. its ISVPRODID, ISVSVN and masked ATTRIBUTES/MISCSELECT match the manifest's config;
4. the signer is allowed, when the caller restricts signers (launch control);
5. every trusted file exists under the roots and hashes to the manifest's value.

Hashing is eager: the whole image (≈1400 files, 85 MB) verifies in ≈0.2 s on a warm cache, and
only eager verification covers the data files the enclave reads without importing them (the
Intel root CA PEM). `install_import_guard` (enclave side) then re-checks each module at import
time, from the very bytes it compiles, as Gramine checks trusted files at open time: the window
between launch and import is closed for source modules and narrowed to a stat-to-dlopen gap for
extension modules. Bytecode caches are never read through the guard (a host could plant a .pyc
whose header matches the source); the guarded loader compiles from the verified source instead.
That is the guard's real cost: the enclave's ≈510 modules (fastapi, uvicorn, cryptography, cbor2,
pyasn1, enclave_kms) import in ≈0.7 s from caches and ≈2 s compiled from source; hashing them
adds ≈0.05 s. A measured bytecode cache built with the image would win the 1.3 s back.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import (
    BuiltinImporter,
    ExtensionFileLoader,
    FrozenImporter,
    ModuleSpec,
    SourceFileLoader,
)
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from enclave_kms.errors import (
    EnclaveKMSError,
    FormatError,
    ImageError,
    PlatformError,
    SignatureError,
)
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.image import (
    SIGSTRUCT_FILE,
    EnclaveConfig,
    Manifest,
    Roots,
    TrustedFile,
    environment_roots,
    hash_file,
    interpreter_path,
    locate,
    read_manifest,
)
from enclave_kms.sgx.report import AttributeFlags, Attributes
from enclave_kms.sgx.sigstruct import Sigstruct

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class LoadedImage:
    """A verified image, ready to launch: who it runs as and what it may load."""

    directory: Path
    identity: EnclaveIdentity
    config: EnclaveConfig
    manifest: Manifest
    sigstruct: Sigstruct
    roots: Mapping[str, tuple[Path, ...]]
    interpreter: Path | None  # the verified interpreter to exec, if the manifest measures one

    @property
    def mr_enclave(self) -> bytes:
        return self.identity.mr_enclave

    @property
    def mr_signer(self) -> bytes:
        return self.identity.mr_signer

    @property
    def isv_prod_id(self) -> int:
        return self.identity.isv_prod_id

    @property
    def isv_svn(self) -> int:
        return self.identity.isv_svn

    @property
    def attributes(self) -> Attributes:
        return self.identity.attributes

    @property
    def debug(self) -> bool:
        return self.config.debug


def read_sigstruct(directory: Path) -> Sigstruct:
    path = directory / SIGSTRUCT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: image is not signed (run `enclave-kms enclave sign`)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return Sigstruct.parse(data)
    except FormatError as exc:
        raise ImageError(f"{SIGSTRUCT_FILE}: {exc.message}") from None


def check_sigstruct(sigstruct: Sigstruct, manifest: Manifest) -> None:
    """Steps 1-3 of the module docstring: EINIT's view of SIGSTRUCT against the measurement."""
    try:
        sigstruct.verify()
    except (FormatError, SignatureError) as exc:
        raise ImageError(f"{SIGSTRUCT_FILE}: {exc.message}") from None
    if sigstruct.enclave_hash != manifest.mr_enclave:
        raise ImageError(
            f"{SIGSTRUCT_FILE}: signed MRENCLAVE {sigstruct.enclave_hash.hex()} is not the "
            f"manifest's {manifest.mr_enclave.hex()}"
        )
    config = manifest.config
    if sigstruct.isv_prod_id != config.product_id:
        raise ImageError(
            f"{SIGSTRUCT_FILE}: ISVPRODID {sigstruct.isv_prod_id} is not the manifest's "
            f"product_id {config.product_id}"
        )
    if sigstruct.isv_svn != config.security_version:
        raise ImageError(
            f"{SIGSTRUCT_FILE}: ISVSVN {sigstruct.isv_svn} is not the manifest's "
            f"security_version {config.security_version}"
        )
    secs = config.secs_attributes
    mask = sigstruct.attribute_mask
    if (sigstruct.attributes.flags & mask.flags) != (secs.flags & mask.flags) or (
        sigstruct.attributes.xfrm & mask.xfrm
    ) != (secs.xfrm & mask.xfrm):
        raise ImageError(
            f"{SIGSTRUCT_FILE}: signed attributes (debug={sigstruct.debug}) do not match the "
            f"manifest's config (debug={config.debug})"
        )
    if sigstruct.misc_select & sigstruct.misc_mask:
        raise ImageError(f"{SIGSTRUCT_FILE}: MISCSELECT {sigstruct.misc_select:#x} is not offered")


def verify_trusted_files(manifest: Manifest, roots: Roots) -> dict[str, Path]:
    """Hash every trusted file; refuse naming the first bad one (and how many others)."""
    located: dict[str, Path] = {}
    problems: list[str] = []
    for entry in manifest.files:
        path = locate(roots, entry)
        if path is None:
            problems.append(f"trusted file {entry.key} is missing")
            continue
        try:
            digest = hash_file(path)
        except OSError as exc:
            problems.append(f"trusted file {entry.key} ({path}) cannot be read: {exc.strerror}")
            continue
        if digest != entry.sha256:
            problems.append(
                f"trusted file {entry.key} ({path}) does not match the manifest "
                f"(SHA-256 {digest.hex()[:16]}…, expected {entry.sha256.hex()[:16]}…)"
            )
            continue
        located[entry.key] = path
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ImageError(f"launch refused: {problems[0]}{more}")
    return located


def measured_identity(manifest: Manifest, sigstruct: Sigstruct) -> EnclaveIdentity:
    """What EINIT would record for this (already checked) manifest and SIGSTRUCT."""
    secs = manifest.config.secs_attributes
    return EnclaveIdentity(
        mr_enclave=manifest.mr_enclave,
        mr_signer=sigstruct.mr_signer,
        isv_prod_id=sigstruct.isv_prod_id,
        isv_svn=sigstruct.isv_svn,
        attributes=Attributes(int(secs.flags | AttributeFlags.INIT), secs.xfrm),
        misc_select=sigstruct.misc_select,
    )


#: Set by `run_enclave` in the enclave process: the identity the simulated CPU measured.
_RUNNING: list[EnclaveIdentity] = []


def running_identity() -> EnclaveIdentity:
    """The measured identity of this enclave process (simulation), or PlatformError."""
    if not _RUNNING:
        raise PlatformError("not running inside a loaded simulated enclave")
    return _RUNNING[0]


def load_image(
    directory: Path,
    *,
    signer_allowed: Collection[bytes] | None = None,
    roots: Roots | None = None,
) -> LoadedImage:
    """Verify an image directory as the loader of a real enclave would, or raise ImageError."""
    directory = Path(directory).resolve()
    manifest = read_manifest(directory)
    sigstruct = read_sigstruct(directory)
    check_sigstruct(sigstruct, manifest)
    if signer_allowed is not None and sigstruct.mr_signer not in signer_allowed:
        raise ImageError(
            f"launch refused: signer MRSIGNER {sigstruct.mr_signer.hex()} is not allowed here"
        )
    roots = environment_roots() if roots is None else roots
    frozen_roots = {name: tuple(Path(d) for d in dirs) for name, dirs in roots.items()}
    located = verify_trusted_files(manifest, frozen_roots)
    interpreter = next(
        (path for key, path in located.items() if key.startswith("interpreter:")), None
    )
    return LoadedImage(
        directory=directory,
        identity=measured_identity(manifest, sigstruct),
        config=manifest.config,
        manifest=manifest,
        sigstruct=sigstruct,
        roots=frozen_roots,
        interpreter=interpreter,
    )


# --------------------------------------------------------------------------- import guard


class ImportGuard:
    """Maps file names to manifest entries and checks bytes against them."""

    def __init__(self, manifest: Manifest, roots: Roots) -> None:
        self.manifest = manifest
        pairs: set[tuple[str, str]] = set()
        for name, dirs in roots.items():
            for directory in dirs:
                pairs.add((name, os.path.abspath(directory)))
                pairs.add((name, os.path.realpath(directory)))
        # Longest directory first, so site-packages inside the stdlib maps to "site".
        self._roots = sorted(pairs, key=lambda p: (-len(p[1]), p))
        self._finder = _GuardFinder(self)

    def entry_for(self, filename: str) -> tuple[str, TrustedFile | None]:
        """(root:path, manifest entry or None) for an absolute file name."""
        absolute = os.path.abspath(filename)
        first = ""
        for candidate in dict.fromkeys((absolute, os.path.realpath(absolute))):
            for name, directory in self._roots:
                if candidate.startswith(directory + os.sep):
                    rel = candidate[len(directory) + 1 :].replace(os.sep, "/")
                    entry = self.manifest.lookup(name, rel)
                    if entry is not None:
                        return entry.key, entry
                    first = first or f"{name}:{rel}"
        return first or absolute, None

    def verified_bytes(self, module: str, filename: str) -> bytes:
        """The file's bytes, if they are a trusted file's; else ImageError naming it."""
        key, entry = self.entry_for(filename)
        if entry is None:
            raise ImageError(f"module {module}: {key} is not a trusted file of the image")
        try:
            with open(filename, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ImageError(f"module {module}: {key} cannot be read ({exc.strerror})") from None
        if hashlib.sha256(data).digest() != entry.sha256:
            raise ImageError(f"module {module}: {key} differs from the image (SHA-256 mismatch)")
        return data

    def check_loaded(self, modules: Iterable[ModuleType] | None = None) -> None:
        """Verify the files of modules imported before the guard (frozen ones live in the
        measured interpreter). Their bytecode caches cannot be checked after the fact: start
        the enclave with `-B -X pycache_prefix=<empty dir>` (see `enclave_argv`)."""
        problems = []
        for module in list(sys.modules.values()) if modules is None else modules:
            spec = getattr(module, "__spec__", None)
            if spec is not None and _is_interpreter_loader(spec.loader):
                continue
            filename = getattr(module, "__file__", None)
            if not isinstance(filename, str):
                continue
            try:
                self.verified_bytes(getattr(module, "__name__", "?"), filename)
            except ImageError as exc:
                problems.append(exc.message)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ImageError(f"launch refused: {problems[0]}{more}")

    def vet(self, spec: ModuleSpec) -> ModuleSpec:
        """Swap the spec's loader for one that checks the module's bytes when it loads."""
        loader = spec.loader
        if _is_interpreter_loader(loader) or (
            spec.origin is None and spec.submodule_search_locations is not None
        ):
            return spec  # built-in, frozen (inside the measured binary) or a namespace package
        origin = spec.origin or "?"
        if type(loader) is SourceFileLoader:
            spec.loader = _VerifiedSourceLoader(spec.name, origin, self)
        elif type(loader) is ExtensionFileLoader:
            spec.loader = _VerifiedExtensionLoader(spec.name, origin, self)
        else:
            kind = type(loader).__name__
            spec.loader = _RefusingLoader(
                ImageError(f"module {spec.name}: {origin} ({kind}) is not a trusted file type")
            )
        spec.cached = None
        return spec

    def install(self) -> None:
        if self._finder not in sys.meta_path:
            sys.meta_path.insert(0, self._finder)

    def uninstall(self) -> None:
        while self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)


def _is_interpreter_loader(loader: object) -> bool:
    return loader in (BuiltinImporter, FrozenImporter) or isinstance(
        loader, BuiltinImporter | FrozenImporter
    )


def _import_error(exc: ImageError, module: str, path: str | None) -> ImportError:
    error = ImportError(f"enclave image: {exc.message}", name=module, path=path)
    error.__cause__ = exc
    return error


class _GuardFinder(MetaPathFinder):
    """First on sys.meta_path: asks the other finders, then vets what they found."""

    def __init__(self, guard: ImportGuard) -> None:
        self.guard = guard

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return self.guard.vet(spec)
        return None


class _VerifiedSourceLoader(SourceFileLoader):
    """Compiles only from source bytes that match the manifest, read once (no TOCTOU)."""

    def __init__(self, fullname: str, path: str, guard: ImportGuard) -> None:
        super().__init__(fullname, path)
        self._guard = guard

    def get_data(self, path: str) -> bytes:
        if path != self.path:
            # The bytecode cache: never trusted. OSError makes SourceLoader compile the source.
            raise OSError(f"bytecode caches are not trusted in the enclave: {path}")
        try:
            return self._guard.verified_bytes(self.name, path)
        except ImageError as exc:
            raise _import_error(exc, self.name, path) from exc

    def set_data(self, path: str, data: ReadableBuffer, *, _mode: int = 0o666) -> None:
        """Never write bytecode caches from inside the enclave."""


class _VerifiedExtensionLoader(ExtensionFileLoader):
    """Checks the shared object right before it is dlopen()ed."""

    def __init__(self, fullname: str, path: str, guard: ImportGuard) -> None:
        super().__init__(fullname, path)
        self._guard = guard

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        try:
            self._guard.verified_bytes(self.name, self.path)
        except ImageError as exc:
            raise _import_error(exc, self.name, self.path) from exc
        return super().create_module(spec)


class _RefusingLoader(Loader):
    """The loader of a module the guard refuses: fails the import with the image error."""

    def __init__(self, error: ImageError) -> None:
        self._error = error

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        raise _import_error(self._error, spec.name, spec.origin)

    def exec_module(self, module: ModuleType) -> None:  # pragma: no cover - never reached
        raise _import_error(self._error, module.__name__, None)


def install_import_guard(
    manifest: Manifest, *, roots: Roots | None = None, check_loaded: bool = True
) -> ImportGuard:
    """In the enclave process: from now on, import only modules whose bytes are in `manifest`.

    With `check_loaded`, modules already imported must be trusted files too (else ImageError).
    A refused import raises ImportError whose message and `__cause__` carry the ImageError.
    """
    guard = ImportGuard(manifest, environment_roots() if roots is None else roots)
    if check_loaded:
        guard.check_loaded()
    guard.install()
    return guard


# --------------------------------------------------------------------------- launch


def enclave_argv(image: LoadedImage, *, pycache_prefix: Path) -> list[str]:
    """The command that starts `image` as a simulated enclave process.

    `-I -S`: no environment, no user site and no `.pth` files (which run arbitrary code before
    any guard exists); `-B` and an empty private `pycache_prefix`: no host-planted bytecode is
    read even before the guard is installed. `run_enclave` then sets sys.path to the image's
    site roots, checks the manifest against the loaded MRENCLAVE and installs the guard.
    """
    site = [str(d) for d in image.roots.get("site", ())]
    code = (
        "import sys;"
        f"sys.path.extend({site!r});"
        "from enclave_kms.platform.sim.loader import run_enclave;"
        f"run_enclave({str(image.directory)!r},{image.mr_enclave.hex()!r},{site!r})"
    )
    interpreter = image.interpreter or interpreter_path()
    return [
        str(interpreter),
        "-I",
        "-S",
        "-B",
        "-X",
        f"pycache_prefix={pycache_prefix}",
        "-c",
        code,
    ]


def run_enclave(directory: str, mr_enclave_hex: str, site: Sequence[str]) -> None:
    """Enclave-side bootstrap: guard imports by the measured manifest, then run its entrypoint."""
    import runpy

    try:
        manifest = read_manifest(Path(directory))
        if manifest.mr_enclave.hex() != mr_enclave_hex:
            raise ImageError("manifest changed after the image was loaded (MRENCLAVE differs)")
        sigstruct = read_sigstruct(Path(directory))
        check_sigstruct(sigstruct, manifest)
        install_import_guard(manifest, roots=environment_roots(site=[Path(s) for s in site]))
        _RUNNING[:] = [measured_identity(manifest, sigstruct)]
    except EnclaveKMSError as exc:
        sys.stderr.write(f"enclave: {exc.message}\n")
        raise SystemExit(70) from None
    runpy.run_module(manifest.entrypoint, run_name="__main__", alter_sys=True)
