"""PyKMIP, the OASIS KMIP reference server in Python, as the KMIP peer.

Installed from PyPI (`pykmip`, in the `bench` extra). The harness makes a throw-away CA, a
server certificate for 127.0.0.1 and a client certificate (KMIP requires mutual TLS), and runs
`KmipServer` in a subprocess (`python -m bench.peers.pykmip --serve ...`) with its SQLite
database, log and (empty) policy directory in a scratch directory: no /etc or /var files.

KMIP is a binary protocol (TTLV over TLS), so wrk cannot load it; the load comes from
PyKMIP's own `ProxyKmipClient`, one persistent connection per client thread. The server runs a
thread per connection under one GIL, so more connections do not add throughput: 4 is where it
peaked here (1: ~50/s, 4: ~65/s, 8: ~30/s on encrypt), and that is what is reported.

Operations: AES-256-CBC (PKCS#5) encrypt and decrypt of 32 bytes with a fresh IV, RSA-2048
PSS/SHA-256 sign, AES-256 key create. Keys are activated first (KMIP refuses pre-active keys).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import threading
import time
import warnings
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import BenchError, RunSample
from bench.peers.base import LOOPBACK, ManagedProcess, TlsFiles, free_port, make_tls, port_open

CONNECTIONS = 4
PLAINTEXT = bytes(range(32))
REPO = Path(__file__).resolve().parents[2]


def _kmip(module: str) -> Any:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchError("pykmip is not installed (pip install '.[bench]')") from None


def version() -> str:
    try:
        return str(_kmip("kmip").__version__)
    except (BenchError, AttributeError):
        return "not installed"


class PyKmipPeer:
    """A running PyKMIP server, the keys it holds, and one request function per operation."""

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / "pykmip"
        self.home.mkdir(parents=True)
        self.tls: TlsFiles = make_tls(self.home / "tls")
        self.port = free_port()
        (self.home / "policies").mkdir()
        self.process = ManagedProcess(
            "pykmip",
            [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "bench.peers.pykmip",
                "--serve",
                "--dir",
                str(self.home),
                "--port",
                str(self.port),
            ],
            self.home / "stdout.log",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(self.home)},
            cwd=REPO,
        )
        try:
            self.process.wait_ready(lambda: port_open(self.port))
            self._setup()
        except BaseException:
            self.stop()
            raise

    def client(self) -> Any:
        client_module = _kmip("kmip.pie.client")
        client = client_module.ProxyKmipClient(
            hostname=LOOPBACK,
            port=self.port,
            cert=str(self.tls.client_cert),
            key=str(self.tls.client_key),
            ca=str(self.tls.ca),
            ssl_version="PROTOCOL_TLSv1_2",
            config_file=os.devnull,
        )
        client.open()
        return client

    def _setup(self) -> None:
        enums = _kmip("kmip.core.enums")
        self.enums = enums
        self.cbc = {
            "block_cipher_mode": enums.BlockCipherMode.CBC,
            "padding_method": enums.PaddingMethod.PKCS5,
            "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
        }
        signature = enums.DigitalSignatureAlgorithm.SHA256_WITH_RSA_ENCRYPTION
        self.pss = {
            "padding_method": enums.PaddingMethod.PSS,
            "cryptographic_algorithm": enums.CryptographicAlgorithm.RSA,
            "hashing_algorithm": enums.HashingAlgorithm.SHA_256,
            "digital_signature_algorithm": signature,
        }
        client = self.client()
        try:
            self.aes_id = client.create(enums.CryptographicAlgorithm.AES, 256)
            client.activate(self.aes_id)
            _, self.rsa_id = client.create_key_pair(
                enums.CryptographicAlgorithm.RSA,
                2048,
                public_usage_mask=[enums.CryptographicUsageMask.VERIFY],
                private_usage_mask=[enums.CryptographicUsageMask.SIGN],
            )
            client.activate(self.rsa_id)
            self.iv = os.urandom(16)
            self.ciphertext, _ = client.encrypt(
                PLAINTEXT,
                uid=self.aes_id,
                cryptographic_parameters=self.cbc,
                iv_counter_nonce=self.iv,
            )
        finally:
            client.close()

    def operations(self) -> dict[str, Callable[[Any], object]]:
        """name → request function taking an open client (each call is one KMIP request)."""
        algorithm = self.enums.CryptographicAlgorithm.AES

        def encrypt(c: Any) -> object:
            return c.encrypt(
                PLAINTEXT,
                uid=self.aes_id,
                cryptographic_parameters=self.cbc,
                iv_counter_nonce=os.urandom(16),
            )

        def decrypt(c: Any) -> object:
            plain = c.decrypt(
                self.ciphertext,
                uid=self.aes_id,
                cryptographic_parameters=self.cbc,
                iv_counter_nonce=self.iv,
            )
            if plain != PLAINTEXT:
                raise BenchError("pykmip decrypt returned other bytes")
            return plain

        def sign(c: Any) -> object:
            return c.sign(PLAINTEXT, uid=self.rsa_id, cryptographic_parameters=self.pss)

        def create(c: Any) -> object:
            return c.create(algorithm, 256)

        return {
            "encrypt": encrypt,
            "decrypt": decrypt,
            "sign-rsa-2048": sign,
            "create-key": create,
        }

    def load(
        self, op: Callable[[Any], object], seconds: float, connections: int = CONNECTIONS
    ) -> RunSample:
        """`connections` client threads, each on its own connection, for `seconds`."""
        clients = [self.client() for _ in range(connections)]
        latencies = [array("q") for _ in clients]
        errors = [0] * connections
        start = time.perf_counter_ns()
        deadline = start + int(seconds * 1e9)

        def worker(index: int) -> None:
            client, lat = clients[index], latencies[index]
            t0 = time.perf_counter_ns()
            while t0 < deadline:
                try:
                    op(client)
                except Exception:  # noqa: BLE001 - counted and reported as errors
                    errors[index] += 1
                t1 = time.perf_counter_ns()
                lat.append(t1 - t0)
                t0 = t1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = (time.perf_counter_ns() - start) / 1e9
        for client in clients:
            client.close()
        merged: array[int] = array("q")
        for lat in latencies:
            merged.extend(lat)
        failed = sum(errors)
        if failed > len(merged) // 100:
            raise BenchError(f"pykmip: {failed} errors in {len(merged)} requests")
        return RunSample(
            ops=len(merged) - failed, seconds=elapsed, latencies_ns=merged, errors=failed
        )

    def stop(self) -> None:
        # On SIGTERM PyKMIP joins every session thread for up to 10 s each: not worth waiting.
        self.process.stop(grace=1.0)
        shutil.rmtree(self.home, ignore_errors=True)


def serve(directory: Path, port: int) -> None:
    """The server process: PyKMIP's KmipServer with every path inside `directory`."""
    server_module = _kmip("kmip.services.server.server")
    tls = directory / "tls"
    server = server_module.KmipServer(
        hostname=LOOPBACK,
        port=port,
        certificate_path=str(tls / "server.crt"),
        key_path=str(tls / "server.key"),
        ca_path=str(tls / "ca.crt"),
        auth_suite="TLS1.2",
        config_path=None,
        log_path=str(directory / "server.log"),
        policy_path=str(directory / "policies"),
        logging_level="WARNING",
        database_path=str(directory / "pykmip.sqlite"),
        live_policies=False,
    )
    with server:
        server.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run the PyKMIP server for the benchmark")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.dir, args.port)


if __name__ == "__main__":
    main()
