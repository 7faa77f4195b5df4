"""The machine description, the ratios between rows, and the JSON / markdown outputs.

The JSON keeps one shape for other tools: `{"machine": {...}, "results": [row, ...]}` where
every row has `name`, `system`, `rps`, `p50_ms`, `p99_ms`, `runs` and optional extra fields
(`rps_min`/`rps_max`, `min_ms`/`max_ms`, `processes`, `vector`, `ratio_to_peer`, ...).
Run metadata (mode, rounds, skipped cases) lives under `machine["run"]`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SYSTEM_ORDER = ("enclave-kms", "openbao", "pykmip", "dcap-qvl", "ceiling")
NAME_ORDER = (
    "hello",
    "encrypt",
    "decrypt",
    "datakey",
    "sign-ecdsa-p256",
    "sign-ed25519",
    "sign-rsa-2048",
    "create-key",
    "encrypt-1m-keys",
    "verify-dcap",
    "verify-dcap-cold",
    "sdk-first-answer",
    "ratls-handshake",
    "cli-command",
    "platform-init",
    "image-build-sign",
    "quote-gen",
    "seal",
    "unseal",
)
PEER_ORDER = ("openbao", "dcap-qvl", "pykmip")
CORE_FIELDS = ("name", "system", "rps", "p50_ms", "p99_ms", "runs")
SUMMARY_FIELDS = (
    "rps_min",
    "rps_max",
    "min_ms",
    "max_ms",
    "ops",
    "errors",
    "peer",
    "peer_name",
    "ratio_to_peer",
    "p99_ratio_to_peer",
    "ratio_to_ceiling",
    "ratio_to_hello",
    "audit_batches",
    "audit_batch_mean",
    "audit_batch_max",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except (OSError, ValueError):
        pass
    return None


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def machine_info(tool_versions: Mapping[str, str], run: Mapping[str, Any]) -> dict[str, Any]:
    versions = {
        name: _dist_version(name)
        for name in ("enclave-kms", "cryptography", "dcap-qvl", "fastapi", "uvicorn", "pykmip")
    }
    versions.update(tool_versions)
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "run": dict(run),
    }


def _best(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    return max(rows, key=lambda r: float(r["rps"]), default=None)


def _ratio(ours: float, theirs: float) -> float:
    return float(f"{ours / theirs:.3g}")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Ratios to the peer (same operation, same vector) and to the best ceiling of the name."""
    ceilings: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["system"] == "ceiling":
            best = ceilings.get(row["name"])
            if best is None or row["rps"] > best["rps"]:
                ceilings[row["name"]] = row
    hello = ceilings.get("hello")
    for row in rows:
        if row["system"] == "ceiling":
            continue
        ceiling = ceilings.get(row["name"])
        if ceiling is not None:
            row["ratio_to_ceiling"] = _ratio(row["rps"], ceiling["rps"])
        if row["system"] != "enclave-kms":
            continue
        if hello is not None and row.get("group") == "http":
            row["ratio_to_hello"] = _ratio(row["rps"], hello["rps"])
        wanted = row.get("peer_name", row["name"])
        for peer_system in PEER_ORDER:
            peer = _best(
                r
                for r in rows
                if r["system"] == peer_system
                and r["name"] == wanted
                and r.get("vector") == row.get("vector")
            )
            if peer is not None:
                row["peer"] = peer_system
                row["ratio_to_peer"] = _ratio(row["rps"], peer["rps"])
                row["p99_ratio_to_peer"] = _ratio(row["p99_ms"], peer["p99_ms"])
                break


def sort_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[int, str, int, str]:
        name = NAME_ORDER.index(row["name"]) if row["name"] in NAME_ORDER else len(NAME_ORDER)
        system = SYSTEM_ORDER.index(row["system"]) if row["system"] in SYSTEM_ORDER else 9
        return (name, row["name"], system, json.dumps(variant(row), sort_keys=True))

    return sorted(rows, key=key)


def variant(row: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that distinguish rows of the same name and system."""
    return {
        k: v
        for k, v in row.items()
        if k not in CORE_FIELDS and k not in SUMMARY_FIELDS and k != "group"
    }


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(document: Mapping[str, Any]) -> str:
    machine = document["machine"]
    run = machine.get("run", {})
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    lines = [
        f"# enclave-kms benchmark — {machine['date']}",
        "",
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine.get('memory_gib')} GiB, Linux {machine['kernel']}, "
        f"Python {machine['python']}; load average at start {machine['load_average']}",
        f"- versions: {versions}",
        f"- commit {machine['git_commit']}; mode `{run.get('mode')}`: {run.get('rounds')} "
        f"interleaved rounds, {run.get('run_seconds')} s per in-process run, "
        f"{run.get('http_seconds')} s per HTTP run, {run.get('connections')} connections",
        "",
        "req/s: median over the runs, range: slowest .. fastest run; p50/p99 in ms "
        "(in-process: over every call of every run; HTTP: median of wrk's per-run figures); "
        "x peer: req/s over the peer's (OpenBao, else dcap-qvl, else PyKMIP) for the same "
        "operation; x ceiling: req/s over the best in-process `cryptography` figure for it.",
        "",
        "| name | system | variant | req/s | range | p50 ms | p99 ms | runs | x peer | x ceiling |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in document["results"]:
        var = ", ".join(f"{k}={v}" for k, v in variant(row).items())
        peer = f"{row['ratio_to_peer']:.3g} ({row['peer']})" if "ratio_to_peer" in row else ""
        ceiling = f"{row['ratio_to_ceiling']:.3g}" if "ratio_to_ceiling" in row else ""
        rng = f"{_fmt(row['rps_min'])} .. {_fmt(row['rps_max'])}" if "rps_min" in row else ""
        lines.append(
            f"| {row['name']} | {row['system']} | {var} | {_fmt(row['rps'])} | {rng} | "
            f"{_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} | {row['runs']} | {peer} | {ceiling} |"
        )
    batched = [row for row in document["results"] if row.get("audit_batches")]
    if batched:
        lines += [
            "",
            "Audit group commit (enclave-kms; records per signed batch over the measured runs, "
            "every worker's chain):",
            "",
            "| name | variant | batches | mean records/batch | max |",
            "|---|---|---:|---:|---:|",
        ]
        for row in batched:
            var = ", ".join(f"{k}={v}" for k, v in variant(row).items())
            lines.append(
                f"| {row['name']} | {var} | {row['audit_batches']} | "
                f"{row['audit_batch_mean']} | {row['audit_batch_max']} |"
            )
    notes = run.get("notes", [])
    if notes:
        lines += ["", "Not measured in this run:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write(document: Mapping[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=2) + "\n"
    day = str(document["machine"]["date"])[:10]
    paths = [out / f"{day}.json", out / "latest.json", out / "latest.md"]
    paths[0].write_text(text)
    paths[1].write_text(text)
    paths[2].write_text(markdown(document))
    return paths
