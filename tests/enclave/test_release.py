"""Key release over the real API (DESIGN §15): real simulated SGX and TDX quotes bound to a
nonce and an HPKE recipient key, appraised against the key's release policy; every refusal
typed and audited, from the positions of a workload, a replaying host and a token holder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from enclave_kms.attestation.types import Collateral, spki_sha256
from enclave_kms.client.release import Recipient, ReleaseAnswer
from enclave_kms.enclave.keys.release import RELEASE_CLAIM, ReleaseService
from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.errors import CryptoOperationError
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.pcs import TcbScenario
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.tdx import TdIdentity, td_attributes
from enclave_kms.sgx.oe import CustomClaim, OeEvidence, serialize_custom_claims
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.report import AttributeFlags, Attributes
from enclave_kms.wire import release as release_wire
from tests.enclave.api_world import World, b64, make_world, unb64
from tests.sgx.vectors import QUOTE_VECTORS, read_quote_file

RELEASE = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 0x3)
DEBUG = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT | AttributeFlags.DEBUG, 0x3)
SIGNER = hashlib.sha256(b"workload signer").digest()
WORKLOAD = EnclaveIdentity(hashlib.sha256(b"workload").digest(), SIGNER, 7, 3, RELEASE)
TD = TdIdentity(mr_td=hashlib.sha384(b"workload TD image").digest())


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("release") / "platform")


def _collateral_for(platform: SimPlatform) -> Any:
    def get(quote: bytes) -> Collateral:
        now = datetime.now(UTC)
        try:
            tdx = parse_quote(quote).is_tdx
        except Exception:  # noqa: BLE001 - the appraisal reports the bad quote itself
            tdx = False
        return platform.tdx_collateral(now) if tdx else platform.collateral(now)

    return get


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, platform: SimPlatform) -> Iterator[World]:
    w = make_world(Path(tmp_path_factory.mktemp("release-api")))
    assert w.store is not None
    w.ctx.release = ReleaseService(w.store, w.ctx.kms, _collateral_for(platform))
    with w.client:
        for name, exportable in (("db", True), ("sealed", False), ("td-key", True)):
            r = w.post("/v1/keys", {"name": name, "exportable": exportable})
            assert r.status_code == 201, r.text
        yield w
    w.storage.close()


def _root(platform: SimPlatform) -> str:
    return spki_sha256(platform.trust_root().certificate)


def sgx_policy(platform: SimPlatform, **extra: str) -> str:
    lines = [
        f'mr_enclave = ["{WORKLOAD.mr_enclave.hex()}"]',
        f'mr_signer = "{SIGNER.hex()}"',
        "isv_prod_id = 7",
        "min_isv_svn = 3",
        f'simulated_root = "{_root(platform)}"',
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def set_policy(world: World, name: str, toml: str, *, immutable: bool = False) -> Any:
    return world.client.put(
        f"/v1/keys/{name}/release-policy",
        json={"policy_toml": toml, "immutable": immutable},
        headers=world.auth,
    )


def nonce(world: World, token: str | None = None) -> bytes:
    r = world.post("/v1/release/nonce", token=token)
    assert r.status_code == 200, r.text
    return unb64(r.json()["nonce"])


def ask(
    world: World,
    name: str,
    evidence: bytes,
    n: bytes,
    recipient: Recipient,
    operation: str = "export",
    token: str | None = None,
    **extra: Any,
) -> Any:
    body = {
        "operation": operation,
        "nonce": b64(n),
        "evidence": b64(evidence),
        "recipient_public_key": b64(recipient.public_key),
        **extra,
    }
    return world.post(f"/v1/keys/{name}/release", body, token=token)


def answer(doc: dict[str, Any], n: bytes) -> ReleaseAnswer:
    return ReleaseAnswer.parse(doc, n)


def sgx_evidence(
    platform: SimPlatform, n: bytes, recipient: Recipient, who: Any = WORKLOAD
) -> bytes:
    return platform.quote(who, recipient.report_data(n))


def last_audit(world: World) -> dict[str, Any]:
    return world.audit_events()[-1]


@pytest.fixture(scope="module", autouse=True)
def policies(world: World, platform: SimPlatform) -> None:
    assert set_policy(world, "db", sgx_policy(platform)).status_code == 200
    assert set_policy(world, "sealed", sgx_policy(platform)).status_code == 200
    td = f'mr_td = ["{TD.mr_td.hex()}"]\nsimulated_root = "{_root(platform)}"\n'
    assert set_policy(world, "td-key", td).status_code == 200


# ------------------------------------------------------------------------ releases


def test_export_to_an_attested_sgx_workload(world: World, platform: SimPlatform) -> None:
    recipient, n = Recipient.generate(), nonce(world)
    r = ask(world, "db", sgx_evidence(platform, n, recipient), n, recipient)
    assert r.status_code == 200, r.text
    doc = r.json()
    event = last_audit(world)
    assert (event["op"], event["outcome"], event["target"]) == ("release", "ok", "db")
    assert WORKLOAD.mr_enclave.hex() in event["detail"]
    assert SIGNER.hex() in event["detail"]
    assert "policy=rev1:" in event["detail"]
    material = recipient.open(answer(doc, n))
    exported = world.client.get("/v1/keys/db/export", headers=world.auth).json()
    assert material == unb64(exported["material"])
    assert material not in r.content
    assert b64(material).encode() not in r.content
    with pytest.raises(CryptoOperationError):  # another recipient key cannot open it
        Recipient.generate().open(answer(doc, n))
    with pytest.raises(CryptoOperationError):  # nor can it be passed off as another request
        recipient.open(answer({**doc, "operation": "datakey"}, n))


def test_decrypt_and_datakey_for_a_td(world: World, platform: SimPlatform) -> None:
    ct = world.post("/v1/keys/td-key/encrypt", {"plaintext": b64(b"row 17")}).json()["ciphertext"]
    recipient, n = Recipient.generate(), nonce(world)
    quote = platform.td_quote(TD, recipient.report_data(n))
    r = ask(world, "td-key", quote, n, recipient, "decrypt", ciphertext=ct)
    assert r.status_code == 200, r.text
    assert recipient.open(answer(r.json(), n)) == b"row 17"
    assert TD.mr_td.hex() in last_audit(world)["detail"]

    recipient, n = Recipient.generate(), nonce(world)
    quote = platform.td_quote(TD, recipient.report_data(n))
    r = ask(world, "td-key", quote, n, recipient, "datakey")
    assert r.status_code == 200, r.text
    data_key = recipient.open(answer(r.json(), n))
    back = world.post("/v1/keys/td-key/decrypt", {"ciphertext": r.json()["ciphertext"]})
    assert unb64(back.json()["plaintext"]) == data_key
    assert len(data_key) == 32


def test_open_enclave_evidence_binds_through_its_claim(world: World, platform: SimPlatform) -> None:
    recipient, n = Recipient.generate(), nonce(world)
    binding = release_wire.binding(n, recipient.public_key)
    claims = serialize_custom_claims([CustomClaim(RELEASE_CLAIM, binding)])
    quote = platform.quote(WORKLOAD, hashlib.sha256(claims).digest() + bytes(32))
    evidence = OeEvidence(parse_quote(quote), claims).to_bytes()
    r = ask(world, "db", evidence, n, recipient, evidence_form="oe-evidence")
    assert r.status_code == 200, r.text
    assert len(recipient.open(answer(r.json(), n))) == 32

    other, n = Recipient.generate(), nonce(world)  # a claim for another key: refused
    claims = serialize_custom_claims([CustomClaim(RELEASE_CLAIM, binding)])
    quote = platform.quote(WORKLOAD, hashlib.sha256(claims).digest() + bytes(32))
    evidence = OeEvidence(parse_quote(quote), claims).to_bytes()
    r = ask(world, "db", evidence, n, other, evidence_form="oe-evidence")
    assert (r.status_code, r.json()["error"]["code"]) == (403, "evidence_refused")


# ------------------------------------------------------------------------ refusals


def refused(r: Any, code: str) -> str:
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == code, r.text
    return str(r.json()["error"]["message"])


def test_replayed_evidence_is_refused(world: World, platform: SimPlatform) -> None:
    recipient, n = Recipient.generate(), nonce(world)
    evidence = sgx_evidence(platform, n, recipient)
    assert ask(world, "db", evidence, n, recipient).status_code == 200
    refused(ask(world, "db", evidence, n, recipient), "nonce_invalid")  # same nonce again
    fresh = nonce(world)  # a host replaying old evidence under a new nonce
    refused(ask(world, "db", evidence, fresh, recipient), "evidence_refused")
    assert "step=binding" in last_audit(world)["detail"]
    refused(ask(world, "db", evidence, bytes(32), recipient), "nonce_invalid")  # never issued


def test_evidence_binding_another_key_is_refused(world: World, platform: SimPlatform) -> None:
    mine, attacker, n = Recipient.generate(), Recipient.generate(), nonce(world)
    evidence = sgx_evidence(platform, n, mine)
    message = refused(ask(world, "db", evidence, n, attacker), "evidence_refused")
    assert "bind" in message


@pytest.mark.parametrize(
    ("who", "needle"),
    [
        (EnclaveIdentity(hashlib.sha256(b"other").digest(), SIGNER, 7, 3, RELEASE), "mr_enclave"),
        (EnclaveIdentity(WORKLOAD.mr_enclave, SIGNER, 7, 2, RELEASE), "isv_svn"),
        (EnclaveIdentity(WORKLOAD.mr_enclave, SIGNER, 7, 3, DEBUG), "debug"),
    ],
    ids=["wrong-measurement", "low-svn", "debug-workload"],
)
def test_workloads_the_policy_does_not_name(
    world: World, platform: SimPlatform, who: EnclaveIdentity, needle: str
) -> None:
    recipient, n = Recipient.generate(), nonce(world)
    message = refused(
        ask(world, "db", sgx_evidence(platform, n, recipient, who), n, recipient),
        "release_policy_not_met",
    )
    assert needle in message
    event = last_audit(world)
    assert event["outcome"] == "release_policy_not_met"
    assert who.mr_enclave.hex() in event["detail"]


def test_debug_td_is_refused(world: World, platform: SimPlatform) -> None:
    recipient, n = Recipient.generate(), nonce(world)
    debug_td = TdIdentity(mr_td=TD.mr_td, attributes=td_attributes(debug=True))
    quote = platform.td_quote(debug_td, recipient.report_data(n))
    assert "debug" in refused(ask(world, "td-key", quote, n, recipient), "release_policy_not_met")


def test_out_of_date_tcb_is_refused(world: World, platform: SimPlatform) -> None:
    platform.set_tcb_scenario(TcbScenario.OUT_OF_DATE)
    try:
        recipient, n = Recipient.generate(), nonce(world)
        r = ask(world, "db", sgx_evidence(platform, n, recipient), n, recipient)
        assert "OutOfDate" in refused(r, "release_policy_not_met")
    finally:
        platform.set_tcb_scenario(TcbScenario.UP_TO_DATE)


def test_real_public_quotes_are_refused(world: World) -> None:
    """Genuine Intel quotes (of other enclaves, made long ago for other report data): the
    KMS has no valid Intel collateral for them now and they bind no nonce."""
    for rel in ("phala-dcap-qvl/sgx_quote", "phala-dcap-qvl/tdx_quote"):
        vector = next(v for v in QUOTE_VECTORS if v.rel == rel)
        quote = read_quote_file(Path(__file__).parents[1] / "vectors" / "sgx" / vector.rel)
        recipient, n = Recipient.generate(), nonce(world)
        key = "td-key" if vector.tdx else "db"
        refused(ask(world, key, quote, n, recipient), "evidence_refused")
        assert "step=" in last_audit(world)["detail"]
    refused(ask(world, "db", b"not a quote", nonce(world), recipient), "evidence_refused")


def test_no_policy_no_release_and_grants_are_needed(world: World, platform: SimPlatform) -> None:
    assert world.post("/v1/keys", {"name": "bare", "exportable": True}).status_code == 201
    recipient, n = Recipient.generate(), nonce(world)
    r = ask(world, "bare", sgx_evidence(platform, n, recipient), n, recipient)
    refused(r, "no_release_policy")
    encrypter = world.token(["encrypt", "keys.export"], ["*"])  # no release grant
    assert world.post("/v1/release/nonce", token=encrypter).status_code == 403
    scoped = world.token(["release"], ["other-*"])  # release, but not on db
    n = nonce(world, scoped)
    r = ask(world, "db", sgx_evidence(platform, n, recipient), n, recipient, token=scoped)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    exporter = world.token(["release"], ["sealed"])  # policy met, but not exportable
    n = nonce(world, exporter)
    r = ask(world, "sealed", sgx_evidence(platform, n, recipient), n, recipient, token=exporter)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "key_state")


# ------------------------------------------------------------------------ policies


def test_policy_shown_in_metadata_and_audited(world: World, platform: SimPlatform) -> None:
    key = world.client.get("/v1/keys/db", headers=world.auth).json()
    assert key["release_policy"]["revision"] >= 1
    assert WORKLOAD.mr_enclave.hex() in key["release_policy"]["policy_toml"]
    got = world.client.get("/v1/keys/db/release-policy", headers=world.auth).json()
    assert got["release_policy"] == key["release_policy"]
    for bad in ("any_enclave_unsafe = true\n", 'mr_enclave = ["zz"]\n', "allow_debug = true\n"):
        r = set_policy(world, "db", bad)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request"), bad


def test_immutable_policy_is_only_tightened(world: World, platform: SimPlatform) -> None:
    assert world.post("/v1/keys", {"name": "frozen", "exportable": True}).status_code == 201
    base = sgx_policy(platform, rejected_advisories='["INTEL-SA-00001"]')
    assert set_policy(world, "frozen", base, immutable=True).status_code == 200
    loosen = [
        sgx_policy(platform).replace("min_isv_svn = 3", "min_isv_svn = 2"),
        sgx_policy(platform, allow_debug="true"),
        sgx_policy(platform, accepted_tcb_statuses='["UpToDate", "OutOfDate"]'),
        sgx_policy(platform),  # drops a rejected advisory
        sgx_policy(platform).replace("mr_enclave = [", f'mr_enclave = ["{"11" * 32}", '),
        sgx_policy(platform).replace(_root(platform), "22" * 32),
    ]
    for toml in loosen:
        r = set_policy(world, "frozen", toml)
        assert r.status_code == 409, toml
        assert r.json()["error"]["code"] == "release_policy_immutable"
    tighter = base.replace("min_isv_svn = 3", "min_isv_svn = 4")
    r = set_policy(world, "frozen", tighter, immutable=False)  # immutable is one-way
    assert r.status_code == 200
    assert r.json()["release_policy"]["immutable"] is True
    assert r.json()["release_policy"]["revision"] == 2
    event = last_audit(world)
    assert (event["op"], event["detail"]) == ("release.policy.set", "policy=rev2:immutable set")
    recipient, n = Recipient.generate(), nonce(world)  # svn 3 no longer meets it
    r = ask(world, "frozen", sgx_evidence(platform, n, recipient), n, recipient)
    assert "isv_svn" in refused(r, "release_policy_not_met")


def test_the_audit_chain_with_release_details_verifies(world: World, platform: SimPlatform) -> None:
    recipient, n = Recipient.generate(), nonce(world)
    assert ask(world, "db", sgx_evidence(platform, n, recipient), n, recipient).status_code == 200
    refused(ask(world, "db", b"garbage", nonce(world), recipient), "evidence_refused")
    verified = verify_chain(world.storage.audit_records())
    assert verified is not None
    decided = {"ok", "evidence_refused", "release_policy_not_met", "no_release_policy"}
    events = [e for e in world.audit_events() if e["op"] == "release"]
    details = [e.get("detail", "") for e in events if e["outcome"] in decided]
    assert len(details) >= 2
    assert all("policy=" in d for d in details)
    # a nonce refusal comes before the policy is read: it still names the request's operation
    assert all(e.get("detail") for e in events if e["outcome"] == "nonce_invalid")


# ------------------------------------------------------------------------ nonce quota


def test_a_token_flooding_nonces_evicts_only_its_own(
    world: World, platform: SimPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token holder who asks for nonces without end cannot push other workloads' nonces
    out of the worker's book: past its quota it loses its own oldest, and the other
    workload's release still goes through. (The book's bound is lowered to a size this test
    can fill; without the per-token quota the flood would evict the other nonce.)"""
    from enclave_kms.enclave.keys.release import MAX_NONCES_PER_TOKEN

    service = world.ctx.release
    assert service is not None
    monkeypatch.setattr(service.nonces, "_limit", MAX_NONCES_PER_TOKEN + 8)
    issued = world.post(
        "/v1/tokens", {"name": "flood", "policies": [{"operations": ["release"], "keys": ["db"]}]}
    )
    assert issued.status_code == 201, issued.text
    flooder, flooder_id = issued.json()["token"], issued.json()["info"]["id"]
    recipient, theirs = Recipient.generate(), nonce(world)  # another workload's, issued first
    first = nonce(world, flooder)
    for _ in range(3 * MAX_NONCES_PER_TOKEN):
        nonce(world, flooder)
    assert service.nonces.outstanding(flooder_id) == MAX_NONCES_PER_TOKEN
    evidence = sgx_evidence(platform, first, recipient)
    refused(ask(world, "db", evidence, first, recipient, token=flooder), "nonce_invalid")
    r = ask(world, "db", sgx_evidence(platform, theirs, recipient), theirs, recipient)
    assert r.status_code == 200, r.text
    assert recipient.open(answer(r.json(), theirs))


