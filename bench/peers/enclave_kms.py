"""enclave-kms itself under the same HTTPS load as OpenBao: the real `enclave-kms serve`.

The server runs in simulation with everything a production request pays for: bearer-token
authentication, the audit chain (durable before each answer) and the sealed SQLite store,
each crossing the EDL to the host process. The harness gets the admin token from
`POST /v1/sys/init` with plain HTTPS (TLS unverified): the benchmark measures request
throughput, not client attestation, which is measured separately (SDK first answer).

`encrypt-1m-keys` runs against a second server whose store holds 1,000,000 extra key
records. They are written straight into SQLite by the harness as opaque blobs of the size of
a real sealed AES key record: the enclave never opens them (it reads only the key it uses),
so what they exercise is exactly what a large store changes for a request, the B-tree depth
of every lookup and the size of the database file and its cache. Creating them through the
API would take the better part of an hour, which says nothing about request latency.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import cbor2
import httpx

from bench.peers.base import LOOPBACK, HttpOp, HttpTarget, ManagedProcess, free_port, port_open

#: Row names the enclave-kms HTTP target should provide (same names as OpenBao's rows).
OPERATIONS = (
    "encrypt",
    "decrypt",
    "datakey",
    "sign-ecdsa-p256",
    "sign-ed25519",
    "sign-rsa-2048",
    "create-key",
    "encrypt-1m-keys",
)

SKIP_NOTE = (
    "enclave-kms HTTP rows skipped: the server is not plugged in yet "
    "(bench/peers/enclave_kms.py: enclave_kms_target)"
)

PLAINTEXT = base64.b64encode(bytes(range(32))).decode()


def enclave_kms_ops(token: str, ciphertext: str, keys: dict[str, str]) -> dict[str, HttpOp]:
    """A request set in the shape the harness loads (paths are a sketch of DESIGN §11)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> HttpOp:
        return HttpOp("POST", path, json.dumps(body, separators=(",", ":")), headers)

    data = {"plaintext": PLAINTEXT}
    return {
        "encrypt": post(f"/v1/keys/{keys['aes256-gcm']}/encrypt", data),
        "decrypt": post(f"/v1/keys/{keys['aes256-gcm']}/decrypt", {"ciphertext": ciphertext}),
        "datakey": post(f"/v1/keys/{keys['aes256-gcm']}/datakey", {"include_plaintext": True}),
        "sign-ecdsa-p256": post(f"/v1/keys/{keys['ec-p256']}/sign", {"input": PLAINTEXT}),
        "sign-ed25519": post(f"/v1/keys/{keys['ed25519']}/sign", {"input": PLAINTEXT}),
        "sign-rsa-2048": post(f"/v1/keys/{keys['rsa-2048']}/sign", {"input": PLAINTEXT}),
        "create-key": post("/v1/keys", {"name": "bench-{n}", "type": "aes256-gcm"}),
    }


def _fill(db: Path, count: int, blob_size: int) -> None:
    """Insert `count` opaque key records (see the module docstring for why this is faithful)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        filler = os.urandom(blob_size)
        batch = 50_000
        for start in range(0, count, batch):
            rows = [
                ("key", f"filler-{i:07d}", 1, filler)
                for i in range(start, min(count, start + batch))
            ]
            conn.executemany("INSERT INTO records(kind, id, version, blob) VALUES (?,?,?,?)", rows)
            conn.commit()
    finally:
        conn.close()


def target_dir(workdir: Path, *, prefill: int = 0, workers: int = 2) -> Path:
    """The data directory of the target of these settings (its sim-root.pem for the SDK)."""
    suffix = f"-{prefill}" if prefill else ""
    return workdir / f"enclave-kms{suffix}-w{workers}"


def enclave_kms_target(workdir: Path, *, prefill: int = 0, workers: int = 2) -> HttpTarget | None:
    """Start `enclave-kms serve --workers N` (simulation) and describe its operations."""
    data_dir = target_dir(workdir, prefill=prefill, workers=workers)
    name = data_dir.name
    port = free_port()
    cli = Path(sys.executable).with_name("enclave-kms")
    argv = [
        str(cli),
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"{LOOPBACK}:{port}",
        "--workers",
        str(workers),
    ]
    proc = ManagedProcess(name, argv, workdir / f"{name}.log")
    try:
        proc.wait_ready(lambda: port_open(port), timeout=180)
        base = f"https://{LOOPBACK}:{port}"
        with httpx.Client(base_url=base, verify=False, timeout=120) as http:
            reply = http.post("/v1/sys/init")
            reply.raise_for_status()
            token = reply.json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            keys: dict[str, str] = {}
            for kind in ("aes256-gcm", "ec-p256", "ed25519", "rsa-2048"):
                keys[kind] = f"bench-{kind}"
                http.post(
                    "/v1/keys", json={"name": keys[kind], "type": kind}, headers=auth
                ).raise_for_status()
            enc = http.post(
                f"/v1/keys/{keys['aes256-gcm']}/encrypt",
                json={"plaintext": PLAINTEXT},
                headers=auth,
            )
            enc.raise_for_status()
            ciphertext = enc.json()["ciphertext"]
            if prefill:
                blob = len(
                    sqlite3.connect(data_dir / "kms.sqlite")
                    .execute(
                        "SELECT blob FROM records WHERE kind='key' AND id=?", (keys["aes256-gcm"],)
                    )
                    .fetchone()[0]
                )
                _fill(data_dir / "kms.sqlite", prefill, blob)
        ops = enclave_kms_ops(token, ciphertext, keys)
        if prefill:
            ops = {"encrypt-1m-keys": ops["encrypt"]}
        else:
            ops.pop("encrypt-1m-keys", None)
        for op in ops.values():  # every request must succeed once before the load
            with httpx.Client(base_url=base, verify=False, timeout=120) as http:
                body = op.body.replace("{n}", "warmup") if op.body else None
                http.request(
                    op.method, op.path, content=body, headers=dict(op.headers)
                ).raise_for_status()
    except BaseException:
        proc.stop()
        raise
    return HttpTarget(
        system="enclave-kms",
        base_url=base,
        ops=ops,
        stop=proc.stop,
        extra={"processes": workers},
        probe=lambda: audit_batches_since(data_dir / "kms.sqlite"),
        pid=proc.process.pid,
    )


def _audit_counts(conn: sqlite3.Connection) -> dict[int, int]:
    rows = conn.execute("SELECT chain, COUNT(*) FROM audit GROUP BY chain").fetchall()
    return {int(chain): int(n) for chain, n in rows}


def audit_batches_since(db: Path) -> Callable[[], dict[str, float]]:
    """Mark the audit log now; the returned call gives the group-commit batches appended
    since (every chain): one signed record closes each batch (DESIGN §11)."""
    uri = f"file:{db}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        mark = _audit_counts(conn)

    def batches() -> dict[str, float]:
        sizes: list[int] = []
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            for chain in _audit_counts(conn):
                rows = conn.execute(
                    "SELECT record FROM audit WHERE chain=? ORDER BY seq LIMIT -1 OFFSET ?",
                    (chain, mark.get(chain, 0)),
                )
                run = 0
                for (record,) in rows:
                    run += 1
                    if cbor2.loads(record)[1]:  # the batch's signed last record
                        sizes.append(run)
                        run = 0
        if not sizes:
            return {}
        return {
            "audit_records": float(sum(sizes)),
            "audit_batches": float(len(sizes)),
            "audit_batch_max": float(max(sizes)),
        }

    return batches
