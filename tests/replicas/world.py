"""Two simulated CPUs under one simulated root, one shared SQLite store, and servers on them
(real host and enclave processes), for the join and migration tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave_kms.enclave.custody.joiner import SHARED_ID, SRK_AAD
from enclave_kms.host.replica_join import join_once
from enclave_kms.host.service import Running, ServeOptions, ensure_image, start
from enclave_kms.host.storage import open_storage
from enclave_kms.platform.image import EnclaveConfig, build_image, sign_image
from enclave_kms.platform.sim import sealing
from enclave_kms.platform.sim.cpu import SimCpu
from enclave_kms.platform.sim.loader import LoadedImage, load_image
from enclave_kms.platform.sim.platform import SimPlatform
from tests.e2e.conftest import Recorder, free_port, ok


@dataclass
class World:
    root: Path
    recorder: Recorder
    cpu_a: SimPlatform
    cpu_b: SimPlatform
    image: LoadedImage  # the build every replica runs unless told
    store: str  # the installation's storage (SQLite file or PostgreSQL), shared by all
    token: str = field(default="", repr=False)
    ciphertext: str = ""  # made on the first replica, decrypted on the others
    servers: list[Running] = field(default_factory=list)

    def serve(
        self,
        name: str,
        cpu: SimPlatform,
        *,
        join: str | None = None,
        image: LoadedImage | None = None,
    ) -> Running:
        running = start(
            ServeOptions(
                data_dir=self.root / name,
                port=free_port(),
                platform_dir=cpu.path,
                image=(image or self.image).directory,
                storage=self.store,
                join_url=join,
                observer=self.recorder.frame,
                stderr_sink=self.recorder.stderr_line,
            )
        )
        self.servers.append(running)
        return running

    def join_once(
        self, name: str, cpu: SimPlatform, peer: Running, image: LoadedImage | None = None
    ) -> None:
        """`enclave-kms replicas join`: obtain the key from `peer`, seal it on `cpu`, exit."""
        join_once(
            ServeOptions(
                data_dir=self.root / name,
                platform_dir=cpu.path,
                image=(image or self.image).directory,
                storage=self.store,
                join_url=peer.url,
                observer=self.recorder.frame,
                stderr_sink=self.recorder.stderr_line,
            )
        )

    def stop(self, running: Running) -> None:
        running.stop()
        self.servers.remove(running)

    def client(self, running: Running, *, anonymous: bool = False) -> httpx.Client:
        headers = {} if anonymous else {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=running.url, verify=False, timeout=120, headers=headers)

    def record(self, name: str) -> bytes:
        storage = open_storage(self.store, exclusive=False)
        try:
            found = storage.get("identity", name)
        finally:
            storage.close()
        assert found is not None, name
        return found[1]

    def srk(self) -> bytes:
        """The storage root key, as only the CPU could compute it (the test plays CPU A;
        A's copy was sealed under the SGX rule, before the upgrade tests)."""
        blob = self.record(SHARED_ID)
        fuse = (self.cpu_a.path / "fuse_secret").read_bytes()
        cpu = SimCpu(fuse, sealing.SealedHeader.parse(blob).cpu_svn)  # CPU A as it was then
        return sealing.unseal(cpu, self.image.identity, blob, SRK_AAD)

    def audit_ops(self) -> list[tuple[str, str, str]]:
        """(op, target, outcome) of every record on audit chain 0 of the shared store."""
        storage = open_storage(self.store, exclusive=False)
        try:
            records = storage.audit_records(0)
        finally:
            storage.close()
        out = []
        for blob in records:
            body = cbor2.loads(cbor2.loads(blob)[0])
            out.append((body["op"], body["target"], body["outcome"]))
        return out


def upgraded_image(world: World, directory: Path, *, svn: int) -> LoadedImage:
    """The same code signed by the same signer at another ISVSVN (a new MRENCLAVE too, as
    the enclave config is measured): an upgrade."""
    build_image(directory, EnclaveConfig(security_version=svn))
    signer = serialization.load_pem_private_key(
        (world.image.directory.parent / "signer.pem").read_bytes(), None
    )
    assert isinstance(signer, rsa.RSAPrivateKey)
    sign_image(directory, signer, dt.datetime.now(dt.UTC).date())
    return load_image(directory)


def new_world(root: Path, recorder: Recorder, store: str | None = None) -> World:
    cpu_a = SimPlatform.init(root / "cpu-a")
    cpu_b = SimPlatform.init(root / "cpu-b", root_from=cpu_a)
    image = ensure_image(root / "build" / "image", root / "build" / "signer.pem")
    return World(root, recorder, cpu_a, cpu_b, image, store or str(root / "shared.sqlite"))


def init_admin(world: World, running: Running) -> None:
    with world.client(running, anonymous=True) as c:
        world.token = ok(c.post("/v1/sys/init"), 201)["token"]
