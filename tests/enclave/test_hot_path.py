"""Differential test: the hot-path dispatcher (api/hot.py) answers exactly as FastAPI does.

Two apps over ONE set of services and storage: the reference (`hot_path=False`, FastAPI serves
every route) and the served one. Every request goes to both, in turn; the answers must have
the same status, the same content type, state head and WWW-Authenticate headers, a request
id each, the same JSON (values that are random by design — ciphertexts, ECDSA signatures,
data keys — compared by shape), and the same audit record (operation, target, outcome, actor).

Requests: every curl example of docs/api.md for a hot route (placeholders filled with real
values), then, on every hot route, the error cases a client or an attacker can produce
(missing, malformed, duplicated, unknown and under-privileged tokens; bad JSON, empty body,
wrong types, unknown fields, non-canonical base64, non-UTF-8 bytes, other content types;
bodies over the limit, declared or streamed; bad key names; wrong methods; disabled keys;
altered ciphertexts).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from enclave_kms.enclave.api.app import create_app
from enclave_kms.enclave.api.routes_crypto import HOT_OPERATIONS
from tests.enclave.api_world import World, make_world

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
LIMIT = 4096
STATE = "v1 test-installation 7 " + "ab" * 32
RANDOM_FIELDS = frozenset({"ciphertext", "signature", "plaintext"})
HOT = tuple(HOT_OPERATIONS)


class Pair:
    def __init__(self, world: World) -> None:
        self.world = world
        world.ctx.state_head = lambda: STATE
        self.old = TestClient(create_app(world.ctx, hot_path=False))
        self.new = TestClient(create_app(world.ctx))
        self.headers = {"authorization": f"Bearer {world.admin}"}
        self.values: dict[str, str] = {}

    def send(self, method: str, path: str, **kw: Any) -> tuple[Any, Any]:
        answers = []
        for client in (self.old, self.new):
            before = len(self.world.audit_events())
            response = client.request(method, path, **kw)
            events = self.world.audit_events()[before:]
            assert len(events) == 1, (path, events)
            answers.append((response, events[0]))
        (old, old_event), (new, new_event) = answers
        label = f"{method} {path} {kw.get('content', kw.get('json'))!r:.80}"
        assert new.status_code == old.status_code, (label, old.text, new.text)
        for header in ("content-type", "ekms-state", "www-authenticate"):
            assert new.headers.get(header) == old.headers.get(header), (label, header)
        assert old.headers["x-request-id"]
        assert new.headers["x-request-id"]
        assert _shape(new.json()) == _shape(old.json()), (label, old.text, new.text)
        for field in ("op", "target", "outcome", "actor"):
            assert new_event[field] == old_event[field], (label, field)
        return old, new


def _shape(doc: Any) -> Any:
    """The JSON with random-by-design values replaced by their kind."""
    if isinstance(doc, dict):
        return {
            k: ("tagged" if str(v).startswith("ekms:v") else type(v).__name__)
            if k in RANDOM_FIELDS and v is not None
            else _shape(v)
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [_shape(v) for v in doc]
    return doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    world = make_world(tmp_path_factory.mktemp("hot"), max_body_bytes=LIMIT)
    with world.client:
        for name, kind in (
            ("orders", "aes256-gcm"),
            ("signer", "ec-p256"),
            ("ed", "ed25519"),
            ("mac-key", "hmac-sha256"),
            ("off", "aes256-gcm"),
        ):
            r = world.post("/v1/keys", {"name": name, "type": kind})
            assert r.status_code == 201, r.text
        assert world.client.patch(
            "/v1/keys/off", json={"enabled": False}, headers=world.auth
        ).is_success
        p = Pair(world)
        auth = p.headers
        p.values["orders"] = p.new.post(
            "/v1/keys/orders/encrypt", json={"plaintext": "aGVsbG8="}, headers=auth
        ).json()["ciphertext"]
        p.values["signer"] = p.new.post(
            "/v1/keys/signer/sign", json={"input": "bXNn"}, headers=auth
        ).json()["signature"]
        p.values["mac-key"] = p.new.post(
            "/v1/keys/mac-key/hmac", json={"input": "bXNn"}, headers=auth
        ).json()["mac"]
        yield p
    world.storage.close()


def _doc_examples() -> list[tuple[str, str]]:
    """(path, JSON body) of every docs/api.md curl example for a hot route."""
    text = DOCS.read_text().replace("\\\n", " ")
    found = []
    pattern = r"""-d (?:'([^']*)'|"((?:[^"\\]|\\.)*)")[^\n]*?\$KMS(/v1/keys/[^/\s]+/([a-z-]+))"""
    for single, double, path, suffix in re.findall(pattern, text):
        if suffix not in HOT_OPERATIONS:
            continue
        body = single or double.replace('\\"', '"')
        body = re.sub(r"\$\(printf '([^']*)' \| base64\)", lambda m: b64(m.group(1).encode()), body)
        found.append((path, body))
    return found


