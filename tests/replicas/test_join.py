"""Join by mutual attestation and the sealing migration, with real processes: replica A on
simulated CPU A initializes the installation; B on CPU B (same simulated root) joins it over
A's RA-TLS server; an upgraded build (ISVSVN bump, then a CPUSVN change under Gramine's seal
rule) migrates the storage root key from the running A. From the hostile host's position:
replayed and swapped join messages, joiners outside the replica policy, a tampered sealed
copy, and a scan of everything the hosts and the database saw for the root key's bytes.

One world per module (servers cost seconds); the tests run in file order and build on it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from enclave_kms.attestation.collateral import collateral_to_json
from enclave_kms.enclave.custody import handover
from enclave_kms.enclave.custody.appraiser import QuoteAppraiser
from enclave_kms.enclave.custody.joiner import SRK_AAD, join_peer
from enclave_kms.errors import JoinRefusedError, SealingError, SealKeyChangedError
from enclave_kms.host.service import Running
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.loader import LoadedImage
from enclave_kms.platform.sim.platform import SealRule, SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes
from tests.e2e.conftest import Recorder, fails, ok, recording_logs
from tests.e2e.test_no_secrets import forms
from tests.replicas.world import World, init_admin, new_world, upgraded_image

SECRET = b"written on A before any replica existed"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with recording_logs(Recorder()) as recorder:
        w = new_world(tmp_path_factory.mktemp("replicas"), recorder)
        try:
            a = w.serve("a", w.cpu_a)
            init_admin(w, a)
            with w.client(a) as c:
                ok(c.post("/v1/keys", json={"name": "shared"}), 201)
                body = {"plaintext": base64.b64encode(SECRET).decode()}
                w.ciphertext = ok(c.post("/v1/keys/shared/encrypt", json=body))["ciphertext"]
            yield w
        finally:
            for running in list(w.servers):
                w.stop(running)


def peer(world: World) -> Running:
    return world.servers[0]  # A, for the whole module


def decrypts(world: World, running: Running) -> bool:
    body = {"ciphertext": world.ciphertext}
    with world.client(running) as c:
        answer = c.post("/v1/keys/shared/decrypt", json=body)
    return answer.status_code == 200 and base64.b64decode(answer.json()["plaintext"]) == SECRET


def forged_join(
    world: World, identity: EnclaveIdentity, *, bind: bytes | None = None
) -> tuple[httpx.Response, dict[str, Any]]:
    """A join as a hostile host with a genuine CPU B could send it: a real quote for
    `identity` (the test plays the CPU), bound to `bind` instead of the sent key if given."""
    with world.client(peer(world), anonymous=True) as c:
        challenge = bytes.fromhex(ok(c.post(handover.CHALLENGE_PATH))["challenge"])
        _key, public = handover.new_join_key()
        binding = handover.request_binding(challenge, bind or public)
        quote = world.cpu_b.quote(identity, binding)
        body = handover.JoinRequest(challenge, public, quote).to_json()
        return c.post(handover.JOIN_PATH, json=body), body


def refusals(world: World) -> list[str]:
    return [t for op, t, outcome in world.audit_ops() if outcome == "join_refused"]


# --------------------------------------------------------------------------- the peer refuses


def test_joiners_outside_the_replica_policy_are_refused_and_audited(world: World) -> None:
    good = world.image.identity
    debug = Attributes(good.attributes.flags | AttributeFlags.DEBUG, good.attributes.xfrm)
    cases = {
        "wrong mr_enclave": replace(good, mr_enclave=os.urandom(32)),
        "low isv_svn": replace(good, isv_svn=good.isv_svn - 1),
        "debug": replace(good, attributes=debug),
        "other signer": replace(good, mr_signer=os.urandom(32)),
    }
    before = len(refusals(world))
    for what, identity in cases.items():
        answer, _ = forged_join(world, identity)
        message = fails(answer, 403, "join_refused")
        assert "policy_violation" in message, (what, message)
    audited = refusals(world)[before:]
    assert len(audited) == len(cases)
    assert audited[0].startswith(cases["wrong mr_enclave"].mr_enclave.hex()[:16])
    assert audited[1].endswith(f"isv_svn {good.isv_svn - 1}")


def test_swapped_evidence_and_replayed_messages_are_refused(world: World) -> None:
    good = world.image.identity
    # the host swaps in a genuine quote that binds another key than the one sent
    answer, _ = forged_join(world, good, bind=os.urandom(32))
    assert "report_data" in fails(answer, 403, "join_refused")
    # a genuine request is answered once; its replay is refused (single-use challenge)
    answer, body = forged_join(world, good)
    assert set(ok(answer)) == {"sealed_key", "quote"}
    with world.client(peer(world), anonymous=True) as c:
        assert "already used" in fails(c.post(handover.JOIN_PATH, json=body), 403, "join_refused")
        forged = dict(body, challenge=bytes(handover.CHALLENGE_SIZE).hex())
        assert "not issued" in fails(c.post(handover.JOIN_PATH, json=forged), 403, "join_refused")


def _joiner_side(world: World) -> tuple[QuoteAppraiser, EnclaveIdentity]:
    cpu = world.cpu_b
    appraiser = QuoteAppraiser(
        lambda _q: collateral_to_json(cpu.collateral(datetime.now(UTC))), cpu.trust_root()
    )
    return appraiser, world.image.identity


def test_the_joiner_verifies_the_peer_itself(world: World) -> None:
    """The joiner's enclave code against the real peer, with an honest and a hostile relay."""
    appraiser, identity = _joiner_side(world)
    backend = world.cpu_b.enclave(identity)

    def relay_via(tamper: bool) -> Any:
        def relay(path: str, body: dict[str, Any]) -> dict[str, Any]:
            with world.client(peer(world), anonymous=True) as c:
                doc: dict[str, Any] = ok(c.post(path, json=body))
            if tamper and path == handover.JOIN_PATH:  # a genuine peer quote over other bytes
                doc["quote"] = world.cpu_a.quote(identity, os.urandom(32)).hex()
            return doc

        return relay

    srk, _quote, _binding = join_peer(relay_via(False), appraiser, backend.get_quote, backend)
    assert srk == world.srk()
    with pytest.raises(JoinRefusedError, match="report_data"):
        join_peer(relay_via(True), appraiser, backend.get_quote, backend)


