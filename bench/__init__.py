"""Benchmarks: enclave-kms side by side with its peers and with the in-process ceilings.

`python -m bench [--quick] [--only NAME ...] [--out DIR]` measures every system in one
invocation, interleaving the runs of different systems (the machine is shared and noisy, so
only figures taken under the same conditions are compared), and writes
`bench/results/<date>.json`, `latest.json` and `latest.md`. See docs/performance.md.

Nothing here is imported by the package or its tests except the harness smoke test, which
asserts the shape of the output and never a duration (DESIGN §12).
"""
