"""The TDX half of the appraisal policy: which trust domain (TD) a verified TDX quote must be.

A TD is identified by its measurements, not by an enclave signer: MRTD (the initial TD
image), RTMR0-3 (runtime measurements: firmware, kernel, command line, application),
MRCONFIGID / MROWNER / MROWNERCONFIG (set by whoever launches the TD), and the TDX module
that hosts it (MRSEAM; MR_SERVICETD for TDX 1.5 service-TD binding). Pinning MRTD or an RTMR
counts as pinning an identity (DESIGN §8).

Two rules are policy choices that dcap-qvl makes for everyone and Intel's QVL does not make at
all, so here they are named fields and a violation is a policy violation, never "invalid
evidence": `require_sept_ve_disable` (TDATTRIBUTES.SEPT_VE_DISABLE, bit 28: the host cannot
inject #VE on EPT violations; default required, as dcap-qvl and Linux guests expect) and
`mr_service_td` (TDX 1.5 quotes whose MR_SERVICETD is not zero; unconstrained by default).
Debug TDs (TDATTRIBUTES.DEBUG, bit 0) are refused unless the policy's `allow_debug`.
"""

from __future__ import annotations

import hmac
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from enclave_kms.errors import ConfigError
from enclave_kms.sgx.tdx import TdReport10, TdReport15

MEASUREMENT = 48
_SINGLE = ("rt_mr0", "rt_mr1", "rt_mr2", "rt_mr3", "mr_config_id", "mr_owner", "mr_owner_config")
TDX_KEYS = (
    "mr_td",
    *_SINGLE,
    "mr_seam",
    "mr_service_td",
    "xfam",
    "min_tee_tcb_svn",
    "require_sept_ve_disable",
)

TD_ATTRIBUTE_DEBUG = 1 << 0
TD_ATTRIBUTE_SEPT_VE_DISABLE = 1 << 28


@dataclass(frozen=True)
class TdxRules:
    """TDX rules of a policy; empty / None means unconstrained for that field."""

    mr_td: tuple[bytes, ...] = ()
    rt_mr0: bytes | None = None
    rt_mr1: bytes | None = None
    rt_mr2: bytes | None = None
    rt_mr3: bytes | None = None
    mr_config_id: bytes | None = None
    mr_owner: bytes | None = None
    mr_owner_config: bytes | None = None
    mr_seam: tuple[bytes, ...] = ()
    mr_service_td: bytes | None = None
    xfam: bytes | None = None
    min_tee_tcb_svn: bytes | None = None
    require_sept_ve_disable: bool = True

    def __post_init__(self) -> None:
        for name in ("mr_td", "mr_seam"):
            for value in getattr(self, name):
                _check(name, value, MEASUREMENT)
        for name in (*_SINGLE, "mr_service_td"):
            if getattr(self, name) is not None:
                _check(name, getattr(self, name), MEASUREMENT)
        if self.xfam is not None:
            _check("xfam", self.xfam, 8)
        if self.min_tee_tcb_svn is not None:
            _check("min_tee_tcb_svn", self.min_tee_tcb_svn, 16)
        if type(self.require_sept_ve_disable) is not bool:
            raise ConfigError("require_sept_ve_disable: expected true or false")

    @property
    def pins_identity(self) -> bool:
        return bool(self.mr_td) or any(getattr(self, f"rt_mr{i}") is not None for i in range(4))

    def constrained_names(self) -> list[str]:
        """The measurement fields this policy constrains (for "an SGX quote has none")."""
        return [
            f.name
            for f in fields(self)
            if f.name != "require_sept_ve_disable" and getattr(self, f.name) not in (None, ())
        ]


