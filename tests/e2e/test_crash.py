"""Crashes: `kill -9` of the enclave process, or of the host process, in the middle of a burst
of concurrent writes. Every write the client saw acknowledged (a 2xx answer) survives: after
a restart on the same data directory each acknowledged key exists, has at least the
acknowledged versions, and its acknowledged ciphertexts decrypt. The server restarts cleanly,
the enclave never outlives its host, and the audit chain still verifies end to end.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from enclave_kms.enclave.state.audit import verify_chain
from enclave_kms.host.storage.sqlite import SQLiteStorage
from tests.e2e.conftest import CLI, HTTP_TIMEOUT, b64, free_port, ok, served, unb64

pytestmark = pytest.mark.slow

WRITERS = 6
ACKS_BEFORE_KILL = 24
START_TIMEOUT = 180.0


@dataclass
class Acks:
    """What the server acknowledged, as the clients saw it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    versions: dict[str, int] = field(default_factory=dict)  # key -> latest acknowledged version
    ciphertexts: list[tuple[str, str, bytes]] = field(default_factory=list)
    failures: int = 0
    not_json: list[str] = field(default_factory=list)  # error answers that were not JSON

    def refused(self, resp: httpx.Response) -> None:
        """An answer that acknowledged nothing: it must still be a typed JSON error."""
        if not resp.headers.get("content-type", "").startswith("application/json"):
            with self.lock:
                self.not_json.append(f"{resp.status_code} {resp.headers.get('content-type')}")

    def count(self) -> int:
        with self.lock:
            return len(self.versions) + len(self.ciphertexts)


def writer(url: str, token: str, prefix: str, acks: Acks, stop: threading.Event) -> None:
    """Create keys, encrypt under them and rotate them until the server goes away."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, verify=False, timeout=HTTP_TIMEOUT, headers=headers) as c:
        for i in range(10_000):
            if stop.is_set():
                return
            name = f"{prefix}-{i}"
            try:
                resp = c.post("/v1/keys", json={"name": name})
                if resp.status_code != 201:
                    acks.refused(resp)
                    break
                with acks.lock:
                    acks.versions[name] = 1
                plain = os.urandom(16)
                resp = c.post(f"/v1/keys/{name}/encrypt", json={"plaintext": b64(plain)})
                if resp.status_code != 200:
                    acks.refused(resp)
                    break
                with acks.lock:
                    acks.ciphertexts.append((name, resp.json()["ciphertext"], plain))
                resp = c.post(f"/v1/keys/{name}/rotate")
                if resp.status_code != 200:
                    acks.refused(resp)
                    break
                with acks.lock:
                    acks.versions[name] = resp.json()["latest_version"]
            except httpx.HTTPError:
                break
    with acks.lock:
        acks.failures += 1


def burst_then_kill(url: str, token: str, tag: str, kill: int) -> Acks:
    """Start the writers, SIGKILL `kill` once enough writes were acknowledged."""
    acks, stop = Acks(), threading.Event()
    threads = [
        threading.Thread(target=writer, args=(url, token, f"{tag}-w{n}", acks, stop), daemon=True)
        for n in range(WRITERS)
    ]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 300
    while acks.count() < ACKS_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.05)
    assert acks.count() >= ACKS_BEFORE_KILL, "the burst never got going"
    os.kill(kill, signal.SIGKILL)
    for th in threads:
        th.join(HTTP_TIMEOUT + 30)
    stop.set()
    assert not any(th.is_alive() for th in threads)
    return acks


def check_acknowledged(c: httpx.Client, acks: Acks) -> None:
    for name, version in acks.versions.items():
        meta = ok(c.get(f"/v1/keys/{name}"))
        assert meta["latest_version"] >= version, name
    for name, ct, plain in acks.ciphertexts:
        assert (
            unb64(ok(c.post(f"/v1/keys/{name}/decrypt", json={"ciphertext": ct}))["plaintext"])
            == plain
        )
    # Writes still work after the crash, including on keys touched by it.
    for name in list(acks.versions)[:3]:
        ok(c.post(f"/v1/keys/{name}/rotate"))
    ok(c.post("/v1/keys", json={"name": f"after-{os.urandom(4).hex()}"}), 201)


def check_audit(data_dir: Path) -> int:
    storage = SQLiteStorage(data_dir / "kms.sqlite")
    try:
        records = storage.audit_records()
    finally:
        storage.close()
    return verify_chain(records).records


def test_enclave_killed_during_a_burst_loses_no_acknowledged_write(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with served(tmp_path_factory.mktemp("e2e-crash-enclave") / "data") as server:
        pid = server.live.enclave.pid
        assert pid is not None
        acks = burst_then_kill(server.url, server.token, "ek", pid)
        server.live.enclave.wait(10)  # SIGKILL is asynchronous: let the kernel finish it
        assert not server.live.enclave.alive()
        server.stop()  # the host side notices and cleans up
        server.start()
        assert server.live.enclave.pid != pid
        with server.client() as c:
            assert ok(c.get("/v1/health"))["initialized"] is True
            check_acknowledged(c, acks)
        assert check_audit(server.data_dir) > len(acks.versions)

        # The state such a crash leaves, made on purpose: records appended, the signed state head
        # not yet moved past them (the host serves the head's older version, or the enclave
        # died before writing it). The restarted enclave continues after the last record.
        db = server.data_dir / "kms.sqlite"
        with closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as conn:
            stale = conn.execute(
                "SELECT version, blob FROM records WHERE kind='config' AND id='state-head'"
            ).fetchone()
        with server.client() as c:
            for _ in range(5):
                ok(c.get("/v1/keys", params={"limit": 1}))
        server.stop()
        before = check_audit(server.data_dir)
        with closing(sqlite3.connect(db, timeout=60, isolation_level=None)) as conn:
            conn.execute(
                "UPDATE records SET version=?, blob=? WHERE kind='config' AND id='state-head'",
                stale,
            )
        server.start()
        with server.client() as c:
            ok(c.get("/v1/keys", params={"limit": 1}))
            head = ok(c.get("/v1/audit"))
        server.stop()
        assert head["records"] > before
        assert check_audit(server.data_dir) == head["records"] + 1  # + the audit.read itself


# --------------------------------------------------------------------------- the host killed


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Serve:
    """`enclave-kms serve` as a subprocess, the way an operator runs it."""

    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    enclaves: list[int] = field(default_factory=list)

    def start(self) -> None:
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(CLI),
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with httpx.Client(verify=False, timeout=10) as c:
                    if c.get(f"{self.url}/v1/health").status_code == 200:
                        return
            except httpx.HTTPError:
                time.sleep(0.3)
        pytest.fail(f"enclave-kms serve did not answer in time:\n{self.log.read_text()[-3000:]}")

    @property
    def enclave_pid(self) -> int:
        assert self.proc is not None
        children = _children(self.proc.pid)
        assert len(children) == 1, children
        self.enclaves.append(children[0])
        return children[0]

    def kill_everything(self) -> None:
        """The test's own cleanup, whatever happened: the host, then any enclave left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in self.enclaves:
            if _alive(pid) and b"run_enclave" in _cmdline(pid):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture
