"""Transit face, cryptographic operations: encrypt, decrypt, rewrap (single and
`batch_input`), datakey, sign / verify, hmac, random and hash (DESIGN §16).

Each route decodes Vault's parameters, calls `KMSService`, and re-spells the answer
(``vault:v<N>:``). Batches: an item whose own parameters are bad gets an ``error`` entry and
the others still run; a key-level failure (unknown, disabled, no permission) fails the whole
request; any failed item makes the status 400 (or `partial_failure_response_code` when some
succeeded), with the results in the body, as Vault answers. Signature options take Vault's
defaults (SHA-256 for every hashing key type, PSS for RSA, ASN.1 for ECDSA), which are passed
to the core explicitly, so the core's own defaults (SHA-384 for P-384) never apply here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from fastapi import APIRouter, Depends, Path, Request, Response

from enclave_kms.enclave.api.models import KEY_NAME_REGEX
from enclave_kms.enclave.api.support import Caller, add_route, app_context, caller
from enclave_kms.enclave.api.transit_models import (
    CiphertextIn,
    CiphertextItemIn,
    DataKeyIn,
    EncryptIn,
    EncryptItemIn,
    HashIn,
    HmacIn,
    InputItemIn,
    RandomIn,
    SignIn,
    VerifyIn,
    _SignOptions,
)
from enclave_kms.enclave.api.transit_support import (
    b64,
    envelope,
    ignored,
    latest_only,
    new_transit_router,
    no_derivation,
    opt_b64,
    to_core,
    to_vault,
    unb64,
    version_of,
)
from enclave_kms.enclave.keys.service import DecryptItem, EncryptItem, KMSService
from enclave_kms.enclave.keys.types import BatchResult, format_tagged, parse_tagged
from enclave_kms.errors import CryptoOperationError, InvalidRequestError

PathName = Annotated[str, Path(pattern=KEY_NAME_REGEX, description="key name")]
Item = TypeVar("Item", EncryptItem, DecryptItem)
ItemIn = TypeVar("ItemIn", EncryptItemIn, CiphertextItemIn)

SIGN_HASHES: Final = {"sha2-256": "sha256", "sha2-384": "sha384", "sha2-512": "sha512"}
"""Vault hash name → core name for sign/verify. sha1, sha2-224, sha3-* and none are refused."""
DIGESTS: Final = {
    "sha2-224": "sha224",
    "sha2-256": "sha256",
    "sha2-384": "sha384",
    "sha2-512": "sha512",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}
"""The `hash` endpoint's algorithms (hashlib names): all of Vault's."""
_EC_BYTES: Final = {"ec-p256": 32, "ec-p384": 48}
ITEM_ERRORS = (InvalidRequestError, CryptoOperationError)
"""Failures that belong to one batch item; anything else (the key) fails the request."""


def _kms(request: Request) -> KMSService:
    return app_context(request).kms


def _latest(kms: KMSService, name: str) -> Callable[[], int]:
    return lambda: kms.read_key(name).latest_version


def _batch_answer(
    request: Request, results: list[dict[str, Any]], partial: int | None, warnings: list[str]
) -> Response:
    failed = sum("error" in r for r in results)
    status = 200
    if failed:
        status = 400 if failed == len(results) or partial is None else partial
        if not 200 <= status <= 599:
            raise InvalidRequestError("partial_failure_response_code must be an HTTP status")
    return envelope(request, {"batch_results": results}, warnings=warnings, status=status)


def _each(
    items: list[Any], run: Callable[[Any], dict[str, Any]], reference: Callable[[Any], str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in items:
        try:
            result = run(item)
        except ITEM_ERRORS as exc:
            result = {"error": exc.message}
        out.append({**result, "reference": reference(item)})
    return out


# --------------------------------------------------------------------------- encryption


def encrypt(request: Request, name: PathName, body: EncryptIn) -> Response:
    """AES-256-GCM under the latest version; no upsert (an unknown key is an error)."""
    kms = _kms(request)
    if body.convergent_encryption:
        raise InvalidRequestError("convergent encryption is not supported by enclave-kms")
    if body.batch_input is None:
        no_derivation(body.context, body.nonce)
        latest_only(body.key_version, _latest(kms, name))
        ct = kms.encrypt(
            name,
            unb64(body.plaintext, "plaintext"),
            associated_data=opt_b64(body.associated_data, "associated_data"),
        )
        data = {"ciphertext": to_vault(ct), "key_version": version_of(ct)}
        return envelope(request, data, warnings=ignored(body))

    def parse(item: EncryptItemIn) -> EncryptItem:
        no_derivation(item.context, item.nonce)
        latest_only(item.key_version, _latest(kms, name))
        return EncryptItem(
            unb64(item.plaintext, "plaintext"), opt_b64(item.associated_data, "associated_data")
        )

    def render(value: str | bytes) -> dict[str, Any]:
        assert isinstance(value, str)
        return {"ciphertext": to_vault(value), "key_version": version_of(value)}

    results = _core_batch(
        body.batch_input, parse, lambda good: kms.encrypt_batch(name, good), render
    )
    return _batch_answer(request, results, body.partial_failure_response_code, ignored(body))


def _core_batch(
    items: list[ItemIn],
    parse: Callable[[ItemIn], Item],
    run: Callable[[list[Item]], list[BatchResult]],
    render: Callable[[str | bytes], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One batch through the core's batch call: items whose own parameters are bad answer an
    error in their slot and are not sent; the rest run as one batch, in order."""
    slots: list[dict[str, Any] | None] = []
    good: list[Item] = []
    for item in items:
        try:
            good.append(parse(item))
            slots.append(None)
        except InvalidRequestError as exc:
            slots.append({"error": exc.message, "reference": item.reference})
    done = iter(run(good) if good else [])
    results: list[dict[str, Any]] = []
    for item, refused in zip(items, slots, strict=True):
        if refused is not None:
            results.append(refused)
            continue
        r = next(done)
        if r.error is None and r.value is not None:
            results.append({**render(r.value), "reference": item.reference})
        else:
            message = r.error.message if r.error is not None else "failed"
            results.append({"error": message, "reference": item.reference})
    return results


