"""Differential test: the same hvac calls against a real OpenBao dev server and against
enclave-kms's transit face; both must answer the same shapes (envelope, field names, value
types, status classes), except the fields listed in `MUST_DIFFER` with the reason.

Values necessarily differ (keys, nonces, timestamps); shapes must not, or a client written
against OpenBao would break on enclave-kms.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.transit.conftest import BaoDev, Transit

pytestmark = pytest.mark.slow

MSG = base64.b64encode(b"differential").decode()

MUST_DIFFER: dict[str, str] = {}
"""Dotted paths of fields whose shape may differ, and why (none today: every field
OpenBao 2.7 answers on these calls is answered by enclave-kms with the same type)."""

Call = Callable[[hvac.Client, dict[str, Any]], Any]


def shape(value: Any, path: str = "") -> Any:
    """Field names and value types, recursively; lists by their first element."""
    if path in MUST_DIFFER:
        return "<differs>"
    if isinstance(value, dict):
        return {k: shape(v, f"{path}.{k}" if path else k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0], path + "[]")] if value else []
    return type(value).__name__


def run(client: hvac.Client, call: Call, memo: dict[str, Any]) -> Any:
    """The answer, or the class of the error hvac raised (Vault's status, as hvac maps it)."""
    try:
        return call(client, memo)
    except hvac.exceptions.VaultError as exc:
        return f"<{type(exc).__name__}>"


def _t(c: hvac.Client) -> Any:
    return c.secrets.transit


def _save(memo: dict[str, Any], name: str, value: Any) -> Any:
    memo[name] = value
    return value


CALLS: list[tuple[str, Call]] = [
    ("create aes", lambda c, m: _t(c).create_key("d-aes")),
    ("create again", lambda c, m: _t(c).create_key("d-aes")),
    ("create ec", lambda c, m: _t(c).create_key("d-ec", key_type="ecdsa-p256")),
    ("create ed", lambda c, m: _t(c).create_key("d-ed", key_type="ed25519")),
    ("create rsa", lambda c, m: _t(c).create_key("d-rsa", key_type="rsa-2048")),
    (
        "create hmac",
        lambda c, m: c.adapter.post(
            "/v1/transit/keys/d-hmac", json={"type": "hmac", "key_size": 32}
        ),
    ),
    ("read aes", lambda c, m: _t(c).read_key("d-aes")),
    ("read ec", lambda c, m: _t(c).read_key("d-ec")),
    ("read ed", lambda c, m: _t(c).read_key("d-ed")),
    ("read rsa", lambda c, m: _t(c).read_key("d-rsa")),
    ("read missing", lambda c, m: _t(c).read_key("d-missing")),
    (
        "encrypt",
        lambda c, m: _save(
            m, "ct", _t(c).encrypt_data("d-aes", plaintext=MSG, associated_data=MSG)
        ),
    ),
    (
        "decrypt",
        lambda c, m: _t(c).decrypt_data(
            "d-aes", ciphertext=m["ct"]["data"]["ciphertext"], associated_data=MSG
        ),
    ),
    (
        "decrypt wrong aad",
        lambda c, m: _t(c).decrypt_data("d-aes", ciphertext=m["ct"]["data"]["ciphertext"]),
    ),
    ("decrypt garbage", lambda c, m: _t(c).decrypt_data("d-aes", ciphertext="nonsense")),
    (
        "encrypt batch",
        lambda c, m: _save(
            m,
            "batch",
            _t(c).encrypt_data("d-aes", batch_input=[{"plaintext": MSG, "reference": "r"}] * 2),
        ),
    ),
    (
        "decrypt batch",
        lambda c, m: _t(c).decrypt_data(
            "d-aes",
            batch_input=[
                {"ciphertext": r["ciphertext"], "reference": "x"}
                for r in m["batch"]["data"]["batch_results"]
            ],
        ),
    ),
    (
        "encrypt batch bad item",
        lambda c, m: _t(c).encrypt_data(
            "d-aes", batch_input=[{"plaintext": MSG}, {"plaintext": "%%"}]
        ),
    ),
    ("rotate", lambda c, m: _t(c).rotate_key("d-aes")),
    (
        "rewrap",
        lambda c, m: _t(c).rewrap_data(
            "d-aes", ciphertext=m["batch"]["data"]["batch_results"][0]["ciphertext"]
        ),
    ),
    ("datakey plaintext", lambda c, m: _t(c).generate_data_key("d-aes", key_type="plaintext")),
    ("datakey wrapped", lambda c, m: _t(c).generate_data_key("d-aes", key_type="wrapped")),
    (
        "config",
        lambda c, m: _t(c).update_key_configuration(
            "d-aes", min_decryption_version=2, deletion_allowed=True
        ),
    ),
    ("read after config", lambda c, m: _t(c).read_key("d-aes")),
    ("sign ec", lambda c, m: _save(m, "sig", _t(c).sign_data("d-ec", hash_input=MSG))),
    (
        "verify ec",
        lambda c, m: _t(c).verify_signed_data(
            "d-ec", hash_input=MSG, signature=m["sig"]["data"]["signature"]
        ),
    ),
    (
        "verify ec wrong",
        lambda c, m: _t(c).verify_signed_data(
            "d-ec",
            hash_input=base64.b64encode(b"x").decode(),
            signature=m["sig"]["data"]["signature"],
        ),
    ),
    (
        "sign ec jws",
        lambda c, m: _t(c).sign_data("d-ec", hash_input=MSG, marshaling_algorithm="jws"),
    ),
    ("sign ed", lambda c, m: _t(c).sign_data("d-ed", hash_input=MSG)),
    (
        "sign rsa pkcs1v15",
        lambda c, m: _t(c).sign_data(
            "d-rsa", hash_input=MSG, signature_algorithm="pkcs1v15", hash_algorithm="sha2-384"
        ),
    ),
    (
        "sign batch",
        lambda c, m: _t(c).sign_data("d-ec", batch_input=[{"input": MSG, "reference": "s"}]),
    ),
    ("hmac", lambda c, m: _save(m, "mac", _t(c).generate_hmac("d-hmac", hash_input=MSG))),
    (
        "verify hmac",
        lambda c, m: _t(c).verify_signed_data(
            "d-hmac", hash_input=MSG, hmac=m["mac"]["data"]["hmac"]
        ),
    ),
    ("random", lambda c, m: _t(c).generate_random_bytes(n_bytes=16, output_format="hex")),
    (
        "hash",
        lambda c, m: _t(c).hash_data(hash_input=MSG, algorithm="sha2-384", output_format="base64"),
    ),
    ("list", lambda c, m: _t(c).list_keys()),
    ("export not exportable", lambda c, m: _t(c).export_key("d-aes", key_type="encryption-key")),
    ("unsupported path", lambda c, m: c.adapter.get("/v1/transit/no-such-endpoint")),
    (
        "no token",
        lambda c, m: hvac.Client(
            url=c.url, verify=c.session.verify, strict_http=True
        ).secrets.transit.encrypt_data("d-aes", plaintext=MSG),
    ),
    ("delete", lambda c, m: _t(c).delete_key("d-aes")),
]


def test_same_calls_same_shapes(transit: Transit, bao_dev: BaoDev) -> None:
    ours, theirs = transit.hvac(), bao_dev.hvac()
    memo_ours: dict[str, Any] = {}
    memo_theirs: dict[str, Any] = {}
    mismatches = []
    for label, call in CALLS:
        a = run(ours, call, memo_ours)
        b = run(theirs, call, memo_theirs)
        if shape(a) != shape(b):
            mismatches.append(f"{label}:\n  enclave-kms {shape(a)}\n  openbao     {shape(b)}")
    assert not mismatches, "\n".join(mismatches)
