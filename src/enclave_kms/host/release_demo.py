"""Key release with real processes: the KMS enclave serves HTTPS, a workload enclave (its own
image and MRENCLAVE) receives keys that the host relaying for it never sees (DESIGN §15).

The host process plays every untrusted part: it starts both enclaves, asks the KMS for a
nonce, carries the workload's evidence and recipient key to the KMS over attested TLS and the
sealed answer back into the workload, which returns only a digest of what it opened. A
simulated TDX guest (a TD quote from the same simulated platform) receives a data key too.
With an attack the host (or the workload's build) turns hostile and the refusal is shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.tdx_policy import TdxRules
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.client import release as rel
from enclave_kms.client.sync import KMSClient
from enclave_kms.edl_endpoint import FrameObserver
from enclave_kms.errors import EnclaveKMSError, UsageError
from enclave_kms.host.launcher import EnclaveProcess
from enclave_kms.host.ocalls import HostOcalls, SimQuoting
from enclave_kms.host.service import ServeOptions, ensure_image, ensure_platform, start
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.image import EnclaveConfig
from enclave_kms.platform.sim.loader import LoadedImage, enclave_argv
from enclave_kms.platform.sim.pcs import TcbScenario
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.tdx import TdIdentity

WORKLOAD_ENTRYPOINT = "enclave_kms.enclave.workload"
KEY, TD_KEY, BARE_KEY = "demo-key", "demo-td-key", "demo-bare-key"
TD = TdIdentity(mr_td=hashlib.sha384(b"enclave-kms demo TD image").digest())
EVIDENCE_ATTACKS = ("replay", "other-key")
POLICY_ATTACKS = (
    "wrong-measurement",
    "debug-workload",
    "out-of-date-tcb",
    "no-policy",
    "loosen-immutable",
)
ATTACKS = EVIDENCE_ATTACKS + POLICY_ATTACKS

Say = Callable[[str], None]


@dataclass
class DemoResult:
    released: list[tuple[str, str]] = field(default_factory=list)  # (what, SHA-256 hex)
    rejected: EnclaveKMSError | None = None
    kms_mr_enclave: str = ""
    workload_mr_enclave: str = ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _workload_config(attack: str | None) -> EnclaveConfig:
    if attack == "wrong-measurement":
        return EnclaveConfig(heap_size=128 * 1024 * 1024)  # another build: another MRENCLAVE
    if attack == "debug-workload":
        return EnclaveConfig(debug=True)
    return EnclaveConfig()


def release_policy_toml(workload: LoadedImage, root_spki: str) -> str:
    """What the key's owner allows: this workload build, its signer and product, SVN >= 1."""
    return Policy(
        mr_enclave=(workload.mr_enclave,),
        mr_signer=workload.mr_signer,
        isv_prod_id=workload.identity.isv_prod_id,
        min_isv_svn=1,
        simulated_root=root_spki,
    ).to_toml()


def _launch_workload(
    image: LoadedImage,
    platform: SimPlatform,
    work_dir: Path,
    sink: Callable[[str], None] | None,
    observer: FrameObserver | None,
) -> tuple[EnclaveProcess, SQLiteStorage, dict[str, Any]]:
    storage = SQLiteStorage(work_dir / "workload-host.sqlite")  # the OCALL table needs one
    ocalls = HostOcalls(storage, SimQuoting(platform))
    pycache = work_dir / "workload-pycache"
    pycache.mkdir(mode=0o700, exist_ok=True)
    process = EnclaveProcess(
        enclave_argv(image, pycache_prefix=pycache),
        ocalls.handlers(),
        stderr_sink=sink,
        observer=observer,
    ).start()
    try:
        reply = process.call(
            "initialize", config=cbor2.dumps({"platform_dir": str(platform.path)}), timeout=120
        )
    except BaseException:
        process.stop()
        storage.close()
        raise
    return process, storage, cbor2.loads(reply["identity"])


