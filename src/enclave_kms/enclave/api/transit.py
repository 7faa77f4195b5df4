"""The Vault/OpenBao transit-compatible face, mounted at ``/v1/<mount>/`` (default
``transit``) beside the native API (DESIGN §16; docs/compatibility.md is its table).

Its routes live in `routes_transit_crypto` and `routes_transit_keys`; what they share in
`transit_support`. They are left out of /openapi.json: the native API is what that document
describes, and Vault clients do not read it.
"""

from __future__ import annotations

import re
from typing import Final

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute

from enclave_kms.enclave.api import routes_transit_crypto, routes_transit_keys
from enclave_kms.enclave.api.support import add_route
from enclave_kms.enclave.api.transit_support import DEFAULT_MOUNT, new_transit_router, vault_error
from enclave_kms.errors import ConfigError

__all__ = ["DEFAULT_MOUNT", "include_transit", "validate_mount"]

_MOUNT: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RESERVED: Final = frozenset({"keys", "sys", "tokens", "audit", "attestation", "random", "health"})
"""First path segments of the native API under /v1, which a mount must not shadow."""
_METHODS: Final = ("GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD", "OPTIONS")


def validate_mount(mount: str) -> str:
    if not isinstance(mount, str) or _MOUNT.fullmatch(mount) is None:
        raise ConfigError("the transit mount must be 1-64 of a-z, 0-9, '_' and '-'")
    if mount in RESERVED:
        raise ConfigError(f"the transit mount {mount!r} would shadow the native /v1/{mount}")
    return mount


def _fallback(prefix: str, known: list[re.Pattern[str]]) -> APIRouter:
    """Vault's answers for what the face does not offer: 405 for a known path with another
    method, 404 ("unsupported path") for anything else under the mount."""

    def unsupported(request: Request) -> Response:
        path = request.url.path
        if any(pattern.match(path) for pattern in known):
            return vault_error(request, "method_not_allowed", "unsupported operation")
        return vault_error(request, "route_not_found", "unsupported path")

    r = new_transit_router()
    for method in _METHODS:
        add_route(
            r,
            method,
            prefix + "/{rest:path}",
            unsupported,
            op="transit.unsupported",
            permission=None,
        )
    return r


def include_transit(app: FastAPI, mount: str = DEFAULT_MOUNT) -> None:
    """Add the face's routes to `app` (after the native routes: they never overlap)."""
    prefix = f"/v1/{validate_mount(mount)}"
    routers = [routes_transit_crypto.router(prefix), routes_transit_keys.router(prefix)]
    known = [r.path_regex for router in routers for r in router.routes if isinstance(r, APIRoute)]
    for router in (*routers, _fallback(prefix, known)):
        for route in router.routes:
            route.include_in_schema = False  # type: ignore[attr-defined]
        app.include_router(router)
