"""The enclave boundary, declared once (the role `kms.edl` plays in the Open Enclave tutorial).

Every ECALL (host → enclave) and OCALL (enclave → host) is listed here with its parameters:
name, direction (`in` travels with the call, `out` comes back in the result), type and size
bound. Both sides derive their proxies and dispatchers from these declarations, so there is
no hand-written marshalling and an undeclared call, an extra argument or an oversized value
is refused at the boundary before any handler runs.

Frames on the wire: a 4-byte big-endian length, then one CBOR map:
  call:   {"id": int, "t": "call", "fn": name, "args": {param: value}}
  result: {"id": int, "t": "ret", "res": {param: value}}
  error:  {"id": int, "t": "err", "code": str, "message": str}
Request ids let OCALLs run while a long ECALL (`set_up_server`) is still in flight.

The enclave treats every OCALL result as hostile: the checks here are only the first line
(types and sizes); stored blobs are authenticated by AEAD inside the enclave.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cbor2

from enclave_kms.errors import BoundaryError

Direction = Literal["in", "out"]
Kind = Literal["ecall", "ocall"]
ParamType = Literal["bytes", "str", "int", "bool", "bytes_list", "str_list"]

MAX_FRAME = 32 * 1024 * 1024
_KiB = 1024
_MiB = 1024 * 1024


@dataclass(frozen=True)
class Param:
    """One declared parameter. `bound` is a max length for bytes/str/lists, a max value for int."""

    name: str
    direction: Direction
    type: ParamType
    bound: int
    optional: bool = False
    item_bound: int = 0  # for *_list: max length of each item

    def check(self, value: Any, where: str) -> None:
        if value is None:
            if self.optional:
                return
            raise BoundaryError(f"{where}: {self.name} is required")
        if self.type == "bytes":
            _check_sized(value, bytes, self.bound, f"{where}: {self.name}")
        elif self.type == "str":
            _check_sized(value, str, self.bound, f"{where}: {self.name}")
        elif self.type == "bool":
            if not isinstance(value, bool):
                raise BoundaryError(f"{where}: {self.name} must be a bool")
        elif self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise BoundaryError(f"{where}: {self.name} must be an int")
            if not 0 <= value <= self.bound:
                raise BoundaryError(f"{where}: {self.name} out of range 0..{self.bound}")
        else:
            item_type: type[bytes] | type[str] = bytes if self.type == "bytes_list" else str
            if not isinstance(value, list):
                raise BoundaryError(f"{where}: {self.name} must be a list")
            if len(value) > self.bound:
                raise BoundaryError(f"{where}: {self.name} has more than {self.bound} items")
            for i, item in enumerate(value):
                _check_sized(item, item_type, self.item_bound, f"{where}: {self.name}[{i}]")


def _check_sized(value: Any, kind: type[bytes] | type[str], bound: int, what: str) -> None:
    if not isinstance(value, kind):
        raise BoundaryError(f"{what} must be {kind.__name__}")
    if len(value) > bound:
        raise BoundaryError(f"{what} exceeds its bound of {bound}")


@dataclass(frozen=True)
class Call:
    """A declared ECALL or OCALL."""

    name: str
    kind: Kind
    params: tuple[Param, ...]
    doc: str

    def inputs(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.direction == "in")

    def outputs(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.direction == "out")

    def check(self, values: Any, direction: Direction) -> dict[str, Any]:
        """Validate a call's arguments (`in`) or result (`out`); returns them as a plain dict."""
        where = f"{self.kind} {self.name} ({'arguments' if direction == 'in' else 'result'})"
        if not isinstance(values, Mapping):
            raise BoundaryError(f"{where}: expected a map")
        declared = self.inputs() if direction == "in" else self.outputs()
        names = {p.name for p in declared}
        extra = sorted(str(k) for k in values if k not in names)
        if extra:
            raise BoundaryError(f"{where}: undeclared parameter(s) {', '.join(extra)}")
        for p in declared:
            p.check(values.get(p.name), where)
        return {p.name: values.get(p.name) for p in declared}


