"""The Gramine manifest: filled from a measured image, checked against Gramine's rules.

Two steps make the manifest Gramine signs (deploy/gramine/enclave-kms.manifest.template):
1. `render_gramine_template` fills enclave-kms's `@EKMS_*@` placeholders from the image: the
   trusted files with their SHA-256 (the same bytes simulation measures), the interpreter's
   absolute path, PYTHONHOME/PYTHONPATH, the thread budget and the enclave size;
2. `gramine-manifest` renders Gramine's own Jinja variables and applies its defaults, then
   `gramine-sgx-sign` measures and signs.

`check_gramine_manifest` restates, for Gramine 1.8 and 1.9, the rules a manifest must pass,
as read in Gramine's source (not vendored): the schema `gramine-manifest` applies
(python/graminelibos/manifest_check.py: no unknown keys, the types, required tables), the
table form of `loader.entrypoint` (python/graminelibos/manifest.py: 1.8 converts the string
form with a warning, 1.9 raises "Unknown loader.entrypoint format"), and what the loader
checks at start (pal/src/pal_main.c, pal/src/host/linux-sgx/host_main.c,
libos/src/bookkeep/libos_handle.c, libos/src/fs/libos_fs.c). `check_enclave_kms_manifest`
adds this project's own rules: the measured command line, no host environment, strict files.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enclave_kms.errors import ImageError
from enclave_kms.platform.image import (
    EnclaveConfig,
    Manifest,
    Roots,
    environment_roots,
    interpreter_path,
    locate,
)
from enclave_kms.platform.threads import LIBUV_THREADPOOL_SIZE, gramine_max_threads

GRAMINE_VERSIONS = ("1.8", "1.9")
TRUSTED_FILES_MARKER = "# @EKMS_TRUSTED_FILES@"
MOUNTS_MARKER = "# @EKMS_MOUNTS@"
#: Code and data pages (interpreter, libpython, extension modules, Gramine) beside the heap.
CODE_RESERVE = 1 << 30
MAX_DBG_THREADS = 4096  # pal/src/host/linux-sgx/gdb_integration/sgx_gdb.h
ARCH_LIBDIR = "/lib/x86_64-linux-gnu"  # Debian/Ubuntu: gramine-manifest -Darch_libdir=…
GRAMINE_PKGLIBDIR = "/usr/lib/x86_64-linux-gnu/gramine"  # Gramine's Debian/Ubuntu packages


# --------------------------------------------------------------------------- rendering


def to_gramine_trusted_files(
    manifest: Manifest, roots: Roots | None = None
) -> list[dict[str, str]]:
    """Gramine's `sgx.trusted_files` entries (`{uri = "file:…", sha256 = "…"}`) for the
    manifest's files as located under `roots` (default: this interpreter's)."""
    roots = environment_roots() if roots is None else roots
    out = []
    for entry in manifest.files:
        path = locate(roots, entry)
        if path is None:
            raise ImageError(f"trusted file {entry.key} not found under the roots")
        out.append({"uri": f"file:{path}", "sha256": entry.sha256.hex()})
    return out


def max_threads(config: EnclaveConfig) -> int:
    """`sgx.max_threads`: the measured budget (platform/threads.py), never below num_tcs."""
    return max(config.num_tcs, gramine_max_threads())


def enclave_size(config: EnclaveConfig) -> int:
    """`sgx.enclave_size` of one worker: a power of two (SGX requires it) holding the heap,
    one stack (`sys.stack.size`) per thread slot and the code reserve."""
    need = config.heap_size + max_threads(config) * config.stack_size + CODE_RESERVE
    return 1 << (need - 1).bit_length()


def size_text(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def python_home() -> str:
    """PYTHONHOME for the interpreter that built the image (prefix[:exec_prefix])."""
    prefix, exec_prefix = sys.base_prefix, sys.base_exec_prefix
    return prefix if prefix == exec_prefix else f"{prefix}:{exec_prefix}"


def render_gramine_template(
    template: str,
    manifest: Manifest,
    roots: Roots | None = None,
    *,
    interpreter: Path | None = None,
    home: str | None = None,
    arch_libdir: str = ARCH_LIBDIR,
) -> str:
    """Fill the `@EKMS_*@` placeholders and marker lines from a measured image; Gramine's own
    Jinja variables are left for `gramine-manifest`. Directories the template already mounts
    and hashes whole (`arch_libdir`, /usr`arch_libdir`) get no second mount or entry."""
    roots = environment_roots() if roots is None else roots
    covered = (arch_libdir, f"/usr{arch_libdir}")

    def inside(path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in covered)

    config = manifest.config
    exe = str(interpreter or interpreter_path())
    lib_dirs = [str(d) for d in roots.get("libdir", ()) if not inside(str(d))]
    values = {
        "@EKMS_DEBUG@": "true" if config.debug else "false",
        "@EKMS_ISVPRODID@": str(config.product_id),
        "@EKMS_ISVSVN@": str(config.security_version),
        "@EKMS_MAX_THREADS@": str(max_threads(config)),
        "@EKMS_ENCLAVE_SIZE@": size_text(enclave_size(config)),
        "@EKMS_STACK_SIZE@": size_text(config.stack_size),
        "@EKMS_INTERPRETER@": exe,
        "@EKMS_ENTRYPOINT@": manifest.entrypoint,
        "@EKMS_PYTHONHOME@": home or python_home(),
        "@EKMS_PYTHONPATH@": ":".join(str(d) for d in roots.get("site", ())),
        "@EKMS_LIBDIRS@": "".join(f":{d}" for d in lib_dirs),
        "@EKMS_UV_THREADPOOL_SIZE@": str(LIBUV_THREADPOOL_SIZE),
    }
    directories = sorted({str(d) for dirs in roots.values() for d in dirs} - {"/"})
    directories = [d for d in directories if not inside(d)]
    mounts = [
        f"  {{ path = {json.dumps(d)}, uri = {json.dumps('file:' + d)} }}," for d in directories
    ]
    files = [
        f"  {{ uri = {json.dumps(f['uri'])}, sha256 = {json.dumps(f['sha256'])} }},"
        for f in to_gramine_trusted_files(manifest, roots)
        if not inside(f["uri"].removeprefix("file:"))
    ]
    lines = []
    for line in template.splitlines():
        if line.strip() == TRUSTED_FILES_MARKER:
            lines += files
        elif line.strip() == MOUNTS_MARKER:
            lines += mounts
        else:
            filled = line
            for key, value in values.items():
                filled = filled.replace(key, value)
            lines.append(filled)
    text = "\n".join(lines) + "\n"
    if left := sorted(set(re.findall(r"@EKMS_[A-Z_]+@", text))):
        raise ImageError(f"Gramine template: unknown placeholders {', '.join(left)}")
    return text


def preview_gramine_jinja(
    text: str,
    *,
    log_level: str = "error",
    arch_libdir: str = ARCH_LIBDIR,
    pkglibdir: str = GRAMINE_PKGLIBDIR,
) -> str:
    """Gramine's Jinja step for the few expressions the template uses (gen_jinja_env.py:
    `gramine.libos` = PKGLIBDIR/libsysdb.so, `gramine.runtimedir()` = PKGLIBDIR/runtime/glibc,
    and the -D defines), so the manifest can be checked before Gramine is installed. Any
    other expression is an error: the template must stay within what the build defines."""
    known = {
        "gramine.libos": f"{pkglibdir}/libsysdb.so",
        "gramine.runtimedir()": f"{pkglibdir}/runtime/glibc",
        "arch_libdir": arch_libdir,
        "log_level": log_level,
    }

    def value(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr not in known:
            raise ImageError(f"Gramine template: unknown Jinja expression {{{{ {expr} }}}}")
        return known[expr]

    return re.sub(r"\{\{(.*?)\}\}", value, text)


# --------------------------------------------------------------------------- Gramine's rules

# The schema of python/graminelibos/manifest_check.py (1.8 and 1.9), as nested tables of
# key -> type; a tuple lists alternatives; "!" marks a required key. Unknown keys are refused
# (voluptuous's default). Sizes, URIs and masks are strings there too.
_ENV_VALUE = (str, {"value": str}, {"passthrough": True})
_FS_BASE: tuple[dict[str, Any], ...] = (
    {"type": ("chroot",), "!uri": str},
    {"!type": ("encrypted",), "!uri": str, "key_name": str, "enable_recovery": bool},
    {"!type": ("tmpfs",), "uri": str},
    {"!type": ("untrusted_shm",), "!uri": str},
)
_SCHEMA: dict[str, Any] = {
    "!fs": {
        "!mounts": [tuple({**d, "!path": str} for d in _FS_BASE)],
        "root": _FS_BASE,
        "start_dir": str,
        "insecure__keys": {str: str},
    },
    "!libos": {"!entrypoint": str, "check_invalid_pointers": bool},
    "!loader": {
        "!entrypoint": {"!uri": str, "sha256": str},
        "argv": [str],
        "argv_src_file": str,
        "env": {str: _ENV_VALUE},
        "env_src_file": str,
        "gid": int,
        "insecure__use_cmdline_argv": bool,
        "insecure__use_host_env": bool,
        "insecure__disable_aslr": bool,
        "log_file": str,
        "log_level": ("none", "error", "warning", "debug", "trace", "all"),
        "uid": int,
    },
    "sgx": {
        "allowed_files": [str],
        "cpu_features": {
            "avx": ("unspecified", "disabled", "required"),
            "avx512": ("unspecified", "disabled", "required"),
            "amx": ("unspecified", "disabled", "required"),
            "mpx": ("disabled", "required"),
            "pkru": ("disabled", "required"),
        },
        "debug": bool,
        "edmm_enable": bool,
        "enable_stats": bool,
        "enclave_size": str,
        "file_check_policy": ("strict", "allow_all_but_log"),
        "insecure__allow_memfaults_without_exinfo": bool,
        "insecure__rpc_thread_num": int,
        "isvprodid": int,
        "isvsvn": int,
        "max_threads": int,
        "preheat_enclave": bool,
        "profile": {
            "enable": ("none", "main", "all"),
            "mode": ("aex", "ocall_inner", "ocall_outer"),
            "with_stack": bool,
            "frequency": int,
        },
        "remote_attestation": ("none", "dcap"),
        "seal_key": {"flags_mask": str, "xfrm_mask": str, "misc_mask": str},
        "trusted_files": [(str, {"!uri": str, "sha256": str})],
        "use_exinfo": bool,
        "vtune_profile": bool,
    },
    "sys": {
        "allowed_ioctls": [{"!request_code": int, "struct": str}],
        "brk": {"max_size": str},
        "disallow_subprocesses": bool,
        "enable_extra_runtime_domain_names_conf": bool,
        "enable_sigterm_injection": bool,
        "experimental__enable_flock": bool,
        "insecure__allow_eventfd": bool,
        "ioctl_structs": {str: object},
        "debug__mock_syscalls": [{"!name": str, "return": int}],
        "stack": {"size": str},
        "fds": {"limit": int},
    },
}


def _schema_for(version: str) -> dict[str, Any]:
    if version not in GRAMINE_VERSIONS:
        raise ValueError(f"Gramine {version}: rules known for {', '.join(GRAMINE_VERSIONS)}")
    if version == "1.9":
        return _SCHEMA
    # 1.8: encrypted mounts have no enable_recovery; EPID attestation still exists.
    fs_base = list(_FS_BASE)
    fs_base[1] = {k: v for k, v in _FS_BASE[1].items() if k != "enable_recovery"}
    sgx = {
        **_SCHEMA["sgx"],
        "remote_attestation": ("none", "dcap", "epid"),
        "ra_client_linkable": bool,
        "ra_client_spid": str,
    }
    fs = {
        **_SCHEMA["!fs"],
        "!mounts": [tuple({**d, "!path": str} for d in fs_base)],
        "root": tuple(fs_base),
    }
    return {**_SCHEMA, "!fs": fs, "sgx": sgx}


def _matches(value: Any, rule: Any, where: str, problems: list[str]) -> bool:
    """Check `value` against `rule`, appending problems; True if it matched."""
    if rule is object:
        return True
    if not isinstance(rule, (type, tuple, list, dict)):  # a literal
        same = bool(value == rule)
        if not same:
            problems.append(f"{where}: must be {rule!r}")
        return same
    if isinstance(rule, type):
        ok = isinstance(value, rule) and not (rule is int and isinstance(value, bool))
        if not ok:
            problems.append(f"{where}: expected {rule.__name__}, got {type(value).__name__}")
        return ok
    if isinstance(rule, tuple):  # alternatives: a literal or a sub-rule
        for alternative in rule:
            if isinstance(alternative, (type, dict, list)):
                trial: list[str] = []
                if _matches(value, alternative, where, trial):
                    return True
            elif value == alternative:
                return True
        problems.append(f"{where}: {value!r} is not one of the allowed forms")
        return False
    if isinstance(rule, list):
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list")
            return False
        before = len(problems)
        for i, item in enumerate(value):
            _matches(item, rule[0], f"{where}[{i}]", problems)
        return len(problems) == before
    if isinstance(rule, dict):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table")
            return False
        before = len(problems)
        if list(rule) == [str]:  # free-form keys
            for key, item in value.items():
                _matches(item, rule[str], f"{where}.{key}", problems)
            return len(problems) == before
        keys = {k.lstrip("!"): k.startswith("!") for k in rule}
        rules = {k.lstrip("!"): v for k, v in rule.items()}
        for key, required in keys.items():
            if required and key not in value:
                problems.append(f"{where}.{key}: required")
        for key, item in value.items():
            if key not in rules:
                problems.append(f"{where}.{key}: not a Gramine manifest key")
            else:
                _matches(item, rules[key], f"{where}.{key}", problems)
        return len(problems) == before
    raise TypeError(f"bad rule {rule!r}")  # pragma: no cover - the table above


def apply_gramine_manifest_defaults(document: dict[str, Any], version: str) -> list[str]:
    """What `gramine-manifest` does before checking (graminelibos/manifest.py): fill
    `loader.entrypoint` as a table. Returns warnings; raises ImageError where it fails."""
    loader = document.setdefault("loader", {})
    entrypoint = loader.setdefault("entrypoint", {})
    warnings = []
    if isinstance(entrypoint, str):
        if version == "1.9":
            raise ImageError(
                "Gramine 1.9: Unknown loader.entrypoint format (not a TOML table); write "
                'loader.entrypoint.uri = "file:…" or leave it out'
            )
        warnings.append('`loader.entrypoint = "file:..."` manifest syntax is deprecated')
        loader["entrypoint"] = entrypoint = {"uri": entrypoint}
    if isinstance(entrypoint, dict):
        entrypoint.setdefault("uri", "file:/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so")
    return warnings


def _size(text: object) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text) if isinstance(text, str) else None
    if m is None:
        return None
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def check_gramine_manifest(document: Mapping[str, Any], version: str) -> list[str]:
    """Every rule of Gramine `version` the manifest (after `gramine-manifest`'s defaults)
    breaks: the schema, then the loader's checks at start. Empty means Gramine would accept."""
    problems: list[str] = []
    _matches(dict(document), _schema_for(version), "manifest", problems)
    loader = document.get("loader", {})
    libos = document.get("libos", {})
    sgx = document.get("sgx", {})
    entry = libos.get("entrypoint") if isinstance(libos, dict) else None
    if isinstance(entry, str) and entry.startswith("file:"):
        problems.append("libos.entrypoint: should be an in-Gramine path, not URI")
    if isinstance(loader, dict):
        uri = (
            loader.get("entrypoint", {}).get("uri")
            if isinstance(loader.get("entrypoint"), dict)
            else None
        )
        if isinstance(uri, str) and not uri.startswith("file:"):
            problems.append("loader.entrypoint.uri: is missing the 'file:' prefix")
        if loader.get("argv") == []:
            problems.append("loader.argv: has no arguments, this is unsupported")
        sources = [bool(loader.get("argv")), "argv_src_file" in loader]
        sources.append(bool(loader.get("insecure__use_cmdline_argv")))
        if sum(sources) > 1:
            problems.append(
                "loader.argv, loader.argv_src_file and loader.insecure__use_cmdline_argv "
                "are mutually exclusive"
            )
    if isinstance(sgx, dict):
        size = _size(sgx.get("enclave_size", "256M"))
        if size is None or size == 0 or size & (size - 1):
            problems.append("sgx.enclave_size: not a power of two (an SGX-imposed requirement)")
        threads = sgx.get("max_threads", 4)
        if isinstance(threads, int) and not 1 <= threads <= MAX_DBG_THREADS:
            problems.append(f"sgx.max_threads: must be in 1..{MAX_DBG_THREADS}")
        for i, tf in enumerate(sgx.get("trusted_files", [])):
            uri = tf.get("uri") if isinstance(tf, dict) else tf
            if isinstance(uri, str) and not uri.startswith("file:"):
                problems.append(f"sgx.trusted_files[{i}]: unsupported URI {uri!r}")
            digest = tf.get("sha256") if isinstance(tf, dict) else None
            if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                problems.append(f"sgx.trusted_files[{i}]: sha256 is not a SHA-256 hex digest")
    fs = document.get("fs", {})
    for i, mount in enumerate(fs.get("mounts", []) if isinstance(fs, dict) else []):
        path = mount.get("path") if isinstance(mount, dict) else None
        if path == "/":
            problems.append(f'fs.mounts[{i}].path: cannot be "/" (use fs.root)')
        elif isinstance(path, str) and not path.startswith("/"):
            problems.append(f"fs.mounts[{i}].path: relative mount path {path!r} is disallowed")
    return problems


def check_enclave_kms_manifest(document: Mapping[str, Any], config: EnclaveConfig) -> list[str]:
    """This project's rules on top of Gramine's: the measured command line is the one that
    runs, with an absolute interpreter and PYTHONHOME, no host environment or arguments, only
    hashed files, DCAP attestation, the image's identity and at least the thread budget."""
    problems: list[str] = []
    loader, libos = document.get("loader", {}), document.get("libos", {})
    sgx = document.get("sgx", {})
    entry = libos.get("entrypoint", "")
    argv: Sequence[Any] = loader.get("argv", [])
    env: Mapping[str, Any] = loader.get("env", {})
    if not (isinstance(entry, str) and entry.startswith("/")):
        problems.append("libos.entrypoint must be the interpreter's absolute path")
    if not argv or argv[0] != entry:
        problems.append("loader.argv[0] must be libos.entrypoint (no PATH lookup)")
    if "-m" not in argv[1:-1] or argv[-1] != "enclave_kms.enclave":
        problems.append("loader.argv must run -m enclave_kms.enclave")
    home = env.get("PYTHONHOME")
    if not (isinstance(home, str) and all(p.startswith("/") for p in home.split(":"))):
        problems.append("loader.env.PYTHONHOME must be set to absolute paths")
    for name, value in env.items():
        if isinstance(value, dict) and value.get("passthrough"):
            problems.append(f"loader.env.{name}: passed through from the untrusted host")
    for key in (
        "insecure__use_host_env",
        "insecure__use_cmdline_argv",
        "env_src_file",
        "argv_src_file",
    ):
        if key in loader:
            problems.append(f"loader.{key}: lets the host choose what the enclave runs")
    if sgx.get("file_check_policy") != "strict":
        problems.append('sgx.file_check_policy must be "strict"')
    if sgx.get("allowed_files"):
        problems.append("sgx.allowed_files: unhashed files the host could change")
    if sgx.get("remote_attestation") != "dcap":
        problems.append('sgx.remote_attestation must be "dcap"')
    if sgx.get("debug") is not config.debug:
        problems.append(f"sgx.debug must be {str(config.debug).lower()} (the image's config)")
    if (sgx.get("isvprodid"), sgx.get("isvsvn")) != (config.product_id, config.security_version):
        problems.append("sgx.isvprodid/isvsvn must be the image's product_id/security_version")
    if not isinstance(sgx.get("max_threads"), int) or sgx["max_threads"] < gramine_max_threads():
        problems.append(f"sgx.max_threads must cover the thread budget ({gramine_max_threads()})")
    if sgx.get("edmm_enable"):
        problems.append("sgx.edmm_enable: not sized for here (threads/size are fixed budgets)")
    for i, tf in enumerate(sgx.get("trusted_files", [])):
        if isinstance(tf, dict) and "sha256" not in tf and not str(tf.get("uri", "")).endswith("/"):
            problems.append(f"sgx.trusted_files[{i}]: image file without its measured sha256")
    return problems
