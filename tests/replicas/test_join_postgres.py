"""The join over PostgreSQL: replica A serves the installation from a real PostgreSQL server
(holding its one-server lock); `replicas join` on CPU B opens the database without that lock,
obtains the storage root key from A by mutual attestation, seals its own copy there and exits.
The key's bytes appear nowhere in the database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from enclave_kms.enclave.custody.joiner import SRK_AAD
from tests.e2e.conftest import Recorder, ok, recording_logs
from tests.e2e.test_no_secrets import forms
from tests.pg_server import PostgresServer, fresh_database
from tests.replicas.world import World, init_admin, new_world

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def world(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with recording_logs(Recorder()) as recorder:
        w = new_world(tmp_path_factory.mktemp("pg-replicas"), recorder, fresh_database(pg))
        try:
            init_admin(w, w.serve("a", w.cpu_a))
            yield w
        finally:
            for running in list(w.servers):
                w.stop(running)


def test_a_replica_joins_over_postgresql_and_the_database_never_holds_the_key(
    world: World, pg: PostgresServer
) -> None:
    a = world.servers[0]
    world.join_once("b", world.cpu_b, a)
    platform_id = world.cpu_b.config.platform_instance_id.hex()[:16]
    own = world.record(f"storage-root-key@{platform_id}")
    srk = world.cpu_b.enclave(world.image.identity).unseal(
        own, SRK_AAD + b"@" + platform_id.encode()
    )
    assert srk == world.srk()
    assert ("sys.replicas.join", "ok") in [(op, o) for op, _t, o in world.audit_ops()]
    db = world.store.rsplit("/", 1)[1]
    dump = pg.sql("SELECT string_agg(encode(blob, 'hex'), '') FROM records", db=db)
    dump += pg.sql("SELECT string_agg(encode(record, 'hex'), '') FROM audit", db=db)
    raw = bytes.fromhex(dump.strip())
    assert [n for n in forms(srk) if n in raw] == []
    with world.client(a) as c:  # the peer still serves, holding the database
        assert ok(c.get("/v1/sys/replica-policy"))["mr_enclave"]