def _in(name: str, type_: ParamType, bound: int, **kw: Any) -> Param:
    return Param(name, "in", type_, bound, **kw)


def _out(name: str, type_: ParamType, bound: int, **kw: Any) -> Param:
    return Param(name, "out", type_, bound, **kw)


_QUOTE = 64 * _KiB
_EVIDENCE = 128 * _KiB
_PEM_KEY = 512  # the tutorial pads the PEM public key to 512 bytes
_CHANNEL_MSG = 64 * _KiB
_BLOB = 4 * _MiB
_U16 = 0xFFFF
_U64 = (1 << 64) - 1

ECALLS: tuple[Call, ...] = (
    Call(
        "initialize",
        "ecall",
        (
            _in("config", "bytes", 64 * _KiB),  # CBOR of non-secret settings
            _out("identity", "bytes", 4 * _KiB),  # CBOR: mr_enclave, mr_signer, prod id, svn
        ),
        "Start the enclave: unseal or create its keys through the storage OCALLs.",
    ),
    Call(
        "set_up_server",
        "ecall",
        (_in("port", "int", _U16), _in("keep_server_up", "bool", 1)),
        "Serve HTTPS from inside the enclave; returns when the server stops.",
    ),
    Call(
        "get_report",
        "ecall",
        (
            _out("pem_key", "bytes", _PEM_KEY),
            _out("report", "bytes", _EVIDENCE),
        ),
        "The tutorial's report: OE header + quote, report_data[0:32] = SHA-256(pem_key).",
    ),
    Call(
        "get_evidence_with_pub_key",
        "ecall",
        (
            _in("format_id", "bytes", 16),
            _in("format_settings", "bytes", 4 * _KiB, optional=True),
            _out("pem_key", "bytes", _PEM_KEY),
            _out("evidence", "bytes", _EVIDENCE),
        ),
        "OE evidence with custom claims 'Event' and 'Public key hash'.",
    ),
    Call(
        "get_remote_report_with_pubkey",
        "ecall",
        (_out("message", "bytes", _CHANNEL_MSG),),
        "Secure channel: this enclave's RSA public key and evidence binding it.",
    ),
    Call(
        "verify_report_and_set_pubkey",
        "ecall",
        (_in("message", "bytes", _CHANNEL_MSG), _out("peer", "bytes", 4 * _KiB)),
        "Secure channel: verify the peer's evidence against policy and keep its key.",
    ),
    Call(
        "establish_secure_channel",
        "ecall",
        (_out("message", "bytes", _CHANNEL_MSG),),
        "Secure channel (initiator): session key wrapped to the peer and signed.",
    ),
    Call(
        "acknowledge_secure_channel",
        "ecall",
        (_in("message", "bytes", _CHANNEL_MSG), _out("message", "bytes", _CHANNEL_MSG)),
        "Secure channel (responder): check the signature, unwrap, acknowledge.",
    ),
    Call(
        "generate_encrypted_message",
        "ecall",
        (_in("index", "int", _U16), _out("message", "bytes", _CHANNEL_MSG)),
        "Secure channel: the enclave's own message number `index`, encrypted.",
    ),
    Call(
        "process_encrypted_msg",
        "ecall",
        (_in("message", "bytes", _CHANNEL_MSG), _out("digest", "bytes", 32)),
        "Secure channel: decrypt and check a record; returns only a digest of the plaintext.",
    ),
    Call(
        "records_changed",
        "ecall",
        (_in("kind", "str", 32), _in("id", "str", 256)),
        "Another worker wrote or deleted this record: forget any copy held in memory.",
    ),
    Call(
        "workload_evidence",
        "ecall",
        (
            _in("nonce", "bytes", 32),
            _out("public_key", "bytes", 32),
            _out("evidence", "bytes", _QUOTE),
        ),
        "Key-release workload: a fresh X25519 recipient key and a quote binding it and the "
        "KMS's nonce (release_wire.binding); the private key stays inside.",
    ),
    Call(
        "workload_open",
        "ecall",
        (
            _in("key_name", "str", 128),
            _in("version", "int", _U16 * _U16),
            _in("operation", "str", 16),
            _in("nonce", "bytes", 32),
            _in("sealed", "bytes", 64 * _KiB),
            _out("digest", "bytes", 32),
        ),
        "Key-release workload: open the KMS's HPKE answer inside; returns only a digest.",
    ),
    Call("shutdown", "ecall", (), "Stop serving and flush; the enclave process then exits."),
)

