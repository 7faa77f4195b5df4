"""A key-release workload enclave: another enclave, another MRENCLAVE (DESIGN §15).

Run as the entrypoint of its own image (`ensure_image(..., entrypoint=
"enclave_kms.enclave.workload")`): the manifest measures the entrypoint, so the workload's
MRENCLAVE differs from the KMS's even when both are built from the same files. It speaks the
same EDL over the same isolated channel as the KMS enclave, with only these ECALLs:

- `initialize` (config: CBOR {"platform_dir"}): open the simulated CPU as this identity;
- `workload_evidence(nonce)`: a fresh X25519 recipient key, kept inside, and a quote whose
  report_data binds it and the nonce (`release_wire.binding`);
- `workload_open(key_name, version, operation, nonce, sealed)`: open the KMS's HPKE answer
  with that key (then forget the key) and return only SHA-256 of the secret, so the host and
  the demo can show that a secret arrived without ever seeing it;
- `shutdown`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave_kms import edl
from enclave_kms.enclave.host_calls import HostCalls
from enclave_kms.errors import BoundaryError, ConfigError, EnclaveKMSError, NonceError
from enclave_kms.platform.base import TeeBackend
from enclave_kms.wire import release as release_wire

MAX_PENDING = 64
WORKLOAD_ECALLS = ("workload_evidence", "workload_open")


def refused(name: str, what: str) -> Any:
    """A handler for a declared ECALL this image does not serve."""

    def handler(**_args: Any) -> dict[str, Any]:
        raise BoundaryError(f"ecall {name}: this enclave is {what}")

    return handler


class WorkloadRuntime:
    def __init__(self, call: Any) -> None:
        self.host = HostCalls(call)
        self.backend: TeeBackend | None = None
        self.stopped = threading.Event()
        self._pending: dict[bytes, X25519PrivateKey] = {}
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Any]:
        """The EDL is one declaration for both images: the KMS's ECALLs are refused here."""
        return {
            **{c.name: refused(c.name, "a key-release workload") for c in edl.ECALLS},
            "initialize": self.initialize,
            "workload_evidence": self.workload_evidence,
            "workload_open": self.workload_open,
            "shutdown": self.shutdown,
        }

    def initialize(self, config: bytes) -> dict[str, Any]:
        from enclave_kms.platform.sim.loader import running_identity
        from enclave_kms.platform.sim.platform import SimPlatform

        try:
            settings = cbor2.loads(config)
            platform_dir = str(settings["platform_dir"])
        except Exception:  # noqa: BLE001 - any malformed config is one refusal
            raise ConfigError("workload initialize: config must be CBOR {platform_dir}") from None
        identity = running_identity()
        self.backend = SimPlatform.open(platform_dir).enclave(identity)
        claims = {
            "mr_enclave": identity.mr_enclave.hex(),
            "mr_signer": identity.mr_signer.hex(),
            "isv_prod_id": identity.isv_prod_id,
            "isv_svn": identity.isv_svn,
            "debug": identity.attributes.debug,
            "simulated": True,
        }
        return {"identity": cbor2.dumps(claims)}

    def workload_evidence(self, nonce: bytes) -> dict[str, Any]:
        if self.backend is None:
            raise EnclaveKMSError("workload is not initialized")
        private = X25519PrivateKey.generate()
        public = release_wire.raw_public_key(private)
        report_data = release_wire.binding(nonce, public).ljust(64, b"\0")
        quote = self.host.quote_for(self.backend, report_data)
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[nonce] = private
        return {"public_key": public, "evidence": quote}

    def workload_open(
        self, key_name: str, version: int, operation: str, nonce: bytes, sealed: bytes
    ) -> dict[str, Any]:
        with self._lock:
            private = self._pending.pop(nonce, None)
        if private is None:
            raise NonceError("this workload made no evidence for that nonce")
        info = release_wire.answer_info(key_name, version, operation, nonce)
        secret = release_wire.open_sealed(sealed, private, info)
        return {"digest": hashlib.sha256(secret).digest()}

    def shutdown(self) -> dict[str, Any]:
        self.stopped.set()
        return {}


def main() -> None:
    import os

    from enclave_kms.enclave.channel_io import open_channel

    runtime, endpoint = open_channel(WorkloadRuntime)
    while not runtime.stopped.wait(0.5):
        if endpoint.closed:
            break
    time.sleep(0.2)  # let the last reply reach the host
    endpoint.close()
    os._exit(0)


if __name__ == "__main__":
    main()
