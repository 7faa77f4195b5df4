"""Intel TCB Info (v2, v3) and Enclave Identity (v2) models, parsed from their signed JSON.

`parse` takes the exact signed text of the inner object (`tcbInfo` / `enclaveIdentity`): the
signature covers those bytes, so nothing here ever re-serialises them for verification. The
parser is strict because these documents decide whether a platform is trusted: a missing or
mistyped field, bad hex, a bad date, an unknown status or an unknown field is an error, never a
default. Hex fields are kept as bytes in quote byte order (JSON "D182B18C" is quote bytes
d1 82 b1 8c); compare masked bytes, never big-endian integers.

`to_json_bytes` writes Intel's canonical compact form (field order and spelling as PCS serves
it), so the simulator can produce collateral and a parsed real document reproduces its bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from enclave_kms.attestation.types import TcbStatus
from enclave_kms.errors import FormatError, UnsupportedFormatError

SGX_TCB_COMPONENTS = 16
TDX_TCB_COMPONENTS = 16
TCB_INFO_IDS = ("SGX", "TDX")
ENCLAVE_IDENTITY_IDS = ("QE", "TD_QE", "QVE")

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z\Z", re.ASCII)
_HEX_RE = re.compile(r"[0-9A-Fa-f]*\Z", re.ASCII)
_V2_COMPONENT_KEYS = tuple(f"sgxtcbcomp{i:02d}svn" for i in range(1, SGX_TCB_COMPONENTS + 1))

# --------------------------------------------------------------------------- strict JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two parsers could pick different duplicates of a signed document: refuse it.
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def strict_json_decoder() -> json.JSONDecoder:
    """A decoder that rejects duplicate keys and NaN/Infinity (for signed documents)."""
    return json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def strict_json_loads(
    data: bytes | str, what: str, error: Callable[[str], Exception] = FormatError
) -> Any:
    """json.loads that rejects duplicate keys, NaN/Infinity and invalid UTF-8, as `error`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return strict_json_decoder().decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise error(f"{what}: not valid JSON ({reason})") from None