def test_every_documented_example_answers_alike(pair: Pair) -> None:
    examples = _doc_examples()
    assert {p.rsplit("/", 1)[1] for p, _ in examples} == set(HOT)
    for path, example in examples:
        key = path.split("/")[3]
        body = example.replace("ekms:v1:…", pair.values.get(key, "ekms:v1:AAAA"))
        old, _ = pair.send(
            "POST", path, content=body, headers={**pair.headers, "content-type": "application/json"}
        )
        assert old.status_code == 200, (path, body, old.text)


def test_every_hot_route_is_served_by_the_dispatcher(pair: Pair) -> None:
    """Not a tautology: the reference and the served app differ where it matters."""
    assert pair.new.app is not pair.old.app
    stack = [m.cls.__name__ for m in pair.new.app.user_middleware]  # type: ignore[attr-defined]
    assert "HotPath" in stack
    assert "HotPath" not in [m.cls.__name__ for m in pair.old.app.user_middleware]  # type: ignore[attr-defined]


def test_openapi_document_is_unchanged(pair: Pair) -> None:
    assert pair.new.get("/openapi.json").json() == pair.old.get("/openapi.json").json()


def _valid_body(suffix: str, pair: Pair) -> dict[str, Any]:
    bodies: dict[str, dict[str, Any]] = {
        "encrypt": {"plaintext": "aGVsbG8="},
        "decrypt": {"ciphertext": pair.values["orders"]},
        "rewrap": {"ciphertext": pair.values["orders"]},
        "datakey": {"include_plaintext": True},
        "sign": {"input": "bXNn"},
        "verify": {"input": "bXNn", "signature": pair.values["signer"]},
        "hmac": {"input": "bXNn"},
        "verify-hmac": {"input": "bXNn", "mac": pair.values["mac-key"]},
    }
    return bodies[suffix]


KEY_OF = {
    "encrypt": "orders",
    "decrypt": "orders",
    "rewrap": "orders",
    "datakey": "orders",
    "sign": "signer",
    "verify": "signer",
    "hmac": "mac-key",
    "verify-hmac": "mac-key",
}


