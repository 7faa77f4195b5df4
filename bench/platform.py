"""The simulated platform's own costs: init, image build + sign, quote generation, sealing.

These have no peer (nothing else simulates SGX here); they say what an `enclave-kms` start-up
and an attestation cost on this machine. All rows are system "enclave-kms".

- `platform-init`: `SimPlatform.init` into a fresh directory (PKI, keys, 0600 files, fsync);
- `image-build-sign`: `build_image` (hashes every trusted file of the enclave: the package,
  its dependency closure, the stdlib and the interpreter) then `sign_image` (RSA-3072, e=3)
  with one signer key made once;
- `quote-gen`: EREPORT + quoting enclave (MAC check, ECDSA P-256 quote signature);
- `seal` / `unseal`: 32 bytes under the EGETKEY seal key (MRSIGNER policy), AES-256-GCM.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from bench.attestation import BENCH_ENCLAVE
from bench.measure import Case, RunSample, timed_loop
from enclave_kms.platform.base import KeyPolicy
from enclave_kms.platform.image import EnclaveConfig, build_image, sign_image
from enclave_kms.platform.sim.platform import SimPlatform

SEALED_SIZE = 32


def cases(seconds: float, workdir: Path | None = None) -> list[Case]:
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="bench-platform-"))
    counter = itertools.count()
    platform = SimPlatform.init(workdir / "platform")
    enclave = platform.enclave(BENCH_ENCLAVE)
    signer = rsa.generate_private_key(3, 3072)  # SGX SIGSTRUCT: RSA-3072, public exponent 3
    report_data = hashlib.sha512(b"bench quote").digest()
    secret = bytes(range(SEALED_SIZE))
    sealed = enclave.seal(secret, KeyPolicy.MRSIGNER)
    today = dt.date.today()
    # Each init / build needs a new directory; the previous one is removed outside the timing.
    current: list[Path] = []

    def fresh_dir() -> None:
        for old in current:
            shutil.rmtree(old, ignore_errors=True)
        current[:] = [workdir / f"scratch-{next(counter)}"]

    def init() -> object:
        return SimPlatform.init(current[0])

    def build_sign() -> object:
        build_image(current[0], EnclaveConfig())
        return sign_image(current[0], signer, today)

    def quote() -> object:
        return enclave.get_quote(report_data)

    def seal() -> object:
        return enclave.seal(secret, KeyPolicy.MRSIGNER)

    def unseal() -> object:
        if enclave.unseal(sealed) != secret:
            raise AssertionError("unseal returned other bytes")
        return None

    specs: list[tuple[str, Callable[[], object], bool, dict[str, object]]] = [
        ("platform-init", init, True, {}),
        ("image-build-sign", build_sign, True, {}),
        ("quote-gen", quote, False, {}),
        ("seal", seal, False, {"bytes": SEALED_SIZE, "policy": "MRSIGNER"}),
        ("unseal", unseal, False, {"bytes": SEALED_SIZE, "policy": "MRSIGNER"}),
    ]
    out = []
    for name, op, needs_dir, extra in specs:
        before = fresh_dir if needs_dir else None

        def run(
            op: Callable[[], object] = op, before: Callable[[], None] | None = before
        ) -> RunSample:
            return timed_loop(op, seconds, min_ops=1, before=before)

        def warm(op: Callable[[], object] = op, before: Callable[[], None] | None = before) -> None:
            if before is not None:
                before()
            op()

        out.append(Case(name, "enclave-kms", "platform", run, extra=dict(extra), warmup=warm))
    return out
