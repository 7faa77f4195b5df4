"""`python -m tests.fuzz TARGET [seconds]`: coverage-guided fuzzing of one target with atheris.

Bounded by time (default 60 s; libFuzzer's -max_total_time), seeded with the real vectors;
a crash writes the input to `crash-<target>-*` and exits non-zero. `make fuzz` runs every target.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from tests.fuzz.targets import TARGETS, run_one, seeds


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz {{{'|'.join(TARGETS)}}} [seconds]")
    name = sys.argv[1]
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed{i}").write_bytes(seed)
    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            f"-artifact_prefix=crash-{name}-",
            "-rss_limit_mb=2048",
            str(corpus),
        ],
        lambda data: run_one(name, data),
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