OCALLS: tuple[Call, ...] = (
    Call(
        "get_quote",
        "ocall",
        (_in("report", "bytes", 432), _out("quote", "bytes", _QUOTE)),
        "Turn an EREPORT (targeted at the quoting enclave) into a DCAP quote.",
    ),
    Call(
        "get_qe_target_info",
        "ocall",
        (_out("target_info", "bytes", 512),),
        "The quoting enclave's TARGETINFO, so the enclave can EREPORT to it.",
    ),
    Call(
        "get_collateral",
        "ocall",
        (_in("quote", "bytes", _QUOTE), _out("collateral", "bytes", 256 * _KiB)),
        "Collateral for a quote (signed by Intel or the simulated PCS; checked inside).",
    ),
    Call(
        "store_get",
        "ocall",
        (
            _in("kind", "str", 32),
            _in("id", "str", 256),
            _out("version", "int", _U64),  # 0 = absent
            _out("blob", "bytes", _BLOB, optional=True),
        ),
        "Read one sealed record; the enclave authenticates it (AAD binds kind, id, version).",
    ),
    Call(
        "store_put",
        "ocall",
        (
            _in("kind", "str", 32),
            _in("id", "str", 256),
            _in("expected_version", "int", _U64),
            _in("blob", "bytes", _BLOB),
            _out("ok", "bool", 1),
        ),
        "Compare-and-set write: succeeds only if the stored version is `expected_version`.",
    ),
    Call(
        "store_list",
        "ocall",
        (
            _in("kind", "str", 32),
            _in("after", "str", 256),
            _in("limit", "int", 10_000),
            _out("ids", "str_list", 10_000, item_bound=256),
        ),
        "List record ids of a kind in order, after a cursor.",
    ),
    Call(
        "store_delete",
        "ocall",
        (
            _in("kind", "str", 32),
            _in("id", "str", 256),
            _in("expected_version", "int", _U64),
            _out("ok", "bool", 1),
        ),
        "Compare-and-delete.",
    ),
    Call(
        "audit_append",
        "ocall",
        (
            _in("records", "bytes_list", 4096, item_bound=64 * _KiB),
            _in("put_kind", "str", 32, optional=True),
            _in("put_id", "str", 256, optional=True),
            _in("put_expected_version", "int", _U64, optional=True),
            _in("put_blob", "bytes", _BLOB, optional=True),
            _out("ok", "bool", 1),
        ),
        "Durably append an audit batch; the enclave answers only after this returns. With "
        "put_*, also compare-and-set that record (the sealed state head) in the same "
        "transaction: one crossing and one fsync per batch; ok=false (nothing written) if the "
        "record's version is not put_expected_version.",
    ),
    Call(
        "audit_tail",
        "ocall",
        (
            _in("from_seq", "int", _U64),
            _out("records", "bytes_list", 4096, item_bound=64 * _KiB),
        ),
        "Audit records from position `from_seq` on: after a crash between an append and the "
        "sealed head's update, the enclave adopts the ones it can verify as its own.",
    ),
    Call(
        "replica_join",
        "ocall",
        (
            _in("path", "str", 64),
            _in("body", "bytes", 256 * _KiB),
            _out("status", "int", 999),
            _out("body", "bytes", 256 * _KiB),
        ),
        "POST a join message to the peer replica (`serve --join`); the enclave verifies the "
        "answer end to end (enclave/custody/handover.py), the host only relays it.",
    ),
    Call(
        "log",
        "ocall",
        (_in("level", "str", 16), _in("message", "str", 4 * _KiB)),
        "A log line; never carries secrets (the enclave formats it from non-secret fields).",
    ),
)

_BY_KIND: dict[Kind, dict[str, Call]] = {
    "ecall": {c.name: c for c in ECALLS},
    "ocall": {c.name: c for c in OCALLS},
}


