"""k-of-n recovery on real processes, from the hostile host's position (docs/replicas.md).

An installation on simulated CPU A splits its storage root key (SRK) 2-of-3 at `init` (the
CLI) and its officers fetch their sealed shares; then every replica is lost. A new simulated
CPU B under the same root (`platform init --root-from`) cannot unseal the SRK. With
`--recovery` it attests, officers appraise it with their policy and submit, and after two
valid shares it serves the old data again, sealed to B. Along the way the host fabricates a
set for a key of its own (refused: no genuine enclave quoted it), replays a submission,
forges one, stops at k-1; the shares and the SRK never appear in any EDL frame, log line or
host file; a recovering enclave of another build is refused by the officers before anything
is sent, and one of another signer refuses the set itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
import shamir_mnemonic
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import KMSClient
from enclave_kms.client import recovery as officer_sdk
from enclave_kms.enclave.custody.shares import split
from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.errors import (
    PolicyError,
    RecoveryError,
    SealingError,
    ServerError,
)
from enclave_kms.host.service import Running, ServeOptions, ensure_image, start
from enclave_kms.platform.image import EnclaveConfig, MiB
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.wire import RecoveryProgress
from enclave_kms.wire import custody as wire
from tests.e2e.conftest import (
    CLI,
    HTTP_TIMEOUT,
    Recorder,
    b64,
    fails,
    free_port,
    ok,
    recording_logs,
    unb64,
)
from tests.e2e.test_no_secrets import Needles

pytestmark = pytest.mark.slow

OFFICERS = 3
THRESHOLD = 2


@dataclass
class Installation:
    """CPU A's installation after the split, stopped (every replica lost)."""

    base: Path
    data_dir: Path
    token: str = field(repr=False)
    policy_path: Path
    root_path: Path
    policy: Policy
    ciphertext: str
    plaintext: bytes
    keys: list[x25519.X25519PrivateKey] = field(repr=False)
    key_paths: list[Path]
    shares: list[Path]  # each officer's share file (fetched from the live installation)

    def share(self, officer: int) -> officer_sdk.ShareFile:
        return officer_sdk.ShareFile.parse(json.loads(self.shares[officer].read_text()))

    def client(self, url: str, **kwargs: Any) -> KMSClient:
        return KMSClient(
            url,
            policy=self.policy,
            trust_root=TrustRoot.from_pem(self.root_path.read_bytes()),
            **kwargs,
        )


