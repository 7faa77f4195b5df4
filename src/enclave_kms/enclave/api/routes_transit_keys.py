"""Transit face, key management: create, read, list, config, rotate, delete (scheduled),
soft-delete and restore, export, BYOK import and the wrapping key (DESIGN §16).

Each route is one call into `KMSService` plus a translation of names and shapes. Key types
map one to one (`VAULT_TYPES`); Vault's `keys` map lists, as Vault does, only versions at or
above `min_decryption_version`. Plain `def` routes run on FastAPI's thread pool (key
generation takes seconds for RSA-4096; storage is an OCALL).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from enclave_kms.enclave.api.models import KEY_NAME_REGEX
from enclave_kms.enclave.api.support import Caller, add_route, app_context, caller
from enclave_kms.enclave.api.transit_models import (
    ConfigKeyIn,
    CreateKeyIn,
    ImportKeyIn,
    ImportVersionIn,
)
from enclave_kms.enclave.api.transit_support import (
    envelope,
    ignored,
    new_transit_router,
    unb64,
)
from enclave_kms.enclave.keys.service import MAX_LIST_LIMIT, KeyMetadata, KMSService
from enclave_kms.errors import ConflictError, InvalidRequestError, KeyStateError

PathName = Annotated[str, Path(pattern=KEY_NAME_REGEX, description="key name")]

VAULT_TYPES: Final = {
    "aes256-gcm96": "aes256-gcm",
    "hmac": "hmac-sha256",
    "rsa-2048": "rsa-2048",
    "rsa-3072": "rsa-3072",
    "rsa-4096": "rsa-4096",
    "ecdsa-p256": "ec-p256",
    "ecdsa-p384": "ec-p384",
    "ed25519": "ed25519",
}
"""Vault type name → core type name. Vault's other types (aes128-gcm96, chacha20-poly1305,
xchacha20-poly1305, ecdsa-p521, ml-dsa, managed_key, aes-cmac) are not offered."""
CORE_TYPES: Final = {core: vault for vault, core in VAULT_TYPES.items()}
_PUBLIC_NAME: Final = {"ec-p256": "P-256", "ec-p384": "P-384", "ed25519": "ed25519"}
HMAC_KEY_BYTES = 32


def _kms(request: Request) -> KMSService:
    return app_context(request).kms


def vault_type(name: str) -> str:
    core = VAULT_TYPES.get(name)
    if core is None:
        raise InvalidRequestError(
            f"unknown key type {name!r}; enclave-kms offers {', '.join(VAULT_TYPES)}"
        )
    return core


def _public_value(core_type: str, pem: str) -> str:
    """Vault's spelling of a public key: PKIX PEM, except raw base64 for Ed25519."""
    if core_type != "ed25519":
        return pem.rstrip("\n")
    key = serialization.load_pem_public_key(pem.encode("ascii"))
    assert isinstance(key, ed25519.Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_data(meta: KeyMetadata) -> dict[str, Any]:
    """Vault's read-key `data` for our metadata."""
    live = [v for v in meta.versions if v.version >= meta.min_decryption_version]
    keys: dict[str, Any] = {}
    for v in live:
        if v.public_key_pem is None:
            keys[str(v.version)] = int(v.created.timestamp())
        else:
            keys[str(v.version)] = {
                "certificate_chain": "",
                "creation_time": v.created.isoformat().replace("+00:00", "Z"),
                "name": _PUBLIC_NAME.get(meta.type, meta.type),
                "public_key": _public_value(meta.type, v.public_key_pem),
            }
    ops = set(meta.operations)
    data: dict[str, Any] = {
        "allow_plaintext_backup": False,
        "auto_rotate_period": 0,
        "deletion_allowed": True,  # DELETE always works here: it schedules the deletion
        "derived": False,
        "exportable": meta.exportable,
        "imported_key": any(v.imported for v in meta.versions),
        "keys": keys,
        "latest_version": meta.latest_version,
        "min_available_version": 0,
        "min_decryption_version": meta.min_decryption_version,
        "min_encryption_version": 0,
        "name": meta.name,
        "soft_deleted": meta.deletion_scheduled_at is not None,
        "supports_decryption": "decrypt" in ops,
        "supports_derivation": False,
        "supports_encryption": "encrypt" in ops,
        "supports_signing": "sign" in ops,
        "type": CORE_TYPES.get(meta.type, meta.type),
    }
    if meta.type == "hmac-sha256":  # as OpenBao: the size instead of the versions map
        del data["keys"]
        data["key_size"] = HMAC_KEY_BYTES
    return data


def _zero_period(value: str | int | None) -> None:
    if value not in (None, 0, "0", "0s", ""):
        raise InvalidRequestError("automatic rotation (auto_rotate_period) is not supported")


def _refuse_create_options(
    *, derived: bool, plaintext_backup: bool, auto_rotate_period: str | int
) -> None:
    if derived:
        raise InvalidRequestError("key derivation (derived) is not supported by enclave-kms")
    if plaintext_backup:
        raise InvalidRequestError("plaintext backups (allow_plaintext_backup) are not offered")
    _zero_period(auto_rotate_period)


# --------------------------------------------------------------------------- lifecycle


def create_key(request: Request, name: PathName, body: CreateKeyIn | None = None) -> Response:
    """Create `name`; creating an existing key of the same type answers it unchanged."""
    body = body or CreateKeyIn()
    core = vault_type(body.type)
    _refuse_create_options(
        derived=body.derived or body.convergent_encryption,
        plaintext_backup=body.allow_plaintext_backup,
        auto_rotate_period=body.auto_rotate_period,
    )
    if body.key_size not in (0, HMAC_KEY_BYTES if core == "hmac-sha256" else 0):
        raise InvalidRequestError("key_size: enclave-kms HMAC keys are 32 bytes")
    if body.managed_key_name or body.managed_key_id or body.parameter_set:
        raise InvalidRequestError("managed keys and ML-DSA are not offered")
    kms = _kms(request)
    try:
        meta = kms.create_key(name, core, exportable=body.exportable)
    except ConflictError:
        meta = kms.read_key(name)
        if meta.type != core or meta.exportable != body.exportable:
            raise ConflictError(
                f"key {name!r} already exists as {CORE_TYPES.get(meta.type, meta.type)}"
                f"{' (exportable)' if meta.exportable else ''}"
            ) from None
    return envelope(request, key_data(meta), warnings=ignored(body))


def read_key(request: Request, name: PathName) -> Response:
    return envelope(request, key_data(_kms(request).read_key(name)))


def list_keys(request: Request, who: Caller = Depends(caller)) -> Response:
    """`LIST /keys` or `GET /keys?list=true`: the names the token may read."""
    if request.method == "GET" and request.query_params.get("list") not in ("true", "1"):
        raise InvalidRequestError("use LIST, or GET with ?list=true")
    kms, names, after = _kms(request), [], ""
    while True:
        page = kms.list_keys(after=after, limit=MAX_LIST_LIMIT)
        names += [k.name for k in page.keys if who.allowed("keys.read", k.name)]
        if page.next_after is None:
            break
        after = page.next_after
    if not names:
        return JSONResponse({"errors": []}, status_code=404)  # Vault's answer for none
    return envelope(request, {"keys": names})


def configure_key(request: Request, name: PathName, body: ConfigKeyIn | None = None) -> Response:
    body = body or ConfigKeyIn()
    kms = _kms(request)
    current = kms.read_key(name)
    if body.min_encryption_version not in (None, 0):
        raise InvalidRequestError("min_encryption_version: enclave-kms always uses the latest")
    if body.deletion_allowed is False:
        raise InvalidRequestError(
            "deletion_allowed=false is not offered: deletion is always scheduled and "
            "cancellable (POST keys/:name/soft-delete-restore)"
        )
    if body.exportable is not None and body.exportable != current.exportable:
        raise KeyStateError("exportable is fixed when a key is created in enclave-kms")
    if body.allow_plaintext_backup:
        raise InvalidRequestError("plaintext backups (allow_plaintext_backup) are not offered")
    _zero_period(body.auto_rotate_period)
    minimum = body.min_decryption_version or None
    meta = kms.configure_key(name, min_decryption_version=minimum) if minimum else current
    return envelope(request, key_data(meta), warnings=ignored(body))


def rotate_key(request: Request, name: PathName) -> Response:
    return envelope(request, key_data(_kms(request).rotate_key(name)))


def delete_key(request: Request, name: PathName) -> Response:
    """Vault deletes at once; enclave-kms schedules the deletion (default waiting period):
    the key is unusable now, restorable until it is purged."""
    _kms(request).schedule_deletion(name)
    return envelope(request, None)


def soft_delete_restore(request: Request, name: PathName) -> Response:
    return envelope(request, key_data(_kms(request).cancel_deletion(name)))


# --------------------------------------------------------------------------- export and BYOK

_EXPORT_FAMILY: Final = {
    "encryption-key": ("aes256-gcm",),
    "hmac-key": ("hmac-sha256",),
    "signing-key": ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ed25519"),
    "public-key": ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ed25519"),
}


def _private_value(core_type: str, material: bytes) -> str:
    """Vault's spelling of exported material: raw base64 for symmetric and Ed25519 keys,
    PKCS#1 PEM for RSA, SEC 1 PEM for EC."""
    if core_type in ("aes256-gcm", "hmac-sha256"):
        return base64.b64encode(material).decode("ascii")
    key = serialization.load_der_private_key(material, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(seed + public).decode("ascii")
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    fmt = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1 (RSA), SEC 1 (EC)
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return pem.decode("ascii").rstrip("\n")


def _versions(meta: KeyMetadata, version: str | None) -> list[int]:
    if version in (None, ""):
        return [v.version for v in meta.versions if v.version >= meta.min_decryption_version]
    if version == "latest":
        return [meta.latest_version]
    if not version.isdigit() or not 1 <= int(version) <= meta.latest_version:
        raise InvalidRequestError(f"key {meta.name!r} has no version {version!r}")
    if int(version) < meta.min_decryption_version:
        raise KeyStateError(f"version {version} is below min_decryption_version")
    return [int(version)]


def _export(request: Request, key_type: str, name: str, version: str | None) -> Response:
    kms = _kms(request)
    meta = kms.read_key(name)
    if meta.type not in _EXPORT_FAMILY.get(key_type, ()):
        raise InvalidRequestError(
            f"cannot export {key_type!r} of a {CORE_TYPES.get(meta.type, meta.type)} key"
        )
    numbers = _versions(meta, version)
    keys: dict[str, str] = {}
    for number in numbers:
        if key_type == "public-key":
            pem = meta.versions[number - 1].public_key_pem
            assert pem is not None
            keys[str(number)] = _public_value(meta.type, pem)
        else:
            found = kms.export_key(name, version=number)
            keys[str(number)] = _private_value(meta.type, found.material)
    data = {"name": name, "type": CORE_TYPES.get(meta.type, meta.type), "keys": keys}
    return envelope(request, data)


def export_key(
    request: Request, key_type: str, name: PathName, who: Caller = Depends(caller)
) -> Response:
    """All live versions. `public-key` needs keys.read; private material needs keys.export
    and a key created exportable."""
    who.authorize("keys.read" if key_type == "public-key" else "keys.export", name)
    return _export(request, key_type, name, None)


def export_key_version(
    request: Request, key_type: str, name: PathName, version: str, who: Caller = Depends(caller)
) -> Response:
    who.authorize("keys.read" if key_type == "public-key" else "keys.export", name)
    return _export(request, key_type, name, version)


def wrapping_key(request: Request) -> Response:
    """The RSA-4096 BYOK wrapping key (Vault's `public_key`)."""
    pem = _kms(request).wrapping_key().public_key_pem
    return envelope(request, {"public_key": pem})


def _wrapped(ciphertext: str | None, hash_function: str, public_key: str | None) -> bytes:
    if public_key:
        raise InvalidRequestError("public-key-only imports are not offered")
    if hash_function.upper() != "SHA256":
        raise InvalidRequestError("hash_function: only SHA256 (RSA-OAEP-SHA256) is accepted")
    return unb64(ciphertext, "ciphertext")


def import_key(request: Request, name: PathName, body: ImportKeyIn) -> Response:
    """BYOK in Vault's format: RSA-OAEP-SHA256(ephemeral AES key) ‖ AES-KWP(material), the
    core's CKM_RSA_AES_KEY_WRAP form; material raw (symmetric) or PKCS#8 DER."""
    core = vault_type(body.type)
    _refuse_create_options(
        derived=body.derived or bool(body.context),
        plaintext_backup=body.allow_plaintext_backup,
        auto_rotate_period=body.auto_rotate_period,
    )
    wrapped = _wrapped(body.ciphertext, body.hash_function, body.public_key)
    meta = _kms(request).import_key(name, core, wrapped, exportable=body.exportable)
    return envelope(request, key_data(meta), warnings=ignored(body))


def import_key_version(request: Request, name: PathName, body: ImportVersionIn) -> Response:
    if body.version is not None:
        raise InvalidRequestError("version: enclave-kms imports only as a new latest version")
    wrapped = _wrapped(body.ciphertext, body.hash_function, body.public_key)
    meta = _kms(request).import_key_version(name, wrapped)
    return envelope(request, key_data(meta), warnings=ignored(body))


def keys_config(request: Request) -> Response:
    """Vault's global upsert switch: enclave-kms never creates a key on encrypt."""
    return envelope(request, {"disable_upsert": True})


_ROUTES = (
    (("POST", "PUT"), "/keys/{name}", create_key, "keys.create", "keys.write"),
    (("GET",), "/keys/{name}", read_key, "keys.read", "keys.read"),
    (("GET", "LIST"), "/keys", list_keys, "keys.list", "keys.read"),
    (("POST", "PUT"), "/keys/{name}/config", configure_key, "keys.config", "keys.write"),
    (("POST", "PUT"), "/keys/{name}/rotate", rotate_key, "keys.rotate", "keys.write"),
    (("DELETE",), "/keys/{name}", delete_key, "keys.delete", "keys.delete"),
    (("DELETE",), "/keys/{name}/soft-delete", delete_key, "keys.delete", "keys.delete"),
    (
        ("POST", "PUT"),
        "/keys/{name}/soft-delete-restore",
        soft_delete_restore,
        "keys.restore",
        "keys.delete",
    ),
    (("POST", "PUT"), "/keys/{name}/import", import_key, "keys.import", "keys.import"),
    (
        ("POST", "PUT"),
        "/keys/{name}/import_version",
        import_key_version,
        "keys.import-version",
        "keys.import",
    ),
    (("GET",), "/wrapping_key", wrapping_key, "keys.wrapping-key", "keys.import"),
    (("GET",), "/config/keys", keys_config, "keys.config-read", "keys.read"),
)
"""(methods, path under the mount, endpoint, audit operation after "transit.", permission)."""


def router(prefix: str) -> APIRouter:
    r = new_transit_router()
    for methods, path, endpoint, op, permission in _ROUTES:
        for method in methods:
            add_route(r, method, prefix + path, endpoint, op=f"transit.{op}", permission=permission)
    # Export authorizes in the route: its permission depends on the kind of material.
    exports: tuple[tuple[str, Callable[..., Response]], ...] = (
        ("/export/{key_type}/{name}", export_key),
        ("/export/{key_type}/{name}/{version}", export_key_version),
    )
    for path, export in exports:
        add_route(r, "GET", prefix + path, export, op="transit.keys.export", permission="keys.read")
    return r
