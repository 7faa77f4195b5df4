"""`python -m bench.replicas`: replicas on PostgreSQL against one server on SQLite, same run.

Rows (all through the SDK, over attested TLS, on one machine):
- encrypt rate: 1 server on SQLite, then 2 replicas on one PostgreSQL database (the
  client threads split over both), THREADS threads for SECONDS seconds each;
- per-request cost of the replicas' state-head check: the storage `get` calls per encrypt
  and their mean latency, read from the replica's own /metrics;
- failover: kill -9 of the replica a FailoverKMSClient writes through, to its next
  acknowledged write (key creations), REPEAT times.

Needs Debian's PostgreSQL (scripts/ensure-postgres.sh); about a minute and a half. Reuses the
test suite's PostgreSQL and replica launchers (tests/pg_server.py, tests/e2e/replica_cluster.py).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from tests.e2e.replica_cluster import Cluster, cluster, free_port
from tests.pg_server import fresh_database, postgres_server

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import FailoverKMSClient, KMSClient
from enclave_kms.client.tls import unverified_context
from enclave_kms.errors import NotFoundError, ServerError
from enclave_kms.host.service import ServeOptions, start

THREADS = 4
SECONDS = 5.0
REPEAT = 3


def _rate(clients: list[KMSClient], threads: int, seconds: float) -> float:
    """Encrypts per second, `threads` threads spread over `clients`."""
    counts = [0] * threads
    stop = threading.Event()

    def run(index: int) -> None:
        client = clients[index % len(clients)]
        while not stop.is_set():
            client.encrypt("bench", b"x" * 64)
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    begin = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - begin)


def _sqlite_rate(base: Path, threads: int, seconds: float) -> float:
    running = start(ServeOptions(data_dir=base / "sqlite", port=free_port()))
    try:
        root = TrustRoot.from_pem(running.root_path.read_bytes())
        ident = running.identity
        policy = Policy(
            mr_enclave=(bytes.fromhex(ident["mr_enclave"]),),
            mr_signer=bytes.fromhex(ident["mr_signer"]),
            isv_prod_id=ident["isv_prod_id"],
            min_isv_svn=ident["isv_svn"],
            simulated_root=root.spki_sha256,
        )
        with KMSClient(running.url, policy=policy, trust_root=root) as kms:
            kms.init()
            kms.create_key("bench")
            kms.encrypt("bench", b"warm")
            return _rate([kms], threads, seconds)
    finally:
        running.stop()


def _metric(url: str, pattern: str) -> float:
    text = httpx.get(f"{url}/metrics", verify=unverified_context(), timeout=10).text
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def _storage_gets(url: str) -> tuple[float, float]:
    count = _metric(url, r'ekms_storage_call_seconds_count\{op="get"\} (\S+)')
    total = _metric(url, r'ekms_storage_call_seconds_sum\{op="get"\} (\S+)')
    return count, total


def _replica_rows(found: Cluster, threads: int, seconds: float, repeat: int) -> dict[str, float]:
    policy, root = found.policy(), found.trust_root
    first = found.replicas[0]
    with KMSClient(first.url, policy=policy, trust_root=root) as kms:
        token = kms.init().token
        kms.create_key("bench")
    clients = [
        KMSClient(r.url, token=token, policy=policy, trust_root=root) for r in found.replicas
    ]
    rows: dict[str, float] = {}
    try:
        for c in clients:
            c.encrypt("bench", b"warm")
        rows["encrypt_per_s_2_replicas_pg"] = _rate(clients, threads, seconds)
        # the per-request check, measured on one replica with one client thread
        before = _storage_gets(first.url)
        n = 200
        for _ in range(n):
            clients[0].encrypt("bench", b"y")
        after = _storage_gets(first.url)
        calls = after[0] - before[0]
        rows["storage_gets_per_encrypt"] = calls / n
        rows["storage_get_mean_ms"] = 1000 * (after[1] - before[1]) / max(calls, 1)
    finally:
        for c in clients:
            c.close()
    rows["failover_ms_median"] = statistics.median(
        _failover(found, token, policy, root) for _ in range(repeat)
    )
    return rows


def _failover(found: Cluster, token: str, policy: Policy, root: TrustRoot) -> float:
    """kill -9 of the replica in use → the next acknowledged write through the SDK (ms)."""
    urls = [r.url for r in found.replicas]
    with FailoverKMSClient(urls, token=token, policy=policy, trust_root=root) as kms:
        for r in found.replicas:  # attest and pin every replica before the kill
            KMSClient(r.url, token=token, policy=policy, trust_root=root).close()
        write_once(kms, f"f-{time.monotonic_ns()}")
        victim = next(r for r in found.replicas if r.url == kms.current_url)
        found.kill(victim)
        killed = time.perf_counter()
        write_once(kms, f"f-{time.monotonic_ns()}")
        elapsed = 1000 * (time.perf_counter() - killed)
    found.start(victim)
    return elapsed


def write_once(kms: FailoverKMSClient, name: str) -> None:
    """Create `name` exactly once, as an application should around a write whose outcome the
    SDK reports as unknown (a connection lost after the request left): look, then retry."""
    while True:
        try:
            kms.create_key(name)
            return
        except ServerError:
            try:
                kms.get_key(name)
                return  # it landed before the connection broke
            except NotFoundError:
                continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--repeat", type=int, default=REPEAT)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="ekms-bench-replicas-"))
    rows: dict[str, float] = {}
    rows["encrypt_per_s_1_sqlite"] = _sqlite_rate(base, args.threads, args.seconds)
    with postgres_server() as pg, cluster(base / "pg", fresh_database(pg), 2) as found:
        rows.update(_replica_rows(found, args.threads, args.seconds, args.repeat))
    for key, value in rows.items():
        print(f"{key:32} {value:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
