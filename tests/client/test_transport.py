"""Typed errors from the server's codes, retries only where safe, timeouts, no secret in any
repr or log, and the request-building core."""

from __future__ import annotations

import json
import logging
import socket
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_kms import errors
from enclave_kms.attestation.policy import Policy
from enclave_kms.client import DataKey, IssuedToken, KMSClient, RsaKeyPair, core
from enclave_kms.client.attest import AttestationAnswer, begin
from enclave_kms.client.errors import ERROR_CODES, error_for_item, error_for_response
from enclave_kms.client.types import ExportedKey, TokenInfo
from tests.client.fakes import Behaviour, FakeServer, World, identity

TOKEN = "ekms_0123456789abcdef_SECRET-TOKEN-VALUE"
PLAINTEXT = b"PLAINTEXT-THAT-MUST-NOT-BE-LOGGED"
ANY_PINNED = Policy(mr_enclave=(bytes(32),))  # a client needs an identity even to fail to connect


def _body(code: str, message: str = "m") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def test_every_server_code_becomes_the_servers_own_class() -> None:
    # The server's table (enclave/api/errors.py) maps these classes to these codes.
    for cls in (
        errors.InvalidRequestError,
        errors.CryptoOperationError,
        errors.UnauthenticatedError,
        errors.PermissionDeniedError,
        errors.NotFoundError,
        errors.ConflictError,
        errors.KeyStateError,
        errors.IntegrityError,
        errors.BoundaryError,
        errors.StorageError,
        errors.AuditError,
    ):
        exc = error_for_response(400, _body(cls.code, "key 'x' is disabled"))
        assert type(exc) is cls
        assert exc.message == "key 'x' is disabled"
        assert ERROR_CODES[cls.code] is cls


def test_unknown_or_malformed_errors_are_server_errors() -> None:
    assert type(error_for_response(500, _body("internal"))) is errors.ServerError
    assert type(error_for_response(418, _body("teapot"))) is errors.ServerError
    assert type(error_for_response(502, b"<html>bad gateway</html>")) is errors.ServerError
    assert type(error_for_response(404, _body("route_not_found"))) is errors.NotFoundError
    assert type(error_for_item({"code": "crypto_failed", "message": "bad tag"})) is (
        errors.CryptoOperationError
    )
    assert type(error_for_item("nonsense")) is errors.ServerError
    long = error_for_response(400, _body("invalid_request", "x" * 1000))
    assert len(long.message) <= 300


def test_a_failed_request_maps_to_its_class_over_the_wire(world: World) -> None:
    with FakeServer(world, identity()) as fake:
        kms = KMSClient(fake.url, token=TOKEN, policy=world.policy(), trust_root=world.root)
        with pytest.raises(errors.NotFoundError, match="key 'missing' not found"):
            kms.decrypt("missing", "ekms:v1:AAAA")


def test_a_safe_request_is_retried_after_503(world: World) -> None:
    behaviour = Behaviour(failures=[(503, "storage_unavailable"), (503, "audit_failed")])
    with FakeServer(world, identity(), behaviour) as fake:
        kms = KMSClient(
            fake.url, token=TOKEN, policy=world.policy(), trust_root=world.root, backoff=0.01
        )
        assert kms.decrypt("orders", kms.encrypt("orders", b"x")) == b"x"
    assert fake.requests.count(("POST", "/v1/keys/orders/encrypt")) == 3


def test_a_state_changing_request_is_never_retried(world: World) -> None:
    behaviour = Behaviour(failures=[(503, "storage_unavailable")])
    with FakeServer(world, identity(), behaviour) as fake:
        kms = KMSClient(
            fake.url, token=TOKEN, policy=world.policy(), trust_root=world.root, backoff=0.01
        )
        with pytest.raises(errors.StorageError):
            kms.create_key("orders")
    assert fake.requests.count(("POST", "/v1/keys")) == 1


def test_retries_stop_after_the_limit(world: World) -> None:
    behaviour = Behaviour(failures=[(503, "storage_unavailable")] * 5)
    with FakeServer(world, identity(), behaviour) as fake:
        kms = KMSClient(
            fake.url,
            token=TOKEN,
            policy=world.policy(),
            trust_root=world.root,
            retries=1,
            backoff=0.01,
        )
        with pytest.raises(errors.StorageError):
            kms.encrypt("orders", b"x")
    assert fake.requests.count(("POST", "/v1/keys/orders/encrypt")) == 2


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection, never speaks TLS
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        kms = KMSClient(url, timeout=0.3, policy=ANY_PINNED)
        with pytest.raises(errors.ServerError, match="cannot reach"):
            kms.connect()


def test_nothing_listening_is_a_server_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(errors.ServerError, match="cannot reach"):
        KMSClient(f"https://127.0.0.1:{port}", timeout=1, policy=ANY_PINNED).connect()


def test_a_client_without_an_identity_in_its_policy_is_refused_before_connecting() -> None:
    """Issue 17 defect 1: the default policy used to trust any genuine enclave."""
    with pytest.raises(errors.ConfigError, match="pins no enclave identity"):
        KMSClient("https://127.0.0.1:8443")
    with pytest.raises(errors.ConfigError, match="pins no enclave identity"):
        KMSClient("https://127.0.0.1:8443", policy=Policy(allow_debug=True))
    KMSClient("https://127.0.0.1:8443", policy=Policy(any_enclave_unsafe=True)).close()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8443", "https://", "https://host:8443/v1", "ftp://x", "https://h:99999"],
)
def test_only_plain_https_server_urls_are_accepted(url: str) -> None:
    with pytest.raises(errors.ConfigError):
        KMSClient(url)


