"""The wire contract (enclave_kms.wire) against the server: its OpenAPI document and its real
answers, read by the SDK's decoder.

The shape of each answer is taken from the server's own OpenAPI document (the `$ref` of the
route's 2xx response names a wire class), not from a table in this test; every answer is
decoded by the SDK (`wire.decode`, what client/core.py uses), serialised again and compared
with what the server sent. And the enums and error codes of the wire module are the ones the
server's token policy, key types and error mapping use.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from enclave_kms import wire
from enclave_kms.client import core
from enclave_kms.client.errors import ERROR_CODES as CLIENT_CODES
from enclave_kms.enclave.api.errors import ERROR_TABLE, HTTP_CODES, status_for
from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.state import tokens
from enclave_kms.errors import PlatformError, ServerError, StorageError
from tests.enclave.api_world import World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = make_world(tmp_path_factory.mktemp("wire"))
    with world.client:
        yield world
    world.storage.close()


@pytest.fixture(scope="module")
def openapi(world: World) -> dict[str, Any]:
    doc: dict[str, Any] = world.client.get("/openapi.json").json()
    return doc


def _shape_of(openapi: dict[str, Any], method: str, template: str) -> type[Any]:
    responses = openapi["paths"][template][method.lower()]["responses"]
    (ok,) = [v for k, v in responses.items() if k.startswith("2")]
    ref = ok["content"]["application/json"]["schema"]["$ref"]
    shape = getattr(wire, ref.rsplit("/", 1)[1])
    assert isinstance(shape, type), ref
    assert dataclasses.is_dataclass(shape), ref
    return shape


def _drop_none(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _drop_none(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_drop_none(v) for v in doc]
    return doc


def _check(world: World, openapi: dict[str, Any], method: str, template: str, **kw: Any) -> Any:
    """One real answer, decoded as the SDK does; it must serialise back to the same JSON."""
    path = template.format(name=kw.pop("name", ""), id=kw.pop("id", ""))
    r = world.client.request(method, path, headers=world.auth, **kw)
    assert r.status_code in (200, 201), (path, r.text)
    shape = _shape_of(openapi, method, template)
    decoded = wire.decode(shape, r.json())
    again = json.loads(TypeAdapter(shape).dump_json(decoded))
    assert _drop_none(again) == _drop_none(r.json()), (path, r.text)
    assert wire.to_json(decoded) == again, path  # the SDK's own encoder, what the CLI prints
    return decoded


def test_every_answer_shape_in_openapi_is_a_wire_class(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    checked = 0
    for path_item in openapi["paths"].values():
        for operation in path_item.values():
            for status, response in operation["responses"].items():
                if not status.startswith("2"):
                    continue
                ref = response["content"]["application/json"]["schema"].get("$ref", "")
                name = ref.rsplit("/", 1)[1]
                if name == "AttestationOut":  # read by client/attest.py, not by the SDK types
                    continue
                shape = getattr(wire, name)
                fields = {f.name: f for f in dataclasses.fields(shape)}
                schema = schemas[name]
                assert set(schema["properties"]) == set(fields), name
                required = {
                    n
                    for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                }
                assert required <= set(schema.get("required", ())), name
                checked += 1
    assert checked >= 25


def test_real_answers_decode_into_the_wire_classes(world: World, openapi: dict[str, Any]) -> None:
    health = _check(world, openapi, "GET", "/v1/health")
    assert isinstance(health, wire.Health)
    assert health.initialized
    for kind in wire.KEY_TYPES:
        info = _check(
            world,
            openapi,
            "POST",
            "/v1/keys",
            json={"name": f"w-{kind}", "type": kind, "exportable": kind == "aes256-gcm"},
        )
        assert isinstance(info, wire.KeyInfo)
        assert info.type == kind
        assert info.versions[0].version == 1
    page = _check(world, openapi, "GET", "/v1/keys")
    assert {k.name for k in page.keys} >= {f"w-{k}" for k in wire.KEY_TYPES}
    _check(world, openapi, "POST", "/v1/keys/{name}/rotate", name="w-aes256-gcm", json={})
    exported = _check(world, openapi, "GET", "/v1/keys/{name}/export", name="w-aes256-gcm")
    assert isinstance(exported.material, bytes)
    assert len(exported.material) == 32
    _check(world, openapi, "GET", "/v1/sys/wrapping-key")
    ct = _check(
        world,
        openapi,
        "POST",
        "/v1/keys/{name}/encrypt",
        name="w-aes256-gcm",
        json={"plaintext": "aGk="},
    ).ciphertext
    pt = _check(
        world,
        openapi,
        "POST",
        "/v1/keys/{name}/decrypt",
        name="w-aes256-gcm",
        json={"ciphertext": ct},
    )
    assert pt.plaintext == b"hi"
    dk = _check(world, openapi, "POST", "/v1/keys/{name}/datakey", name="w-aes256-gcm", json={})
    assert dk.plaintext is not None
    assert len(dk.plaintext) == 32
    batch = _check(
        world,
        openapi,
        "POST",
        "/v1/keys/{name}/decrypt-batch",
        name="w-aes256-gcm",
        json={"items": [{"ciphertext": ct}, {"ciphertext": "x"}]},
    )
    assert batch.results[0].plaintext == b"hi"
    assert batch.results[1].error.code == "invalid_request"
    sig = _check(
        world, openapi, "POST", "/v1/keys/{name}/sign", name="w-ec-p256", json={"input": "aGk="}
    )
    valid = _check(
        world,
        openapi,
        "POST",
        "/v1/keys/{name}/verify",
        name="w-ec-p256",
        json={"input": "aGk=", "signature": sig.signature},
    )
    assert valid.valid is True
    _check(
        world, openapi, "POST", "/v1/keys/{name}/hmac", name="w-hmac-sha256", json={"input": "aGk="}
    )
    assert len(_check(world, openapi, "POST", "/v1/random", json={"bytes": 8}).random) == 8
    _check(world, openapi, "POST", "/generate-aes-key", json={})
    policy = {"keys": ["w-*"], "operations": ["encrypt"]}
    issued = _check(world, openapi, "POST", "/v1/tokens", json={"name": "w", "policies": [policy]})
    assert isinstance(issued, wire.IssuedToken)
    assert issued.info.policies == (wire.TokenPolicy(("encrypt",), ("w-*",)),)
    assert issued.token not in repr(issued)
    tokens_page = _check(world, openapi, "GET", "/v1/tokens")
    assert issued.info.id in {t.id for t in tokens_page.tokens}
    _check(world, openapi, "DELETE", "/v1/tokens/{id}", id=issued.info.id)
    head = _check(world, openapi, "GET", "/v1/audit")
    assert head.records > 0
    _check(world, openapi, "DELETE", "/v1/keys/{name}", name="w-ed25519")


def test_the_sdk_reads_answers_through_the_wire_classes(world: World) -> None:
    """client/core.py's parsers are the wire decoder: a real answer read by a real Call."""
    r = world.client.get("/v1/keys/w-ec-p256", headers=world.auth)
    info = core.read_answer(core.read_key("w-ec-p256"), r.status_code, r.content)
    assert type(info) is wire.KeyInfo
    assert info.public_key_pem is not None
    with pytest.raises(ServerError, match=r"KeyInfo\.latest_version"):
        core.read_answer(
            core.read_key("x"),
            200,
            r.content.replace(b'"latest_version":1', b'"latest_version":"1"'),
        )
    with pytest.raises(ServerError, match="no field"):
        core.read_answer(core.read_key("x"), 200, b'{"name": "x"}')


