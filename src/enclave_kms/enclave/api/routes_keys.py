"""Key lifecycle routes: create, list, read, rotate, configure, scheduled delete and restore,
BYOK import and export (DESIGN §10, §11).

Routes are plain `def` so FastAPI runs them in its thread pool: the service blocks on storage
(an OCALL in the enclave) and on key generation (RSA-4096 takes seconds).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from enclave_kms.enclave.api.models import (
    KEY_NAME_REGEX,
    ExportOut,
    KeyConfigIn,
    KeyCreateIn,
    KeyImportIn,
    KeyImportVersionIn,
    KeyListOut,
    KeyOut,
    KeyVersionOut,
    ReleasePolicyOut,
    WrappingKeyOut,
)
from enclave_kms.enclave.api.support import Caller, add_route, app_context, caller, new_router
from enclave_kms.enclave.keys.service import MAX_DELETION_WAIT as _MAX_WAIT
from enclave_kms.enclave.keys.service import MAX_LIST_LIMIT, KeyMetadata

PathName = Annotated[str, Path(pattern=KEY_NAME_REGEX, description="key name")]


def key_out(meta: KeyMetadata) -> KeyOut:
    return KeyOut(
        name=meta.name,
        type=meta.type,
        created=meta.created,
        latest_version=meta.latest_version,
        min_decryption_version=meta.min_decryption_version,
        enabled=meta.enabled,
        exportable=meta.exportable,
        deletion_scheduled_at=meta.deletion_scheduled_at,
        operations=list(meta.operations),
        public_key_pem=meta.public_key_pem,
        versions=[
            KeyVersionOut(
                version=v.version,
                created=v.created,
                public_key_pem=v.public_key_pem,
                imported=v.imported,
            )
            for v in meta.versions
        ],
        release_policy=(
            None if meta.release_policy is None else ReleasePolicyOut(**vars(meta.release_policy))
        ),
    )


def create_key(request: Request, body: KeyCreateIn, who: Caller = Depends(caller)) -> KeyOut:
    """Create a key with fresh material (version 1). `exportable` can never be changed."""
    who.authorize("keys.write", body.name)
    kms = app_context(request).kms
    return key_out(kms.create_key(body.name, body.type, exportable=body.exportable))


def list_keys(
    request: Request,
    after: Annotated[str, Query(max_length=128, description="last name of the previous page")] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    who: Caller = Depends(caller),
) -> KeyListOut:
    """Keys by name, ascending; only those the token may read are shown."""
    page = app_context(request).kms.list_keys(
        after=after, limit=limit, visible=lambda name: who.allowed("keys.read", name)
    )
    return KeyListOut(
        keys=[key_out(k) for k in page.keys],
        next_after=page.next_after,
        unreadable=list(page.unreadable),
    )


def read_key(request: Request, name: PathName) -> KeyOut:
    """Metadata and public keys; never private material."""
    return key_out(app_context(request).kms.read_key(name))


def rotate_key(request: Request, name: PathName) -> KeyOut:
    """Add a version with fresh material; older versions still decrypt and verify."""
    return key_out(app_context(request).kms.rotate_key(name))


def configure_key(request: Request, name: PathName, body: KeyConfigIn) -> KeyOut:
    """Set `min_decryption_version` and/or `enabled`."""
    kms = app_context(request).kms
    return key_out(
        kms.configure_key(
            name, min_decryption_version=body.min_decryption_version, enabled=body.enabled
        )
    )


def delete_key(
    request: Request,
    name: PathName,
    waiting_period_days: Annotated[
        int, Query(ge=1, le=_MAX_WAIT.days, description="days before the key is purged")
    ] = 7,
) -> KeyOut:
    """Schedule deletion: the key is unusable at once and purged after the waiting period."""
    kms = app_context(request).kms
    return key_out(kms.schedule_deletion(name, waiting_period=timedelta(days=waiting_period_days)))


def restore_key(request: Request, name: PathName) -> KeyOut:
    """Cancel a scheduled deletion."""
    return key_out(app_context(request).kms.cancel_deletion(name))


def wrapping_key(request: Request) -> WrappingKeyOut:
    """The RSA-4096 public key that BYOK material is wrapped to, and the accepted schemes."""
    found = app_context(request).kms.wrapping_key()
    return WrappingKeyOut(public_key_pem=found.public_key_pem, schemes=list(found.schemes))


def import_key(request: Request, body: KeyImportIn, who: Caller = Depends(caller)) -> KeyOut:
    """BYOK: create a key from material wrapped to the wrapping key (see docs/api.md)."""
    who.authorize("keys.import", body.name)
    kms = app_context(request).kms
    return key_out(
        kms.import_key(body.name, body.type, body.wrapped_material, exportable=body.exportable)
    )


def import_key_version(request: Request, name: PathName, body: KeyImportVersionIn) -> KeyOut:
    """BYOK rotation: add a version from wrapped material."""
    return key_out(app_context(request).kms.import_key_version(name, body.wrapped_material))


def export_key(
    request: Request,
    name: PathName,
    version: Annotated[int | None, Query(ge=1, description="default: latest")] = None,
) -> ExportOut:
    """Material of one version (raw bytes or PKCS#8 DER), only for exportable keys."""
    found = app_context(request).kms.export_key(name, version=version)
    return ExportOut(
        name=found.name, type=found.type, version=found.version, material=found.material
    )


_ROUTES = (
    ("POST", "/v1/keys", create_key, "keys.create", "keys.write", 201),
    ("GET", "/v1/keys", list_keys, "keys.list", "keys.read", 200),
    ("POST", "/v1/keys/import", import_key, "keys.import", "keys.import", 201),
    ("GET", "/v1/sys/wrapping-key", wrapping_key, "keys.wrapping_key", "keys.import", 200),
    ("GET", "/v1/keys/{name}", read_key, "keys.read", "keys.read", 200),
    ("PATCH", "/v1/keys/{name}", configure_key, "keys.configure", "keys.write", 200),
    ("DELETE", "/v1/keys/{name}", delete_key, "keys.delete", "keys.delete", 200),
    ("POST", "/v1/keys/{name}/rotate", rotate_key, "keys.rotate", "keys.write", 200),
    ("POST", "/v1/keys/{name}/restore", restore_key, "keys.restore", "keys.delete", 200),
    (
        "POST",
        "/v1/keys/{name}/import",
        import_key_version,
        "keys.import_version",
        "keys.import",
        200,
    ),
    ("GET", "/v1/keys/{name}/export", export_key, "keys.export", "keys.export", 200),
)
"""(method, path, endpoint, audit operation, token permission, success status)."""


def router() -> APIRouter:
    r = new_router()
    for method, path, endpoint, op, permission, status in _ROUTES:
        add_route(r, method, path, endpoint, op=op, permission=permission, status_code=status)
    return r
