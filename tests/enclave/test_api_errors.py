"""Errors over HTTP: the one mapping table, bad input always 4xx with a stable code, 401/403,
the body limit, audit of failures, fail-closed audit, and no secret in responses or logs."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from enclave_kms.enclave.api.app import create_app
from enclave_kms.enclave.api.errors import (
    ERROR_TABLE,
    code_for_status,
    status_for,
    validation_message,
)
from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.errors import (
    AuditError,
    CollateralError,
    ConfigError,
    CryptoOperationError,
    EnclaveKMSError,
    IntegrityError,
    KeyStateError,
    KMSError,
    SealingError,
    StorageError,
)
from tests.enclave.api_world import World, b64, make_world, world_fixture

SECRET = b"TOP-SECRET-PLAINTEXT-0123456789"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from world_fixture(tmp_path_factory.mktemp("api-errors"))


@pytest.fixture(scope="module")
def keys(world: World) -> dict[str, str]:
    """Two AES keys, an Ed25519 key, and a ciphertext of SECRET under the first."""
    for name, type in (("e1", "aes256-gcm"), ("e2", "aes256-gcm"), ("s1", "ed25519")):
        assert world.post("/v1/keys", {"name": name, "type": type}).status_code == 201
    r = world.post("/v1/keys/e1/encrypt", {"plaintext": b64(SECRET)})
    ciphertext = r.json()["ciphertext"]
    signature = world.post("/v1/keys/s1/sign", {"input": b64(b"m")}).json()["signature"]
    return {"ciphertext": ciphertext, "signature": signature}


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str)
    assert 0 < len(message) <= 300
    return message


# --------------------------------------------------------------------------- the table


def test_table_rows_and_inheritance() -> None:
    for cls, status, code in ERROR_TABLE:
        assert status_for(cls("m")) == (status, code)
    assert status_for(CollateralError("m")) == (503, "attestation_unavailable")
    assert status_for(SealingError("m")) == (503, "attestation_unavailable")
    # Errors that should never reach the API are opaque 500s.
    assert status_for(ConfigError("m")) == (500, "internal")
    assert status_for(KMSError("m")) == (500, "internal")
    assert status_for(EnclaveKMSError("m")) == (500, "internal")
    # Client mistakes are 4xx; host failures are 5xx.
    assert status_for(CryptoOperationError("m"))[0] == 400
    assert status_for(KeyStateError("m")) == (409, "key_state")
    assert status_for(IntegrityError("m")) == (502, "integrity_violation")
    assert code_for_status(413) == "payload_too_large"
    assert code_for_status(418) == "http_418"
    assert code_for_status(504) == "internal"


def test_validation_message_never_quotes_input() -> None:
    errors = [
        {"type": "int_type", "loc": ("body", "bytes"), "msg": "Input should be a valid integer",
         "input": "SECRET-VALUE"},
        {"type": "missing", "loc": ("body", "x"), "msg": "Field required", "input": {}},
    ]  # fmt: skip
    message = validation_message(errors)
    assert message == "body.bytes: Input should be a valid integer (and 1 more error)"
    json_error = [{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error",
                   "input": {}, "ctx": {"error": "Expecting value"}}]  # fmt: skip
    assert validation_message(json_error) == "malformed JSON body: Expecting value"
    assert validation_message([]) == "invalid request"


# --------------------------------------------------------------------------- bad input

JSON_HEADERS = {"content-type": "application/json"}

BAD_BODIES: list[tuple[str, str, bytes | None, str]] = [
    ("malformed json", "/v1/keys/e1/encrypt", b'{"plaintext": ', "invalid_request"),
    ("not an object", "/v1/keys/e1/encrypt", b'["AA=="]', "invalid_request"),
    ("null body", "/v1/keys/e1/encrypt", b"null", "invalid_request"),
    ("empty body", "/v1/keys/e1/encrypt", None, "invalid_request"),
    ("number for bytes", "/v1/keys/e1/encrypt", b'{"plaintext": 12}', "invalid_request"),
    ("string for int", "/v1/random", b'{"bytes": "32"}', "invalid_request"),
    ("float for int", "/v1/random", b'{"bytes": 32.5}', "invalid_request"),
    ("bool for int", "/v1/random", b'{"bytes": true}', "invalid_request"),
    ("huge int", "/v1/random", b'{"bytes": ' + b"9" * 5000 + b"}", "invalid_request"),
    ("NaN", "/v1/random", b'{"bytes": NaN}', "invalid_request"),
    ("deep nesting", "/v1/random", b"[" * 100_000 + b"]" * 100_000, "invalid_request"),
    ("invalid utf-8", "/v1/random", b'{"bytes": "\xff"}', "invalid_request"),
    ("string for bool", "/v1/keys", b'{"name": "n1", "exportable": "true"}', "invalid_request"),
    ("int for bool", "/v1/keys", b'{"name": "n1", "exportable": 1}', "invalid_request"),
    ("unknown field", "/v1/keys", b'{"name": "n1", "colour": "red"}', "invalid_request"),
    ("unknown key type", "/v1/keys", b'{"name": "n1", "type": "des"}', "invalid_request"),
    ("bad key name", "/v1/keys", b'{"name": "../etc"}', "invalid_request"),
    ("long key name", "/v1/keys", b'{"name": "' + b"a" * 129 + b'"}', "invalid_request"),
    ("base64 alphabet", "/v1/keys/e1/encrypt", b'{"plaintext": "a*b="}', "invalid_request"),
    ("base64 padding", "/v1/keys/e1/encrypt", b'{"plaintext": "aGk"}', "invalid_request"),
    ("base64 urlsafe", "/v1/keys/e1/encrypt", b'{"plaintext": "-_-_"}', "invalid_request"),
    ("base64 non-canonical", "/v1/keys/e1/encrypt", b'{"plaintext": "aGl="}', "invalid_request"),
    ("base64 whitespace", "/v1/keys/e1/encrypt", b'{"plaintext": "aG k="}', "invalid_request"),
    ("nested unknown field", "/v1/tokens",
     b'{"name": "t", "policies": [{"operations": ["random"], "x": 1}]}', "invalid_request"),
    ("unknown operation", "/v1/tokens",
     b'{"name": "t", "policies": [{"operations": ["everything"]}]}', "invalid_request"),
    ("key op without keys", "/v1/tokens",
     b'{"name": "t", "policies": [{"operations": ["encrypt"]}]}', "invalid_request"),
    ("ttl overflow", "/v1/tokens",
     b'{"name": "t", "policies": [{"operations": ["random"]}], "ttl_seconds": 1e300}',
     "invalid_request"),
    ("batch not a list", "/v1/keys/e1/encrypt-batch", b'{"items": {}}', "invalid_request"),
    ("malformed ciphertext", "/v1/keys/e1/decrypt", b'{"ciphertext": "ekms:v1:*"}',
     "invalid_request"),
    ("ciphertext version 0", "/v1/keys/e1/decrypt", b'{"ciphertext": "ekms:v0:AAAA"}',
     "invalid_request"),
    ("ciphertext too short", "/v1/keys/e1/decrypt", b'{"ciphertext": "ekms:v1:AAAA"}',
     "invalid_request"),
    ("ciphertext future version", "/v1/keys/e1/decrypt",
     b'{"ciphertext": "ekms:v9:' + b"A" * 40 + b'"}', "crypto_failed"),
    ("sign with hmac options", "/v1/keys/s1/sign",
     b'{"input": "AA==", "hash_algorithm": "sha256"}', "invalid_request"),
    ("malformed signature", "/v1/keys/s1/verify", b'{"input": "AA==", "signature": "sig"}',
     "invalid_request"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "code"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
def test_bad_input_is_4xx_with_a_stable_code(
    world: World, keys: dict[str, str], path: str, body: bytes | None, code: str
) -> None:
    r = world.client.post(path, content=body, headers={**world.auth, **JSON_HEADERS})
    message = _error(r, 400, code)
    assert "SECRET" not in message


def test_missing_content_type_is_invalid_request(world: World, keys: dict[str, str]) -> None:
    r = world.client.post("/v1/random", content=b'{"bytes": 4}', headers=world.auth)
    _error(r, 400, "invalid_request")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/keys/nope", 404, "not_found"),
        ("POST", "/v1/keys/nope/encrypt", 404, "not_found"),
        ("GET", "/v1/keys/bad%20name", 400, "invalid_request"),
        ("GET", "/v1/keys?limit=0", 400, "invalid_request"),
        ("GET", "/v1/keys?limit=abc", 400, "invalid_request"),
        ("DELETE", "/v1/keys/e2?waiting_period_days=0", 400, "invalid_request"),
        ("DELETE", "/v1/keys/e2?waiting_period_days=99999999999999", 400, "invalid_request"),
        ("GET", "/v1/keys/e1/export?version=x", 400, "invalid_request"),
        ("GET", "/v1/tokens/NOT-AN-ID", 400, "invalid_request"),
        ("GET", "/v1/no/such/route", 404, "route_not_found"),
        ("GET", "/v1/keys/", 404, "route_not_found"),
        ("PUT", "/v1/keys/e1", 405, "method_not_allowed"),
        ("GET", "/v1/random", 405, "method_not_allowed"),
        ("POST", "/v1/keys/e2/restore", 409, "conflict"),
    ],
)
def test_path_and_query_errors(
    world: World, keys: dict[str, str], method: str, path: str, status: int, code: str
) -> None:
    r = world.client.request(method, path, headers=world.auth, json={"plaintext": "AA=="})
    _error(r, status, code)
    if status == 405:
        assert r.headers["allow"]


def test_foreign_altered_and_misused_ciphertexts(world: World, keys: dict[str, str]) -> None:
    ct = keys["ciphertext"]
    foreign = world.post("/v1/keys/e2/decrypt", {"ciphertext": ct})
    assert "SECRET" not in _error(foreign, 400, "crypto_failed")
    prefix, payload = ct.rsplit(":", 1)
    raw = bytearray(__import__("base64").b64decode(payload))
    raw[20] ^= 1
    altered = f"{prefix}:{b64(bytes(raw))}"
    _error(world.post("/v1/keys/e1/decrypt", {"ciphertext": altered}), 400, "crypto_failed")
    wrong_ad = {"ciphertext": ct, "associated_data": b64(b"other")}
    _error(world.post("/v1/keys/e1/decrypt", wrong_ad), 400, "crypto_failed")
    # The ciphertext names its key version, not its key: a signature key refuses it by type.
    _error(world.post("/v1/keys/s1/decrypt", {"ciphertext": ct}), 409, "key_state")


def test_wrong_signature_is_valid_false(world: World, keys: dict[str, str]) -> None:
    sig = keys["signature"]
    r = world.post("/v1/keys/s1/verify", {"input": b64(b"other"), "signature": sig})
    assert r.status_code == 200
    assert r.json() == {"valid": False}
    zeroes = "ekms:v1:" + b64(bytes(64))
    r = world.post("/v1/keys/s1/verify", {"input": b64(b"m"), "signature": zeroes})
    assert r.json() == {"valid": False}
    future = "ekms:v7:" + b64(bytes(64))
    r = world.post("/v1/keys/s1/verify", {"input": b64(b"m"), "signature": future})
    assert r.json() == {"valid": False}


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-a-token",
        "Bearer ekms_0123456789abcdef_" + "A" * 43,
        "Bearer ekms_0123456789abcdef_" + "A" * 42 + "B",
    ],
)
def test_unauthenticated(world: World, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = world.client.post("/v1/keys/e1/encrypt", content=b"{", headers=headers)
    _error(r, 401, "unauthenticated")  # before the malformed body is even read
    assert r.headers["www-authenticate"] == "Bearer"


def test_a_wrong_secret_for_a_real_token_id_is_401(world: World) -> None:
    token_id = world.admin.split("_")[1]
    forged = f"ekms_{token_id}_" + "A" * 43
    r = world.client.get("/v1/keys", headers=world.bearer(forged))
    _error(r, 401, "unauthenticated")


def test_permission_denied_before_validation(world: World, keys: dict[str, str]) -> None:
    reader = world.token(["keys.read"], ["e*"])
    r = world.client.post(
        "/v1/keys/e1/encrypt", content=b"{not json", headers={**world.bearer(reader)}
    )
    message = _error(r, 403, "permission_denied")
    assert "encrypt" in message
    assert reader not in message


# --------------------------------------------------------------------------- body limit


def test_body_limit(tmp_path: Path) -> None:
    small = make_world(tmp_path, max_body_bytes=1024)
    with small.client:
        headers = {**small.auth, **JSON_HEADERS}
        at_limit = json.dumps({"plaintext": b64(b"x" * 600)}).encode().ljust(1024)
        assert len(at_limit) == 1024
        small.post("/v1/keys", {"name": "k"})
        ok = small.client.post("/v1/keys/k/encrypt", content=at_limit, headers=headers)
        assert ok.status_code == 200, ok.text
        over = at_limit + b" "
        _error(
            small.client.post("/v1/keys/k/encrypt", content=over, headers=headers),
            413,
            "payload_too_large",
        )

        def chunks() -> Iterator[bytes]:  # streamed without a Content-Length
            yield b'{"plaintext": "'
            for _ in range(10):
                yield b"A" * 200
            yield b'"}'

        streamed = small.client.post("/v1/keys/k/encrypt", content=chunks(), headers=headers)
        _error(streamed, 413, "payload_too_large")
        # A route without a body refuses an oversized declared body too, unread.
        bodiless = small.client.post("/v1/keys/k/rotate", content=over, headers=headers)
        _error(bodiless, 413, "payload_too_large")
        assert small.client.get("/v1/keys/k", headers=small.auth).json()["latest_version"] == 1
        anonymous = small.client.post("/v1/keys/k/encrypt", content=over, headers=JSON_HEADERS)
        _error(anonymous, 401, "unauthenticated")
        events = small.audit_events()[-5:]
        assert [(e["op"], e["outcome"]) for e in events] == [
            ("encrypt", "payload_too_large"),
            ("encrypt", "payload_too_large"),
            ("keys.rotate", "payload_too_large"),
            ("keys.read", "ok"),
            ("encrypt", "unauthenticated"),
        ]
    small.storage.close()


def test_body_limit_counts_bytes_despite_a_lying_content_length(tmp_path: Path) -> None:
    small = make_world(tmp_path, max_body_bytes=1024)
    app = create_app(small.ctx)
    sent: list[dict[str, Any]] = []
    chunks = [b'{"plaintext": "' + b"A" * 600, b"A" * 600, b'"}']
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[reads - 1], "more_body": reads < 3}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/v1/keys/k/encrypt",
        "raw_path": b"/v1/keys/k/encrypt",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"10"),
            (b"authorization", f"Bearer {small.admin}".encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 443),
    }
    anyio.run(app, scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    assert reads == 2  # stopped as soon as the count passed the limit
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"
    small.storage.close()


# --------------------------------------------------------------------------- audit


def test_failures_are_audited(world: World, keys: dict[str, str]) -> None:
    cases = [
        ("POST", "/v1/keys/e1/encrypt", {}, "unauthenticated", "encrypt", "e1", "anonymous"),
        ("GET", "/v1/nowhere", world.auth, "route_not_found", "unknown", "", "anonymous"),
        ("POST", "/v1/keys/e1/encrypt", world.auth, "invalid_request", "encrypt", "e1", None),
        ("GET", "/v1/keys/missing", world.auth, "not_found", "keys.read", "missing", None),
        ("PUT", "/v1/random", world.auth, "method_not_allowed", "random", "", "anonymous"),
    ]
    admin_id = world.admin.split("_")[1]
    for method, path, headers, outcome, op, target, actor in cases:
        r = world.client.request(method, path, headers=headers, json={"plaintext": 1})
        assert r.status_code >= 400
        events = {e["request_id"]: e for e in world.audit_events()}
        event = events[r.headers["x-request-id"]]
        expected = (actor or admin_id, op, target, outcome)
        assert (event["actor"], event["op"], event["target"], event["outcome"]) == expected
    verify_chain(world.storage.audit_records())


def test_audit_failure_refuses_the_response(tmp_path: Path) -> None:
    fragile = make_world(tmp_path)
    with fragile.client:
        fragile.post("/v1/keys", {"name": "k"})
        ct = fragile.post("/v1/keys/k/encrypt", {"plaintext": b64(SECRET)}).json()["ciphertext"]
        before = len(fragile.storage.audit_records())
        fragile.sink.fail = True
        r = fragile.post("/v1/keys/k/decrypt", {"ciphertext": ct})
        _error(r, 503, "audit_failed")
        assert b64(SECRET) not in r.text
        assert "plaintext" not in r.text
        assert r.headers["x-request-id"]
        # Fail closed for good: even when storage comes back, nothing is acknowledged.
        fragile.sink.fail = False
        later = fragile.client.get("/v1/health")
        _error(later, 503, "audit_failed")
        assert len(fragile.storage.audit_records()) == before
    fragile.storage.close()


# --------------------------------------------------------------------------- server faults


def test_unexpected_exception_is_opaque_and_logged_without_secrets(
    world: World, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def boom(*args: object, **kwargs: object) -> str:
        raise ValueError(f"leaky message {SECRET.decode()}")

    monkeypatch.setattr(world.ctx.kms, "encrypt", boom)
    with caplog.at_level(logging.DEBUG):
        r = world.post("/v1/keys/e1/encrypt", {"plaintext": b64(SECRET)})
    message = _error(r, 500, "internal")
    assert "leaky" not in message
    assert "ValueError" in caplog.text
    assert r.headers["x-request-id"] in caplog.text
    assert SECRET.decode() not in caplog.text
    assert "POST /v1/keys/{name}/encrypt" in caplog.text  # the template, not the path
    event = {e["request_id"]: e for e in world.audit_events()}[r.headers["x-request-id"]]
    assert event["outcome"] == "internal"


def test_storage_failure_is_503(
    world: World, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: object) -> None:
        raise StorageError("storage failure: disk I/O error")

    monkeypatch.setattr(world.storage, "get", down)
    world.forget()  # nothing held in memory: every read needs the storage
    r = world.post("/v1/keys/e1/encrypt", {"plaintext": "AA=="})
    _error(r, 503, "storage_unavailable")


def test_altered_record_is_502_for_that_key_only(world: World, keys: dict[str, str]) -> None:
    assert world.post("/v1/keys", {"name": "victim"}).status_code == 201
    db = sqlite3.connect(world.storage.path)
    (blob,) = db.execute("SELECT blob FROM records WHERE kind='key' AND id='victim'").fetchone()
    flipped = bytearray(blob)
    flipped[-1] ^= 1
    db.execute("UPDATE records SET blob=? WHERE kind='key' AND id='victim'", (bytes(flipped),))
    db.commit()
    db.close()
    world.forget()
    r = world.post("/v1/keys/victim/encrypt", {"plaintext": "AA=="})
    assert "victim" in _error(r, 502, "integrity_violation")
    assert world.post("/v1/keys/e2/encrypt", {"plaintext": "AA=="}).status_code == 200
    listing = world.client.get("/v1/keys?limit=1000", headers=world.auth).json()
    assert "victim" in listing["unreadable"]


def test_no_secret_in_any_response_or_log(tmp_path: Path, caplog: Any) -> None:
    w = make_world(tmp_path)
    with w.client, caplog.at_level(logging.DEBUG):
        w.post("/v1/keys", {"name": "k", "exportable": True})
        ct = w.post("/v1/keys/k/encrypt", {"plaintext": b64(SECRET)}).json()["ciphertext"]
        material = w.client.get("/v1/keys/k/export", headers=w.auth).json()["material"]
        responses = [
            w.post("/v1/keys/k/decrypt", {"ciphertext": ct + "A"}),
            w.post("/v1/keys/k/encrypt", {"plaintext": b64(SECRET), "extra": b64(SECRET)}),
            w.post("/v1/keys/k/encrypt", {"plaintext": "!" + b64(SECRET)}),
            w.post("/v1/keys/k/encrypt", {"plaintext": b64(SECRET)}, token=w.admin + "x"),
            w.post("/v1/random", {"bytes": b64(SECRET)}),
        ]
        for r in responses:
            assert r.status_code in (400, 401)
            for secret in (b64(SECRET), SECRET.decode(), material, w.admin):
                assert secret not in r.text
        for secret in (b64(SECRET), SECRET.decode(), material, w.admin):
            assert secret not in caplog.text
        audit = b"".join(w.storage.audit_records())
        for raw in (SECRET, material.encode(), w.admin.encode(), b64(SECRET).encode()):
            assert raw not in audit
    w.storage.close()


def test_audit_error_from_a_route_is_503(
    world: World, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail() -> tuple[int, bytes]:
        raise AuditError("audit chain head unavailable")

    monkeypatch.setattr(type(world.ctx.audit), "head", property(lambda self: fail()))
    _error(world.client.get("/v1/audit", headers=world.auth), 503, "audit_failed")


def test_a_failure_while_answering_a_failure_is_still_the_typed_500(
    world: World, keys: dict[str, str], caplog: Any
) -> None:
    """No outer error middleware (KMSApp): when even the 500 cannot be answered normally
    (here the state head, read for every answer, is gone), the last resort is still the
    opaque typed JSON 500, never text/plain and never a dropped connection."""
    import dataclasses

    from fastapi.testclient import TestClient

    def gone() -> str:
        raise RuntimeError("host gone mid-answer")

    app = create_app(dataclasses.replace(world.ctx, state_head=gone))
    with caplog.at_level(logging.ERROR), TestClient(app) as client:
        for path in ("/v1/keys/e1/encrypt", "/v1/keys"):  # the hot path and FastAPI's
            r = client.post(path, json={"plaintext": "AA=="}, headers=world.auth)
            assert r.headers["content-type"] == "application/json"
            _error(r, 500, "internal")
    assert "answering request" in caplog.text
