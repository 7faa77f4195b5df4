"""Token authority through the real HTTP app, from the position of token holders who want
more than they were given (issue 11's measured holes, each now refused)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.enclave.api_world import World, world_fixture
from tests.enclave.test_kms import wrap


@pytest.fixture
def world(tmp_path: Any) -> Iterator[World]:
    yield from world_fixture(tmp_path)


def issue(
    world: World, name: str, policies: list[dict[str, Any]], token: str | None = None, **extra: Any
) -> dict[str, Any]:
    r = world.post("/v1/tokens", {"name": name, "policies": policies, **extra}, token)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


MANAGER = [{"keys": ["orders*"], "operations": ["encrypt", "keys.read", "tokens.manage"]}]


def test_a_scoped_manager_sees_and_revokes_only_its_lineage(world: World) -> None:
    admin_id = world.client.get("/v1/tokens", headers=world.auth).json()["tokens"][0]["id"]
    other = issue(world, "other", [{"keys": ["*"], "operations": ["encrypt"]}])
    manager = issue(world, "orders-manager", MANAGER)
    child = issue(world, "child", MANAGER, manager["token"])
    assert child["info"]["issuer"] == manager["info"]["id"]
    listed = world.client.get("/v1/tokens", headers=world.bearer(manager["token"])).json()
    assert {t["id"] for t in listed["tokens"]} == {manager["info"]["id"], child["info"]["id"]}
    for outside in (admin_id, other["info"]["id"]):
        for token in (manager["token"], child["token"]):
            headers = world.bearer(token)
            assert world.client.get(f"/v1/tokens/{outside}", headers=headers).status_code == 404
            assert world.client.delete(f"/v1/tokens/{outside}", headers=headers).status_code == 404
    # The admin is untouched; the manager's revocation cascades to its child.
    assert world.client.get("/v1/keys", headers=world.auth).status_code == 200
    r = world.client.delete(f"/v1/tokens/{manager['info']['id']}", headers=world.auth)
    assert r.status_code == 200
    r = world.client.get("/v1/tokens", headers=world.bearer(child["token"]))
    assert r.status_code == 401
    assert "issuing token was revoked" in r.json()["error"]["message"]
    # The last root admin cannot be revoked, not even by itself.
    r = world.client.delete(f"/v1/tokens/{admin_id}", headers=world.auth)
    assert r.status_code == 409


def test_a_child_never_outlives_its_manager(world: World) -> None:
    manager = issue(world, "short", MANAGER, ttl_seconds=120)
    child = issue(world, "forever", MANAGER, manager["token"])
    assert child["info"]["expires_at"] == manager["info"]["expires_at"]


def test_listing_pages_never_name_keys_outside_the_grants(world: World) -> None:
    for name in ["aa-secret", "orders-1", "bb-secret", "orders-2", "zz-secret"]:
        assert world.post("/v1/keys", {"name": name}).status_code == 201
    reader = issue(world, "reader", [{"keys": ["orders*"], "operations": ["keys.read"]}])
    seen: list[str] = []
    after = ""
    while True:
        page = world.client.get(
            "/v1/keys", params={"limit": 1, "after": after}, headers=world.bearer(reader["token"])
        ).json()
        seen += [k["name"] for k in page["keys"]] + page["unreadable"]
        if page["next_after"] is None:
            break
        seen.append(page["next_after"])
        after = page["next_after"]
    assert set(seen) == {"orders-1", "orders-2"}


def test_duplicate_authorization_is_refused(world: World) -> None:
    headers = [("authorization", f"Bearer {world.admin}")] * 2
    r = world.client.get("/v1/keys", headers=headers)
    assert r.status_code == 401
    assert "more than one Authorization header" in r.json()["error"]["message"]


def test_import_only_into_keys_created_by_import(world: World) -> None:
    assert world.post("/v1/keys", {"name": "generated"}).status_code == 201
    importer = issue(world, "importer", [{"keys": ["*"], "operations": ["keys.import"]}])
    pem = world.client.get("/v1/sys/wrapping-key", headers=world.auth).json()["public_key_pem"]
    chosen = base64.b64encode(wrap(pem, os.urandom(32), hybrid=True)).decode()
    r = world.post("/v1/keys/generated/import", {"wrapped_material": chosen}, importer["token"])
    assert r.status_code == 409, r.text
    assert "generated in the enclave" in r.json()["error"]["message"]
    r = world.post(
        "/v1/keys/import",
        {"name": "byok", "type": "aes256-gcm", "wrapped_material": chosen},
        importer["token"],
    )
    assert r.status_code == 201, r.text
    again = base64.b64encode(wrap(pem, os.urandom(32), hybrid=True)).decode()
    r = world.post("/v1/keys/byok/import", {"wrapped_material": again}, importer["token"])
    assert r.status_code == 200, r.text