def decrypt(request: Request, name: PathName, body: CiphertextIn) -> Response:
    kms = _kms(request)
    if body.batch_input is None:
        no_derivation(body.context, body.nonce)
        pt = kms.decrypt(
            name,
            to_core(body.ciphertext, "ciphertext"),
            associated_data=opt_b64(body.associated_data, "associated_data"),
        )
        return envelope(request, {"plaintext": b64(pt)}, warnings=ignored(body))

    def parse(item: CiphertextItemIn) -> DecryptItem:
        no_derivation(item.context, item.nonce)
        return DecryptItem(
            to_core(item.ciphertext, "ciphertext"),
            opt_b64(item.associated_data, "associated_data"),
        )

    def render(value: str | bytes) -> dict[str, Any]:
        assert isinstance(value, bytes)
        return {"plaintext": b64(value)}

    results = _core_batch(
        body.batch_input, parse, lambda good: kms.decrypt_batch(name, good), render
    )
    return _batch_answer(request, results, body.partial_failure_response_code, ignored(body))


def rewrap(request: Request, name: PathName, body: CiphertextIn) -> Response:
    """Re-encrypt under the latest version; the plaintext never leaves the enclave."""
    kms = _kms(request)

    def one(item: Any) -> dict[str, Any]:
        no_derivation(item.context, item.nonce)
        latest_only(item.key_version, _latest(kms, name))
        ct = kms.rewrap(
            name,
            to_core(item.ciphertext, "ciphertext"),
            associated_data=opt_b64(item.associated_data, "associated_data"),
        )
        return {"ciphertext": to_vault(ct), "key_version": version_of(ct)}

    if body.batch_input is None:
        return envelope(request, one(body), warnings=ignored(body))
    results = _each(body.batch_input, one, lambda item: item.reference)
    return _batch_answer(request, results, body.partial_failure_response_code, ignored(body))


def datakey(request: Request, kind: str, name: PathName, body: DataKeyIn | None = None) -> Response:
    """`plaintext` answers the data key and its ciphertext; `wrapped` only the ciphertext."""
    body = body or DataKeyIn()
    if kind not in ("plaintext", "wrapped"):
        raise InvalidRequestError(f"invalid type {kind!r}: plaintext or wrapped")
    if body.bits != 256:
        raise InvalidRequestError("bits: enclave-kms data keys are 256 bits")
    no_derivation(body.context, body.nonce)
    found = _kms(request).generate_data_key(
        name,
        include_plaintext=kind == "plaintext",
        associated_data=opt_b64(body.associated_data, "associated_data"),
    )
    data: dict[str, Any] = {
        "ciphertext": to_vault(found.ciphertext),
        "key_version": version_of(found.ciphertext),
    }
    if found.plaintext is not None:
        data["plaintext"] = b64(found.plaintext)
    return envelope(request, data, warnings=ignored(body))


# --------------------------------------------------------------------------- signatures


