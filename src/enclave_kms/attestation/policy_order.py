"""When one appraisal policy is *tighter* than another: what an immutable release policy allows.

An immutable release policy (DESIGN §15) may be replaced only by one that accepts no evidence
the old one refused. Checking that on the accept-sets directly is not decidable in general, so
"tighter" is defined field by field, each rule sufficient on its own (new ⊑ old):

- sets of accepted values (mr_enclave, mr_td, mr_seam, accepted_tcb_statuses) only shrink:
  the new set is a subset of the old one, and an unconstrained field may become constrained,
  never the other way;
- pinned single values (mr_signer, isv_prod_id, rt_mr0-3, mr_config_id, mr_owner,
  mr_owner_config, mr_service_td, xfam, report_data) may be added, never changed or removed
  (report_data: a longer prefix that starts with the old one is tighter);
- minimums only rise (min_isv_svn; min_tee_tcb_svn component by component);
- rejected advisories only grow;
- flags that loosen (allow_debug, any_enclave_unsafe) are never newly set; flags that tighten
  (require_sept_ve_disable) are never cleared;
- roots only shrink: Intel's production root is always accepted, so a policy naming no other
  root is the tightest; a named root may be dropped but never added or changed.

`loosenings(old, new)` lists every rule the new policy breaks, so a refusal names all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.tdx_policy import TdxRules

_SGX_SINGLE = ("mr_signer", "isv_prod_id")
_TDX_SINGLE = (
    "rt_mr0",
    "rt_mr1",
    "rt_mr2",
    "rt_mr3",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "mr_service_td",
    "xfam",
)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()[:16] + ("…" if len(value) > 8 else "")
    return str(value)


def _set_rule(name: str, old: Sequence[object], new: Sequence[object]) -> list[str]:
    """An empty sequence means "any value": it may become constrained, never return to it."""
    if not old:
        return []
    if not new:
        return [f"{name}: was constrained, the new policy accepts any value"]
    added = [v for v in new if v not in old]
    return [f"{name}: adds accepted value {_show(v)}" for v in added]


def _single_rule(name: str, old: object | None, new: object | None) -> list[str]:
    if old is None or old == new:
        return []
    if new is None:
        return [f"{name}: was pinned to {_show(old)}, the new policy drops the pin"]
    return [f"{name}: changes from {_show(old)} to {_show(new)}"]


def _minimum_rule(name: str, old: int | None, new: int | None) -> list[str]:
    if old is None:
        return []
    if new is None:
        return [f"{name}: the minimum {old} is dropped"]
    return [f"{name}: lowered from {old} to {new}"] if new < old else []


def _tdx_loosenings(old: TdxRules, new: TdxRules) -> list[str]:
    out = _set_rule("mr_td", old.mr_td, new.mr_td) + _set_rule("mr_seam", old.mr_seam, new.mr_seam)
    for name in _TDX_SINGLE:
        out += _single_rule(name, getattr(old, name), getattr(new, name))
    if old.min_tee_tcb_svn is not None:
        if new.min_tee_tcb_svn is None:
            out.append("min_tee_tcb_svn: the minimum is dropped")
        else:
            low = [
                i
                for i, (a, b) in enumerate(
                    zip(old.min_tee_tcb_svn, new.min_tee_tcb_svn, strict=True)
                )
                if b < a
            ]
            if low:
                out.append(f"min_tee_tcb_svn: lowered at component(s) {low}")
    if old.require_sept_ve_disable and not new.require_sept_ve_disable:
        out.append("require_sept_ve_disable: was required, the new policy no longer requires it")
    return out


def loosenings(old: Policy, new: Policy) -> list[str]:
    """Every way `new` would accept evidence that `old` refuses (empty: `new` is tighter)."""
    out = _set_rule("mr_enclave", old.mr_enclave, new.mr_enclave)
    for name in _SGX_SINGLE:
        out += _single_rule(name, getattr(old, name), getattr(new, name))
    out += _minimum_rule("min_isv_svn", old.min_isv_svn, new.min_isv_svn)
    if new.allow_debug and not old.allow_debug:
        out.append("allow_debug: debug enclaves and TDs would newly be accepted")
    if new.any_enclave_unsafe and not old.any_enclave_unsafe:
        out.append("any_enclave_unsafe: any genuine enclave would newly be accepted")
    added = [s for s in new.accepted_tcb_statuses if s not in old.accepted_tcb_statuses]
    out += [f"accepted_tcb_statuses: adds {s.value}" for s in added]
    dropped = [a for a in old.rejected_advisories if a not in new.rejected_advisories]
    out += [f"rejected_advisories: no longer rejects {a}" for a in dropped]
    if old.report_data is not None and (
        new.report_data is None or not new.report_data.startswith(old.report_data)
    ):
        out.append("report_data: the pinned value is changed or dropped")
    if new.simulated_root is not None and (
        old.simulated_root is None or old.simulated_root.lower() != new.simulated_root.lower()
    ):
        out.append(f"simulated_root: would newly accept root {new.simulated_root[:16]}…")
    return out + _tdx_loosenings(old.tdx, new.tdx)


def is_tighter(old: Policy, new: Policy) -> bool:
    """True when `new` accepts nothing `old` refuses, by the rules above."""
    return not loosenings(old, new)
