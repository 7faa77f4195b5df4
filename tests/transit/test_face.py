"""The transit face in process (fast): the mount is configurable and validated, every
request is audited with its actor under a `transit.` operation, refusals come in Vault's
shape, and parameters the face cannot honour are refused rather than silently ignored."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from enclave_kms.enclave.api.app import create_app
from enclave_kms.enclave.api.transit import validate_mount
from enclave_kms.errors import ConfigError
from tests.enclave.api_world import World, make_world

MSG = base64.b64encode(b"face").decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = make_world(tmp_path_factory.mktemp("face"), max_body_bytes=4096)
    with w.client:
        yield w
    w.storage.close()


def vault(w: World, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"X-Vault-Token": token or w.admin}
    return w.client.request(method, "/v1/transit/" + path, json=body, headers=headers)


def test_mount_is_configurable_and_validated(world: World) -> None:
    client = TestClient(create_app(world.ctx, transit_mount="crypto-team"))
    headers = {"X-Vault-Token": world.admin}
    assert client.post("/v1/crypto-team/keys/m1", json={}, headers=headers).status_code == 200
    r = client.post("/v1/crypto-team/encrypt/m1", json={"plaintext": MSG}, headers=headers)
    assert r.json()["data"]["ciphertext"].startswith("vault:v1:")
    assert client.post("/v1/transit/encrypt/m1", json={}, headers=headers).status_code == 404
    for bad in ("keys", "sys", "tokens", "", "Transit", "a/b", "x" * 65):
        with pytest.raises(ConfigError):
            validate_mount(bad)


def test_audited_with_actor_and_outcome(world: World) -> None:
    assert vault(world, "POST", "keys/au1", {}).status_code == 200
    assert vault(world, "POST", "encrypt/au1", {"plaintext": MSG}).status_code == 200
    assert vault(world, "POST", "decrypt/au1", {"ciphertext": "vault:v1:AAAA"}).status_code == 400
    assert vault(world, "POST", "encrypt/au1", {"plaintext": MSG}, token="bad").status_code == 403
    events = world.audit_events()[-4:]
    assert [(e["op"], e["target"], e["outcome"]) for e in events] == [
        ("transit.keys.create", "au1", "ok"),
        ("transit.encrypt", "au1", "ok"),
        ("transit.decrypt", "au1", "invalid_request"),
        ("transit.encrypt", "au1", "unauthenticated"),
    ]
    assert events[1]["actor"] != "anonymous"
    assert events[3]["actor"] == "anonymous"


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("keys/r1", {"derived": True}, "derivation"),
        ("keys/r1", {"type": "chacha20-poly1305"}, "unknown key type"),
        ("keys/r1", {"auto_rotate_period": "24h"}, "automatic rotation"),
        ("keys/r1", {"allow_plaintext_backup": True}, "plaintext backups"),
        ("encrypt/rf", {"plaintext": MSG, "context": MSG}, "derivation"),
        ("encrypt/rf", {"plaintext": MSG, "nonce": MSG}, "nonces"),
        ("encrypt/rf", {"plaintext": MSG, "key_version": 7}, "latest key version"),
        ("encrypt/rf", {"plaintext": "%%%"}, "not valid base64"),
        ("encrypt/rf", {}, "missing plaintext"),
        ("datakey/plaintext/rf", {"bits": 512}, "256 bits"),
        ("datakey/other/rf", {}, "plaintext or wrapped"),
        ("hash/md5", {"input": MSG}, "unsupported algorithm"),
        ("random", {"bytes": 5000}, "random length"),
        ("keys/rf/config", {"deletion_allowed": False}, "deletion_allowed"),
        ("keys/rf/config", {"exportable": True}, "exportable is fixed"),
    ],
)
def test_unsupported_options_are_refused_in_vault_shape(
    world: World, path: str, body: dict[str, Any], needle: str
) -> None:
    vault(world, "POST", "keys/rf", {})
    r = vault(world, "POST", path, body)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert list(doc) == ["errors"]
    assert needle in doc["errors"][0]


def test_framework_failures_in_vault_shape(world: World) -> None:
    too_big = {"plaintext": base64.b64encode(b"x" * 8192).decode()}
    r = vault(world, "POST", "encrypt/rf", too_big)
    assert (r.status_code, list(r.json())) == (413, ["errors"])
    r = world.client.post(
        "/v1/transit/encrypt/rf", content=b"{not json", headers={"X-Vault-Token": world.admin}
    )
    assert (r.status_code, list(r.json())) == (400, ["errors"])
    r = vault(world, "POST", "keys/bad name!", {})
    assert r.status_code in (400, 404)
    assert list(r.json()) == ["errors"]
    r = vault(world, "PATCH", "encrypt/rf", {})
    assert (r.status_code, r.json()) == (405, {"errors": ["unsupported operation"]})


def test_not_in_the_native_openapi_document(world: World) -> None:
    paths = world.client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/v1/transit")]


def test_a_ciphertext_opens_only_under_its_own_key(world: World) -> None:
    for name in ("own", "other"):
        assert vault(world, "POST", f"keys/{name}", {}).status_code == 200
    ct = vault(world, "POST", "encrypt/own", {"plaintext": MSG}).json()["data"]["ciphertext"]
    r = vault(world, "POST", "decrypt/other", {"ciphertext": ct})
    assert r.status_code == 400
    assert "does not authenticate" in r.json()["errors"][0]
    r = vault(world, "POST", "decrypt/other", {"batch_input": [{"ciphertext": ct}]})
    assert r.status_code == 400
    assert "error" in r.json()["data"]["batch_results"][0]
    r = vault(world, "POST", "decrypt/own", {"ciphertext": ct.replace("vault:v1:", "vault:v2:")})
    assert r.status_code == 400  # a version the key does not have
