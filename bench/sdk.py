"""The client side of an attested connection: SDK first answer and the RA-TLS handshake rate.

Both (and the CLI rows of `bench/cli.py`, from the same prepared server) run against the
`enclave-kms serve` (simulation) the HTTP rows already started
(`bench/peers/enclave_kms.py`), with its admin token, its `bench-aes256-gcm` key and the
simulated root it wrote to its data directory (`sim-root.pem`). The policy is made the way
`enclave-kms policy from-server` makes it (trust on first use: MRENCLAVE, MRSIGNER, ProductID,
minimum SVN, the TCB statuses seen, and the simulated root named explicitly) and written to a
TOML file, as a user would have it.

- `sdk-first-answer`: from nothing to the first answer: read the policy TOML and the trust
  root PEM, create a `KMSClient`, `encrypt` 32 bytes. The client attests before sending it:
  an unverified handshake to read the RA-TLS certificate, its self-signature and key binding,
  `GET /v1/attestation` with a fresh nonce over a connection pinned to that certificate, DCAP
  verification of both quotes (second opinion on, the SDK's default), the policy, liveness;
  then a third connection, pinned, carries the request. `cache=cold` clears every memo of the
  `enclave_kms` modules before each connect (what a new process has), `cache=warm` keeps them
  (a second client in the same process, or a re-attestation), `cache=process` runs the same
  code in a new interpreter (`python -c`: start-up and imports included, timed to its exit
  right after the answer). The previous client is closed outside the timed region.
- `ratls-handshake`: new TLS connections per second, each closed once its handshake
  completed. `check=pinned` (`CLIENTS` threads) is what the SDK does on every connection after
  attesting: the handshake verifies the server's certificate against the attested one as the
  only trust anchor (`client.tls.pinned_context`). `check=evidence` (one thread: the check is
  Python under the GIL) is the full check of a certificate not seen before, without the
  liveness round trip: an unverified handshake, then `attest.begin` (self-signature, validity,
  key binding), DCAP verification of its quote with the collateral in memory (memos warm) and
  the policy. Peers, with the same pinned check against each server's own certificate: the
  `hello` ceiling (uvicorn TLS, our stack, an ordinary certificate) and OpenBao's dev TLS
  listener (Go).
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench import cli
from bench.measure import BenchError, Case, RunSample, timed_loop
from bench.peers.base import HttpTarget
from bench.peers.enclave_kms import target_dir
from enclave_kms.attestation.policy import Policy, validate
from enclave_kms.attestation.types import Collateral, TcbStatus, TrustRoot
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.client import KMSClient
from enclave_kms.client import attest as sdk_attest
from enclave_kms.client.tls import pinned_context, unverified_context
from enclave_kms.errors import EnclaveKMSError

NAMES = ("sdk-first-answer", "ratls-handshake", cli.NAME)
GROUP = "attestation"
CLIENTS = 4  # handshake threads: a few, on a 2-core machine shared with the server
PLAINTEXT = bytes(range(32))
TIMEOUT = 30.0


def clear_memos() -> None:
    """Forget every module-level memo of `enclave_kms` (verification chains, CRLs, parsed
    collateral, roots): what a new client process starts with."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "enclave_kms" or name.startswith("enclave_kms.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, functools._lru_cache_wrapper):
                value.cache_clear()


@dataclass(frozen=True)
class KmsServer:
    """What a client of the running server has: URL, token, key, trust root, policy."""

    url: str
    host: str
    port: int
    token: str
    key: str
    root_path: Path
    policy_path: Path
    root: TrustRoot
    policy: Policy
    certificate_pem: str
    collateral: Collateral


def _pinned_policy(url: str, root: TrustRoot) -> Policy:
    """What `enclave-kms policy from-server` writes: verify everything, accept the enclave
    found, then pin it (and name the simulated root)."""
    observe = Policy(
        any_enclave_unsafe=True,
        allow_debug=True,
        accepted_tcb_statuses=tuple(TcbStatus),
        simulated_root=root.spki_sha256 if root.simulated else None,
    )
    with KMSClient(url, policy=observe, trust_root=root, timeout=TIMEOUT) as client:
        server = client.connect()
    v = server.verified
    pinned = Policy(
        mr_enclave=(v.mr_enclave,),
        mr_signer=v.mr_signer,
        isv_prod_id=v.isv_prod_id,
        min_isv_svn=v.isv_svn,
        allow_debug=v.debug,
        accepted_tcb_statuses=tuple(dict.fromkeys((TcbStatus.UP_TO_DATE, v.tcb_status))),
        simulated_root=v.root_spki_sha256 if v.simulated_root else None,
    )
    validate(v, pinned)
    return pinned


