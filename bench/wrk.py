"""HTTP load with `wrk` (Debian's package): keep-alive, N connections, a Lua request script.

Every run gets a generated script: the method, headers and JSON body of the operation, a
`request()` function when each request must differ (`{n}`: a unique key name for create-key),
and a `done()` that prints wrk's own counters and latency percentiles as one JSON line, so
nothing is scraped from the human-readable report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.measure import BenchError, RunSample, log
from bench.peers.base import HttpOp

MARKER = "BENCH-JSON "
THREADS = 2  # one per core: wrk shares the machine with the server it loads

_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"min_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    "MARKER", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.min, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("MARKER", MARKER)


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


def lua_script(op: HttpOp, tag: str, delay_ms: float = 0.0) -> str:
    """The wrk script for `op`; `tag` makes `{n}` unique across runs as well. `delay_ms`:
    each connection waits that long before each request (wrk's `delay()` hook), which
    bounds the rate a run offers (the soak's 80 % of capacity)."""
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in op.headers.items()
    )
    lines = [f"wrk.method = {_lua_string(op.method)}", headers]
    if delay_ms > 0:
        lines.append(f"function delay() return {delay_ms:.3f} end")
    if op.body is not None:
        lines.append(f"wrk.body = {_lua_string(op.body)}")
    if op.unique:
        lines += [
            "local threads = 0",
            "function setup(thread) threads = threads + 1; thread:set('tid', threads) end",
            "local counter = 0",
            f"local path_t = {_lua_string(op.path)}",
            f"local body_t = {_lua_string(op.body or '')}",
            "request = function()",
            "  counter = counter + 1",
            f"  local n = {_lua_string(tag)} .. '-' .. tostring(tid) .. '-' .. tostring(counter)",
            "  local path = string.gsub(path_t, '{n}', n)",
            "  local body = string.gsub(body_t, '{n}', n)",
            "  if body == '' then body = nil end",
            "  return wrk.format(nil, path, nil, body)",
            "end",
        ]
    lines.append(_DONE)
    return "\n".join(lines) + "\n"


def find_wrk(install: bool) -> str:
    """Path of wrk; installed from Debian when missing and we are root (and allowed to)."""
    found = shutil.which("wrk")
    if found:
        return found
    if not install:
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed and we are not root (apt-get install -y wrk)")
    log("  installing wrk from Debian (apt-get update; apt-get install -y wrk)")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk still not found after apt-get install")
    return found


def wrk_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" [")[0].removeprefix("wrk ") if first else "unknown"


def run_wrk(
    binary: str,
    base_url: str,
    op: HttpOp,
    *,
    seconds: float,
    connections: int,
    tag: str,
    threads: int = THREADS,
    delay_ms: float = 0.0,
) -> RunSample:
    """One bounded wrk run against `base_url + op.path`; errors are counted, not hidden."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as scratch:
        script = Path(scratch) / "request.lua"
        script.write_text(lua_script(op, tag, delay_ms))
        duration = max(1, round(seconds))
        argv = [
            binary,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base_url + op.path.replace("{n}", "probe"),
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        detail = (done.stderr or done.stdout).strip()[-300:]
        raise BenchError(f"wrk failed ({done.returncode}): {detail}")
    stats = json.loads(lines[-1][len(MARKER) :])
    requests = int(stats["requests"])
    errors = sum(int(stats[k]) for k in ("connect", "read", "write", "status", "timeout"))
    if requests == 0 or errors > requests // 100:
        raise BenchError(f"{errors} errors in {requests} requests to {op.path}")
    return RunSample(
        ops=requests - errors,
        seconds=int(stats["duration_us"]) / 1e6,
        p50_ms=int(stats["p50_us"]) / 1e3,
        p99_ms=int(stats["p99_us"]) / 1e3,
        min_ms=int(stats["min_us"]) / 1e3,
        max_ms=int(stats["max_us"]) / 1e3,
        errors=errors,
    )
