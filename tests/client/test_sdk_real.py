"""The SDK against the real simulated KMS: every operation, typed results, the server's own
error classes, and the async twin."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from enclave_kms import errors
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.client import AsyncKMSClient, BatchItem, KMSClient, TokenPolicy
from tests.client.real_server import RealKMS


@pytest.fixture(scope="module")
def kms(real_kms: RealKMS) -> KMSClient:
    client = real_kms.client()
    client.connect()
    return client


def test_attestation_of_the_real_server(real_kms: RealKMS, kms: KMSClient) -> None:
    server = kms.server
    assert server is not None
    facts = server.summary()
    assert facts["mr_enclave"] == real_kms.running.identity["mr_enclave"]
    assert facts["mr_signer"] == real_kms.running.identity["mr_signer"]
    assert facts["tcb_status"] == TcbStatus.UP_TO_DATE.value
    assert facts["simulated"] is True
    assert facts["debug"] is False
    assert server.verified.second_opinion == "UpToDate"  # dcap-qvl agreed
    info = server.enclave_info()
    assert info.binds_held_data()
    assert info.inconsistencies() == []
    assert kms.health().initialized


def test_symmetric_keys_and_versions(kms: KMSClient) -> None:
    key = kms.create_key("sdk-orders")
    assert (key.name, key.type, key.latest_version) == ("sdk-orders", "aes256-gcm", 1)
    with pytest.raises(errors.ConflictError):
        kms.create_key("sdk-orders")
    ciphertext = kms.encrypt("sdk-orders", b"card 4111", associated_data=b"order 7")
    assert ciphertext.startswith("ekms:v1:")
    assert kms.decrypt("sdk-orders", ciphertext, associated_data=b"order 7") == b"card 4111"
    with pytest.raises(errors.CryptoOperationError):
        kms.decrypt("sdk-orders", ciphertext, associated_data=b"order 8")
    rotated = kms.rotate_key("sdk-orders")
    assert rotated.latest_version == 2
    rewrapped = kms.rewrap("sdk-orders", ciphertext, associated_data=b"order 7")
    assert rewrapped.startswith("ekms:v2:")
    kms.configure_key("sdk-orders", min_decryption_version=2)
    with pytest.raises(errors.KeyStateError):
        kms.decrypt("sdk-orders", ciphertext, associated_data=b"order 7")
    assert kms.decrypt("sdk-orders", rewrapped, associated_data=b"order 7") == b"card 4111"

    results = kms.encrypt_batch("sdk-orders", [b"a", BatchItem(b"b", b"ctx")])
    assert all(isinstance(r, str) for r in results)
    forged = "ekms:v2:" + base64.b64encode(bytes(48)).decode()
    back = kms.decrypt_batch("sdk-orders", [str(results[0]), forged])
    assert back[0] == b"a"
    assert isinstance(back[1], errors.CryptoOperationError)

    data_key = kms.generate_data_key("sdk-orders")
    assert data_key.plaintext is not None
    assert len(data_key.plaintext) == 32
    assert kms.decrypt("sdk-orders", data_key.ciphertext) == data_key.plaintext
    assert kms.generate_data_key("sdk-orders", include_plaintext=False).plaintext is None

    kms.configure_key("sdk-orders", enabled=False)
    with pytest.raises(errors.KeyStateError):
        kms.encrypt("sdk-orders", b"x")
    deleted = kms.delete_key("sdk-orders", waiting_period_days=3)
    assert deleted.deletion_scheduled_at is not None
    assert kms.restore_key("sdk-orders").deletion_scheduled_at is None
    with pytest.raises(errors.NotFoundError):
        kms.get_key("sdk-no-such-key")


def test_signatures_macs_and_random(kms: KMSClient) -> None:
    kms.create_key("sdk-ed", "ed25519")
    signature = kms.sign("sdk-ed", b"release 1.2")
    assert kms.verify("sdk-ed", b"release 1.2", signature)
    assert not kms.verify("sdk-ed", b"release 1.3", signature)
    public = kms.get_key("sdk-ed").public_key_pem
    assert public is not None
    loaded = serialization.load_pem_public_key(public.encode())
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
    loaded.verify(base64.b64decode(signature.split(":", 2)[2]), b"release 1.2")

    kms.create_key("sdk-mac", "hmac-sha256")
    mac = kms.hmac("sdk-mac", b"payload")
    assert kms.verify_hmac("sdk-mac", b"payload", mac)
    assert not kms.verify_hmac("sdk-mac", b"payload!", mac)

    first, second = kms.random(32), kms.random(32)
    assert len(first) == 32
    assert first != second
    assert len(kms.generate_aes_key()) == 32


def test_byok_import_and_export(kms: KMSClient) -> None:
    material = os.urandom(32)
    imported = kms.import_key("sdk-byok", "aes256-gcm", material, exportable=True)
    assert imported.versions[0].imported
    exported = kms.export_key("sdk-byok")
    assert exported.material == material
    assert "material" not in repr(exported)
    private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    kms.import_key("sdk-byok-ed", "ed25519", der)
    signature = kms.sign("sdk-byok-ed", b"m")
    private.public_key().verify(base64.b64decode(signature.split(":", 2)[2]), b"m")
    with pytest.raises(errors.KeyStateError):
        kms.export_key("sdk-byok-ed")


def test_tokens_limit_what_a_caller_may_do(real_kms: RealKMS, kms: KMSClient) -> None:
    kms.create_key("sdk-app-key")
    issued = kms.create_token(
        "sdk-app", [TokenPolicy(operations=("encrypt",), keys=("sdk-app-*",))], ttl_seconds=600
    )
    assert issued.token not in repr(issued)
    assert issued.info.expires_at is not None
    with real_kms.client() as app:
        app.set_token(issued.token)
        assert app.encrypt("sdk-app-key", b"x").startswith("ekms:")
        with pytest.raises(errors.PermissionDeniedError):
            app.decrypt("sdk-app-key", "ekms:v1:AAAA")
        with pytest.raises(errors.PermissionDeniedError):
            app.list_tokens()
    assert issued.info.id in {t.id for t in kms.list_tokens().tokens}
    assert kms.get_token(issued.info.id).name == "sdk-app"
    assert kms.revoke_token(issued.info.id).revoked_at is not None
    with real_kms.client() as app:
        app.set_token(issued.token)
        with pytest.raises(errors.UnauthenticatedError):
            app.encrypt("sdk-app-key", b"x")
    with real_kms.client() as stranger:
        stranger.set_token("ekms_0000000000000000_not-a-token")
        with pytest.raises(errors.UnauthenticatedError):
            stranger.list_keys()
    with pytest.raises(errors.ConflictError):
        kms.init()  # the first admin token exists already


def test_audit_head_grows_with_requests(kms: KMSClient) -> None:
    before = kms.audit_head()
    kms.random(4)
    after = kms.audit_head()
    assert after.records >= before.records + 2
    assert after.public_key_sha256 == before.public_key_sha256


def test_listing_pages(kms: KMSClient) -> None:
    for i in range(3):
        kms.create_key(f"sdk-page-{i}")
    page = kms.list_keys(after="sdk-page-", limit=2)
    assert [k.name for k in page.keys] == ["sdk-page-0", "sdk-page-1"]
    assert page.next_after == "sdk-page-1"
    names = [k.name for k in kms.iter_keys(page_size=2)]
    assert names == sorted(names)
    assert {"sdk-page-0", "sdk-page-1", "sdk-page-2"} <= set(names)


def test_async_client_against_the_real_server(real_kms: RealKMS) -> None:
    async def flow() -> None:
        async with AsyncKMSClient(
            real_kms.url,
            token=real_kms.token,
            policy=real_kms.policy,
            trust_root=real_kms.trust_root,
        ) as kms:
            assert kms.server is not None
            await kms.create_key("sdk-async")
            texts = [f"message {i}".encode() for i in range(5)]
            ciphertexts = await asyncio.gather(*(kms.encrypt("sdk-async", t) for t in texts))
            plaintexts = await asyncio.gather(*(kms.decrypt("sdk-async", c) for c in ciphertexts))
            assert plaintexts == texts
            assert [k.name async for k in kms.iter_keys()].count("sdk-async") == 1
            with pytest.raises(errors.NotFoundError):
                await kms.get_key("sdk-async-missing")

    asyncio.run(flow())