def test_nonce_book_quota_expiry_and_global_bound() -> None:
    from datetime import UTC, datetime, timedelta

    from enclave_kms.enclave.keys.release import NonceBook
    from enclave_kms.errors import NonceError

    now = [datetime(2026, 12, 3, tzinfo=UTC)]
    book = NonceBook(lambda: now[0], ttl=timedelta(minutes=5), limit=6, per_owner=3)
    a = [book.issue("a")[0] for _ in range(4)]  # a's fourth pushes out a's first (quota)
    b = [book.issue("b")[0] for _ in range(3)]
    book.issue("c")  # the book is full: the oldest of all goes (a's second)
    assert [book.outstanding(o) for o in (None, "a", "b", "c")] == [6, 2, 3, 1]
    for gone in a[:2]:
        with pytest.raises(NonceError, match="unknown or already used"):
            book.redeem(gone)
    book.redeem(a[2])
    book.redeem(b[0])
    with pytest.raises(NonceError):
        book.redeem(b[0])  # single use
    assert [book.outstanding(o) for o in (None, "a", "b")] == [4, 1, 2]
    now[0] += timedelta(minutes=5)
    with pytest.raises(NonceError, match="expired"):
        book.redeem(a[3])
    book.issue("d")  # expired nonces leave the book, and their owners with them
    assert [book.outstanding(o) for o in (None, "a", "b", "c", "d")] == [1, 0, 0, 0, 1]
