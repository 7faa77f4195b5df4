"""A stand-in for `gramine-sgx` with Gramine's descriptor behaviour, for tests (no SGX here).

What it reproduces, as read in Gramine's source (libos/src/bookkeep/libos_handle.c,
`init_std_handles`; pal/src/host/linux-sgx/pal_console.c; pal/include/pal_internal.h):
- the application's fd 0 reads the host's stdin and its fd 1 writes the host's stdout (the PAL
  console, host fds 0 and 1); its fd 2 is *a duplicate of fd 1*, so whatever the application
  writes to stderr arrives on the host's stdout, interleaved with its stdout;
- no other host descriptor reaches the application;
- Gramine's own log (PAL `log_*`, `PAL_LOG_DEFAULT_FD` = 2) goes to the host's stderr.

It does not measure, isolate memory or attest: the command it runs is the simulated enclave's.
Usage: python gramine_sgx_standin.py ARGV...   (SIGTERM is passed on to the application)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: gramine_sgx_standin.py ARGV...\n")
        return 2
    sys.stderr.write(
        "Gramine is starting. Parsing TOML manifest file, this may take some time...\n"
    )
    sys.stderr.flush()
    child = subprocess.Popen(argv, stdin=0, stdout=1, stderr=subprocess.STDOUT, close_fds=True)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    os.close(0)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