def run_demo(
    work_dir: Path,
    *,
    attack: str | None = None,
    say: Say = lambda _line: None,
    stderr_sink: Callable[[str], None] | None = None,
    observer: FrameObserver | None = None,
) -> DemoResult:
    """Run the release flow end to end; with `attack`, return the typed refusal in the result."""
    if attack is not None and attack not in ATTACKS:
        raise UsageError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o700)
    result = DemoResult()
    platform = ensure_platform(work_dir / "platform")
    root_spki = platform.trust_root().spki_sha256
    say("building and signing the KMS image and the workload image (simulated SGX)")
    genuine = ensure_image(
        work_dir / "workload-image", work_dir / "signer.pem", entrypoint=WORKLOAD_ENTRYPOINT
    )
    variant = genuine
    if attack in ("wrong-measurement", "debug-workload"):
        variant = ensure_image(
            work_dir / f"workload-image-{attack}",
            work_dir / "signer.pem",
            _workload_config(attack),
            entrypoint=WORKLOAD_ENTRYPOINT,
        )
    kms_dir = work_dir / "kms"
    shutil.rmtree(kms_dir, ignore_errors=True)  # the demo's KMS state is disposable
    if attack == "out-of-date-tcb":
        platform.set_tcb_scenario(TcbScenario.OUT_OF_DATE)
        say("platform (attacker's TCB): Intel now says this CPU's TCB is OutOfDate")
    running = None
    workload: tuple[EnclaveProcess, SQLiteStorage, dict[str, Any]] | None = None
    try:
        running = start(
            ServeOptions(
                data_dir=kms_dir,
                port=_free_port(),
                platform_dir=platform.path,
                stderr_sink=stderr_sink,
                observer=observer,
            )
        )
        result.kms_mr_enclave = running.identity["mr_enclave"]
        say(f"KMS enclave serving {running.url}: MRENCLAVE {result.kms_mr_enclave[:16]}…")
        workload = _launch_workload(variant, platform, work_dir, stderr_sink, observer)
        ident = workload[2]
        result.workload_mr_enclave = ident["mr_enclave"]
        say(
            f"workload enclave started: MRENCLAVE {ident['mr_enclave'][:16]}…, "
            f"ProductID {ident['isv_prod_id']}, SVN {ident['isv_svn']}, debug {ident['debug']}"
        )
        try:
            _flow(running.url, platform, genuine, root_spki, workload[0], attack, say, result)
        except EnclaveKMSError as exc:
            result.rejected = exc
            say(f"REFUSED ({type(exc).__name__}): {exc.message}")
    finally:
        if workload is not None:
            with contextlib.suppress(EnclaveKMSError):
                workload[0].call("shutdown", timeout=10)
            workload[0].stop()
            workload[1].close()
        if running is not None:
            running.stop()
        if attack == "out-of-date-tcb":
            platform.set_tcb_scenario(TcbScenario.UP_TO_DATE)
    return result


def _flow(  # noqa: PLR0917 - one call site; the demo's parts, in order
    url: str,
    platform: SimPlatform,
    genuine: LoadedImage,
    root_spki: str,
    workload: EnclaveProcess,
    attack: str | None,
    say: Say,
    result: DemoResult,
) -> None:
    root = platform.trust_root()
    statuses = (TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE)  # the KMS shares the CPU's TCB
    bootstrap = Policy(
        any_enclave_unsafe=True, simulated_root=root_spki, accepted_tcb_statuses=statuses
    )
    with KMSClient(url, trust_root=root, policy=bootstrap) as admin:
        admin.init()
        say("admin: attested the KMS, initialized it (first admin token)")
        admin.create_key(KEY, exportable=True)
        admin.create_key(BARE_KEY, exportable=True)
        admin.create_key(TD_KEY)
        policy = release_policy_toml(genuine, root_spki)
        admin.call(rel.set_release_policy(KEY, policy, immutable=True))
        td_policy = Policy(tdx=TdxRules(mr_td=(TD.mr_td,)), simulated_root=root_spki).to_toml()
        admin.call(rel.set_release_policy(TD_KEY, td_policy))
        say(
            f"admin: {KEY} released only to MRENCLAVE {genuine.mr_enclave.hex()[:16]}… "
            "(immutable policy)"
        )
        if attack == "loosen-immutable":
            say("admin (attacker): tries to also allow debug enclaves")
            loosened = policy.replace("allow_debug = false", "allow_debug = true")
            admin.call(rel.set_release_policy(KEY, loosened))
        grant = [{"keys": [KEY, TD_KEY, BARE_KEY], "operations": ["release"]}]
        token = admin.create_token("workload", grant).token
        say("admin: a token that may only ask for releases of these keys")
        ciphertext = admin.encrypt(KEY, b"customer record 42")
        material = admin.export_key(KEY).material

    with KMSClient(url, token=token, trust_root=root, policy=bootstrap) as host:
        target = BARE_KEY if attack == "no-policy" else KEY
        for operation in ("export", "decrypt", "datakey"):
            sent = ciphertext if operation == "decrypt" else None
            nonce = host.call(rel.release_nonce()).nonce
            made = workload.call("workload_evidence", nonce=nonce)
            recipient: bytes = made["public_key"]
            if attack == "other-key":
                recipient = rel.Recipient.generate().public_key
                say("host (attacker): swaps in its own recipient key")
            answer = host.call(
                rel.release_key(
                    target, operation, nonce, made["evidence"], recipient, ciphertext=sent
                )
            )
            say(
                f"host → KMS → host: {operation} answer, {len(answer.sealed)} sealed bytes "
                "(ciphertext to the workload's key)"
            )
            digest = workload.call(
                "workload_open",
                key_name=answer.name,
                version=answer.version,
                operation=operation,
                nonce=nonce,
                sealed=answer.sealed,
            )["digest"]
            result.released.append((operation, digest.hex()))
            if operation == "export" and digest != hashlib.sha256(material).digest():
                raise EnclaveKMSError("the workload opened something other than the key")
            say(f"workload opened the {operation} answer inside: SHA-256 {digest.hex()[:16]}…")
            if attack == "replay":
                say("host (attacker): replays the same evidence and nonce")
                host.call(rel.release_key(target, operation, nonce, made["evidence"], recipient))
        td = rel.Recipient.generate()
        nonce = host.call(rel.release_nonce()).nonce
        quote = platform.td_quote(TD, td.report_data(nonce))
        answer = host.call(rel.release_key(TD_KEY, "datakey", nonce, quote, td))
        key = td.open(answer)
        result.released.append(("td-datakey", hashlib.sha256(key).hexdigest()))
        say(f"simulated TDX guest (MRTD {TD.mr_td.hex()[:16]}…) received a data key")