# --------------------------------------------------------------------------- a real replica


def _own_record(world: World, cpu_name: str) -> str:
    cpu = world.cpu_a if cpu_name == "a" else world.cpu_b
    return f"storage-root-key@{cpu.config.platform_instance_id.hex()[:16]}"


def test_a_replica_on_another_cpu_joins_and_finds_its_own_copy(world: World) -> None:
    """`replicas join` while A serves; then B serves from its own sealed copy (one server at
    a time on the store until replicas share it: docs/replicas.md)."""
    world.join_once("b", world.cpu_b, peer(world))
    own = world.record(_own_record(world, "b"))
    aad = SRK_AAD + b"@" + _own_record(world, "b").split("@")[1].encode()
    assert world.cpu_b.enclave(world.image.identity).unseal(own, aad) == world.srk()
    joined = [t for op, t, o in world.audit_ops() if op == "sys.replicas.join" and o == "ok"]
    assert joined[-1].startswith(world.image.identity.mr_enclave.hex()[:16])
    restart_peer(world, world.cpu_b)  # B on its own: its copy opens without --join
    assert decrypts(world, peer(world))
    restart_peer(world, world.cpu_a)  # and the original keeps working
    assert decrypts(world, peer(world))


def restart_peer(world: World, cpu: SimPlatform, image: LoadedImage | None = None) -> None:
    """Stop the running replica and serve `image` on `cpu` in its place."""
    world.stop(peer(world))
    world.serve(
        "a" if cpu is world.cpu_a and image is None else "peer-" + cpu.path.name, cpu, image=image
    )
    world.servers.insert(0, world.servers.pop())


def test_without_join_another_cpu_cannot_open_the_key(world: World) -> None:
    cpu_c = SimPlatform.init(world.root / "cpu-c", root_from=world.cpu_a)
    with pytest.raises(SealingError, match="--join"):
        world.serve("c", cpu_c)  # and it never creates a new root key over the existing one


def test_a_tampered_sealed_copy_fails_closed_and_a_rejoin_replaces_it(world: World) -> None:
    record = _own_record(world, "b")
    storage = SQLiteStorage(world.store)
    try:
        found = storage.get("identity", record)
        assert found is not None
        version, blob = found
        flipped = blob[:-1] + bytes([blob[-1] ^ 1])
        assert storage.put("identity", record, version, flipped)
    finally:
        storage.close()
    with pytest.raises(SealingError, match="authentication failed"):
        world.serve("b", world.cpu_b)
    world.join_once("b", world.cpu_b, peer(world))
    assert world.record(record) != flipped


