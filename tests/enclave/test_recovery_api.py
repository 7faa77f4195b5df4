"""The running installation's recovery routes (enclave/api/routes_recovery.py), in process:
only a root admin splits, shares are served sealed, a set the host altered is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from enclave_kms.client.recovery import ShareFile, generate_officer_key, load_officer_key
from enclave_kms.enclave.custody.shares import SET_ID
from enclave_kms.wire import custody as wire
from tests.enclave.api_world import World, world_fixture


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from world_fixture(tmp_path)


def officers(n: int) -> list[tuple[bytes, bytes]]:
    return [generate_officer_key() for _ in range(n)]


def test_split_status_and_shares(world: World) -> None:
    keys = officers(3)
    empty = world.client.get("/v1/sys/recovery").json()
    assert empty["state"] == "not-configured"
    assert empty["set_id"] is None
    assert empty["officers"] == []
    body = {"threshold": 2, "officers": [pub.decode() for _, pub in keys]}
    r = world.post("/v1/sys/recovery/split", body)
    assert r.status_code == 201, r.text
    summary = r.json()
    assert (summary["threshold"], summary["shares"]) == (2, 3)
    status = world.client.get("/v1/sys/recovery").json()
    assert status["state"] == "ready"
    assert status["set_id"] == summary["set_id"]
    opened = set()
    for private, public in keys:
        fingerprint = wire.officer_fingerprint(wire.load_officer_public(public))
        doc = world.client.get(f"/v1/sys/recovery/shares/{fingerprint}").json()
        assert doc["verified_by_enclave"] is True
        opened.add(ShareFile.parse(doc).open(load_officer_key(private)))
    assert len(opened) == 3
    unknown = "ab" * 32
    assert world.client.get(f"/v1/sys/recovery/shares/{unknown}").status_code == 404
    events = [(e["op"], e["outcome"]) for e in world.audit_events()]
    assert ("sys.recovery.split", "ok") in events


def test_only_a_root_admin_splits(world: World) -> None:
    body = {"threshold": 2, "officers": [pub.decode() for _, pub in officers(2)]}
    anonymous = world.client.post("/v1/sys/recovery/split", json=body)
    assert anonymous.status_code == 401
    narrow = world.token(["sys"])  # holds the permission, but is not a root admin
    r = world.post("/v1/sys/recovery/split", body, token=narrow)
    assert r.status_code == 403, r.text
    assert world.client.get("/v1/sys/recovery").json()["state"] == "not-configured"


@pytest.mark.parametrize(
    "change",
    [
        {"threshold": 1},
        {"threshold": 3},
        {"officers": ["not a key"] * 2},
        {"extra": True},
    ],
)
def test_split_refuses_bad_requests(world: World, change: dict[str, object]) -> None:
    body: dict[str, object] = {
        "threshold": 2,
        "officers": [pub.decode() for _, pub in officers(2)],
    }
    r = world.post("/v1/sys/recovery/split", {**body, **change})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_a_set_the_host_altered_is_refused(world: World) -> None:
    keys = officers(2)
    body = {"threshold": 2, "officers": [pub.decode() for _, pub in keys]}
    assert world.post("/v1/sys/recovery/split", body).status_code == 201
    version, blob = world.storage.get(*SET_ID) or (0, b"")
    outer = cbor2.loads(blob)
    inner = cbor2.loads(outer["body"])
    inner["created"] = "1970-01-01T00:00:00+00:00"
    outer["body"] = cbor2.dumps(inner, canonical=True)
    assert world.storage.put(*SET_ID, version, cbor2.dumps(outer))
    r = world.client.get("/v1/sys/recovery")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "integrity_violation"