def cli(
    inst: Installation, url: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(inst.base), "ENCLAVE_KMS_CONFIG": str(inst.base / "none.toml")}
    done = subprocess.run(
        [
            str(CLI),
            "--url",
            url,
            "--policy",
            str(inst.policy_path),
            "--trust-root",
            str(inst.root_path),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=HTTP_TIMEOUT,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def serve(data_dir: Path, recorder: Recorder | None = None, **options: Any) -> Running:
    return start(
        ServeOptions(
            data_dir=data_dir,
            port=free_port(),
            observer=None if recorder is None else recorder.frame,
            stderr_sink=None if recorder is None else recorder.stderr_line,
            **options,
        )
    )


@contextmanager
def running(data_dir: Path, recorder: Recorder | None = None, **options: Any) -> Iterator[Running]:
    server = serve(data_dir, recorder, **options)
    try:
        yield server
    finally:
        server.stop()


def http(url: str, token: str | None = None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=url, verify=False, timeout=HTTP_TIMEOUT, headers=headers)


def copy_db(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def new_machine(inst: Installation, name: str, *, same_signer: bool = True) -> Path:
    """A data directory on a new simulated CPU (same root) holding a copy of the database."""
    data_dir = inst.base / name
    data_dir.mkdir(mode=0o700)
    SimPlatform.init(data_dir / "platform", root_from=SimPlatform.open(inst.data_dir / "platform"))
    if same_signer:
        shutil.copy2(inst.data_dir / "signer.pem", data_dir / "signer.pem")
    copy_db(inst.data_dir / "kms.sqlite", data_dir / "kms.sqlite")
    return data_dir


def stored_set(db: Path) -> tuple[dict[str, Any], bytes]:
    with closing(sqlite3.connect(db)) as conn:
        (blob,) = conn.execute(
            "SELECT blob FROM records WHERE kind='identity' AND id='recovery-set'"
        ).fetchone()
    outer = cbor2.loads(blob)
    return cbor2.loads(outer["body"]), outer["mac"]


def stored_origin(db: Path) -> bytes:
    with closing(sqlite3.connect(db)) as conn:
        (blob,) = conn.execute(
            "SELECT blob FROM records WHERE kind='identity' AND id='recovery-set'"
        ).fetchone()
    origin: bytes = cbor2.loads(blob)["origin"]
    return origin


def write_set(db: Path, body: dict[str, Any], mac: bytes, origin: bytes) -> None:
    set_record(
        db, cbor2.dumps({"body": cbor2.dumps(body, canonical=True), "mac": mac, "origin": origin})
    )


def set_record(db: Path, blob: bytes) -> None:
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute(
            "UPDATE records SET blob=?, version=version+1"
            " WHERE kind='identity' AND id='recovery-set'",
            (blob,),
        )


def sealed_submission(inst: Installation, client: KMSClient, officer: int) -> dict[str, str]:
    """Exactly what `submit_share` sends for this officer (appraisal included), for replays."""
    progress = officer_sdk.status(client)
    assert isinstance(progress, RecoveryProgress)
    session_id, session_key, _ = officer_sdk.appraise_session(client, progress)
    share = inst.share(officer)
    sealed = wire.SUITE.encrypt(
        wire.encode_submission(
            bytes.fromhex(share.set_id), share.index, share.open(inst.keys[officer])
        ),
        x25519.X25519PublicKey.from_public_bytes(session_key),
        info=wire.submit_info(session_id),
    )
    return {"session_id": session_id.hex(), "sealed": b64(sealed)}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    base = tmp_path_factory.mktemp("recovery")
    data_dir = base / "a"
    key_paths = [base / f"officer{i}.key" for i in range(OFFICERS)]
    with running(data_dir) as a:
        root = TrustRoot.from_pem(a.root_path.read_bytes())
        ident = a.identity
        policy = Policy(
            mr_enclave=(bytes.fromhex(ident["mr_enclave"]),),
            mr_signer=bytes.fromhex(ident["mr_signer"]),
            isv_prod_id=ident["isv_prod_id"],
            min_isv_svn=ident["isv_svn"],
            simulated_root=root.spki_sha256,
        )
        policy_path = base / "policy.toml"
        policy_path.write_text(policy.to_toml())
        inst = Installation(
            base, data_dir, "", policy_path, a.root_path, policy, "", b"", [], key_paths, []
        )
        for path in key_paths:  # officers make their keys with the CLI
            cli(inst, a.url, "recovery", "officer-key", "--out", str(path))
            assert path.stat().st_mode & 0o777 == 0o600
        inst.keys = [officer_sdk.load_officer_key(p.read_bytes()) for p in key_paths]
        token_file = base / "admin.token"
        officers = [a for p in key_paths for a in ("--recovery-officer", f"{p}.pub")]
        done = cli(
            inst,
            a.url,
            *("--token-file", str(token_file), "init", "--no-save-config"),
            *("--recovery-threshold", str(THRESHOLD), *officers),
        )
        assert f"split {THRESHOLD}-of-{OFFICERS}" in done.stdout
        inst.token = token_file.read_text().strip()
        with http(a.url, inst.token) as c:
            ok(c.post("/v1/keys", json={"name": "orders", "type": "aes256-gcm"}), 201)
            inst.plaintext = os.urandom(40)
            body = {"plaintext": b64(inst.plaintext)}
            inst.ciphertext = ok(c.post("/v1/keys/orders/encrypt", json=body))["ciphertext"]
            status = ok(c.get("/v1/sys/recovery"))
        assert status["state"] == "ready"
        assert status["threshold"] == THRESHOLD
        assert len(status["officers"]) == OFFICERS
        share0 = base / "share0.json"
        cli(
            inst, a.url, "recovery", "fetch-share", "--key", str(key_paths[0]), "--out", str(share0)
        )
        inst.shares = [share0]
        with inst.client(a.url) as client:
            for i in range(1, OFFICERS):
                inst.shares.append(base / f"share{i}.json")
                inst.shares[i].write_bytes(officer_sdk.fetch_share(client, inst.keys[i]).to_json())
    return inst


def reconstructed_srk(inst: Installation) -> bytes:
    """The SRK as all officers together know it, checked to open A's records."""
    shares = [inst.share(i).open(inst.keys[i]).decode() for i in range(OFFICERS)]
    srk: bytes = shamir_mnemonic.combine_mnemonics(shares[:THRESHOLD])
    with closing(sqlite3.connect(inst.data_dir / "kms.sqlite")) as conn:
        kind, id, version, blob = conn.execute(
            "SELECT kind, id, version, blob FROM records WHERE kind='config' AND id='audit-key'"
        ).fetchone()
    RecordCipher(srk).open(kind, id, version, blob)  # raises unless this is the SRK
    return srk


def test_a_new_cpu_without_recovery_refuses_to_start_and_says_why(inst: Installation) -> None:
    data_dir = new_machine(inst, "b-plain")
    with pytest.raises(SealingError, match="--recovery"):
        serve(data_dir).stop()


def test_hostile_host_and_the_recovery(inst: Installation) -> None:
    recorder = Recorder()
    with recording_logs(recorder):
        _host_swaps_shares_then_recovery(inst, recorder)


def _host_swaps_shares_then_recovery(inst: Installation, recorder: Recorder) -> None:
    # ---- 1. a set the host fabricated for a key of its own (an altered set fails the same
    # check: the origin quote binds the whole set body)
    origin = stored_origin(inst.data_dir / "kms.sqlite")
    # A set the host made itself (its own key, MAC and digests right, the genuine origin
    # quote copied over) with shares it could then submit: refused before any share.
    host_srk = os.urandom(32)
    fabricated = split(host_srk, THRESHOLD, [k.public_key() for k in inst.keys])
    forged_dir = new_machine(inst, "b-fabricated")
    blob = dataclasses.replace(fabricated, origin=origin).to_bytes()
    set_record(forged_dir / "kms.sqlite", blob)
    with pytest.raises(RecoveryError, match="not made by an enclave of this signer"):
        serve(forged_dir, recorder, recovery=True).stop()

    # ---- 2. the genuine store: an officer's submission to a first session, never used
    data_dir = new_machine(inst, "b")
    with running(data_dir, recorder, recovery=True) as b, inst.client(b.url) as client:
        replayable = sealed_submission(inst, client, 0)

    # ---- 3. a new session on the same machine
    with running(data_dir, recorder, recovery=True) as b, inst.client(b.url) as client:
        with http(b.url, inst.token) as c:
            fails(c.get("/v1/keys/orders"), 503, "recovery_in_progress")
            # A submission replayed from the earlier session does not open here.
            message = fails(
                c.post("/v1/sys/recovery/submit", json=replayable), 400, "recovery_share_invalid"
            )
            assert "another recovery session" in message
            # The host forges a share for officer 3, sealed to the (public) session key.
            doc = ok(c.get("/v1/sys/recovery"))
            forged = wire.SUITE.encrypt(
                wire.encode_submission(bytes.fromhex(doc["set_id"]), 3, b"forged " * 20),
                x25519.X25519PublicKey.from_public_bytes(unb64(doc["session_key"])),
                info=wire.submit_info(bytes.fromhex(doc["session_id"])),
            )
            body = {"session_id": doc["session_id"], "sealed": b64(forged)}
            fails(c.post("/v1/sys/recovery/submit", json=body), 400, "recovery_share_invalid")
            # The host answers the status with its own session key (to open the next share
            # itself), or another session id, or without the evidence: the officer's
            # appraisal refuses each before any share is opened.
            genuine = officer_sdk.status(client)
            assert isinstance(genuine, RecoveryProgress)
            host_key = wire.raw_public(x25519.X25519PrivateKey.generate().public_key())
            for tampered in (
                dataclasses.replace(genuine, session_key=host_key),
                dataclasses.replace(genuine, session_id=os.urandom(16).hex()),
            ):
                with pytest.raises(PolicyError, match="report_data"):
                    officer_sdk.appraise_session(client, tampered)
            with pytest.raises(ServerError, match="no evidence"):
                officer_sdk.appraise_session(client, dataclasses.replace(genuine, quote=None))
            assert officer_sdk.appraise_session(client, genuine)[1] == genuine.session_key
            # Officer 0 through the CLI: k-1 shares restore nothing.
            done = cli(
                inst,
                b.url,
                *("recovery", "submit", "--key", str(inst.key_paths[0])),
                *("--share", str(inst.shares[0])),
            )
            assert "1 more share" in done.stdout
            fails(c.get("/v1/keys/orders"), 503, "recovery_in_progress")
            status = ok(c.get("/v1/sys/recovery"))
            assert status["needed"] == 1
            # The same officer's share again (a replay inside the session): refused.
            again = sealed_submission(inst, client, 0)
            fails(c.post("/v1/sys/recovery/submit", json=again), 409, "recovery_share_duplicate")
            # Officer 2 through the SDK: the k-th share restores the SRK.
            final = officer_sdk.submit_share(client, inst.share(2), inst.keys[2])
            assert final.state == "restored"
            assert final.needed == 0
            assert [(e.op, e.outcome) for e in final.events][-1] == ("recovery.restore", "ok")
            # The old data is served, with the old token.
            answer = ok(c.post("/v1/keys/orders/decrypt", json={"ciphertext": inst.ciphertext}))
            assert unb64(answer["plaintext"]) == inst.plaintext
            assert ok(c.get("/v1/sys/recovery"))["state"] == "ready"
        # Every step is in the installation's audit chain, which still verifies.
        with closing(sqlite3.connect(data_dir / "kms.sqlite")) as conn:
            records = [
                bytes(r)
                for (r,) in conn.execute("SELECT record FROM audit WHERE chain=0 ORDER BY seq")
            ]
        verify_chain(records)
        steps = [
            (body["op"], body["outcome"])
            for body in (cbor2.loads(cbor2.loads(r)[0]) for r in records)
            if body["op"].startswith("recovery.")
        ]
        assert steps == [
            ("recovery.start", "ok"),
            ("recovery.submit", "recovery_share_invalid"),  # the replay from another session
            ("recovery.submit", "recovery_share_invalid"),  # the forgery
            ("recovery.submit", "ok"),
            ("recovery.submit", "recovery_share_duplicate"),
            ("recovery.submit", "ok"),
            ("recovery.restore", "ok"),
        ]

    # ---- 4. B sealed the SRK to its own CPU: a plain restart serves
    with running(data_dir, recorder) as b2, http(b2.url, inst.token) as c:
        answer = ok(c.post("/v1/keys/orders/decrypt", json={"ciphertext": inst.ciphertext}))
        assert unb64(answer["plaintext"]) == inst.plaintext

    # ---- 5. neither the SRK nor a share crossed the boundary or reached a host file
    srk = reconstructed_srk(inst)
    needles = Needles()
    needles.add("storage root key", srk)
    for i in range(OFFICERS):
        needles.add(f"share of officer {i}", inst.share(i).open(inst.keys[i]))
    frames, lines = recorder.snapshot()
    assert frames
    haystacks = [(f"EDL frame {i} ({d})", w) for i, (d, w) in enumerate(frames)]
    haystacks.append(("enclave stderr and host logs", "\n".join(lines).encode()))
    for directory in (inst.data_dir, forged_dir, data_dir):
        for path in sorted(directory.glob("kms.sqlite*")):
            haystacks.append((f"{directory.name}/{path.name}", path.read_bytes()))
    assert needles.found_in(haystacks) == []
    controls = Needles()
    controls.add("the recovery set id", bytes.fromhex(inst.share(0).set_id))
    assert controls.found_in(haystacks)  # the search does read those bytes


def test_officers_refuse_a_recovering_enclave_of_another_build(inst: Installation) -> None:
    # Same signer and product (so it accepts the stored set), another build: another
    # MRENCLAVE, which the officers' policy does not allow.
    data_dir = new_machine(inst, "c")
    other = ensure_image(
        data_dir / "other-image", data_dir / "signer.pem", EnclaveConfig(heap_size=128 * MiB)
    )
    assert other.mr_enclave.hex() != inst.policy.mr_enclave[0].hex()
    with running(data_dir, recovery=True, image=data_dir / "other-image") as c:
        assert c.identity["recovery"] is True
        done = cli(
            inst,
            c.url,
            *("recovery", "submit", "--key", str(inst.key_paths[0])),
            *("--share", str(inst.shares[0])),
            check=False,
        )
        assert done.returncode == 4, done.stdout + done.stderr  # policy not met
        assert "mr_enclave" in done.stderr
        with http(c.url) as raw:
            status = ok(raw.get("/v1/sys/recovery"))
        assert status["accepted"] == []
        assert status["needed"] == THRESHOLD
    # Another signer's build does not even enter recovery: the set is not its product's.
    foreign = new_machine(inst, "d", same_signer=False)
    with pytest.raises(RecoveryError, match="not made by an enclave of this signer"):
        serve(foreign, recovery=True).stop()
