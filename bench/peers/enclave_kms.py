"""PLUG-IN POINT: enclave-kms itself under the same HTTPS load as OpenBao.

`enclave_kms_target` is to be filled in when `enclave-kms serve` exists (issue 7). Until then it
returns None and the harness skips the enclave-kms HTTP rows with a note in the results; every
other row (peers, ceilings, attestation, platform) is measured already, so plugging it in adds
rows and ratios and changes nothing else.

What it must do (the lead's part):

1. start `enclave-kms serve` in simulation in a `ManagedProcess` (bench/peers/base.py), on
   127.0.0.1 and a `free_port()`, with authentication, audit and the sealed SQLite store on,
   its platform and data directories under `workdir`; wait until it answers;
2. obtain the admin token (`POST /v1/sys/init` over attested TLS, as a client would), create
   one key per operation (aes256-gcm, ec-p256, ed25519, rsa-2048), encrypt once to have a
   ciphertext for `decrypt`;
3. return `HttpTarget(system="enclave-kms", base_url=..., ops=..., stop=...)` with `ops` keyed
   by the row names below and the bearer token in each op's headers; `{n}` in a path or body
   is replaced by a unique value per request (create-key);
4. for `encrypt-1m-keys`: an op `encrypt-1m-keys` against a store pre-filled with 1,000,000
   keys (and the 10-key case is `encrypt`); how to pre-fill quickly is the server's business.

`enclave_kms_ops` below is the expected shape of the request set; adjust the paths and bodies
to the real API (DESIGN §11).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from bench.peers.base import HttpOp, HttpTarget

#: Row names the enclave-kms HTTP target should provide (same names as OpenBao's rows).
OPERATIONS = (
    "encrypt",
    "decrypt",
    "datakey",
    "sign-ecdsa-p256",
    "sign-ed25519",
    "sign-rsa-2048",
    "create-key",
    "encrypt-1m-keys",
)

SKIP_NOTE = (
    "enclave-kms HTTP rows skipped: the server is not plugged in yet "
    "(bench/peers/enclave_kms.py: enclave_kms_target)"
)

PLAINTEXT = base64.b64encode(bytes(range(32))).decode()


def enclave_kms_ops(token: str, ciphertext: str, keys: dict[str, str]) -> dict[str, HttpOp]:
    """A request set in the shape the harness loads (paths are a sketch of DESIGN §11)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> HttpOp:
        return HttpOp("POST", path, json.dumps(body, separators=(",", ":")), headers)

    data = {"plaintext": PLAINTEXT}
    return {
        "encrypt": post(f"/v1/keys/{keys['aes256-gcm']}/encrypt", data),
        "decrypt": post(f"/v1/keys/{keys['aes256-gcm']}/decrypt", {"ciphertext": ciphertext}),
        "datakey": post(f"/v1/keys/{keys['aes256-gcm']}/datakey", {"bits": 256}),
        "sign-ecdsa-p256": post(f"/v1/keys/{keys['ec-p256']}/sign", {"input": PLAINTEXT}),
        "sign-ed25519": post(f"/v1/keys/{keys['ed25519']}/sign", {"input": PLAINTEXT}),
        "sign-rsa-2048": post(f"/v1/keys/{keys['rsa-2048']}/sign", {"input": PLAINTEXT}),
        "create-key": post("/v1/keys", {"name": "bench-{n}", "type": "aes256-gcm"}),
    }


def enclave_kms_target(workdir: Path) -> HttpTarget | None:
    """Start enclave-kms in simulation and describe its operations; None = not available yet.

    TODO(lead): implement as described in the module docstring. Everything it starts must be
    stopped by the returned target's `stop` (use ManagedProcess, which also cleans up at exit).
    """
    del workdir
    return None
