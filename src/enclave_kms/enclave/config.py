"""The non-secret settings the host passes to `initialize`, and what follows from them alone:
the TEE backend this process runs in and the per-CPU suffix of its records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import cbor2

from enclave_kms.enclave import tls
from enclave_kms.enclave.custody.joiner import ReplicaSettings
from enclave_kms.errors import ConfigError
from enclave_kms.platform.base import TeeBackend


@dataclass(frozen=True)
class RuntimeConfig:
    """Non-secret settings the host passes to `initialize` (CBOR map)."""

    platform: str
    platform_dir: str = ""
    listen_host: str = "127.0.0.1"
    dns_names: tuple[str, ...] = ("localhost",)
    channel: dict[str, Any] = field(default_factory=dict)
    worker: int = 0  # several workers serve one store and port: this one's number
    workers: int = 1
    replica_id: int | None = None  # replicas on one PostgreSQL database (docs/replicas.md)
    chain: int = 0  # this worker's audit chain: unique across the replicas of an installation
    peers: tuple[str, ...] = ()  # the other replicas' URLs, asked to confirm the state head
    transit_mount: str = "transit"  # where the Vault/OpenBao transit face is mounted
    cert_lifetime: timedelta = tls.CERT_LIFETIME  # bounded: tls.MIN_/MAX_CERT_LIFETIME
    recovery: bool = False  # may enter k-of-n recovery if the SRK does not unseal (custody/)
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)  # custody/joiner.py

    @classmethod
    def parse(cls, data: bytes) -> RuntimeConfig:
        try:
            raw = cbor2.loads(data)
        except Exception:  # noqa: BLE001 - cbor2 raises many types on garbage
            raise ConfigError("initialize: config is not CBOR") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("platform"), str):
            raise ConfigError("initialize: config must be a map with a platform name")
        try:
            return cls(
                platform=raw["platform"],
                platform_dir=str(raw.get("platform_dir", "")),
                listen_host=str(raw.get("listen_host", "127.0.0.1")),
                dns_names=tuple(str(n) for n in raw.get("dns_names", ("localhost",))),
                channel=dict(raw.get("channel") or {}),
                worker=int(raw.get("worker", 0)),
                workers=int(raw.get("workers", 1)),
                replica_id=_optional_int(raw.get("replica_id")),
                chain=int(raw.get("chain") or raw.get("worker") or 0),
                peers=tuple(str(p) for p in raw.get("peers") or ()),
                transit_mount=str(raw.get("transit_mount", "transit")),
                recovery=raw.get("recovery") is True,
                cert_lifetime=tls.bounded_lifetime(
                    float(raw.get("cert_lifetime_seconds", tls.CERT_LIFETIME.total_seconds()))
                ),
                replica=ReplicaSettings.parse(dict(raw.get("replica") or {})),
            )
        except (TypeError, ValueError):
            raise ConfigError("initialize: config fields have the wrong types") from None

    @property
    def replicated(self) -> bool:
        return self.replica_id is not None

    def scoped(self, name: str) -> str:
        """A per-replica record name: replicas on one store each seal their own TLS key
        (to their own CPU) and issue their own certificate; a lone server keeps the name."""
        return name if self.replica_id is None else f"{name}-r{self.replica_id}"


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int):
        raise TypeError("not an integer")
    return value


def open_backend(config: RuntimeConfig) -> TeeBackend:
    """The TEE this process runs in. Simulation: the platform directory is the 'CPU'."""
    if config.platform == "sim":
        from enclave_kms.platform.sim.loader import running_identity
        from enclave_kms.platform.sim.platform import SimPlatform

        return SimPlatform.open(config.platform_dir).enclave(running_identity())
    if config.platform == "gramine":
        from enclave_kms.platform.gramine import GramineBackend

        return GramineBackend()
    raise ConfigError(f"initialize: unknown platform {config.platform!r}")


def here(config: RuntimeConfig) -> str:
    """Suffix of per-CPU records (the TLS key, sealed under MRENCLAVE, and its shared
    certificate): replicas of one build on several CPUs each keep their own."""
    platform_id = config.replica.platform_id
    return "" if platform_id == "local" else f"@{platform_id}"