def test_enums_are_the_servers() -> None:
    assert tuple(keytypes.KEY_TYPES) == wire.KEY_TYPES
    assert set(wire.OPERATIONS) == tokens.OPERATIONS


def test_error_codes_are_one_table() -> None:
    codes = {e.code for e in wire.ERROR_CODES}
    assert len(codes) == len(wire.ERROR_CODES)
    assert {code for _, _, code in ERROR_TABLE} | set(HTTP_CODES.values()) <= codes
    assert set(CLIENT_CODES) == codes
    assert codes >= wire.RETRYABLE_CODES
    assert status_for(StorageError("x")) == (503, "storage_unavailable")
    assert status_for(PlatformError("x")) == (503, "attestation_unavailable")
    assert CLIENT_CODES["attestation_unavailable"] is ServerError


def test_secrets_stay_out_of_repr() -> None:
    for shape, secret in (
        (wire.ExportedKey("k", "aes256-gcm", 1, b"SECRET"), "SECRET"),
        (wire.DataKey("ekms:v1:x", b"SECRET"), "SECRET"),
        (wire.RsaKeyPair("PUBLIC", "SECRET"), "SECRET"),
        (wire.Plaintext(b"SECRET"), "SECRET"),
    ):
        assert secret not in repr(shape)
        assert "b'SECRET'" not in repr(shape)


def test_the_sdk_imports_the_wire_module_without_pydantic(tmp_path: Path) -> None:
    """wire is pure standard library at import: the base install has no pydantic."""
    import subprocess
    import sys

    probe = (
        "import sys; sys.modules['pydantic'] = None; sys.modules['pydantic_core'] = None\n"
        "import enclave_kms.wire, enclave_kms.client.core\n"
        "print(enclave_kms.wire.decode(enclave_kms.wire.Valid, {'valid': True}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Valid(valid=True)" in done.stdout