def declared(kind: Kind, name: str) -> Call:
    """The declaration of a call; an undeclared name is a boundary violation."""
    call = _BY_KIND[kind].get(name)
    if call is None:
        raise BoundaryError(f"undeclared {kind}: {name!r}")
    return call


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """One decoded frame. `t` is "call", "ret" or "err"."""

    id: int
    t: Literal["call", "ret", "err"]
    fn: str = ""
    body: Mapping[str, Any] | None = None
    code: str = ""
    message: str = ""
    detail: Mapping[str, Any] | None = None  # err frames: the error's step and violations


def encode_frame(frame: Frame) -> bytes:
    payload: dict[str, Any] = {"id": frame.id, "t": frame.t}
    if frame.t == "call":
        payload["fn"] = frame.fn
        payload["args"] = dict(frame.body or {})
    elif frame.t == "ret":
        payload["res"] = dict(frame.body or {})
    else:
        payload["code"] = frame.code
        payload["message"] = frame.message
        if frame.detail:
            payload["detail"] = dict(frame.detail)
    data = cbor2.dumps(payload)
    if len(data) > MAX_FRAME:
        raise BoundaryError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return struct.pack(">I", len(data)) + data


def frame_length(header: bytes) -> int:
    """Length announced by a 4-byte header, refused before reading if over the bound."""
    if len(header) != 4:
        raise BoundaryError("truncated frame header")
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise BoundaryError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)


def decode_frame(payload: bytes) -> Frame:
    """Decode the CBOR body of a frame; anything unexpected is a BoundaryError."""
    try:
        obj = cbor2.loads(payload)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises many unrelated types on garbage
        raise BoundaryError(f"frame is not CBOR: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise BoundaryError("frame is not a map")
    fid, t = obj.get("id"), obj.get("t")
    if isinstance(fid, bool) or not isinstance(fid, int) or not 0 <= fid <= _U64:
        raise BoundaryError("frame id must be an unsigned 64-bit int")
    expected: dict[str, set[str]] = {
        "call": {"id", "t", "fn", "args"},
        "ret": {"id", "t", "res"},
        "err": {"id", "t", "code", "message"},
    }
    if not isinstance(t, str) or t not in expected:  # an unhashable `t` must not TypeError
        raise BoundaryError(f"unknown frame type {str(t)[:32]!r}")
    fields = set(obj) - ({"detail"} if t == "err" else set())
    if fields != expected[t]:
        raise BoundaryError(f"{t} frame has fields {sorted(map(str, obj))[:8]}")
    if t == "call":
        if not isinstance(obj["fn"], str) or not isinstance(obj["args"], dict):
            raise BoundaryError("call frame needs fn: str and args: map")
        return Frame(fid, "call", fn=obj["fn"], body=obj["args"])
    if t == "ret":
        if not isinstance(obj["res"], dict):
            raise BoundaryError("ret frame needs res: map")
        return Frame(fid, "ret", body=obj["res"])
    if not isinstance(obj["code"], str) or not isinstance(obj["message"], str):
        raise BoundaryError("err frame needs code and message strings")
    if len(obj["code"]) > 64 or len(obj["message"]) > 4 * _KiB:
        raise BoundaryError("err frame fields exceed their bounds")
    return Frame(fid, "err", code=obj["code"], message=obj["message"], detail=_detail(obj))


def _detail(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """An err frame's optional structured detail: `step` (str) and `violations` (strings)."""
    if "detail" not in obj:
        return None
    detail = obj["detail"]
    if not isinstance(detail, dict) or not set(detail) <= {"step", "violations"}:
        raise BoundaryError("err frame detail must be a map of step and violations")
    step, violations = detail.get("step"), detail.get("violations")
    if step is not None and (not isinstance(step, str) or len(step) > 64):
        raise BoundaryError("err frame detail step must be a short string")
    if violations is not None and (
        not isinstance(violations, list)
        or len(violations) > 64
        or not all(isinstance(v, str) and len(v) <= 1024 for v in violations)
    ):
        raise BoundaryError("err frame detail violations must be a short list of strings")
    return detail