def _scheme(
    kms: KMSService, name: str, opts: _SignOptions, path_hash: str | None
) -> tuple[dict[str, Any], str]:
    """(core keyword arguments, key type) for Vault's signing options."""
    if opts.context:
        raise InvalidRequestError("key derivation (context) is not supported by enclave-kms")
    core_type = kms.read_key(name).type
    hash_name = path_hash or opts.hash_algorithm or "sha2-256"
    if opts.marshaling_algorithm not in ("asn1", "jws"):
        raise InvalidRequestError("marshaling_algorithm must be asn1 or jws")
    if opts.marshaling_algorithm == "jws" and core_type not in _EC_BYTES:
        raise InvalidRequestError("marshaling_algorithm jws applies to ECDSA keys only")
    if core_type == "ed25519":  # Vault ignores the hash for Ed25519: PureEdDSA
        if opts.prehashed:
            raise InvalidRequestError("prehashed Ed25519 (Ed25519ph) is not supported")
        return {}, core_type
    core_hash = SIGN_HASHES.get(hash_name)
    if core_hash is None:
        raise InvalidRequestError(
            f"hash_algorithm {hash_name!r} is not offered; use {', '.join(SIGN_HASHES)}"
        )
    kwargs: dict[str, Any] = {"hash_algorithm": core_hash, "prehashed": opts.prehashed}
    if core_type.startswith("rsa-"):
        kwargs["signature_algorithm"] = opts.signature_algorithm or "pss"
        digest = hashlib.new(core_hash).digest_size
        if kwargs["signature_algorithm"] == "pss" and opts.salt_length not in (
            "auto",
            "hash",
            digest,
            str(digest),
        ):
            raise InvalidRequestError(
                "salt_length: enclave-kms PSS salts are as long as the digest ('hash')"
            )
    return kwargs, core_type


