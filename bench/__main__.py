"""`python -m bench`: see bench/harness.py."""

from __future__ import annotations

import sys

from bench.harness import main

if __name__ == "__main__":  # multiprocessing's spawn re-imports this module as __mp_main__
    sys.exit(main())
