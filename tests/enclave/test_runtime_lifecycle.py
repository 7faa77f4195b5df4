"""The enclave runtime's lifecycle, from the host's position: the host can call any ECALL in
any order. Before `initialize` succeeds every ECALL that needs the sealed state answers with
the one typed NotInitializedError (which the EDL carries to the host as itself); `initialize`
runs once; afterwards the state is one frozen object that no later call can half replace.

In-process: the runtime over the simulated platform, its OCALLs through the EDL's own checks
into the real host handlers and a real SQLite store."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from enclave_kms import edl
from enclave_kms.attestation.ratls import OE_FORMAT_UUID_SGX_ECDSA
from enclave_kms.edl_endpoint import error_from_frame
from enclave_kms.enclave.runtime import EnclaveRuntime
from enclave_kms.errors import ConfigError, ConflictError, NotInitializedError, PlatformError
from enclave_kms.host.ocalls import HostOcalls, SimQuoting
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.oe import parse_oe_report
from enclave_kms.sgx.report import AttributeFlags, Attributes

IDENTITY = EnclaveIdentity(
    mr_enclave=b"\x31" * 32,
    mr_signer=b"\x42" * 32,
    isv_prod_id=1,
    isv_svn=1,
    attributes=Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 3),
)
_SIM_DIR: dict[str, str] = {}


def config() -> bytes:
    """The host's initialize config: the module's simulated platform (its root appraises
    replicas, custody/service.py)."""
    return cbor2.dumps({"platform": "sim", "platform_dir": _SIM_DIR["dir"]})


Runtime = Callable[[], EnclaveRuntime]


@pytest.fixture(scope="module")
def new_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A fresh runtime (a new enclave process) over one platform and one store per call."""
    root = tmp_path_factory.mktemp("lifecycle")
    sim = SimPlatform.init(root / "sim")
    _SIM_DIR["dir"] = str(root / "sim")
    storages: list[SQLiteStorage] = []

    def make() -> EnclaveRuntime:
        storage = SQLiteStorage(root / f"kms-{len(storages)}.sqlite")
        storages.append(storage)
        handlers = HostOcalls(storage, SimQuoting(sim)).handlers()

        def call(name: str, /, **args: Any) -> dict[str, Any]:
            decl = edl.declared("ocall", name)
            return decl.check(handlers[name](**decl.check(args, "in")) or {}, "out")

        return EnclaveRuntime(call, backend=sim.enclave(IDENTITY))

    yield make
    for storage in storages:
        storage.close()


def _state_ecalls(rt: EnclaveRuntime) -> dict[str, Callable[[], object]]:
    """Every ECALL a host can call that needs what `initialize` opens."""
    return {
        "get_report": rt.get_report,
        "get_evidence_with_pub_key": lambda: rt.get_evidence_with_pub_key(
            OE_FORMAT_UUID_SGX_ECDSA, None
        ),
        "set_up_server": lambda: rt.set_up_server(0, False),
        "get_remote_report_with_pubkey": rt.channel.get_remote_report_with_pubkey,
        "generate_encrypted_message": lambda: rt.channel.generate_encrypted_message(1),
        "verify_report_and_set_pubkey": lambda: rt.channel.verify_report_and_set_pubkey(b"x"),
    }


def test_every_state_ecall_before_initialize_is_one_typed_refusal(new_runtime: Runtime) -> None:
    rt = new_runtime()
    for name, ecall in _state_ecalls(rt).items():
        with pytest.raises(NotInitializedError, match="enclave is not initialized") as caught:
            ecall()
        # the EDL's one error mapping gives the host the same class back
        relayed = error_from_frame(caught.value.code, caught.value.message)
        assert type(relayed) is NotInitializedError, name
    assert rt.records_changed("key", "k") == {}  # nothing cached yet: nothing to forget
    assert not rt.server_done.is_set()  # set_up_server never got as far as serving


def test_initialize_runs_once_even_after_a_failed_attempt(
    new_runtime: Runtime, tmp_path: Path
) -> None:
    rt = new_runtime()
    with pytest.raises(ConfigError):
        rt.initialize(b"\xff not cbor")  # unread config: the host may send a good one
    reply = rt.initialize(config())
    claims = cbor2.loads(reply["identity"])
    assert claims["mr_enclave"] == IDENTITY.mr_enclave.hex()
    assert claims["simulated"] is True
    with pytest.raises(ConflictError, match="already initialized"):
        rt.initialize(config())

    failing = EnclaveRuntime(rt._call, backend=None)  # no backend: the platform dir is absent
    bad = cbor2.dumps({"platform": "sim", "platform_dir": str(tmp_path / "missing")})
    with pytest.raises(PlatformError, match="no simulated platform"):
        failing.initialize(bad)
    with pytest.raises(ConflictError, match="already initialized"):
        failing.initialize(config())  # a second attempt would re-run half-done steps
    with pytest.raises(NotInitializedError):
        failing.get_report()


def test_the_initialized_state_is_one_frozen_object(new_runtime: Runtime) -> None:
    rt = new_runtime()
    rt.initialize(config())
    ready = rt.ready()
    assert ready is rt.ready()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ready.kms = None  # type: ignore[misc, assignment]
    # what it holds serves the ECALLs: the report binds the sealed TLS key it opened
    report = rt.get_report()
    _, quote = parse_oe_report(report["report"])
    assert quote.report_data[:32] == hashlib.sha256(report["pem_key"]).digest()
    assert report["pem_key"].rstrip(b"\0").startswith(b"-----BEGIN PUBLIC KEY-----")
    ready.kms.create_key("k")
    assert rt.records_changed("key", "k") == {}
    assert ready.kms.read_key("k").latest_version == 1