def _object(
    value: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FormatError(f"{path}: expected a JSON object")
    for key in required:
        if key not in value:
            raise FormatError(f"{path}.{key}: missing")
    for key in value:
        if key not in required and key not in optional:
            # Fail closed: a field we do not understand may carry meaning we would ignore.
            shown = "".join(c if c.isprintable() else "?" for c in key[:40])
            raise UnsupportedFormatError(f"{path}.{shown}: unknown field")
    return value


def _int(value: Any, path: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{path}: expected an integer")
    if not 0 <= value <= maximum:
        raise FormatError(f"{path}: {value} out of range 0..{maximum}")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"{path}: expected a non-empty string")
    return value


def _hex(value: Any, path: str, size: int) -> bytes:
    if not isinstance(value, str) or not _HEX_RE.match(value):
        raise FormatError(f"{path}: expected a hex string")
    if len(value) != 2 * size:
        raise FormatError(f"{path}: expected {size} bytes of hex, got {len(value)} characters")
    return bytes.fromhex(value)


def parse_date(value: Any, path: str) -> datetime:
    """Intel's UTC date `YYYY-MM-DDTHH:MM:SSZ` as an aware datetime; FormatError naming `path`."""
    match = _DATE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise FormatError(f"{path}: expected a UTC date YYYY-MM-DDTHH:MM:SSZ")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise FormatError(f"{path}: not a valid date") from None


def _status(value: Any, path: str) -> TcbStatus:
    if not isinstance(value, str):
        raise FormatError(f"{path}: expected a status string")
    try:
        return TcbStatus(value)
    except ValueError:
        raise FormatError(f"{path}: unknown TCB status {value[:40]!r}") from None


def _list(value: Any, path: str, *, non_empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise FormatError(f"{path}: expected a JSON array")
    if non_empty and not value:
        raise FormatError(f"{path}: must not be empty")
    return value


def _advisories(level: dict[str, Any], path: str) -> tuple[str, ...]:
    if "advisoryIDs" not in level:
        return ()
    items = _list(level["advisoryIDs"], f"{path}.advisoryIDs")
    return tuple(_str(item, f"{path}.advisoryIDs[{i}]") for i, item in enumerate(items))


def format_date(value: datetime) -> str:
    """Intel's date spelling (whole seconds, UTC, trailing Z)."""
    v = value.astimezone(UTC)
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _load_root(data: bytes, what: str) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes")
    root = strict_json_loads(bytes(data), what)
    if not isinstance(root, dict):
        raise FormatError(f"{what}: expected a JSON object")
    return root


# --------------------------------------------------------------------------- shared levels


@dataclass(frozen=True)
class QeTcbLevel:
    """One level of an Enclave Identity or TDX module identity: ISVSVN → status."""

    isv_svn: int
    tcb_date: datetime
    tcb_status: TcbStatus
    advisory_ids: tuple[str, ...] = ()

    @classmethod
    def _from_json(cls, value: Any, path: str) -> QeTcbLevel:
        level = _object(value, path, ("tcb", "tcbDate", "tcbStatus"), ("advisoryIDs",))
        tcb = _object(level["tcb"], f"{path}.tcb", ("isvsvn",))
        return cls(
            isv_svn=_int(tcb["isvsvn"], f"{path}.tcb.isvsvn", _U16),
            tcb_date=parse_date(level["tcbDate"], f"{path}.tcbDate"),
            tcb_status=_status(level["tcbStatus"], f"{path}.tcbStatus"),
            advisory_ids=_advisories(level, path),
        )

    def _to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tcb": {"isvsvn": self.isv_svn},
            "tcbDate": format_date(self.tcb_date),
            "tcbStatus": self.tcb_status.value,
        }
        if self.advisory_ids:
            out["advisoryIDs"] = list(self.advisory_ids)
        return out


def _qe_levels(value: Any, path: str) -> tuple[QeTcbLevel, ...]:
    items = _list(value, path, non_empty=True)
    return tuple(QeTcbLevel._from_json(item, f"{path}[{i}]") for i, item in enumerate(items))


# --------------------------------------------------------------------------- TCB Info


@dataclass(frozen=True)
class TcbComponentLabel:
    """Descriptive `category` / `type` of a v3 TCB component. Informational only: kept so a
    parsed document serialises back to Intel's exact bytes. Label tuples omit trailing
    unlabeled components (empty when none is labeled)."""

    category: str | None = None
    component_type: str | None = None


_NO_LABEL = TcbComponentLabel()


def _components(value: Any, path: str) -> tuple[tuple[int, ...], tuple[TcbComponentLabel, ...]]:
    items = _list(value, path)
    if len(items) != SGX_TCB_COMPONENTS:
        raise FormatError(f"{path}: expected {SGX_TCB_COMPONENTS} components, got {len(items)}")
    svns: list[int] = []
    labels: list[TcbComponentLabel] = []
    for i, item in enumerate(items):
        p = f"{path}[{i}]"
        comp = _object(item, p, ("svn",), ("category", "type"))
        svns.append(_int(comp["svn"], f"{p}.svn", _U8))
        category = _str(comp["category"], f"{p}.category") if "category" in comp else None
        ctype = _str(comp["type"], f"{p}.type") if "type" in comp else None
        labels.append(TcbComponentLabel(category, ctype))
    while labels and labels[-1] == _NO_LABEL:
        labels.pop()  # canonical form: trailing unlabeled components are implied
    return tuple(svns), tuple(labels)


def _components_json(
    svns: tuple[int, ...], labels: tuple[TcbComponentLabel, ...]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, svn in enumerate(svns):
        label = labels[i] if i < len(labels) else _NO_LABEL
        comp: dict[str, Any] = {"svn": svn}
        if label.category is not None:
            comp["category"] = label.category
        if label.component_type is not None:
            comp["type"] = label.component_type
        out.append(comp)
    return out


@dataclass(frozen=True)
class TcbLevel:
    """One platform TCB level: component SVNs (and TDX SVNs for TDX) → status, advisories.

    `*_component_labels` are empty when the document carries no labels (v2, SGX v3)."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...] | None
    tcb_date: datetime
    tcb_status: TcbStatus
    advisory_ids: tuple[str, ...] = ()
    sgx_component_labels: tuple[TcbComponentLabel, ...] = ()
    tdx_component_labels: tuple[TcbComponentLabel, ...] = ()

    @classmethod
    def _from_json_v2(cls, value: Any, path: str) -> TcbLevel:
        level = _object(value, path, ("tcb", "tcbDate", "tcbStatus"), ("advisoryIDs",))
        tcb = _object(level["tcb"], f"{path}.tcb", (*_V2_COMPONENT_KEYS, "pcesvn"))
        return cls(
            sgx_components=tuple(
                _int(tcb[key], f"{path}.tcb.{key}", _U8) for key in _V2_COMPONENT_KEYS
            ),
            pce_svn=_int(tcb["pcesvn"], f"{path}.tcb.pcesvn", _U16),
            tdx_components=None,
            tcb_date=parse_date(level["tcbDate"], f"{path}.tcbDate"),
            tcb_status=_status(level["tcbStatus"], f"{path}.tcbStatus"),
            advisory_ids=_advisories(level, path),
        )

    @classmethod
    def _from_json_v3(cls, value: Any, path: str, *, tdx: bool) -> TcbLevel:
        level = _object(value, path, ("tcb", "tcbDate", "tcbStatus"), ("advisoryIDs",))
        tcb_path = f"{path}.tcb"
        if tdx:
            tcb = _object(
                level["tcb"], tcb_path, ("sgxtcbcomponents", "pcesvn", "tdxtcbcomponents")
            )
        else:
            tcb = _object(level["tcb"], tcb_path, ("sgxtcbcomponents", "pcesvn"))
        sgx, sgx_labels = _components(tcb["sgxtcbcomponents"], f"{tcb_path}.sgxtcbcomponents")
        tdx_svns: tuple[int, ...] | None = None
        tdx_labels: tuple[TcbComponentLabel, ...] = ()
        if tdx:
            tdx_svns, tdx_labels = _components(
                tcb["tdxtcbcomponents"], f"{tcb_path}.tdxtcbcomponents"
            )
        return cls(
            sgx_components=sgx,
            pce_svn=_int(tcb["pcesvn"], f"{tcb_path}.pcesvn", _U16),
            tdx_components=tdx_svns,
            tcb_date=parse_date(level["tcbDate"], f"{path}.tcbDate"),
            tcb_status=_status(level["tcbStatus"], f"{path}.tcbStatus"),
            advisory_ids=_advisories(level, path),
            sgx_component_labels=sgx_labels,
            tdx_component_labels=tdx_labels,
        )

    def _to_json(self, version: int) -> dict[str, Any]:
        tcb: dict[str, Any]
        if version == 2:
            tcb = dict(zip(_V2_COMPONENT_KEYS, self.sgx_components, strict=True))
            tcb["pcesvn"] = self.pce_svn
        else:
            tcb = {
                "sgxtcbcomponents": _components_json(
                    self.sgx_components, self.sgx_component_labels
                ),
                "pcesvn": self.pce_svn,
            }
            if self.tdx_components is not None:
                tcb["tdxtcbcomponents"] = _components_json(
                    self.tdx_components, self.tdx_component_labels
                )
        out: dict[str, Any] = {
            "tcb": tcb,
            "tcbDate": format_date(self.tcb_date),
            "tcbStatus": self.tcb_status.value,
        }
        if self.advisory_ids:
            out["advisoryIDs"] = list(self.advisory_ids)
        return out


@dataclass(frozen=True)
class TdxModule:
    """The TDX module signer and attributes the TEE_TCB_SVN's MRSIGNERSEAM must match."""

    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes

    @classmethod
    def _from_json(cls, value: Any, path: str) -> TdxModule:
        obj = _object(value, path, ("mrsigner", "attributes", "attributesMask"))
        return cls(
            mrsigner=_hex(obj["mrsigner"], f"{path}.mrsigner", 48),
            attributes=_hex(obj["attributes"], f"{path}.attributes", 8),
            attributes_mask=_hex(obj["attributesMask"], f"{path}.attributesMask", 8),
        )

    def _to_json(self) -> dict[str, Any]:
        return {
            "mrsigner": self.mrsigner.hex().upper(),
            "attributes": self.attributes.hex().upper(),
            "attributesMask": self.attributes_mask.hex().upper(),
        }


@dataclass(frozen=True)
class TdxModuleIdentity:
    """Identity and TCB levels of one TDX module major version (`id` "TDX_01", "TDX_03", …)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[QeTcbLevel, ...]

    @classmethod
    def _from_json(cls, value: Any, path: str) -> TdxModuleIdentity:
        keys = ("id", "mrsigner", "attributes", "attributesMask", "tcbLevels")
        obj = _object(value, path, keys)
        return cls(
            id=_str(obj["id"], f"{path}.id"),
            mrsigner=_hex(obj["mrsigner"], f"{path}.mrsigner", 48),
            attributes=_hex(obj["attributes"], f"{path}.attributes", 8),
            attributes_mask=_hex(obj["attributesMask"], f"{path}.attributesMask", 8),
            tcb_levels=_qe_levels(obj["tcbLevels"], f"{path}.tcbLevels"),
        )

    def _to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "mrsigner": self.mrsigner.hex().upper(),
            "attributes": self.attributes.hex().upper(),
            "attributesMask": self.attributes_mask.hex().upper(),
            "tcbLevels": [level._to_json() for level in self.tcb_levels],
        }


_TCB_V2_KEYS = (
    "version",
    "issueDate",
    "nextUpdate",
    "fmspc",
    "pceId",
    "tcbType",
    "tcbEvaluationDataNumber",
    "tcbLevels",
)


@dataclass(frozen=True)
class TcbInfo:
    """Intel TCB Info for one FMSPC. v2 (SGX only, no `id`) is reported with `id` "SGX".

    `lowercase_ids` only records that PCS spelled `fmspc`/`pceId` in lowercase (it does for
    some responses), so that `to_json_bytes` reproduces the signed bytes exactly."""

    version: int
    id: str
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tcb_levels: tuple[TcbLevel, ...]
    tdx_module: TdxModule | None = None
    tdx_module_identities: tuple[TdxModuleIdentity, ...] = ()
    lowercase_ids: bool = False

    @property
    def is_tdx(self) -> bool:
        return self.id == "TDX"

    def tdx_module_identity(self, identity_id: str) -> TdxModuleIdentity | None:
        """The module identity named `identity_id` (e.g. "TDX_01"), if the document has it."""
        for identity in self.tdx_module_identities:
            if identity.id == identity_id:
                return identity
        return None

    @classmethod
    def parse(cls, signed_bytes: bytes) -> TcbInfo:
        """Parse the exact signed text of a `tcbInfo` object (v2 or v3)."""
        root = _load_root(signed_bytes, "tcbInfo")
        if "version" not in root:
            raise FormatError("tcbInfo.version: missing")
        version = root["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise FormatError("tcbInfo.version: expected an integer")
        if version == 2:
            return cls._parse_v2(root)
        if version == 3:
            return cls._parse_v3(root)
        raise UnsupportedFormatError(f"tcbInfo.version: unsupported version {version}")

    @classmethod
    def _common(cls, obj: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "version": obj["version"],
            "issue_date": parse_date(obj["issueDate"], "tcbInfo.issueDate"),
            "next_update": parse_date(obj["nextUpdate"], "tcbInfo.nextUpdate"),
            "fmspc": _hex(obj["fmspc"], "tcbInfo.fmspc", 6),
            "pce_id": _hex(obj["pceId"], "tcbInfo.pceId", 2),
            "tcb_type": _int(obj["tcbType"], "tcbInfo.tcbType", _U8),
            "tcb_evaluation_data_number": _int(
                obj["tcbEvaluationDataNumber"], "tcbInfo.tcbEvaluationDataNumber", _U32
            ),
        }
        spelled = obj["fmspc"] + obj["pceId"]  # both checked hex strings by now
        fields["lowercase_ids"] = spelled != spelled.upper()
        return fields

    @classmethod
    def _parse_v2(cls, root: dict[str, Any]) -> TcbInfo:
        obj = _object(root, "tcbInfo", _TCB_V2_KEYS)
        levels = _list(obj["tcbLevels"], "tcbInfo.tcbLevels", non_empty=True)
        return cls(
            id="SGX",
            tcb_levels=tuple(
                TcbLevel._from_json_v2(level, f"tcbInfo.tcbLevels[{i}]")
                for i, level in enumerate(levels)
            ),
            **cls._common(obj),
        )

    @classmethod
    def _parse_v3(cls, root: dict[str, Any]) -> TcbInfo:
        if "id" not in root:
            raise FormatError("tcbInfo.id: missing")
        tee = root["id"]
        if tee not in TCB_INFO_IDS:
            shown = tee[:20] if isinstance(tee, str) else type(tee).__name__
            raise UnsupportedFormatError(f"tcbInfo.id: unsupported id {shown!r}")
        tdx = tee == "TDX"
        optional = ("tdxModule", "tdxModuleIdentities") if tdx else ()
        obj = _object(root, "tcbInfo", ("id", *_TCB_V2_KEYS), optional)
        levels = _list(obj["tcbLevels"], "tcbInfo.tcbLevels", non_empty=True)
        module = None
        if "tdxModule" in obj:
            module = TdxModule._from_json(obj["tdxModule"], "tcbInfo.tdxModule")
        identities: tuple[TdxModuleIdentity, ...] = ()
        if "tdxModuleIdentities" in obj:
            path = "tcbInfo.tdxModuleIdentities"
            items = _list(obj["tdxModuleIdentities"], path)
            identities = tuple(
                TdxModuleIdentity._from_json(item, f"{path}[{i}]") for i, item in enumerate(items)
            )
        return cls(
            id=tee,
            tcb_levels=tuple(
                TcbLevel._from_json_v3(level, f"tcbInfo.tcbLevels[{i}]", tdx=tdx)
                for i, level in enumerate(levels)
            ),
            tdx_module=module,
            tdx_module_identities=identities,
            **cls._common(obj),
        )

    def to_json_bytes(self) -> bytes:
        """Intel's compact JSON for this TCB Info, in PCS field order (what gets signed)."""
        if self.version not in (2, 3):
            raise UnsupportedFormatError(f"tcbInfo.version: unsupported version {self.version}")
        fmspc, pce_id = self.fmspc.hex(), self.pce_id.hex()
        if not self.lowercase_ids:
            fmspc, pce_id = fmspc.upper(), pce_id.upper()
        out: dict[str, Any] = {}
        if self.version == 3:
            out["id"] = self.id
        out.update(
            version=self.version,
            issueDate=format_date(self.issue_date),
            nextUpdate=format_date(self.next_update),
            fmspc=fmspc,
            pceId=pce_id,
            tcbType=self.tcb_type,
            tcbEvaluationDataNumber=self.tcb_evaluation_data_number,
        )
        if self.version == 3 and self.tdx_module is not None:
            out["tdxModule"] = self.tdx_module._to_json()
        if self.version == 3 and self.tdx_module_identities:
            out["tdxModuleIdentities"] = [m._to_json() for m in self.tdx_module_identities]
        out["tcbLevels"] = [level._to_json(self.version) for level in self.tcb_levels]
        return _dumps(out)


# --------------------------------------------------------------------------- Enclave Identity

_IDENTITY_KEYS = (
    "id",
    "version",
    "issueDate",
    "nextUpdate",
    "tcbEvaluationDataNumber",
    "miscselect",
    "miscselectMask",
    "attributes",
    "attributesMask",
    "mrsigner",
    "isvprodid",
    "tcbLevels",
)


@dataclass(frozen=True)
class EnclaveIdentity:
    """Intel Enclave Identity v2 for the QE (SGX), TD_QE (TDX) or QVE."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    tcb_evaluation_data_number: int
    tcb_levels: tuple[QeTcbLevel, ...]

    @classmethod
    def parse(cls, signed_bytes: bytes) -> EnclaveIdentity:
        """Parse the exact signed text of an `enclaveIdentity` object (v2)."""
        root = _load_root(signed_bytes, "enclaveIdentity")
        if "version" not in root:
            raise FormatError("enclaveIdentity.version: missing")
        version = root["version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise FormatError("enclaveIdentity.version: expected an integer")
        if version != 2:
            raise UnsupportedFormatError(f"enclaveIdentity.version: unsupported version {version}")
        if "id" not in root:
            raise FormatError("enclaveIdentity.id: missing")
        ident = root["id"]
        if ident not in ENCLAVE_IDENTITY_IDS:
            shown = ident[:20] if isinstance(ident, str) else type(ident).__name__
            raise UnsupportedFormatError(f"enclaveIdentity.id: unsupported id {shown!r}")
        p = "enclaveIdentity"
        obj = _object(root, p, _IDENTITY_KEYS)
        return cls(
            id=ident,
            version=version,
            issue_date=parse_date(obj["issueDate"], f"{p}.issueDate"),
            next_update=parse_date(obj["nextUpdate"], f"{p}.nextUpdate"),
            miscselect=_hex(obj["miscselect"], f"{p}.miscselect", 4),
            miscselect_mask=_hex(obj["miscselectMask"], f"{p}.miscselectMask", 4),
            attributes=_hex(obj["attributes"], f"{p}.attributes", 16),
            attributes_mask=_hex(obj["attributesMask"], f"{p}.attributesMask", 16),
            mrsigner=_hex(obj["mrsigner"], f"{p}.mrsigner", 32),
            isv_prod_id=_int(obj["isvprodid"], f"{p}.isvprodid", _U16),
            tcb_evaluation_data_number=_int(
                obj["tcbEvaluationDataNumber"], f"{p}.tcbEvaluationDataNumber", _U32
            ),
            tcb_levels=_qe_levels(obj["tcbLevels"], f"{p}.tcbLevels"),
        )

    def to_json_bytes(self) -> bytes:
        """Intel's compact JSON for this identity, in PCS field order (what gets signed)."""
        return _dumps(
            {
                "id": self.id,
                "version": self.version,
                "issueDate": format_date(self.issue_date),
                "nextUpdate": format_date(self.next_update),
                "tcbEvaluationDataNumber": self.tcb_evaluation_data_number,
                "miscselect": self.miscselect.hex().upper(),
                "miscselectMask": self.miscselect_mask.hex().upper(),
                "attributes": self.attributes.hex().upper(),
                "attributesMask": self.attributes_mask.hex().upper(),
                "mrsigner": self.mrsigner.hex().upper(),
                "isvprodid": self.isv_prod_id,
                "tcbLevels": [level._to_json() for level in self.tcb_levels],
            }
        )
