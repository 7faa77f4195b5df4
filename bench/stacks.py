"""`python -m bench.stacks`: the HTTP layer chosen by measurement (issue 12, item 1).

Every candidate serves the same two endpoints (bench/stack_apps.py) over TLS 1.3 on loopback,
under wrk with the harness's settings, interleaved round by round (bench/measure.py) so the
other tenants of this shared machine hit every stack alike:

- uvicorn (uvloop + httptools, the enclave's server today) with FastAPI, Starlette, raw ASGI;
- granian (Rust HTTP and TLS) with FastAPI over ASGI, raw ASGI, and its own RSGI;
- hypercorn (h11, pure Python) with raw ASGI, the other maintained ASGI server.

Rows are `hello` and `encrypt` per stack (system `stack:<server>+<app>`); the table printed at
the end holds medians across rounds. Numbers and the choice: docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import ssl
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import BenchError, Case, log, run_interleaved, summarize
from bench.peers.base import LOOPBACK, HttpOp, ManagedProcess, TlsFiles, free_port, make_tls
from bench.wrk import find_wrk, run_wrk

REPO = Path(__file__).resolve().parents[1]
OPS = {
    "hello": HttpOp("GET", "/v1/hello"),
    "encrypt": HttpOp(
        "POST",
        "/v1/keys/k/encrypt",
        body='{"plaintext":"' + "QUFB" * 10 + 'QUE="}',  # 32 bytes
        headers={"content-type": "application/json"},
    ),
}


@dataclass(frozen=True)
class Stack:
    server: str  # uvicorn | granian | hypercorn
    app: str  # fastapi | starlette | asgi | rsgi

    @property
    def name(self) -> str:
        return f"{self.server}+{self.app}"

    def argv(self, port: int, tls: TlsFiles, workers: int) -> list[str]:
        target = f"bench.stack_apps:{self.app}_app"
        if self.server == "uvicorn":
            return [
                *(sys.executable, "-m", "uvicorn", target, "--host", LOOPBACK),
                *("--port", str(port), "--workers", str(workers)),
                *("--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)),
                *("--no-access-log", "--lifespan", "off", "--loop", "uvloop"),
                *("--http", "httptools", "--timeout-keep-alive", "30", "--log-level", "warning"),
            ]
        if self.server == "granian":
            return [
                *(sys.executable, "-m", "granian", target, "--host", LOOPBACK),
                *("--port", str(port), "--workers", str(workers)),
                *("--interface", "rsgi" if self.app == "rsgi" else "asgi"),
                *("--ssl-certificate", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)),
                *("--ssl-protocol-min", "tls1.3", "--loop", "uvloop", "--http", "1"),
                *("--no-ws", "--no-access-log", "--log-level", "warning"),
            ]
        if self.server == "hypercorn":
            return [
                *(sys.executable, "-m", "hypercorn", target, "--bind", f"{LOOPBACK}:{port}"),
                *("--workers", str(workers), "--worker-class", "uvloop"),
                *("--certfile", str(tls.server_cert), "--keyfile", str(tls.server_key)),
                *("--keep-alive", "30", "--log-level", "warning"),
            ]
        raise ValueError(self.server)


STACKS = (
    Stack("uvicorn", "fastapi"),
    Stack("uvicorn", "starlette"),
    Stack("uvicorn", "asgi"),
    Stack("granian", "fastapi"),
    Stack("granian", "asgi"),
    Stack("granian", "rsgi"),
    Stack("hypercorn", "asgi"),
)


def start(stack: Stack, workdir: Path, tls: TlsFiles, workers: int) -> tuple[str, ManagedProcess]:
    if importlib.util.find_spec(stack.server) is None:
        raise BenchError(
            f"{stack.server} is not installed (pip install -c constraints.txt -e '.[bench]')"
        )
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = ManagedProcess(
        stack.name,
        stack.argv(port, tls, workers),
        workdir / f"{stack.name}.log",
        env=env,
        cwd=REPO,
    )
    import httpx

    context = ssl.create_default_context(cafile=str(tls.ca))
    base = f"https://{LOOPBACK}:{port}"

    def ready() -> bool:
        try:
            hello = httpx.get(base + "/v1/hello", verify=context, timeout=2)
            op = OPS["encrypt"]
            enc = httpx.post(
                base + op.path, content=op.body, headers=dict(op.headers), verify=context
            )
        except httpx.HTTPError:
            return False
        return hello.status_code == 200 and enc.status_code == 200

    try:
        proc.wait_ready(ready)
    except BaseException:
        proc.stop()
        raise
    return base, proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stacks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=[], help="stack names (uvicorn+fastapi …)")
    args = parser.parse_args(argv)
    wrk = find_wrk(install=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-stacks-"))
    stops: list[Callable[[], None]] = []
    cases: list[Case] = []
    try:
        tls = make_tls(workdir / "tls")
        for stack in STACKS:
            if args.only and stack.name not in args.only:
                continue
            log(f"  starting {stack.name}")
            try:
                base, proc = start(stack, workdir, tls, args.workers)
            except BenchError as exc:
                log(f"  ! {stack.name}: {exc}")
                continue
            stops.append(proc.stop)
            for name, op in OPS.items():

                def run(base: str = base, op: HttpOp = op) -> object:
                    return run_wrk(
                        wrk, base, op, seconds=args.seconds, connections=args.connections, tag="s"
                    )

                cases.append(
                    Case(
                        name,
                        f"stack:{stack.name}",
                        "stacks",
                        run,  # type: ignore[arg-type]
                        extra={"processes": args.workers},
                    )
                )
        run_interleaved(cases, args.rounds)
    finally:
        for stop in stops:
            stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("| stack | workers | hello req/s | hello p99 ms | encrypt req/s | encrypt p99 ms |")
    print("|---|---|---|---|---|---|")
    rows = {(c.system, c.name): summarize(c) for c in cases if c.samples}
    for system in dict.fromkeys(c.system for c in cases):
        hello, enc = rows.get((system, "hello")), rows.get((system, "encrypt"))
        if hello is None or enc is None:
            continue
        print(
            f"| {system.removeprefix('stack:')} | {args.workers} | {hello['rps']:,.0f} "
            f"({hello['rps_min']:,.0f}-{hello['rps_max']:,.0f}) | {hello['p99_ms']} | "
            f"{enc['rps']:,.0f} ({enc['rps_min']:,.0f}-{enc['rps_max']:,.0f}) | {enc['p99_ms']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
