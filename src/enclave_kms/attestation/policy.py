"""Appraisal policy: what a verified quote must look like before anyone trusts it (DESIGN §8).

Verification (`verify.py`) proves the quote is genuine; this module decides whether the genuine
enclave is the one we want. It runs only on a `VerifiedQuote` and reports every violation at
once, so an operator fixes a policy in one round instead of one rule per attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enclave_kms.attestation.tdx_policy import (
    TDX_KEYS,
    TdxRules,
    tdx_rules_from_mapping,
    tdx_rules_to_toml,
    tdx_violations,
)
from enclave_kms.attestation.types import TcbStatus, VerifiedQuote
from enclave_kms.errors import ConfigError, PolicyError

_KEYS = (
    "mr_enclave",
    "mr_signer",
    "isv_prod_id",
    "min_isv_svn",
    "allow_debug",
    "accepted_tcb_statuses",
    "rejected_advisories",
    "report_data",
    "simulated_root",
    "any_enclave_unsafe",
    *TDX_KEYS,
)


@dataclass(frozen=True)
class Policy:
    """Expected identity of an enclave. `None` / empty means "not constrained" for that rule.

    **Identity is required** (DESIGN §8): a policy must pin MRENCLAVE (one of a list) or
    MRSIGNER + ISVPRODID, or it accepts nothing. Trusting "any genuine enclave" exists only as
    `any_enclave_unsafe = true`, whose name says what it is. The other defaults are strict:
    no debug enclaves, `UpToDate` only, and only Intel's production root; any other root
    (simulated, Intel's test PKI, a private one) must be named by its SPKI SHA-256 in
    `simulated_root`.
    """

    mr_enclave: tuple[bytes, ...] = ()
    mr_signer: bytes | None = None
    isv_prod_id: int | None = None
    min_isv_svn: int | None = None
    allow_debug: bool = False
    accepted_tcb_statuses: tuple[TcbStatus, ...] = (TcbStatus.UP_TO_DATE,)
    rejected_advisories: tuple[str, ...] = ()
    report_data: bytes | None = None
    simulated_root: str | None = None
    any_enclave_unsafe: bool = False
    tdx: TdxRules = field(default_factory=TdxRules)

    def __post_init__(self) -> None:
        # Constructed in code as well as from TOML: keep the same invariants either way.
        for value in self.mr_enclave:
            _check_len("mr_enclave", value, 32)
        if self.mr_signer is not None:
            _check_len("mr_signer", self.mr_signer, 32)
        if self.report_data is not None and not 1 <= len(self.report_data) <= 64:
            raise ConfigError("report_data: expected 1 to 64 bytes")
        for name in ("isv_prod_id", "min_isv_svn"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 0xFFFF:
                raise ConfigError(f"{name}: {value} is outside 0..65535")
        if not self.accepted_tcb_statuses:
            raise ConfigError("accepted_tcb_statuses: must name at least one status")
        if self.simulated_root is not None:
            _check_len("simulated_root", _hex("simulated_root", self.simulated_root), 32)
        if not isinstance(self.tdx, TdxRules):
            raise ConfigError("tdx: expected TdxRules")
        if type(self.any_enclave_unsafe) is not bool or type(self.allow_debug) is not bool:
            raise ConfigError("allow_debug and any_enclave_unsafe must be true or false")

    @property
    def pins_identity(self) -> bool:
        """MRENCLAVE, or MRSIGNER + ISVPRODID, is pinned: the policy names whom it trusts."""
        return (
            bool(self.mr_enclave)
            or (self.mr_signer is not None and self.isv_prod_id is not None)
            or self.tdx.pins_identity
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_toml(cls, data: bytes | str) -> Policy:
        """Parse a policy file. Unknown keys, wrong types and bad hex raise ConfigError."""
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            doc = tomllib.loads(text)
        except UnicodeDecodeError:
            raise ConfigError("policy: file is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy: invalid TOML: {exc}") from None
        return cls.from_mapping(doc)

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> Policy:
        """Build from an already-parsed table (lets other config files embed a policy)."""
        unknown = sorted(set(doc) - set(_KEYS))
        if unknown:
            raise ConfigError(f"policy: unknown key {unknown[0]!r}")
        kwargs: dict[str, Any] = {}
        if "mr_enclave" in doc:
            values = _str_list("mr_enclave", doc["mr_enclave"])
            if not values:
                raise ConfigError("mr_enclave: empty list (omit the key to accept any)")
            kwargs["mr_enclave"] = tuple(_hex_len("mr_enclave", v, 32) for v in values)
        if "mr_signer" in doc:
            kwargs["mr_signer"] = _hex_len("mr_signer", _str("mr_signer", doc["mr_signer"]), 32)
        for name in ("isv_prod_id", "min_isv_svn"):
            if name in doc:
                kwargs[name] = _int(name, doc[name])
        for name in ("allow_debug", "any_enclave_unsafe"):
            if name in doc:
                if not isinstance(doc[name], bool):
                    raise ConfigError(f"{name}: expected true or false")
                kwargs[name] = doc[name]
        if "accepted_tcb_statuses" in doc:
            kwargs["accepted_tcb_statuses"] = _statuses(doc["accepted_tcb_statuses"])
        if "rejected_advisories" in doc:
            advisories = _str_list("rejected_advisories", doc["rejected_advisories"])
            kwargs["rejected_advisories"] = tuple(a.strip().upper() for a in advisories)
        if "report_data" in doc:
            raw = _hex("report_data", _str("report_data", doc["report_data"]))
            if not 1 <= len(raw) <= 64:
                raise ConfigError("report_data: expected 1 to 64 bytes of hex")
            kwargs["report_data"] = raw
        if "simulated_root" in doc:
            root = _hex_len("simulated_root", _str("simulated_root", doc["simulated_root"]), 32)
            kwargs["simulated_root"] = root.hex()
        kwargs["tdx"] = tdx_rules_from_mapping(doc)
        return cls(**kwargs)

    def to_toml(self) -> str:
        """Serialise so that `from_toml(p.to_toml()) == p` (used by `policy from-server`)."""
        lines = []
        if self.mr_enclave:
            lines.append(f"mr_enclave = {_toml_list(v.hex() for v in self.mr_enclave)}")
        if self.mr_signer is not None:
            lines.append(f"mr_signer = {json.dumps(self.mr_signer.hex())}")
        if self.isv_prod_id is not None:
            lines.append(f"isv_prod_id = {self.isv_prod_id}")
        if self.min_isv_svn is not None:
            lines.append(f"min_isv_svn = {self.min_isv_svn}")
        lines.append(f"allow_debug = {'true' if self.allow_debug else 'false'}")
        lines.append(
            f"accepted_tcb_statuses = {_toml_list(s.value for s in self.accepted_tcb_statuses)}"
        )
        if self.rejected_advisories:
            lines.append(f"rejected_advisories = {_toml_list(self.rejected_advisories)}")
        if self.report_data is not None:
            lines.append(f"report_data = {json.dumps(self.report_data.hex())}")
        if self.simulated_root is not None:
            lines.append(f"simulated_root = {json.dumps(self.simulated_root.lower())}")
        if self.any_enclave_unsafe:
            lines.append("any_enclave_unsafe = true")
        lines += tdx_rules_to_toml(self.tdx)
        return "\n".join(lines) + "\n"


# The strict baseline with no identity: it accepts nothing until an identity is pinned (or
# `any_enclave_unsafe` is set). Kept so callers that default to it fail closed, loudly.
DEFAULT_POLICY = Policy()

NO_IDENTITY = (
    "the policy pins no enclave identity (set mr_enclave, or mr_signer and isv_prod_id, or "
    "for a TD mr_td or an rt_mr; "
    "`enclave-kms policy from-server` writes one), so it trusts nothing; "
    "any_enclave_unsafe = true accepts any genuine enclave"
)


def require_identity(policy: Policy) -> None:
    """ConfigError unless the policy pins an identity or says, by name, that it does not."""
    if not policy.pins_identity and not policy.any_enclave_unsafe:
        raise ConfigError(NO_IDENTITY)


def check_binding(report_data: bytes, held: bytes) -> bool:
    """True when `report_data[0:32] == SHA-256(held)`: the enclave vouches for `held`."""
    if len(report_data) < 32:
        return False
    return hmac.compare_digest(report_data[:32], hashlib.sha256(held).digest())


def validate(verified: VerifiedQuote, policy: Policy, *, report_data: bytes | None = None) -> None:
    """Raise PolicyError listing every rule `verified` breaks; return None if it meets them all.

    `report_data` is an expected value known only at call time (e.g. a nonce binding); like the
    policy's own `report_data`, it may be the full 64 bytes or a prefix.
    """
    if not isinstance(verified, VerifiedQuote):
        raise TypeError(f"validate() needs a VerifiedQuote, got {type(verified).__name__}")
    if not isinstance(policy, Policy):
        raise TypeError(f"validate() needs a Policy, got {type(policy).__name__}")
    violations = [
        *([] if policy.pins_identity or policy.any_enclave_unsafe else [NO_IDENTITY]),
        *_identity_violations(verified, policy),
        *_tcb_violations(verified, policy),
        *_report_data_violations(verified.quote.body.report_data, policy.report_data, "policy"),
    ]
    if report_data is not None:
        violations += _report_data_violations(
            verified.quote.body.report_data, report_data, "caller"
        )
    if verified.simulated_root and (
        policy.simulated_root is None
        or not hmac.compare_digest(policy.simulated_root.lower(), verified.root_spki_sha256.lower())
    ):
        violations.append(
            f"root {verified.root_spki_sha256[:16]}…: not Intel's production root and is not"
            " named by the policy (simulated_root); simulated or test roots protect nothing"
        )
    if violations:
        raise PolicyError(violations)


# ---------------------------------------------------------------------- rules


def _identity_violations(verified: VerifiedQuote, policy: Policy) -> list[str]:
    out: list[str] = []
    if verified.tee != "SGX":
        sgx_rules = [
            name
            for name, on in (
                ("mr_enclave", bool(policy.mr_enclave)),
                ("mr_signer", policy.mr_signer is not None),
                ("isv_prod_id", policy.isv_prod_id is not None),
                ("min_isv_svn", policy.min_isv_svn is not None),
            )
            if on
        ]
        out += [f"{name}: a {verified.tee} quote has no SGX enclave identity" for name in sgx_rules]
        return out + tdx_violations(verified.quote.body, policy.tdx, allow_debug=policy.allow_debug)
    out += [
        f"{name}: an SGX quote has no TD measurements" for name in policy.tdx.constrained_names()
    ]
    body = verified.report_body
    if policy.mr_enclave and not any(
        hmac.compare_digest(body.mr_enclave, m) for m in policy.mr_enclave
    ):
        out.append(f"mr_enclave {body.mr_enclave.hex()} is not one of the accepted values")
    if policy.mr_signer is not None and not hmac.compare_digest(body.mr_signer, policy.mr_signer):
        out.append(f"mr_signer {body.mr_signer.hex()} != expected {policy.mr_signer.hex()}")
    if policy.isv_prod_id is not None and body.isv_prod_id != policy.isv_prod_id:
        out.append(f"isv_prod_id {body.isv_prod_id} != expected {policy.isv_prod_id}")
    if policy.min_isv_svn is not None and body.isv_svn < policy.min_isv_svn:
        out.append(f"isv_svn {body.isv_svn} < minimum {policy.min_isv_svn}")
    if body.attributes.debug and not policy.allow_debug:
        out.append("debug: the enclave is a debug enclave and the policy does not allow debug")
    return out


def _tcb_violations(verified: VerifiedQuote, policy: Policy) -> list[str]:
    out: list[str] = []
    if verified.tcb_status not in policy.accepted_tcb_statuses:
        accepted = ", ".join(s.value for s in policy.accepted_tcb_statuses)
        out.append(f"tcb_status {verified.tcb_status.value} is not accepted (accepted: {accepted})")
    rejected = set(policy.rejected_advisories)
    out += [
        f"advisory {adv} is rejected by the policy"
        for adv in verified.advisory_ids
        if adv.upper() in rejected
    ]
    return out


def _report_data_violations(actual: bytes, expected: bytes | None, source: str) -> list[str]:
    if expected is None:
        return []
    if not 1 <= len(expected) <= 64:
        return [f"report_data: expected value from {source} must be 1 to 64 bytes"]
    if hmac.compare_digest(actual[: len(expected)], expected):
        return []
    return [f"report_data {actual[: len(expected)].hex()} != expected {expected.hex()} ({source})"]


# ---------------------------------------------------------------------- TOML field helpers


def _check_len(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ConfigError(f"{name}: expected {size} bytes")


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {_toml_type(value)}")
    return value


def _str_list(name: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list of strings, got {_toml_type(value)}")
    return [_str(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {_toml_type(value)}")
    if not 0 <= value <= 0xFFFF:
        raise ConfigError(f"{name}: {value} is outside 0..65535")
    return value


def _hex(name: str, text: str) -> bytes:
    digits = text.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if len(digits) % 2 or any(c not in string.hexdigits for c in digits):
        raise ConfigError(f"{name}: not valid hex")
    return bytes.fromhex(digits)


def _hex_len(name: str, text: str, size: int) -> bytes:
    raw = _hex(name, text)
    if len(raw) != size:
        raise ConfigError(f"{name}: expected {size} bytes of hex, got {len(raw)}")
    return raw


def _statuses(value: object) -> tuple[TcbStatus, ...]:
    names = _str_list("accepted_tcb_statuses", value)
    out = []
    for n in names:
        try:
            out.append(TcbStatus(n))
        except ValueError:
            valid = ", ".join(s.value for s in TcbStatus)
            raise ConfigError(
                f"accepted_tcb_statuses: {n!r} is not a TCB status (one of {valid})"
            ) from None
    if not out:
        raise ConfigError("accepted_tcb_statuses: must name at least one status")
    return tuple(dict.fromkeys(out))


def _toml_type(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}.get(
        type(value), "table" if isinstance(value, dict) else type(value).__name__
    )


def _toml_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"
