"""One real simulated KMS for the client and CLI tests of a session (started once: it takes
seconds), initialised through the SDK so both suites share its admin token."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import KMSClient
from enclave_kms.host.service import Running, ServeOptions, start


@dataclass
class RealKMS:
    running: Running
    data_dir: Path
    token: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def root_path(self) -> Path:
        return self.running.root_path

    @property
    def trust_root(self) -> TrustRoot:
        return TrustRoot.from_pem(self.root_path.read_bytes())

    @property
    def policy(self) -> Policy:
        ident = self.running.identity
        return Policy(
            mr_enclave=(bytes.fromhex(ident["mr_enclave"]),),
            mr_signer=bytes.fromhex(ident["mr_signer"]),
            isv_prod_id=ident["isv_prod_id"],
            min_isv_svn=ident["isv_svn"],
            simulated_root=self.trust_root.spki_sha256,
        )

    def client(self, **kwargs: object) -> KMSClient:
        return KMSClient(
            self.url,
            token=self.token,
            policy=self.policy,
            trust_root=self.trust_root,
            **kwargs,  # type: ignore[arg-type]
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def real_kms(base: Path) -> Iterator[RealKMS]:
    data_dir = base / "data"
    running = start(ServeOptions(data_dir=data_dir, port=free_port()))
    try:
        root = TrustRoot.from_pem(running.root_path.read_bytes())
        bootstrap = Policy(any_enclave_unsafe=True, simulated_root=root.spki_sha256)
        with KMSClient(running.url, trust_root=root, policy=bootstrap) as kms:
            token = kms.init().token
        yield RealKMS(running, data_dir, token)
    finally:
        running.stop()
