"""The client's memory of the server's state head: refuse a server that goes back (DESIGN §13).

Every answer of an enclave-kms server carries, inside the attested TLS channel, the head of
its state as the enclave signed it: ``ekms-state: v1 <installation> <generation> <hash>``
(enclave/state/head.py). The generation grows with every write of every worker. A host
restoring a complete, consistent older snapshot of the store (records, audit log and head
together) makes an enclave that cannot tell; a client that has seen a later generation can:
that is this module, the same idea as Certificate Transparency clients remembering tree heads.

`StateHeads` keeps the highest (generation, hash) seen per installation, in memory or in a
JSON file (`StateHeads(path)`, so a restarted client still remembers). An answer is refused
with `StateRollbackError` if its generation is below what was known *when the request was
sent* (concurrent requests may legitimately answer out of order), or equal with another hash
(a fork: two histories). The SDK's clients share `DEFAULT`; `remember_in(path)` makes it
persistent.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from enclave_kms.errors import StateRollbackError

HEADER = "ekms-state"
_VALUE = re.compile(r"v1 ([0-9a-f]{32}) ([0-9]{1,20}) ([0-9a-f]{64})")

Floor = Mapping[str, tuple[int, str]]


class StateHeads:
    """Highest (generation, hash) seen per installation; thread-safe."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._seen: dict[str, tuple[int, str]] = {}
        if path is not None and path.is_file():
            self._seen = _load(path)

    def persist_to(self, path: Path) -> None:
        """From now on, keep the memory in `path` too (merged with what it already holds)."""
        stored = _load(path) if path.is_file() else {}
        with self._lock:
            for installation, seen in stored.items():
                if installation not in self._seen or seen[0] > self._seen[installation][0]:
                    self._seen[installation] = seen
            self._path = path
            _save(path, self._seen)

    def snapshot(self) -> dict[str, tuple[int, str]]:
        """What is known now: the floor an answer to a request sent now must not go below."""
        with self._lock:
            return dict(self._seen)

    def observe(self, header: str | None, floor: Floor) -> None:
        """Check an answer's state head against `floor`, then remember it if it is newer.
        No header (an older server, an error before the audit) checks nothing."""
        if header is None:
            return
        match = _VALUE.fullmatch(header.strip())
        if match is None:
            raise StateRollbackError(
                "the server's state head header is malformed", cause="head-invalid"
            )
        installation, generation, digest = match.group(1), int(match.group(2)), match.group(3)
        known = floor.get(installation)
        if known is not None:
            if generation < known[0]:
                raise StateRollbackError(
                    f"the server went back: state generation {generation} after {known[0]} "
                    "(its store was restored from an older snapshot)",
                    cause="server-rolled-back",
                )
            if generation == known[0] and digest != known[1]:
                raise StateRollbackError(
                    f"the server forked: two different states at generation {generation}",
                    cause="server-forked",
                )
        with self._lock:
            current = self._seen.get(installation)
            if current is not None and current[0] == generation and current[1] != digest:
                raise StateRollbackError(
                    f"the server forked: two different states at generation {generation}",
                    cause="server-forked",
                )
            if current is None or generation > current[0]:
                self._seen[installation] = (generation, digest)
                if self._path is not None:
                    _save(self._path, self._seen)


def _load(path: Path) -> dict[str, tuple[int, str]]:
    try:
        raw = json.loads(path.read_text())
        return {str(k): (int(v[0]), str(v[1])) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise StateRollbackError(
            f"the remembered state heads in {path} do not load; refusing to forget them",
            cause="memory-unreadable",
        ) from None


def _save(path: Path, seen: Mapping[str, tuple[int, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: list(v) for k, v in seen.items()}, sort_keys=True))
    os.replace(tmp, path)


DEFAULT = StateHeads()


def remember_in(path: Path) -> StateHeads:
    """Make the SDK's shared memory persistent in `path` (JSON), keeping what it knows."""
    DEFAULT.persist_to(path)
    return DEFAULT


def current() -> StateHeads:
    return DEFAULT
