"""Replicas confirm each other's state head (DESIGN §13-§14, docs/replicas.md).

A live replica refuses a database that went back behind a generation it has seen
(`StateTracker.refresh`, on every request). What that cannot catch is a replica that starts
(or restarts) on an older database: it has seen nothing yet. So a replica serves only once a
majority of the replicas (itself and enough of its `--peer`s) confirm that the database it
reads is not behind what they have seen.

The confirmation: the asking enclave draws a fresh nonce and POSTs it to each peer's
`/v1/sys/replicas/confirm`; the peer refreshes its head from the database and answers with
(replica id, generation, head digest), signed by the installation's audit key inside its
enclave, over the nonce. Only an enclave of this installation holds that key, and the nonce
makes every answer new, so the hosts in between can drop answers (the replica then stays not
ready) but can neither forge nor replay one. The TLS channel to the peer therefore need not
be appraised for this: the signature is the authentication, and it says more than a channel
would (the key of *this* installation, not just a genuine enclave build).

The asker then reads its own head once more (after the answers, so a peer that saw a write a
moment ago is not mistaken for a rollback) and is ready iff at least `needed` distinct peers
answered with a generation no newer than its own. A peer ahead of it means its database is
behind the installation: it stays not ready, says so, and keeps asking (a lagging standby
catches up; a restored snapshot does not).

What the host still decides: the list of peers it passes (it can omit them: the enclave then
refuses to start as a replica) and whether answers arrive. A host that controls a majority of
the replicas and their databases can restore them all together; docs/replicas.md says so.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.errors import EnclaveKMSError, NotReadyError

log = logging.getLogger("enclave_kms.enclave")

CONFIRM_PATH = "/v1/sys/replicas/confirm"
_CONTEXT = "enclave-kms/replica-confirm/v1"
_NONCE_BYTES = 32
_TIMEOUT_S = 3.0
_RETRY_S = 0.5
_MAX_ANSWER = 4096


def needed_peers(peers: int) -> int:
    """Peers that must confirm: with itself, a majority of the `peers + 1` replicas."""
    return (peers + 1) // 2


def confirmation_body(
    installation: str, nonce: bytes, replica: int, generation: int, digest: bytes
) -> bytes:
    return cbor2.dumps([_CONTEXT, installation, nonce, replica, generation, digest])


@dataclass(frozen=True)
class PeerView:
    """What one peer last answered (or why it did not)."""

    url: str
    replica: int | None = None
    generation: int | None = None
    error: str | None = None
    at: float = 0.0  # time.time() of the answer


@dataclass(frozen=True)
class LocalHead:
    generation: int
    digest: bytes


class ReplicaSet:
    """This replica's peers, its readiness, and both sides of the confirmation."""

    def __init__(
        self,
        *,
        replica: int,
        peers: tuple[str, ...],
        installation: str,
        signing_key: ec.EllipticCurvePrivateKey,
        local_head: Callable[[], LocalHead],
    ) -> None:
        self.replica = replica
        self.peers = peers
        self.needed = needed_peers(len(peers))
        self._installation = installation
        self._key = signing_key
        self._local_head = local_head
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._views: dict[str, PeerView] = {url: PeerView(url) for url in peers}
        self.reason = "waiting for a majority of the replicas to confirm the state head"

    # ------------------------------------------------------------------ answering

    def confirm(self, nonce: bytes) -> dict[str, Any]:
        """A peer asks: our head as the database holds it now (refusing a rollback), signed
        over its nonce."""
        head = self._local_head()
        body = confirmation_body(
            self._installation, nonce, self.replica, head.generation, head.digest
        )
        return {
            "replica": self.replica,
            "generation": head.generation,
            "head": head.digest.hex(),
            "signature": self._key.sign(body, ec.ECDSA(hashes.SHA256())).hex(),
        }

    # ------------------------------------------------------------------ asking

    def ask(self, url: str) -> PeerView:
        """One confirmation from `url` with a fresh nonce; a PeerView with `error` if none."""
        nonce = os.urandom(_NONCE_BYTES)
        try:
            answer = _post_json(url, CONFIRM_PATH, {"nonce": nonce.hex()})
            replica, generation = int(answer["replica"]), int(answer["generation"])
            digest, signature = bytes.fromhex(answer["head"]), bytes.fromhex(answer["signature"])
            body = confirmation_body(self._installation, nonce, replica, generation, digest)
            self._key.public_key().verify(signature, body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            view = PeerView(url, error="answer not signed by this installation's audit key")
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            view = PeerView(url, error=f"unreachable ({type(exc).__name__})")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            view = PeerView(url, error=f"malformed answer ({exc})"[:200])
        else:
            if replica == self.replica:
                view = PeerView(url, error=f"answered as this replica's own id {replica}")
            else:
                view = PeerView(url, replica=replica, generation=generation, at=time.time())
        with self._lock:
            self._views[url] = view
        return view

    def views(self) -> list[PeerView]:
        with self._lock:
            return [self._views[url] for url in self.peers]

    def check_once(self) -> bool:
        """Ask every peer once; ready iff enough confirm a generation not newer than ours."""
        answers = [self.ask(url) for url in self.peers]
        mine = self._local_head().generation  # read after the answers (module docstring)
        confirmed = {v.replica for v in answers if v.generation is not None}
        ahead = [v for v in answers if v.generation is not None and v.generation > mine]
        if ahead:
            self.reason = (
                f"the database is behind the installation: replica {ahead[0].replica} has seen "
                f"generation {ahead[0].generation}, this database holds {mine} (restored from "
                "an older snapshot, or a lagging copy)"
            )
            log.error("not serving: %s", self.reason)
            return False
        if len(confirmed) < self.needed:
            self.reason = (
                f"{len(confirmed)} of the {self.needed} peer confirmations needed "
                f"({len(self.peers)} peers configured)"
            )
            return False
        self.reason = ""
        self._ready.set()
        log.info(
            "state head confirmed by replicas %s at generation %d",
            sorted(r for r in confirmed if r is not None),
            mine,
        )
        return True

    def run(self, stopped: threading.Event) -> None:
        """Until ready (or stopped): ask, wait, ask again."""
        while not stopped.is_set() and not self._ready.is_set():
            try:
                if self.check_once():
                    return
            except EnclaveKMSError as exc:  # our own head read failed (rollback, storage)
                self.reason = exc.message
                log.error("not serving: %s", exc.message)
            stopped.wait(_RETRY_S)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def require_ready(self) -> None:
        if not self._ready.is_set():
            raise NotReadyError(f"replica {self.replica} is not ready: {self.reason}")


def _post_json(url: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A small HTTPS POST (stdlib: the enclave image carries no HTTP client). The peer's
    certificate is not checked here: the answer's signature authenticates it (docstring)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"peer URL {url!r} is not https://HOST:PORT")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(
        parts.hostname, parts.port or 443, timeout=_TIMEOUT_S, context=context
    )
    try:
        data = json.dumps(payload).encode()
        conn.request("POST", path, body=data, headers={"content-type": "application/json"})
        response = conn.getresponse()
        raw = response.read(_MAX_ANSWER + 1)
        if response.status != 200 or len(raw) > _MAX_ANSWER:
            raise ValueError(f"HTTP {response.status}")
        answer = json.loads(raw)
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        return answer
    finally:
        conn.close()
