"""Where a request's CPU goes: `python -m bench.budget [--rounds R] [--seconds S]`.

Throughput on a 2-core machine is bounded by CPU, and on a shared virtual machine the rate
of a run swings with the neighbours; CPU time per request, split by process, moves much
less and says what each figure is made of. Each run loads one server with wrk (64
connections, the benchmark's requests) and reads, before and after, the user and system
CPU time of the server's processes (`/proc/PID/stat` of the server and every process under
it: enclave-kms's host and each enclave worker), of wrk, and of the whole machine
(`/proc/stat`: busy, softirq, steal). Rounds are interleaved across the servers.

It also measures the KMS's ASGI application alone, in this process, with no server, TLS or
EDL: 64 concurrent encrypt requests through the real app (token check, key lookup, AES-GCM,
audit record durable in SQLite before the answer), as CPU per request and Python function
calls per request (cProfile's count, which does not depend on the machine's speed).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from bench.measure import BenchError, log
from bench.peers.base import HttpOp, HttpTarget
from bench.wrk import find_wrk, lua_script

CONNECTIONS = 64
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int, int]:
    """(parent pid, user ticks, system ticks) of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]), int(fields[12])


def tree_cpu(leader: int) -> dict[str, tuple[int, int]]:
    """User and system ticks of `leader` ("server") and of every process below it
    ("children": enclave-kms's enclave workers), summed."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = _stat(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    out = {"server": (0, 0), "children": (0, 0)}
    for pid, (_, user, system) in stats.items():
        role = None
        walk = pid
        for _ in range(64):
            if walk == leader:
                role = "server" if pid == leader else "children"
                break
            walk = stats.get(walk, (0, 0, 0))[0]
            if walk <= 1:
                break
        if role is not None:
            u, s = out[role]
            out[role] = (u + user, s + system)
    return out


def machine_ticks() -> dict[str, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    return {
        "busy": user + nice + system + irq + softirq,
        "softirq": softirq + irq,
        "steal": steal,
        "idle": idle + iowait,
    }


def load_run(wrk: str, target: HttpTarget, op: HttpOp, seconds: int) -> dict[str, float]:
    """One wrk run with the CPU accounting around it; µs of CPU per request by role."""
    if target.pid is None:
        raise BenchError(f"{target.system}: no server pid to account")
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as scratch:
        script = Path(scratch) / "request.lua"
        script.write_text(lua_script(op, f"budget{time.monotonic_ns()}"))
        argv = [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script)]
        before, m0, t0 = tree_cpu(target.pid), machine_ticks(), os.times()
        proc = subprocess.Popen(
            [*argv, target.base_url + op.path], stdout=subprocess.PIPE, text=True
        )
        out, _ = proc.communicate(timeout=seconds + 60)
        after, m1, t1 = tree_cpu(target.pid), machine_ticks(), os.times()
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH-JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode})")
    stats = json.loads(line[len("BENCH-JSON ") :])
    requests = stats["requests"]
    errors = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    if requests == 0 or errors:
        raise BenchError(f"{target.system}: {requests} requests, {errors} errors")

    def per(ticks: float) -> float:
        return round(float(ticks) * TICK_US / int(requests), 1)

    row = {
        "req_s": round(requests / (stats["duration_us"] / 1e6)),
        "p99_ms": round(stats["p99_us"] / 1000, 1),
        "server_user_us": per(after["server"][0] - before["server"][0]),
        "server_sys_us": per(after["server"][1] - before["server"][1]),
        "children_user_us": per(after["children"][0] - before["children"][0]),
        "children_sys_us": per(after["children"][1] - before["children"][1]),
        "machine_busy_us": per(m1["busy"] - m0["busy"]),
        "machine_softirq_us": per(m1["softirq"] - m0["softirq"]),
        "steal_us": per(m1["steal"] - m0["steal"]),
    }
    # wrk is this process's only child reaped in between: its CPU is the children's delta.
    wrk_s = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
    row["wrk_us"] = round(wrk_s * 1e6 / requests, 1)
    return row


def app_layer(requests: int = 20_000, concurrency: int = CONNECTIONS) -> dict[str, float]:
    """The KMS ASGI app alone, in process (module docstring)."""
    from tests.enclave.api_world import make_world

    home = Path(tempfile.mkdtemp(prefix="bench-app-"))
    try:
        world = make_world(home)
        world.post("/v1/keys", {"name": "k", "type": "aes256-gcm"}).raise_for_status()
        app = world.client.app
        body = json.dumps({"plaintext": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}).encode()
        headers = [
            (b"host", b"kms"),
            (b"authorization", f"Bearer {world.admin}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        statuses: dict[int, int] = {}

        async def one() -> None:
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
                "headers": headers,
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 443),
            }
            delivered = False

            async def receive() -> dict[str, Any]:
                nonlocal delivered
                if delivered:
                    await asyncio.sleep(3600)
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses[message["status"]] = statuses.get(message["status"], 0) + 1

            await app(scope, receive, send)

        async def load(total: int) -> None:
            async def worker() -> None:
                for _ in range(total // concurrency):
                    await one()

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        def measured(run: Callable[[], None]) -> tuple[float, int]:
            statuses.clear()
            c0 = time.process_time()
            run()
            done = sum(statuses.values())
            if set(statuses) != {200}:
                raise BenchError(f"app layer answered {statuses}")
            return (time.process_time() - c0) * 1e6 / done, done

        asyncio.run(load(2_000))  # warm-up: caches, first records
        cpu, _ = measured(lambda: asyncio.run(load(requests)))
        profile = cProfile.Profile()
        profile.enable()
        _, done = measured(lambda: asyncio.run(load(requests // 4)))
        profile.disable()
        calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        world.ctx.audit.close()
        return {"cpu_us_per_request": round(cpu, 1), "calls_per_request": round(calls / done)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    from bench.peers import hello, openbao
    from bench.peers.enclave_kms import enclave_kms_target

    wrk = find_wrk(install=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    targets: list[tuple[str, HttpTarget, str]] = []
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        for workers in (1, 2):
            kms = enclave_kms_target(workdir, workers=workers)
            if kms is None:
                raise BenchError("enclave-kms target unavailable")
            targets.append((f"enclave-kms encrypt, {workers} worker(s)", kms, "encrypt"))
            targets.append(
                (f"enclave-kms sign-ecdsa-p256, {workers} worker(s)", kms, "sign-ecdsa-p256")
            )
        targets.append(("hello (uvicorn + raw ASGI), 1 process", hello.start(workdir, 1), "hello"))
        bao = openbao.start(workdir)
        targets.append(("openbao encrypt", bao, "encrypt"))
        targets.append(("openbao sign-ecdsa-p256", bao, "sign-ecdsa-p256"))
        for r in range(args.rounds):
            for name, target, op in targets:
                row = load_run(wrk, target, target.ops[op], args.seconds)
                rows.setdefault(name, []).append(row)
                log(f"round {r + 1} {name}: {row}")
    finally:
        stopped: set[int] = set()
        for _, target, _ in targets:
            if id(target) not in stopped:
                stopped.add(id(target))
                target.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    layer = app_layer()
    log(f"app layer in process: {layer}")
    result = {
        "rows": {
            name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            for name, runs in rows.items()
        },
        "runs": rows,
        "app_layer": layer,
        "load_average": os.getloadavg(),
    }
    print(render(result))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def render(result: dict[str, Any]) -> str:
    head = (
        "| run (medians) | req/s | p99 ms | server user | server sys | workers user | "
        "workers sys | wrk | machine busy | of it softirq | steal |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['req_s']:,.0f} | {r['p99_ms']} | {r['server_user_us']} | "
            f"{r['server_sys_us']} | {r['children_user_us']} | {r['children_sys_us']} | "
            f"{r['wrk_us']} | "
            f"{r['machine_busy_us']} | {r['machine_softirq_us']} | {r['steal_us']} |"
        )
    layer = result["app_layer"]
    lines.append(
        f"\nCPU µs per request. App layer in process (no server, TLS or EDL): "
        f"{layer['cpu_us_per_request']} µs and {layer['calls_per_request']} Python calls "
        "per encrypt."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
