"""After attestation the client trusts exactly the attested certificate; a swapped certificate
is re-attested before any request is re-sent, and refused unless it is attested too."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.client import AsyncKMSClient, KMSClient
from enclave_kms.errors import AttestationError, BindingError, EnclaveKMSError, PolicyError
from tests.client.fakes import OTHER_MR_ENCLAVE, FakeServer, World, identity

ENCRYPT = ("POST", "/v1/keys/orders/encrypt")
ATTEST = ("GET", "/v1/attestation")


def _client(world: World, fake: FakeServer) -> KMSClient:
    return KMSClient(fake.url, token="ekms_0_secret", policy=world.policy(), trust_root=world.root)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("swapped", "error", "step"),
    [
        ("no-evidence", AttestationError, "ratls_evidence"),
        ("evidence-of-another-key", BindingError, "ratls_binding"),
        ("another-enclave", PolicyError, None),
    ],
)
def test_a_swapped_certificate_that_is_not_attested_is_refused(
    world: World, swapped: str, error: type[EnclaveKMSError], step: str | None
) -> None:
    with FakeServer(world, identity()) as fake, _client(world, fake) as kms:
        first = kms.server
        assert first is not None
        assert kms.encrypt("orders", b"one").startswith("ekms:v1:")
        key = _new_key()
        if swapped == "no-evidence":
            fake.swap(key, world.certificate(key, None))
        elif swapped == "evidence-of-another-key":
            fake.swap(key, world.certificate(key, identity(), bound_key=_new_key()))
        else:
            fake.swap(key, world.certificate(key, identity(mr_enclave=OTHER_MR_ENCLAVE)))
        fake.requests.clear()
        with pytest.raises(error) as caught:
            kms.encrypt("orders", b"two")
        if step is not None:
            assert isinstance(caught.value, AttestationError)
            assert caught.value.step == step
        assert ENCRYPT not in fake.requests  # the request was never sent to the swapped server
        assert kms.server is first  # the pin did not move
        with pytest.raises(error):
            kms.encrypt("orders", b"three")
        assert ENCRYPT not in fake.requests


def test_a_restarted_enclave_with_the_same_key_is_re_attested_once(world: World) -> None:
    with FakeServer(world, identity()) as fake, _client(world, fake) as kms:
        first = kms.server
        assert first is not None
        kms.encrypt("orders", b"one")
        fake.swap(fake.key, world.certificate(fake.key, identity()))  # new certificate, same key
        fake.requests.clear()
        for _ in range(3):
            kms.encrypt("orders", b"again")
        assert fake.requests == [ATTEST, ENCRYPT, ENCRYPT, ENCRYPT]
        second = kms.server
        assert second is not None
        assert second is not first
        assert second.spki_sha256 == first.spki_sha256
        assert second.certificate.der != first.certificate.der


def test_a_new_attested_key_is_fully_re_verified_and_pinned(world: World) -> None:
    with FakeServer(world, identity()) as fake, _client(world, fake) as kms:
        first = kms.server
        assert first is not None
        key = _new_key()
        fake.swap(key, world.certificate(key, identity()))
        assert kms.decrypt("orders", kms.encrypt("orders", b"data")) == b"data"
        second = kms.server
        assert second is not None
        assert second.spki_sha256 != first.spki_sha256
        assert second.nonce != first.nonce  # a fresh liveness answer for the new key


def test_async_client_refuses_a_swapped_certificate(world: World) -> None:
    async def scenario(fake: FakeServer) -> None:
        async with AsyncKMSClient(
            fake.url, token="ekms_0_secret", policy=world.policy(), trust_root=world.root
        ) as kms:
            assert await kms.encrypt("orders", b"one")
            key = _new_key()
            fake.swap(key, world.certificate(key, None))
            fake.requests.clear()
            with pytest.raises(AttestationError) as caught:
                await kms.encrypt("orders", b"two")
            assert caught.value.step == "ratls_evidence"
            assert ENCRYPT not in fake.requests

    with FakeServer(world, identity()) as fake:
        asyncio.run(scenario(fake))


def test_the_first_connection_does_not_send_anything_but_a_nonce(world: World) -> None:
    with FakeServer(world, None) as fake:
        kms = _client(world, fake)
        with pytest.raises(AttestationError):
            kms.connect()
        assert fake.requests == []


def test_a_closed_client_reconnects_to_the_same_pin(world: World) -> None:
    with FakeServer(world, identity()) as fake:
        kms = _client(world, fake)
        kms.encrypt("orders", b"one")
        first = kms.server
        kms.close()
        kms.encrypt("orders", b"two")
        assert kms.server is first
        kms.close()
    assert fake.requests.count(ATTEST) == 1