def tdx_violations(body: object, rules: TdxRules, *, allow_debug: bool) -> list[str]:
    """Every TDX rule a TD quote body breaks; an unknown body fails closed."""
    if not isinstance(body, TdReport10):
        return ["the quote body is not a TD report"]
    out: list[str] = []
    attributes = int.from_bytes(body.td_attributes, "little")
    if attributes & TD_ATTRIBUTE_DEBUG and not allow_debug:
        out.append("debug: the TD is in debug mode and the policy does not allow debug")
    if rules.require_sept_ve_disable and not attributes & TD_ATTRIBUTE_SEPT_VE_DISABLE:
        out.append(
            "td_attributes: SEPT_VE_DISABLE is not set and the policy requires it "
            "(require_sept_ve_disable = false accepts such TDs)"
        )
    if rules.mr_td and not any(hmac.compare_digest(body.mr_td, m) for m in rules.mr_td):
        out.append(f"mr_td {body.mr_td.hex()} is not one of the accepted values")
    if rules.mr_seam and not any(hmac.compare_digest(body.mr_seam, m) for m in rules.mr_seam):
        out.append(f"mr_seam {body.mr_seam.hex()} is not one of the accepted values")
    for name in _SINGLE:
        want = getattr(rules, name)
        have = getattr(body, name)
        if want is not None and not hmac.compare_digest(have, want):
            out.append(f"{name} {have.hex()} != expected {want.hex()}")
    if rules.mr_service_td is not None:
        have = body.mr_service_td if isinstance(body, TdReport15) else bytes(MEASUREMENT)
        if not hmac.compare_digest(have, rules.mr_service_td):
            out.append(f"mr_service_td {have.hex()} != expected {rules.mr_service_td.hex()}")
    if rules.xfam is not None and not hmac.compare_digest(body.xfam, rules.xfam):
        out.append(f"xfam {body.xfam.hex()} != expected {rules.xfam.hex()}")
    if rules.min_tee_tcb_svn is not None:
        low = [
            i
            for i, (have, want) in enumerate(
                zip(body.tee_tcb_svn, rules.min_tee_tcb_svn, strict=True)
            )
            if have < want
        ]
        if low:
            out.append(
                f"tee_tcb_svn {body.tee_tcb_svn.hex()} is below the minimum "
                f"{rules.min_tee_tcb_svn.hex()} at component(s) {low}"
            )
    return out


def tdx_rules_from_mapping(doc: Mapping[str, Any]) -> TdxRules:
    """The TDX keys of a policy table (other keys are the SGX policy's business)."""
    kwargs: dict[str, Any] = {}
    for name in ("mr_td", "mr_seam"):
        if name in doc:
            values = doc[name]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{name}: expected a non-empty list of hex strings")
            kwargs[name] = tuple(_hex(f"{name}[{i}]", v, MEASUREMENT) for i, v in enumerate(values))
    for name in (*_SINGLE, "mr_service_td"):
        if name in doc:
            kwargs[name] = _hex(name, doc[name], MEASUREMENT)
    if "xfam" in doc:
        kwargs["xfam"] = _hex("xfam", doc["xfam"], 8)
    if "min_tee_tcb_svn" in doc:
        kwargs["min_tee_tcb_svn"] = _hex("min_tee_tcb_svn", doc["min_tee_tcb_svn"], 16)
    if "require_sept_ve_disable" in doc:
        value = doc["require_sept_ve_disable"]
        if not isinstance(value, bool):
            raise ConfigError("require_sept_ve_disable: expected true or false")
        kwargs["require_sept_ve_disable"] = value
    return TdxRules(**kwargs)


def tdx_rules_to_toml(rules: TdxRules) -> list[str]:
    lines = []
    for name in ("mr_td", "mr_seam"):
        values = getattr(rules, name)
        if values:
            lines.append(f"{name} = [{', '.join(json.dumps(v.hex()) for v in values)}]")
    for name in (*_SINGLE, "mr_service_td", "xfam", "min_tee_tcb_svn"):
        value = getattr(rules, name)
        if value is not None:
            lines.append(f"{name} = {json.dumps(value.hex())}")
    if not rules.require_sept_ve_disable:
        lines.append("require_sept_ve_disable = false")
    return lines


def _check(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ConfigError(f"{name}: expected {size} bytes")


def _hex(name: str, value: object, size: int) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a hex string")
    digits = value.strip()
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if len(digits) % 2 or any(c not in string.hexdigits for c in digits):
        raise ConfigError(f"{name}: not valid hex")
    raw = bytes.fromhex(digits)
    if len(raw) != size:
        raise ConfigError(f"{name}: expected {size} bytes of hex, got {len(raw)}")
    return raw
