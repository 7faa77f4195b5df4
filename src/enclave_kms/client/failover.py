"""`FailoverKMSClient`: one installation served by several replicas (docs/replicas.md).

    with FailoverKMSClient(["https://a:8443", "https://b:8443"], token=t, policy=p) as kms:
        kms.encrypt("orders", b"secret")

Each URL gets its own `KMSClient`: attested against the same policy and pinned to its own
certificate, so a replica is trusted only on its own evidence. Calls go to the replica that
answered last; when it is unavailable the call moves on to the next one, and only when that
cannot turn one operation into two:

- the connection never opened, or the replica answered 503 `not_ready` (it refused before
  running anything): nothing was sent or done, so any call moves on, a key creation too;
- the connection broke after the request left, or the replica answered 503
  `storage_unavailable` / `audit_failed`: the outcome is unknown (a commit may have landed
  before the answer was lost), so only idempotent calls (reads, cryptographic operations:
  `core.Call.idempotent`) move on. A creation, rotation, deletion or token issue raises the
  error instead, and the caller decides: read the key back (`get_key`) to see whether it
  exists, then retry or not. Blindly re-sending it elsewhere could create a second token or
  rotate twice.

Every replica's answer carries the installation's signed state head, and the SDK's one
`StateHeads` memory refuses a replica whose head is behind one seen from another replica
(client/state_head.py), so failing over to a replica on an older database is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from enclave_kms.client import core
from enclave_kms.client.operations import Operations, Step, run_flow
from enclave_kms.client.sync import KMSClient, every_key
from enclave_kms.client.types import KeyInfo
from enclave_kms.errors import (
    AuditError,
    EnclaveKMSError,
    NotReadyError,
    ServerError,
    ServerUnreachableError,
    StorageError,
    UsageError,
)

log = logging.getLogger("enclave_kms.client")
T = TypeVar("T")
_ROUNDS = 3  # passes over every replica before giving up
_PAUSE = 0.2  # between passes (seconds)


def may_fail_over(call: core.Call[Any], exc: EnclaveKMSError) -> bool:
    """Whether `call`, having failed with `exc` on one replica, may be sent to another."""
    if isinstance(exc, ServerUnreachableError | NotReadyError):
        return True  # never sent, or refused before anything ran
    if isinstance(exc, StorageError | AuditError) or type(exc) is ServerError:
        return call.idempotent  # the outcome is unknown: only what is safe to repeat
    return False  # an answer (401, 404, 409, an attestation refusal...) is final


class FailoverKMSClient(Operations):
    """Blocking client of several replicas of one installation (thread-safe). Arguments as
    `KMSClient`'s, with a list of URLs; `retries` applies per replica."""

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        if isinstance(urls, str) or not urls:
            raise UsageError("FailoverKMSClient: give a list of one or more replica URLs")
        self._members = [KMSClient(url, **{**kwargs, "retries": 0}) for url in urls]
        super().__init__(urls[0], **kwargs)

    def _open(self) -> None:
        self._lock = threading.Lock()
        self._current = 0

    def _bind(self, build: Callable[..., Step[T]]) -> Callable[..., T]:
        def operation(*args: Any, **kwargs: Any) -> T:
            return run_flow(build(self, *args, **kwargs), self.call)

        return operation

    def iter_keys(self, *, page_size: int = 100) -> Iterator[KeyInfo]:
        """Every key, page by page (each page from whichever replica answers)."""
        return every_key(self.list_keys, page_size)

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self._members]

    @property
    def current_url(self) -> str:
        with self._lock:
            return self._members[self._current].url

    def set_token(self, token: str | None) -> None:
        super().set_token(token)
        for member in self._members:
            member.set_token(token)

    def _adopt_token(self, token: str) -> None:
        if not self._token:
            self.set_token(token)

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Attest at least one replica now (the others when first used)."""
        self.call(core.health())

    def close(self) -> None:
        for member in self._members:
            member.close()

    def call(self, call: core.Call[T]) -> T:
        """Send `call` to the current replica, moving on as `may_fail_over` allows."""
        with self._lock:
            start = self._current
        count = len(self._members)
        last: EnclaveKMSError | None = None
        for round_ in range(_ROUNDS):
            if round_:
                time.sleep(_PAUSE * round_)
            for step in range(count):
                index = (start + step) % count
                member = self._members[index]
                try:
                    member.connect()
                    result = member.call(call)
                except EnclaveKMSError as exc:
                    if not may_fail_over(call, exc):
                        raise
                    log.warning("%s unavailable (%s); trying the next replica", member.url, exc)
                    last = exc
                    continue
                with self._lock:
                    self._current = index
                return result
        assert last is not None
        raise last