def serve_cli(tmp_path: Path) -> Iterator[Serve]:
    serve = Serve(tmp_path / "data", tmp_path / "serve.log")
    try:
        yield serve
    finally:
        serve.kill_everything()


def test_host_killed_during_a_burst_loses_no_acknowledged_write(serve_cli: Serve) -> None:
    serve_cli.start()
    with httpx.Client(verify=False, timeout=HTTP_TIMEOUT) as anon:
        token = ok(anon.post(f"{serve_cli.url}/v1/sys/init"), 201)["token"]
    host = serve_cli.proc
    assert host is not None
    enclave = serve_cli.enclave_pid
    acks = burst_then_kill(serve_cli.url, token, "hk", host.pid)
    assert host.wait(30) == -signal.SIGKILL
    # Requests in flight when the host died got typed JSON errors (or a closed connection),
    # never a text/plain 500.
    assert not acks.not_json, acks.not_json

    # Without its host the enclave has no storage and no audit: it must not live on.
    deadline = time.monotonic() + 60
    while _alive(enclave) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(enclave), "the enclave outlived its host"

    serve_cli.start()
    with httpx.Client(
        base_url=serve_cli.url,
        verify=False,
        timeout=HTTP_TIMEOUT,
        headers={"Authorization": f"Bearer {token}"},
    ) as c:
        check_acknowledged(c, acks)
    # And a clean stop on SIGTERM: the host exits 0 and takes its enclave with it.
    second = serve_cli.proc
    assert second is not None
    enclave = serve_cli.enclave_pid
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0, serve_cli.log.read_text()[-3000:]
    deadline = time.monotonic() + 30
    while _alive(enclave) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(enclave)
    assert check_audit(serve_cli.data_dir) > len(acks.versions)
