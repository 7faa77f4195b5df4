"""The `hello` ceiling: a hello-world HTTPS endpoint on our own server stack.

Same stack and settings as the enclave's server (`enclave_kms.enclave.runtime`) for its hot
routes: a raw ASGI handler (what api/hot.py is) on uvicorn, TLS terminated by uvicorn, no
access log, no lifespan, 30 s keep-alive (FastAPI serves only the other routes since issue 12;
bench/stacks.py compares the layers). Whatever
enclave-kms does per request costs on top of this, so `hello` bounds every enclave-kms HTTP row
(issue 7: ≥ 70 % of it). Run with 1 and 2 worker processes.

Run as `python -m bench.peers.hello --port P --cert C --key K --workers N`.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

from bench.peers.base import LOOPBACK, HttpOp, HttpTarget, ManagedProcess, free_port, make_tls
from bench.stack_apps import asgi_app as app

__all__ = ["app", "start"]


REPO = Path(__file__).resolve().parents[2]


def start(workdir: Path, workers: int) -> HttpTarget:
    home = workdir / f"hello-{workers}"
    tls = make_tls(home / "tls")
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = ManagedProcess(
        f"hello ({workers} workers)",
        [
            sys.executable,
            "-m",
            "bench.peers.hello",
            "--port",
            str(port),
            "--cert",
            str(tls.server_cert),
            "--key",
            str(tls.server_key),
            "--workers",
            str(workers),
        ],
        home / "server.log",
        env=env,
        cwd=REPO,
    )
    try:
        import httpx

        context = ssl.create_default_context(cafile=str(tls.ca))
        base = f"https://{LOOPBACK}:{port}"

        def ready() -> bool:
            try:
                return httpx.get(base + "/v1/hello", verify=context, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        proc.wait_ready(ready)
    except BaseException:
        proc.stop()
        raise
    return HttpTarget(
        system="ceiling",
        base_url=base,
        ops={"hello": HttpOp("GET", "/v1/hello")},
        stop=proc.stop,
        pid=proc.process.pid,
        extra={"processes": workers, "stack": "uvicorn+uvloop+httptools+asgi"},
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run(
        "bench.peers.hello:app",
        host=LOOPBACK,
        port=args.port,
        workers=args.workers,
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        log_config=None,
        access_log=False,
        lifespan="off",
        loop="uvloop",  # the enclave's own stack (enclave/runtime.py)
        http="httptools",
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()