def _to_jws(core_sig: str, size: int) -> str:
    number, der = parse_tagged(core_sig, "signature")
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return f"vault:v{number}:" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _from_jws(signature: str | None, size: int) -> str:
    core = to_core(signature, "signature")
    head, _, encoded = core.rpartition(":")
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequestError("signature is not valid base64url") from None
    if len(raw) != 2 * size:
        raise InvalidRequestError(f"a JWS ECDSA signature has {2 * size} bytes")
    der = encode_dss_signature(int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big"))
    number = int(head.split(":v", 1)[1])
    return format_tagged(number, der)


def sign(
    request: Request, name: PathName, body: SignIn, hash_algorithm: str | None = None
) -> Response:
    kms = _kms(request)
    kwargs, core_type = _scheme(kms, name, body, hash_algorithm)
    jws = body.marshaling_algorithm == "jws"

    def one(item: Any) -> dict[str, Any]:
        if item.context:
            raise InvalidRequestError("key derivation (context) is not supported by enclave-kms")
        latest_only(getattr(item, "key_version", None), _latest(kms, name))
        sig = kms.sign(name, unb64(item.input, "input"), **kwargs)
        spelled = _to_jws(sig, _EC_BYTES[core_type]) if jws else to_vault(sig)
        return {"signature": spelled, "key_version": version_of(sig)}

    if body.batch_input is None:
        return envelope(request, one(body), warnings=ignored(body))
    latest_only(body.key_version, _latest(kms, name))
    results = _each(body.batch_input, one, lambda item: item.reference)
    return _batch_answer(request, results, None, ignored(body))


def verify(
    request: Request,
    name: PathName,
    body: VerifyIn,
    hash_algorithm: str | None = None,
    who: Caller = Depends(caller),
) -> Response:
    """A signature (permission verify) or an HMAC (permission hmac); authorized here because
    the permission depends on which one the body carries."""
    items: list[Any] = [body] if body.batch_input is None else list(body.batch_input)
    kinds = {"hmac" if item.hmac else "signature" for item in items}
    if len(kinds) != 1:
        raise InvalidRequestError("every item must carry either a signature or an hmac")
    use_hmac = kinds == {"hmac"}
    who.authorize("hmac" if use_hmac else "verify", name)
    kms = _kms(request)
    if use_hmac:
        algorithm = hash_algorithm or body.hash_algorithm or "sha2-256"
        if algorithm != "sha2-256":
            raise InvalidRequestError("enclave-kms HMACs are HMAC-SHA-256 (sha2-256)")

        def one(item: Any) -> dict[str, Any]:
            data = unb64(item.input, "input")
            return {"valid": kms.verify_hmac(name, data, to_core(item.hmac, "hmac"))}

    else:
        kwargs, core_type = _scheme(kms, name, body, hash_algorithm)
        jws = body.marshaling_algorithm == "jws"

        def one(item: Any) -> dict[str, Any]:
            data = unb64(item.input, "input")
            sig = (
                _from_jws(item.signature, _EC_BYTES[core_type])
                if jws
                else to_core(item.signature, "signature")
            )
            return {"valid": kms.verify(name, data, sig, **kwargs)}

    if body.batch_input is None:
        return envelope(request, one(body), warnings=ignored(body))
    results = _each(items, one, lambda item: item.reference)
    return _batch_answer(request, results, None, ignored(body))


def hmac(request: Request, name: PathName, body: HmacIn, algorithm: str | None = None) -> Response:
    """HMAC-SHA-256 under the latest version of an `hmac` key."""
    chosen = algorithm or body.algorithm or "sha2-256"
    if chosen != "sha2-256":
        raise InvalidRequestError("enclave-kms HMACs are HMAC-SHA-256 (sha2-256)")
    kms = _kms(request)
    latest_only(body.key_version, _latest(kms, name))

    def one(item: InputItemIn) -> dict[str, Any]:
        if item.context:
            raise InvalidRequestError("key derivation (context) is not supported by enclave-kms")
        return {"hmac": to_vault(kms.hmac(name, unb64(item.input, "input")))}

    if body.batch_input is None:
        return envelope(request, one(body), warnings=ignored(body))
    results = _each(body.batch_input, one, lambda item: item.reference)
    return _batch_answer(request, results, None, ignored(body))


# --------------------------------------------------------------------------- keyless


def _random(
    request: Request, body: RandomIn | None, first: str | None, second: str | None
) -> Response:
    body = body or RandomIn()
    source, count = None, body.bytes
    if second is not None:
        source, count = first, int(second) if second.isdigit() else -1
    elif first is not None:
        if first.isdigit():
            count = int(first)
        else:
            source = first
    if (source or body.source or "platform") not in ("platform", "seal", "all"):
        raise InvalidRequestError("source must be platform, seal or all")
    if body.format not in ("base64", "hex"):
        raise InvalidRequestError("format must be base64 or hex")
    data = _kms(request).random_bytes(32 if count is None else count)
    encoded = data.hex() if body.format == "hex" else b64(data)
    return envelope(request, {"random_bytes": encoded}, warnings=ignored(body))


def random(request: Request, body: RandomIn | None = None) -> Response:
    """Bytes from the enclave's CSPRNG (every `source` is that one)."""
    return _random(request, body, None, None)


def random_one(request: Request, first: str, body: RandomIn | None = None) -> Response:
    return _random(request, body, first, None)


def random_two(request: Request, source: str, count: str, body: RandomIn | None = None) -> Response:
    return _random(request, body, source, count)


def hash_data(request: Request, body: HashIn, algorithm: str | None = None) -> Response:
    """A digest computed in the enclave (no key involved)."""
    chosen = algorithm or body.algorithm or "sha2-256"
    if chosen not in DIGESTS:
        raise InvalidRequestError(f"unsupported algorithm {chosen!r}")
    if body.format not in ("hex", "base64"):
        raise InvalidRequestError("format must be hex or base64")
    digest = hashlib.new(DIGESTS[chosen], unb64(body.input, "input")).digest()
    encoded = digest.hex() if body.format == "hex" else b64(digest)
    return envelope(request, {"sum": encoded}, warnings=ignored(body))


_ROUTES = (
    ("/encrypt/{name}", encrypt, "encrypt", "encrypt"),
    ("/decrypt/{name}", decrypt, "decrypt", "decrypt"),
    ("/rewrap/{name}", rewrap, "rewrap", "rewrap"),
    ("/datakey/{kind}/{name}", datakey, "datakey", "datakey"),
    ("/sign/{name}", sign, "sign", "sign"),
    ("/sign/{name}/{hash_algorithm}", sign, "sign", "sign"),
    ("/verify/{name}", verify, "verify", "verify"),
    ("/verify/{name}/{hash_algorithm}", verify, "verify", "verify"),
    ("/hmac/{name}", hmac, "hmac", "hmac"),
    ("/hmac/{name}/{algorithm}", hmac, "hmac", "hmac"),
    ("/random", random, "random", "random"),
    ("/random/{first}", random_one, "random", "random"),
    ("/random/{source}/{count}", random_two, "random", "random"),
    ("/hash", hash_data, "hash", "random"),
    ("/hash/{algorithm}", hash_data, "hash", "random"),
)
"""(path under the mount, endpoint, audit operation after "transit.", permission); POST and
PUT (Vault treats them alike). `verify` authorizes in the route (signature or HMAC)."""


def router(prefix: str) -> APIRouter:
    r = new_transit_router()
    for path, endpoint, op, permission in _ROUTES:
        for method in ("POST", "PUT"):
            add_route(
                r,
                method,
                prefix + path,
                endpoint,
                op=f"transit.{op}",
                permission=permission,
                inline=True,  # bounded CPU on a cached key, as the native routes
            )
    return r


__all__ = ["router"]