def prepare(target: HttpTarget, workdir: Path) -> KmsServer:
    """Everything the rows need from the running server, checked once before timing."""
    root_path = target_dir(workdir) / "sim-root.pem"  # the server the HTTP rows load
    if not root_path.is_file():
        raise BenchError(f"the enclave-kms server wrote no simulated root at {root_path}")
    encrypt = target.ops["encrypt"]
    token = encrypt.headers["Authorization"].removeprefix("Bearer ")
    key = encrypt.path.split("/")[3]  # /v1/keys/<key>/encrypt
    parts = urlsplit(target.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    root = TrustRoot.from_pem(root_path.read_bytes())
    policy = _pinned_policy(target.base_url, root)
    home = workdir / "sdk"
    home.mkdir(parents=True, exist_ok=True)
    policy_path = home / "policy.toml"
    policy_path.write_text(policy.to_toml())
    # One attestation through the SDK's own steps, keeping the answer's collateral for the
    # evidence check of the handshake row.
    der = _handshake(unverified_context(), host, port)
    pending = sdk_attest.begin(der, now=datetime.now(UTC))
    with httpx.Client(
        base_url=target.base_url, verify=pinned_context(pending.certificate_pem), timeout=TIMEOUT
    ) as http:
        reply = http.get(sdk_attest.ATTESTATION_PATH, params={"nonce": pending.nonce_hex})
        reply.raise_for_status()
        doc = reply.json()
    sdk_attest.finish(
        pending,
        doc,
        sdk_attest.AttestationSettings(policy, root),
        now=datetime.now(UTC),
        url=target.base_url,
    )
    collateral = sdk_attest.AttestationAnswer.parse(doc).collateral()
    return KmsServer(
        target.base_url,
        host,
        port,
        token,
        key,
        root_path,
        policy_path,
        root,
        policy,
        pending.certificate_pem,
        collateral,
    )


# --------------------------------------------------------------------------- first answer


#: A new client process, from interpreter start to the answer (`os._exit` skips teardown).
CHILD = """
import os
from pathlib import Path
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.client import KMSClient
env = os.environ
policy = Policy.from_toml(Path(env["BENCH_SDK_POLICY"]).read_bytes())
root = TrustRoot.from_pem(Path(env["BENCH_SDK_ROOT"]).read_bytes())
client = KMSClient(env["BENCH_SDK_URL"], token=env["BENCH_SDK_TOKEN"], policy=policy,
                   trust_root=root)
print(client.encrypt(env["BENCH_SDK_KEY"], bytes(range(32)))[:5], flush=True)
os._exit(0)
"""
CACHES = ("cold", "warm", "process")


class FirstAnswer:
    """One new client per call; the previous one is closed before the next (untimed).

    `cache`: `cold` clears every memo first, `warm` keeps them, `process` runs the client in
    a new interpreter (imports included).
    """

    def __init__(self, server: KmsServer, cache: str) -> None:
        if cache not in CACHES:
            raise ValueError(cache)
        self.server = server
        self.cache = cache
        self._client: KMSClient | None = None

    def before(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.cache == "cold":
            clear_memos()

    def once(self) -> None:
        s = self.server
        if self.cache == "process":
            env = {
                **os.environ,
                "BENCH_SDK_POLICY": str(s.policy_path),
                "BENCH_SDK_ROOT": str(s.root_path),
                "BENCH_SDK_URL": s.url,
                "BENCH_SDK_TOKEN": s.token,
                "BENCH_SDK_KEY": s.key,
            }
            done = subprocess.run(
                [sys.executable, "-c", CHILD],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            answer = done.stdout.strip()
            if done.returncode != 0 or answer != "ekms:":
                tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
                raise BenchError(f"sdk-first-answer (new process): {tail[0]}")
            return
        policy = Policy.from_toml(s.policy_path.read_bytes())
        root = TrustRoot.from_pem(s.root_path.read_bytes())
        client = KMSClient(s.url, token=s.token, policy=policy, trust_root=root, timeout=TIMEOUT)
        self._client = client
        ciphertext = client.encrypt(s.key, PLAINTEXT)
        if not ciphertext.startswith("ekms:"):
            raise BenchError(f"sdk-first-answer: unexpected ciphertext {ciphertext[:20]!r}")

    def run(self, seconds: float) -> RunSample:
        if self.cache == "warm":  # a cold case may have cleared the memos since this one ran
            self.once()
            self.before()
        # A new process costs ~10x a connect: the run's time bounds it, at least one per run.
        min_ops = 1 if self.cache == "process" else 3
        try:
            return timed_loop(self.once, seconds, min_ops=min_ops, before=self.before)
        finally:
            self.before()


def first_answer_cases(server: KmsServer, seconds: float) -> list[Case]:
    cases = []
    for cache in CACHES:
        probe = FirstAnswer(server, cache)

        def run(probe: FirstAnswer = probe) -> RunSample:
            return probe.run(seconds)

        def warm(probe: FirstAnswer = probe) -> object:
            probe.once()
            probe.before()
            return None

        extra = {"cache": cache, "second_opinion": True, "request": "encrypt 32 B"}
        # No warm-up for a new process: nothing of it survives into the next one.
        warmup = None if cache == "process" else warm
        cases.append(
            Case("sdk-first-answer", "enclave-kms", GROUP, run, extra=extra, warmup=warmup)
        )
    return cases


# --------------------------------------------------------------------------- handshakes


def _handshake(context: ssl.SSLContext, host: str, port: int) -> bytes:
    """A new TCP connection and a full TLS handshake; returns the server's DER certificate."""
    with (
        socket.create_connection((host, port), timeout=TIMEOUT) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise BenchError(f"{host}:{port} presented no certificate")
    return der


def threaded_loop(op: Callable[[], object], seconds: float, threads: int = CLIENTS) -> RunSample:
    """`threads` threads call `op` until `seconds` have passed; every call is timed."""
    latencies = [array("q") for _ in range(threads)]
    errors = [0] * threads
    first_error: list[str] = []
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)

    def worker(index: int) -> None:
        lat = latencies[index]
        t0 = time.perf_counter_ns()
        while t0 < deadline or not lat:
            try:
                op()
            except Exception as exc:  # noqa: BLE001 - counted, and fatal above 1 %
                errors[index] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
            t1 = time.perf_counter_ns()
            lat.append(t1 - t0)
            t0 = t1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = (time.perf_counter_ns() - start) / 1e9
    merged: array[int] = array("q")
    for lat in latencies:
        merged.extend(lat)
    failed = sum(errors)
    if failed > len(merged) // 100:
        raise BenchError(f"{failed} errors in {len(merged)} handshakes: {first_error[0]}")
    return RunSample(ops=len(merged) - failed, seconds=elapsed, latencies_ns=merged, errors=failed)


def pinned_handshake(host: str, port: int, certificate_pem: str) -> Callable[[], object]:
    """What the SDK pays per connection once attested: OpenSSL checks the pinned cert."""
    local = threading.local()

    def op() -> object:
        context = getattr(local, "context", None)
        if context is None:  # one context per client thread, as one httpx pool has one
            context = local.context = pinned_context(certificate_pem)
        return _handshake(context, host, port)

    return op


def evidence_handshake(server: KmsServer) -> Callable[[], object]:
    """A certificate checked from its evidence (no liveness round trip, memos warm)."""
    context = unverified_context()

    def op() -> object:
        der = _handshake(context, server.host, server.port)
        now = datetime.now(UTC)
        pending = sdk_attest.begin(der, now=now)
        verified = verify_quote(
            pending.quote, server.collateral, trust_root=server.root, now=now, second_opinion=True
        )
        validate(verified, server.policy)
        return verified

    return op


def _peer_certificate(target: HttpTarget) -> tuple[str, int, str]:
    parts = urlsplit(target.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    der = _handshake(unverified_context(), host, port)
    return host, port, ssl.DER_cert_to_PEM_cert(der)


def handshake_cases(
    server: KmsServer | None, peers: list[HttpTarget], seconds: float, notes: list[str]
) -> list[Case]:
    specs: list[tuple[str, Callable[[], object], dict[str, Any]]] = []
    if server is not None:
        pinned = pinned_handshake(server.host, server.port, server.certificate_pem)
        specs.append(("enclave-kms", pinned, {"check": "pinned", "clients": CLIENTS}))
        # One client: the check is Python under the GIL, more threads only queue for it.
        evidence = {"check": "evidence", "second_opinion": True, "clients": 1}
        specs.append(("enclave-kms", evidence_handshake(server), evidence))
    for peer in peers:
        try:
            host, port, pem = _peer_certificate(peer)
        except (BenchError, OSError) as exc:
            notes.append(f"ratls-handshake [{peer.system}] skipped: {type(exc).__name__}: {exc}")
            continue
        fields: dict[str, Any] = {"check": "pinned", "clients": CLIENTS}
        if peer.system == "ceiling":
            fields["stack"] = str(peer.extra.get("stack", "uvicorn+fastapi"))
        specs.append((peer.system, pinned_handshake(host, port, pem), fields))
    cases = []
    for system, op, fields in specs:

        def run(op: Callable[[], object] = op, clients: int = fields["clients"]) -> RunSample:
            op()  # untimed: a cold first-answer case may have cleared the memos since
            return threaded_loop(op, seconds, clients)

        cases.append(Case("ratls-handshake", system, GROUP, run, extra=fields, warmup=op))
    return cases


def cases(
    kms: HttpTarget | None,
    peers: list[HttpTarget],
    workdir: Path,
    seconds: float,
    notes: list[str],
) -> list[Case]:
    """The rows whose servers are running (`kms` None: only the peers' handshake rows).

    A first-answer run lasts `seconds`, a handshake run half of it (hundreds of handshakes).
    """
    server = None
    out: list[Case] = []
    if kms is not None:
        try:
            server = prepare(kms, workdir)
        except (BenchError, EnclaveKMSError, httpx.HTTPError, OSError, KeyError) as exc:
            notes.append(f"sdk-first-answer/ratls-handshake skipped: {type(exc).__name__}: {exc}")
        else:
            out += first_answer_cases(server, seconds)
            out += cli.cases(
                workdir / "cli",
                url=server.url,
                token=server.token,
                key=server.key,
                policy=server.policy_path,
                root=server.root_path,
                seconds=seconds,
            )
    return out + handshake_cases(server, peers, seconds / 2, notes)
