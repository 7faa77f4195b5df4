"""The SDK refuses untrustworthy servers before any request leaves, each with its own error.

Every case is a real HTTPS server with a crafted RA-TLS certificate and real simulated DCAP
evidence; the client is asked to encrypt, and the test checks both the exception and that the
encrypt request never reached the server.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.client import AsyncKMSClient, KMSClient
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    CollateralExpiredError,
    EnclaveKMSError,
    PolicyError,
    SimulatedRootError,
)
from enclave_kms.platform.sim.pcs import TcbScenario
from tests.client.fakes import OTHER_MR_ENCLAVE, Behaviour, FakeServer, World, identity, spki


@dataclass(frozen=True)
class Case:
    name: str
    server: Callable[[World], FakeServer]
    policy: Callable[[World], Policy]
    trust_root: bool
    error: type[EnclaveKMSError]
    says: str  # a fragment of the message, or the step for attestation errors
    reaches_liveness: bool  # whether the client got as far as asking for a fresh answer


CASES = [
    Case(
        "mrenclave-not-in-policy",
        lambda w: FakeServer(w, identity(mr_enclave=OTHER_MR_ENCLAVE)),
        lambda w: w.policy(),
        True,
        PolicyError,
        f"mr_enclave {OTHER_MR_ENCLAVE.hex()} is not one of the accepted values",
        True,
    ),
    Case(
        "debug-enclave-pinned-policy",
        lambda w: FakeServer(w, identity(debug=True)),
        lambda w: w.policy(),  # pins the identity; debug is refused unless allowed
        True,
        PolicyError,
        "debug: the enclave is a debug enclave",
        True,
    ),
    Case(
        "simulated-root-not-named-by-policy",
        lambda w: FakeServer(w, identity()),
        lambda w: w.policy(simulated_root=None),
        True,
        PolicyError,
        "is not named by the policy",
        True,
    ),
    Case(
        "simulated-root-not-trusted",
        lambda w: FakeServer(w, identity()),
        lambda w: w.policy(),
        False,
        SimulatedRootError,
        "trust_root",
        True,
    ),
    Case(
        "certificate-without-evidence",
        lambda w: FakeServer(w, None),
        lambda w: w.policy(),
        True,
        AttestationError,
        "ratls_evidence",
        False,
    ),
    Case(
        "evidence-binds-another-key",
        lambda w: FakeServer(w, identity(), bound_key=ec.generate_private_key(ec.SECP256R1())),
        lambda w: w.policy(),
        True,
        BindingError,
        "ratls_binding",
        False,
    ),
    Case(
        "replayed-nonce-answer",
        lambda w: FakeServer(w, identity(), Behaviour(answer="replay")),
        lambda w: w.policy(),
        True,
        BindingError,
        "liveness",
        True,
    ),
    Case(
        "expired-collateral",
        lambda w: FakeServer(w, identity(), Behaviour(collateral_age=timedelta(days=60))),
        lambda w: w.policy(),
        True,
        CollateralExpiredError,
        "root_ca_crl",  # the first expired piece the verifier meets
        True,
    ),
    Case(
        "tcb-status-not-accepted",
        lambda w: FakeServer(w, identity(), Behaviour(scenario=TcbScenario.SW_HARDENING_NEEDED)),
        lambda w: w.policy(),
        True,
        PolicyError,
        "tcb_status SWHardeningNeeded is not accepted",
        True,
    ),
]


def _check(exc: EnclaveKMSError, case: Case) -> None:
    assert type(exc) is case.error, f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AttestationError):
        assert exc.step == case.says, exc.message
    else:
        assert case.says in exc.message


def _only_attestation(fake: FakeServer, case: Case) -> None:
    expected = [("GET", "/v1/attestation")] if case.reaches_liveness else []
    assert fake.requests == expected  # the encrypt request never left the client


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sync_client_refuses(world: World, case: Case) -> None:
    with case.server(world) as fake:
        kms = KMSClient(
            fake.url,
            token="ekms_0_secret",
            policy=case.policy(world),
            trust_root=world.root if case.trust_root else None,
        )
        with pytest.raises(EnclaveKMSError) as caught:
            kms.encrypt("orders", b"card 4111")
        _check(caught.value, case)
        _only_attestation(fake, case)
        assert kms.server is None  # nothing was pinned


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_async_client_refuses(world: World, case: Case) -> None:
    async def attempt() -> EnclaveKMSError:
        kms = AsyncKMSClient(
            fake.url,
            token="ekms_0_secret",
            policy=case.policy(world),
            trust_root=world.root if case.trust_root else None,
        )
        try:
            await kms.encrypt("orders", b"card 4111")
        except EnclaveKMSError as exc:
            return exc
        finally:
            await kms.close()
        raise AssertionError("the client trusted the server")

    with case.server(world) as fake:
        _check(asyncio.run(attempt()), case)
        _only_attestation(fake, case)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ("other-enclave", "another enclave"),
        ("other-key", "another TLS key"),
    ],
)
def test_liveness_answer_must_match_the_certificate(world: World, answer: str, says: str) -> None:
    with FakeServer(world, identity(), Behaviour(answer=answer)) as fake:
        kms = KMSClient(fake.url, policy=world.policy(), trust_root=world.root)
        with pytest.raises(BindingError) as caught:
            kms.connect()
    assert caught.value.step == "liveness"
    assert says in caught.value.message


def test_the_policy_decides_which_tcb_statuses_pass(world: World) -> None:
    behaviour = Behaviour(scenario=TcbScenario.SW_HARDENING_NEEDED)
    accepting = world.policy(
        accepted_tcb_statuses=(TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED)
    )
    with FakeServer(world, identity(), behaviour) as fake:
        server = KMSClient(fake.url, policy=accepting, trust_root=world.root).connect()
    assert server.verified.tcb_status is TcbStatus.SW_HARDENING_NEEDED
    assert server.verified.advisory_ids == ("INTEL-SA-SIMULATED",)
    rejecting = world.policy(
        accepted_tcb_statuses=(TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED),
        rejected_advisories=("INTEL-SA-SIMULATED",),
    )
    with FakeServer(world, identity(), behaviour) as fake, pytest.raises(PolicyError) as caught:
        KMSClient(fake.url, policy=rejecting, trust_root=world.root).connect()
    assert caught.value.violations == ("advisory INTEL-SA-SIMULATED is rejected by the policy",)


def test_a_debug_enclave_passes_only_when_the_policy_allows_it(world: World) -> None:
    with FakeServer(world, identity(debug=True)) as fake:
        server = KMSClient(
            fake.url, policy=world.policy(allow_debug=True), trust_root=world.root
        ).connect()
    assert server.verified.debug
    assert server.summary()["debug"] is True


def test_every_violation_is_reported_at_once(world: World) -> None:
    behaviour = Behaviour(scenario=TcbScenario.OUT_OF_DATE)
    with (
        FakeServer(world, identity(mr_enclave=OTHER_MR_ENCLAVE, debug=True), behaviour) as fake,
        pytest.raises(PolicyError) as caught,
    ):
        KMSClient(fake.url, policy=world.policy(), trust_root=world.root).connect()
    text = " | ".join(caught.value.violations)
    assert len(caught.value.violations) == 3, text
    assert "mr_enclave" in text
    assert "debug" in text
    assert "tcb_status OutOfDate" in text


def test_a_good_server_is_attested_and_pinned(world: World) -> None:
    policy = world.policy()
    with (
        FakeServer(world, identity()) as fake,
        KMSClient(fake.url, token="ekms_0_secret", policy=policy, trust_root=world.root) as kms,
    ):
        server = kms.server
        assert server is not None
        assert server.certificate.der == fake.cert.public_bytes(serialization.Encoding.DER)
        assert server.spki_sha256 == hashlib.sha256(spki(fake.key)).digest()
        assert kms.decrypt("orders", kms.encrypt("orders", b"card")) == b"card"
        assert server.simulated
        assert server.summary()["mr_enclave"] == identity().mr_enclave.hex()
        assert server.enclave_info().binds_held_data()
    assert fake.requests.count(("GET", "/v1/attestation")) == 1  # once per key, not per request


def test_collateral_from_a_pccs_replaces_the_servers(world: World) -> None:
    """With a collateral source, what the server ships is ignored: here it claims OutOfDate,
    the PCCS says UpToDate, and the PCCS's answer is the one verified."""
    import httpx

    from enclave_kms.attestation.sources import PccsClient
    from enclave_kms.platform.sim.pcs import SimPcs

    pcs = SimPcs(world.platform.pki, world.platform.config.tcb, world.platform.config.qe_identity)
    responses = {r.path: r for r in pcs.pcs_responses(datetime.now(UTC))}
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        asked.append(path)
        found = responses[path]
        return httpx.Response(200, content=found.body, headers=found.headers)

    pccs = PccsClient("https://pccs.example:8081", transport=httpx.MockTransport(handler))
    behaviour = Behaviour(scenario=TcbScenario.OUT_OF_DATE)
    with FakeServer(world, identity(), behaviour) as fake:
        server = KMSClient(
            fake.url, policy=world.policy(), trust_root=world.root, collateral_source=pccs
        ).connect()
        assert server.verified.tcb_status is TcbStatus.UP_TO_DATE
        with pytest.raises(PolicyError, match="OutOfDate"):
            KMSClient(fake.url, policy=world.policy(), trust_root=world.root).connect()
    assert any(p.startswith("/sgx/certification/v4/tcb?fmspc=") for p in asked)