@pytest.mark.parametrize("suffix", HOT)
def test_error_cases_answer_alike(pair: Pair, suffix: str) -> None:
    path = f"/v1/keys/{KEY_OF[suffix]}/{suffix}"
    good = _valid_body(suffix, pair)
    auth = pair.headers
    json_ct = {"content-type": "application/json"}
    send = pair.send
    assert send("POST", path, json=good, headers=auth)[0].status_code == 200
    # Tokens: none, not bearer, malformed, unknown, two headers, under-privileged.
    send("POST", path, json=good)
    send("POST", path, json=good, headers={"authorization": "Basic YTpi"})
    send("POST", path, json=good, headers={"authorization": "Bearer nonsense"})
    send("POST", path, json=good, headers={"authorization": "Bearer ekms_0123456789abcdef_x"})
    two = [("authorization", auth["authorization"]), ("authorization", auth["authorization"])]
    send("POST", path, json=good, headers=two)
    other = pair.world.token(["encrypt"], ["elsewhere"])
    send("POST", path, json=good, headers={"authorization": f"Bearer {other}"})
    # Bodies.
    for raw in (b"{", b"", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"a": 1}'):
        send("POST", path, content=raw, headers={**auth, **json_ct})
    for field in good:
        send("POST", path, json={**good, field: 1}, headers=auth)
        send("POST", path, json={k: v for k, v in good.items() if k != field}, headers=auth)
    send("POST", path, json={**good, "extra": True}, headers=auth)
    for field, value in good.items():
        if field in ("plaintext", "input"):
            send("POST", path, json={**good, field: value.rstrip("=")}, headers=auth)
            send("POST", path, json={**good, field: "a=="}, headers=auth)  # non-canonical
        if field in ("ciphertext", "signature", "mac"):
            send("POST", path, json={**good, field: "ekms:v1:" + "A" * 40}, headers=auth)
            send("POST", path, json={**good, field: "ekms:v9:AAAA"}, headers=auth)
    body = b'{"plaintext": "aGVsbG8="}'
    for ct in ("text/plain", "application/json; charset=utf-8", "APPLICATION/JSON"):
        send("POST", path, content=body, headers={**auth, "content-type": ct})
    send("POST", path, content=body, headers=auth)  # no content type
    # Size: over the limit as sent, and a declared length over the limit.
    send("POST", path, content=b" " * (LIMIT + 1), headers={**auth, **json_ct})
    send("POST", path, content=b" " * (LIMIT + 1), headers={**json_ct})
    # Keys and routing: unknown, disabled, a name outside the pattern, other methods.
    send("POST", f"/v1/keys/missing/{suffix}", json=good, headers=auth)
    send("POST", f"/v1/keys/off/{suffix}", json=good, headers=auth)
    send("POST", f"/v1/keys/-bad/{suffix}", json=good, headers=auth)
    send("POST", f"/v1/keys/{'a' * 129}/{suffix}", json=good, headers=auth)
    send("GET", path, headers=auth)
    send("PUT", path, json=good, headers=auth)


def test_crypto_failures_and_wrong_signatures_answer_alike(pair: Pair) -> None:
    auth = pair.headers
    ct = pair.values["orders"]
    altered = ct[:-6] + ("AAAAAA" if not ct.endswith("AAAAAA") else "BBBBBB")
    old, _ = pair.send(
        "POST", "/v1/keys/orders/decrypt", json={"ciphertext": altered}, headers=auth
    )
    assert old.json()["error"]["code"] == "crypto_failed"
    pair.send(
        "POST",
        "/v1/keys/orders/decrypt",
        json={"ciphertext": ct, "associated_data": "YQ=="},
        headers=auth,
    )
    old, new = pair.send(
        "POST",
        "/v1/keys/signer/verify",
        json={"input": "b3RoZXI=", "signature": pair.values["signer"]},
        headers=auth,
    )
    assert old.json() == new.json() == {"valid": False}
    # Deterministic answers are equal to the byte: Ed25519 signatures, HMACs, plaintexts.
    old, new = pair.send("POST", "/v1/keys/ed/sign", json={"input": "bXNn"}, headers=auth)
    assert old.content == new.content
    old, new = pair.send("POST", "/v1/keys/orders/decrypt", json={"ciphertext": ct}, headers=auth)
    assert old.content == new.content == b'{"plaintext":"aGVsbG8="}'
    # Key types that cannot do the operation.
    pair.send("POST", "/v1/keys/orders/sign", json={"input": "bXNn"}, headers=auth)
    pair.send("POST", "/v1/keys/signer/encrypt", json={"plaintext": "bXNn"}, headers=auth)
    pair.send("POST", "/v1/keys/orders/hmac", json={"input": "bXNn"}, headers=auth)