def test_no_token_is_refused_before_sending(world: World) -> None:
    with FakeServer(world, identity()) as fake:
        kms = KMSClient(fake.url, policy=world.policy(), trust_root=world.root)
        with pytest.raises(errors.UnauthenticatedError):
            kms.encrypt("orders", b"x")
    assert fake.requests == []  # not even attested: the request could never have been sent


def test_no_secret_in_any_repr_or_log(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeServer(world, identity()) as fake:
        kms = KMSClient(fake.url, token=TOKEN, policy=world.policy(), trust_root=world.root)
        ciphertext = kms.encrypt("orders", PLAINTEXT)
        assert kms.decrypt("orders", ciphertext) == PLAINTEXT
        shown = [repr(kms), repr(kms.server), repr(core.encrypt("orders", PLAINTEXT, None))]
    now = datetime.now(UTC)
    info = TokenInfo("0123456789abcdef", "admin", (), now, None, None)
    shown += [
        repr(IssuedToken(info, TOKEN)),
        repr(DataKey("ekms:v1:AAAA", PLAINTEXT)),
        repr(ExportedKey("k", "aes256-gcm", 1, PLAINTEXT)),
        repr(RsaKeyPair("PUBLIC", "PRIVATE-KEY-PEM")),
    ]
    text = "\n".join(shown) + "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in text
    assert "SECRET" not in text
    assert PLAINTEXT.decode() not in text
    assert "PRIVATE-KEY-PEM" not in text
    assert "token=set" in repr(kms)


def test_byok_wrapping_round_trips_for_short_and_long_material() -> None:
    private = rsa.generate_private_key(65537, 4096)
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    short = b"k" * 32
    assert private.decrypt(core.wrap_material(pem.decode(), short), core.OAEP) == short
    long = b"L" * 2000  # an RSA private key's DER is longer than RSA-OAEP can carry
    wrapped = core.wrap_material(pem.decode(), long)
    kek = private.decrypt(wrapped[:512], core.OAEP)
    assert aes_key_unwrap_with_padding(kek, wrapped[512:]) == long


def test_calls_carry_the_api_shapes() -> None:
    call = core.encrypt("orders/x", b"\x00\x01", b"aad")
    assert (call.method, call.path) == ("POST", "/v1/keys/orders%2Fx/encrypt")
    assert call.body == {"plaintext": "AAE=", "associated_data": "YWFk"}
    assert call.idempotent
    assert not core.create_key("k", "rsa-4096", False).idempotent
    assert core.create_key("k", "rsa-4096", False).slow
    assert core.random(16).body == {"bytes": 16}
    assert core.delete_key("k", 3).params == {"waiting_period_days": 3}
    assert not core.init().auth
    token_call = core.create_token("app", [{"keys": ["a*"], "operations": ["encrypt"]}], 60)
    assert token_call.body == {
        "name": "app",
        "policies": [{"keys": ["a*"], "operations": ["encrypt"]}],
        "ttl_seconds": 60,
    }
    with pytest.raises(errors.UsageError):
        core.configure_key("k", None, None)
    with pytest.raises(errors.UsageError):
        core.random(0)


def test_malformed_answers_are_server_errors() -> None:
    with pytest.raises(errors.ServerError):
        core.read_answer(core.encrypt("k", b"x", None), 200, b"not json")
    with pytest.raises(errors.ServerError):
        core.read_answer(core.encrypt("k", b"x", None), 200, b'{"ciphertext": 5}')
    with pytest.raises(errors.ServerError):
        core.read_answer(core.decrypt("k", "ekms:v1:AA", None), 200, b'{"plaintext": "***"}')
    batch = core.decrypt_batch("k", ["ekms:v1:AA", "ekms:v1:BB"])
    results = core.read_answer(
        batch,
        200,
        json.dumps(
            {
                "results": [
                    {"plaintext": "eA=="},
                    {"error": {"code": "crypto_failed", "message": "m"}},
                ]
            }
        ).encode(),
    )
    assert results[0] == b"x"
    assert isinstance(results[1], errors.CryptoOperationError)
    with pytest.raises(errors.ServerError, match="1 results for 2 items"):
        core.read_answer(batch, 200, b'{"results": [{"plaintext": "eA=="}]}')


def test_malformed_attestation_answers_are_typed_errors() -> None:
    docs: list[object] = [
        [],
        {},
        {"nonce": "zz", "quote": "", "collateral": {}, "certificate_pem": ""},
    ]
    for doc in docs:
        with pytest.raises(errors.AttestationError):
            AttestationAnswer.parse(doc)
    with pytest.raises(errors.CollateralError):
        AttestationAnswer.parse(
            {"nonce": "00", "quote": "AA==", "collateral": [], "certificate_pem": "x"}
        )


def test_begin_refuses_an_expired_certificate(world: World) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = world.certificate(key, identity())
    der = cert.public_bytes(Encoding.DER)
    assert begin(der, now=datetime.now(UTC)).nonce
    with pytest.raises(errors.CertificateChainError):
        begin(der, now=datetime(2100, 1, 1, tzinfo=UTC))
