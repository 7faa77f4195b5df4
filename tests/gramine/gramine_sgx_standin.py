"""A stand-in for `gramine-sgx` with Gramine's descriptor behaviour, for tests (no SGX here).

What it reproduces, as read in Gramine's source (libos/src/bookkeep/libos_handle.c,
`init_std_handles`; pal/src/host/linux-sgx/pal_console.c; pal/include/pal_internal.h):
- the application's fd 0 reads the host's stdin and its fd 1 writes the host's stdout (the PAL
  console, host fds 0 and 1); its fd 2 is *a duplicate of fd 1*, so whatever the application
  writes to stderr arrives on the host's stdout, interleaved with its stdout;
- no other host descriptor reaches the application;
- Gramine's own log (PAL `log_*`, `PAL_LOG_DEFAULT_FD` = 2) goes to the host's stderr.

It does not measure, isolate memory or attest. Two ways to run it:
  python gramine_sgx_standin.py ARGV...        run ARGV (e.g. the simulated enclave's command)
  python gramine_sgx_standin.py enclave-kms    as `gramine-sgx enclave-kms`: refuse unless
      enclave-kms.manifest.sgx exists, then run the manifest's `loader.argv` with exactly its
      `loader.env` (Gramine passes no host environment), minus LD_LIBRARY_PATH, which names
      Gramine's own glibc under /lib inside the enclave
SIGTERM and SIGINT are passed on to the application.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path


def from_manifest(name: str) -> tuple[list[str], dict[str, str]] | None:
    """(argv, env) of `name`.manifest, if this is a `gramine-sgx NAME` invocation."""
    if "/" in name or not Path(f"{name}.manifest").is_file():
        return None
    if not Path(f"{name}.manifest.sgx").is_file():
        sys.stderr.write(f"error: {name}.manifest.sgx not found (not signed)\n")
        raise SystemExit(1)
    manifest = tomllib.loads(Path(f"{name}.manifest").read_text())
    loader = manifest["loader"]
    env = {
        key: value if isinstance(value, str) else value["value"]
        for key, value in loader.get("env", {}).items()
        if key != "LD_LIBRARY_PATH"
    }
    if loader["argv"][0] != manifest["libos"]["entrypoint"]:
        sys.stderr.write("error: loader.argv[0] is not libos.entrypoint\n")
    return list(loader["argv"]), env


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: gramine_sgx_standin.py ARGV... | NAME\n")
        return 2
    env: dict[str, str] | None = None
    if len(argv) == 1 and (found := from_manifest(argv[0])) is not None:
        argv, env = found
    sys.stderr.write(
        "Gramine is starting. Parsing TOML manifest file, this may take some time...\n"
    )
    sys.stderr.flush()
    child = subprocess.Popen(
        argv, stdin=0, stdout=1, stderr=subprocess.STDOUT, close_fds=True, env=env
    )

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    os.close(0)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