def test_the_replica_policy_is_admin_only(world: World) -> None:
    with world.client(peer(world)) as c:
        policy = ok(c.get("/v1/sys/replica-policy"))
        assert policy["mr_enclave"] == [world.image.identity.mr_enclave.hex()]
        assert policy["min_isv_svn"] == world.image.identity.isv_svn
        narrow = ok(
            c.post(
                "/v1/tokens",
                json={"name": "app", "policies": [{"keys": ["*"], "operations": ["encrypt"]}]},
            ),
            201,
        )["token"]
        bad = dict(policy, mr_signer="00" * 31)
        assert fails(c.put("/v1/sys/replica-policy", json=bad), 400, "invalid_request")
    with httpx.Client(
        base_url=peer(world).url, verify=False, headers={"Authorization": f"Bearer {narrow}"}
    ) as app:
        fails(app.get("/v1/sys/replica-policy"), 403, "permission_denied")
        fails(app.put("/v1/sys/replica-policy", json=policy), 403, "permission_denied")
    ops = [(op, o) for op, _t, o in world.audit_ops() if op.startswith("sys.replica-policy")]
    assert ("sys.replica-policy.write", "permission_denied") in ops


# --------------------------------------------------------------------------- upgrades (issue 18)


def test_upgrade_under_gramines_seal_rule_migrates_from_the_running_old_version(
    world: World,
) -> None:
    world.cpu_a.set_seal_rule(SealRule.GRAMINE)  # read by enclaves started from now on
    new = upgraded_image(world, world.root / "build-v2", svn=world.image.identity.isv_svn + 1)
    with pytest.raises(SealKeyChangedError, match=r"ISVSVN 1 → 2"):
        world.serve("v2", world.cpu_a, image=new)
    # outside the replica policy until the admin allows the new build: refused and audited
    with pytest.raises(JoinRefusedError, match="policy_violation"):
        world.join_once("v2", world.cpu_a, peer(world), image=new)
    assert refusals(world)[-1].startswith(new.identity.mr_enclave.hex()[:16])
    with world.client(peer(world)) as c:
        policy = ok(c.get("/v1/sys/replica-policy"))
        policy["mr_enclave"].append(new.identity.mr_enclave.hex())
        policy["accepted_tcb_statuses"] = ["UpToDate", "OutOfDate"]  # for the CPUSVN step
        ok(c.put("/v1/sys/replica-policy", json=policy))
    world.join_once("v2", world.cpu_a, peer(world), image=new)
    restart_peer(world, world.cpu_a, new)  # the new version, sealed under its own key now
    assert decrypts(world, peer(world))

    # a microcode/TCB-recovery update on CPU A: every blob sealed there before is lost, the
    # old version there too; the key comes from the replica on CPU B
    cpu_svn = bytearray(world.cpu_a.config.cpu_svn)
    cpu_svn[0] += 1
    world.cpu_a.set_cpu_svn(bytes(cpu_svn))
    restart_peer(world, world.cpu_b)
    with pytest.raises(SealKeyChangedError, match="CPUSVN"):
        world.serve("v2", world.cpu_a, image=new)
    world.join_once("v2", world.cpu_a, peer(world), image=new)
    restart_peer(world, world.cpu_a, new)
    assert decrypts(world, peer(world))


def test_serve_join_starts_a_serving_replica_that_audits_its_origin(world: World) -> None:
    """`serve --join` (the last server start here: two servers then share one store, which
    the multi-replica work makes safe)."""
    cpu_c = SimPlatform.open(world.root / "cpu-c")
    c = world.serve("c", cpu_c, join=peer(world).url, image=peer(world).image)
    assert decrypts(world, c)
    joined = [t for op, t, o in world.audit_ops() if op == "sys.replicas.joined"]
    assert joined[-1].endswith("(unseal_failed)")


def test_the_root_key_never_reaches_a_host_or_the_database(world: World) -> None:
    srk = world.srk()
    frames, lines = world.recorder.snapshot()
    haystacks = [(f"frame {d}", w) for d, w in frames]
    haystacks += [("log", line.encode()) for line in lines]
    for path in sorted(world.root.rglob("*")):
        if path.is_file() and path.suffix not in {".pem", ".py", ".pyc"}:
            haystacks.append((str(path), path.read_bytes()))
    assert any(b"replica_join" in wire for _d, wire in frames), "the scan covers the join"
    leaks = [where for where, data in haystacks for needle in forms(srk) if needle in data]
    assert leaks == []
