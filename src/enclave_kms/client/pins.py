"""Pinned attestations across processes: attest once per TLS key (DESIGN §9).

A client that attested a server keeps, in a directory of its own (the CLI: its config
directory), what the appraisal established: the server's certificate (whose key the pooled
connections pin), the verified identity, and until when the appraisal holds (certificate or
collateral expiry). A new process with the same URL and the same trust settings (policy, root,
collateral source, second opinion: a digest of them is stored) connects with that pin and sends
its request at once, without fetching evidence again. Whenever the server presents another
certificate (a new TLS key: a restart, another enclave) the pinned handshake fails and the
client appraises afresh, replacing the pin; an expired pin, or one made under other settings,
is not used.

The file is as sensitive as the token file beside it: someone who can write it can make the
client trust a server of their choosing, so it is written owner-only (0600) and read only from
the directory the caller names. Nothing secret is in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enclave_kms.client.attest import AttestationSettings, AttestedServer

_FORMAT = 1


@dataclass(frozen=True)
class PinnedServer:
    """A server appraised by an earlier process: the pin and what that appraisal found."""

    url: str
    certificate_pem: str
    spki_sha256: bytes
    expires_at: datetime
    identity: dict[str, Any] = field(compare=False)

    @property
    def simulated(self) -> bool:
        return bool(self.identity.get("simulated"))

    def summary(self) -> dict[str, Any]:
        """The verified identity as the appraisal recorded it (`AttestedServer.summary`)."""
        return dict(self.identity)


def settings_digest(settings: AttestationSettings) -> str:
    """What must be unchanged for an old appraisal to stand: every trust setting."""
    source = settings.collateral_source
    parts = [
        settings.policy.to_toml(),
        settings.root.spki_sha256,
        repr(settings.second_opinion),
        "" if source is None else f"{type(source).__qualname__}:{getattr(source, 'url', '')}",
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class PinStore:
    """One JSON file per server URL in `directory` (created owner-only on first save)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def _path(self, url: str) -> Path:
        return self.directory / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"

    def load(self, url: str, digest: str, now: datetime) -> PinnedServer | None:
        """The pin for `url` if it was made under `digest` and has not expired, else None
        (a missing, unreadable or malformed file is simply no pin: the client attests)."""
        try:
            doc = json.loads(self._path(url).read_text())
            if doc["format"] != _FORMAT or doc["url"] != url or doc["settings"] != digest:
                return None
            pinned = PinnedServer(
                url=url,
                certificate_pem=str(doc["certificate_pem"]),
                spki_sha256=bytes.fromhex(doc["spki_sha256"]),
                expires_at=datetime.fromisoformat(doc["expires_at"]),
                identity=dict(doc["identity"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if pinned.expires_at.tzinfo is None or now >= pinned.expires_at:
            return None
        return pinned

    def save(self, server: AttestedServer, digest: str) -> None:
        """Record a fresh appraisal (atomically: a reader sees the old pin or the new)."""
        doc = {
            "format": _FORMAT,
            "url": server.url,
            "settings": digest,
            "certificate_pem": server.certificate_pem,
            "spki_sha256": server.spki_sha256.hex(),
            "expires_at": server.expires_at.isoformat(),
            "identity": server.summary(),
        }
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".pin-")  # created 0600
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out)
            os.replace(tmp, self._path(server.url))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def forget(self, url: str) -> None:
        self._path(url).unlink(missing_ok=True)
