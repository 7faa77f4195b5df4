"""`serve --storage postgresql://...`: the real KMS (host + enclave processes) on a real
PostgreSQL server, from a user's and from a hostile database operator's position."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from enclave_kms.errors import ConfigError
from tests.e2e.conftest import Server, b64, fails, ok, served, unb64
from tests.pg_server import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def kms(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # an outage costs each refused request the connect timeout: 3 s instead of 10
    storage = pg.url + "?connect_timeout=3"
    with served(tmp_path_factory.mktemp("pg-kms"), storage=storage) as server:
        yield server


def _encrypt(c: httpx.Client, name: str, plain: bytes) -> str:
    ct: str = ok(c.post(f"/v1/keys/{name}/encrypt", json={"plaintext": b64(plain)}))["ciphertext"]
    return ct


def test_records_and_audit_live_in_the_database_sealed(kms: Server, pg: PostgresServer) -> None:
    plain = os.urandom(32)
    with kms.client() as c:
        ok(c.post("/v1/keys", json={"name": "pg-app", "type": "aes256-gcm"}), 201)
        ct = _encrypt(c, "pg-app", plain)
    assert int(pg.sql("SELECT count(*) FROM records WHERE kind = 'key' AND id = 'pg-app'")) == 1
    assert int(pg.sql("SELECT count(*) FROM audit")) > 0
    dump = pg.sql("SELECT string_agg(encode(blob, 'hex'), '') FROM records")
    dump += pg.sql("SELECT string_agg(encode(record, 'hex'), '') FROM audit")
    for secret in (plain, kms.token.encode()):
        assert secret.hex() not in dump  # the database sees only sealed bytes
    kms.restart()  # everything comes back from the database, nothing from the data directory
    with kms.client() as c:
        got = ok(c.post("/v1/keys/pg-app/decrypt", json={"ciphertext": ct}))["plaintext"]
        assert unb64(got) == plain


def test_database_outage_is_a_typed_503_and_nothing_is_acknowledged(
    kms: Server, pg: PostgresServer
) -> None:
    with kms.client() as c:
        ok(c.post("/v1/keys", json={"name": "pg-outage", "type": "aes256-gcm"}), 201)
        ct = _encrypt(c, "pg-outage", b"before")
        pg.stop("immediate")
        try:
            for resp in (
                c.post("/v1/keys/pg-outage/encrypt", json={"plaintext": b64(b"x")}),
                c.post("/v1/keys", json={"name": "pg-during", "type": "aes256-gcm"}),
            ):
                assert resp.headers["content-type"].startswith("application/json")
                assert resp.status_code == 503, resp.text
                assert resp.json()["error"]["code"] in ("storage_unavailable", "audit_failed")
        finally:
            pg.start()
        # The audit chain failed closed on the batch in flight; once the database answers
        # again the enclave learns where its chain ends (as a restart would) and goes on,
        # without a restart: the first requests may still be refused, none is lost.
        for _ in range(100):
            resp = c.post("/v1/keys/pg-outage/decrypt", json={"ciphertext": ct})
            if resp.status_code == 200:
                break
            assert resp.status_code == 503, resp.text
            time.sleep(0.1)
        assert unb64(ok(resp)["plaintext"]) == b"before"
        _encrypt(c, "pg-outage", b"after")
        fails(c.get("/v1/keys/pg-during"), 404, "not_found")  # its 503 acknowledged nothing
    kms.restart()  # and the chain the enclave continued verifies at the next start
    with kms.client() as c:
        got = ok(c.post("/v1/keys/pg-outage/decrypt", json={"ciphertext": ct}))["plaintext"]
        assert unb64(got) == b"before"


def test_a_second_server_on_the_same_database_is_refused(
    kms: Server, pg: PostgresServer, tmp_path: Path
) -> None:
    with (
        pytest.raises(ConfigError, match="in use by other enclave-kms servers"),
        served(tmp_path / "other", storage=pg.url, init=False),
    ):
        pass
    with kms.client() as c:
        ok(c.get("/v1/health"))


def test_a_record_altered_in_the_database_fails_closed(kms: Server, pg: PostgresServer) -> None:
    with kms.client() as c:
        ok(c.post("/v1/keys", json={"name": "pg-victim", "type": "aes256-gcm"}), 201)
        ok(c.post("/v1/keys", json={"name": "pg-bystander", "type": "aes256-gcm"}), 201)
        ct = _encrypt(c, "pg-bystander", b"fine")
    pg.sql(
        "UPDATE records SET blob = overlay(blob placing '\\x00'::bytea from 40 for 1) "
        "WHERE kind = 'key' AND id = 'pg-victim'"
    )
    kms.restart()  # a running enclave keeps what it has read; a restart reads the database
    with kms.client() as c:
        message = fails(c.get("/v1/keys/pg-victim"), 502, "integrity_violation")
        assert "key/pg-victim" in message
        got = ok(c.post("/v1/keys/pg-bystander/decrypt", json={"ciphertext": ct}))["plaintext"]
        assert unb64(got) == b"fine"
