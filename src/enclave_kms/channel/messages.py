"""Wire messages of the enclave-to-enclave secure channel (docs/secure-channel.md).

Every message is one CBOR array `[version, type, field...]` whose items are unsigned integers
and byte strings only. Encoding uses cbor2 in canonical form. Decoding does NOT hand untrusted
bytes to cbor2: cbor2 interprets semantic tags (regular expressions, dates, bignums, shared
references...) while it decodes, before any type check of ours could run. Instead a small
reader accepts exactly the subset the encoder produces — definite lengths, shortest integer
encodings, no tags, no nesting, no trailing bytes — so each message has exactly one encoding
and `parse(m.to_bytes()) == m` with `parse(b).to_bytes() == b`.

Size bounds (all enforced on construction and on parse; a frame never exceeds MAX_FRAME,
which fits the EDL's 64 KiB bound for channel messages):

| message            | field            | size                                       |
|--------------------|------------------|--------------------------------------------|
| ReportWithPubkey   | public_key_der   | 294 bytes (DER SPKI of RSA-2048, e=65537)   |
|                    | evidence         | 1 .. MAX_EVIDENCE (61440) bytes             |
| KeyEstablish       | encrypted_key    | 256 bytes (RSA-OAEP-SHA256 of a 32-byte key)|
|                    | signature        | 256 bytes (RSA-PSS-SHA256)                  |
| KeyAck             | confirmation     | 32 bytes (HMAC-SHA256 key confirmation)     |
| Record             | direction        | 1 (initiator→responder) or 2 (reverse)      |
|                    | sequence         | 0 .. 2**64-1                                |
|                    | iv               | 12 bytes                                    |
|                    | ciphertext       | 16 .. MAX_PLAINTEXT + 16 bytes (GCM tag last)|

Any violation raises `ChannelError`; nothing else escapes `parse`/`decode_message`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, TypeVar

import cbor2

from enclave_kms.errors import ChannelError

PROTOCOL_VERSION = 1

MAX_FRAME = 64 * 1024
MAX_EVIDENCE = 60 * 1024
MAX_PLAINTEXT = 60 * 1024
RSA_SPKI_LEN = 294  # DER SubjectPublicKeyInfo of an RSA-2048 key with exponent 65537
RSA_BLOCK_LEN = 256  # RSA-2048 ciphertext and signature length
SESSION_KEY_LEN = 32
CONFIRMATION_LEN = 32
IV_LEN = 12
TAG_LEN = 16
MAX_SEQUENCE = (1 << 64) - 1

INITIATOR_TO_RESPONDER = 1
RESPONDER_TO_INITIATOR = 2

_MAJOR_UINT = 0
_MAJOR_BYTES = 2
_MAJOR_ARRAY = 4
_MAX_ITEMS = 16


# ---------------------------------------------------------------------------- strict reader


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read one CBOR head at `pos`: (major type, argument, next position). Shortest form only."""
    if pos >= len(data):
        raise ChannelError("message: truncated CBOR item")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    widths = {24: 1, 25: 2, 26: 4, 27: 8}
    if info not in widths:
        raise ChannelError("message: indefinite or reserved CBOR length")
    width = widths[info]
    if pos + width > len(data):
        raise ChannelError("message: truncated CBOR head")
    value = int.from_bytes(data[pos : pos + width], "big")
    minimum = 24 if width == 1 else 1 << (4 * width)  # 1 byte: >=24; 2: >=256; 4: >=2**16; ...
    if value < minimum:
        raise ChannelError("message: non-shortest CBOR integer encoding")
    return major, value, pos + width


def _read_frame(data: object) -> list[int | bytes]:
    """Decode `[item, ...]` whose items are unsigned integers or byte strings, nothing else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ChannelError(f"message: expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if not raw:
        raise ChannelError("message: empty")
    if len(raw) > MAX_FRAME:
        raise ChannelError(f"message: {len(raw)} bytes exceeds the {MAX_FRAME}-byte bound")
    major, count, pos = _head(raw, 0)
    if major != _MAJOR_ARRAY:
        raise ChannelError("message: not a CBOR array")
    if count > _MAX_ITEMS:
        raise ChannelError("message: too many fields")
    items: list[int | bytes] = []
    for _ in range(count):
        major, arg, pos = _head(raw, pos)
        if major == _MAJOR_UINT:
            items.append(arg)
        elif major == _MAJOR_BYTES:
            if arg > len(raw) - pos:
                raise ChannelError("message: truncated byte string")
            items.append(raw[pos : pos + arg])
            pos += arg
        else:
            raise ChannelError("message: field is neither an unsigned integer nor bytes")
    if pos != len(raw):
        raise ChannelError("message: trailing bytes after the message")
    return items


def _encode(type_tag: int, *fields: int | bytes) -> bytes:
    return cbor2.dumps([PROTOCOL_VERSION, type_tag, *fields], canonical=True)


# ---------------------------------------------------------------------------- field checks


def _bytes(value: object, name: str, low: int, high: int) -> None:
    if type(value) is not bytes:
        raise ChannelError(f"{name}: expected bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        size = str(low) if low == high else f"{low}..{high}"
        raise ChannelError(f"{name}: expected {size} bytes, got {len(value)}")


def _uint(value: object, name: str, high: int) -> None:
    if type(value) is not int:  # bool is an int subclass: refuse it too
        raise ChannelError(f"{name}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= high:
        raise ChannelError(f"{name}: {value} is outside 0..{high}")


_M = TypeVar("_M", bound="_Message")


class _Message:
    TYPE: ClassVar[int]
    FIELDS: ClassVar[int]

    def _fields(self) -> tuple[int | bytes, ...]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return _encode(self.TYPE, *self._fields())

    @classmethod
    def _from_items(cls: type[_M], items: list[Any]) -> _M:
        if len(items) != cls.FIELDS:
            raise ChannelError(f"{cls.__name__}: expected {cls.FIELDS} fields, got {len(items)}")
        return cls(*items)

    @classmethod
    def parse(cls: type[_M], data: bytes) -> _M:
        """Decode bytes that must be a message of exactly this type."""
        message = decode_message(data)
        if not isinstance(message, cls):
            raise ChannelError(f"message: expected {cls.__name__}, got {type(message).__name__}")
        return message


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class ReportWithPubkey(_Message):
    """An enclave's fresh channel public key and evidence whose report_data[0:32] hashes it."""

    TYPE: ClassVar[int] = 1
    FIELDS: ClassVar[int] = 2

    public_key_der: bytes
    evidence: bytes

    def __post_init__(self) -> None:
        _bytes(self.public_key_der, "public_key_der", RSA_SPKI_LEN, RSA_SPKI_LEN)
        _bytes(self.evidence, "evidence", 1, MAX_EVIDENCE)

    def _fields(self) -> tuple[int | bytes, ...]:
        return (self.public_key_der, self.evidence)

    def __repr__(self) -> str:
        size = len(self.evidence)
        return f"ReportWithPubkey(public_key_der=<{RSA_SPKI_LEN} B>, evidence=<{size} B>)"


Hello = ReportWithPubkey


@dataclass(frozen=True)
class KeyEstablish(_Message):
    """The session key wrapped to the responder, and the initiator's signature over its hash."""

    TYPE: ClassVar[int] = 2
    FIELDS: ClassVar[int] = 2

    encrypted_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _bytes(self.encrypted_key, "encrypted_key", RSA_BLOCK_LEN, RSA_BLOCK_LEN)
        _bytes(self.signature, "signature", RSA_BLOCK_LEN, RSA_BLOCK_LEN)

    def _fields(self) -> tuple[int | bytes, ...]:
        return (self.encrypted_key, self.signature)

    def __repr__(self) -> str:
        return "KeyEstablish(encrypted_key=<256 B>, signature=<256 B>)"


@dataclass(frozen=True)
class KeyAck(_Message):
    """The responder's key confirmation: proves it unwrapped the same key for the same peers."""

    TYPE: ClassVar[int] = 3
    FIELDS: ClassVar[int] = 1

    confirmation: bytes

    def __post_init__(self) -> None:
        _bytes(self.confirmation, "confirmation", CONFIRMATION_LEN, CONFIRMATION_LEN)

    def _fields(self) -> tuple[int | bytes, ...]:
        return (self.confirmation,)

    def __repr__(self) -> str:
        return "KeyAck(confirmation=<32 B>)"


@dataclass(frozen=True)
class Record(_Message):
    """One AES-256-GCM record; `ciphertext` ends with the 16-byte tag."""

    TYPE: ClassVar[int] = 4
    FIELDS: ClassVar[int] = 4

    direction: int
    sequence: int
    iv: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        _uint(self.direction, "direction", 0xFF)
        if self.direction not in (INITIATOR_TO_RESPONDER, RESPONDER_TO_INITIATOR):
            raise ChannelError(f"direction: {self.direction} is not 1 or 2")
        _uint(self.sequence, "sequence", MAX_SEQUENCE)
        _bytes(self.iv, "iv", IV_LEN, IV_LEN)
        _bytes(self.ciphertext, "ciphertext", TAG_LEN, MAX_PLAINTEXT + TAG_LEN)

    def _fields(self) -> tuple[int | bytes, ...]:
        return (self.direction, self.sequence, self.iv, self.ciphertext)

    def __repr__(self) -> str:
        return (
            f"Record(direction={self.direction}, sequence={self.sequence}, "
            f"ciphertext=<{len(self.ciphertext)} B>)"
        )


@dataclass(frozen=True, repr=False)
class Close(_Message):
    """Authenticated end of stream: the sender's last record, at its next sequence number,
    an AES-256-GCM tag over nothing under the close label. Without it a receiver cannot
    tell "the peer said everything" from "the host dropped the last records"."""

    TYPE: ClassVar[int] = 5
    FIELDS: ClassVar[int] = 4

    direction: int
    sequence: int
    iv: bytes
    tag: bytes

    def __post_init__(self) -> None:
        _uint(self.direction, "direction", 0xFF)
        if self.direction not in (INITIATOR_TO_RESPONDER, RESPONDER_TO_INITIATOR):
            raise ChannelError(f"direction: {self.direction} is not 1 or 2")
        _uint(self.sequence, "sequence", MAX_SEQUENCE)
        _bytes(self.iv, "iv", IV_LEN, IV_LEN)
        _bytes(self.tag, "tag", TAG_LEN, TAG_LEN)

    def _fields(self) -> tuple[int | bytes, ...]:
        return (self.direction, self.sequence, self.iv, self.tag)

    def __repr__(self) -> str:
        return f"Close(direction={self.direction}, sequence={self.sequence})"


Message: TypeAlias = ReportWithPubkey | KeyEstablish | KeyAck | Record | Close

MESSAGE_TYPES: dict[int, type[Message]] = {
    m.TYPE: m for m in (ReportWithPubkey, KeyEstablish, KeyAck, Record, Close)
}


def decode_message(data: bytes) -> Message:
    """Decode any channel message; unknown version or type, bad field or size → ChannelError."""
    items = _read_frame(data)
    if len(items) < 2:
        raise ChannelError("message: missing version or type")
    version, type_tag = items[0], items[1]
    if not isinstance(version, int):
        raise ChannelError("message: version is not an integer")
    if version != PROTOCOL_VERSION:
        raise ChannelError(f"message: unsupported protocol version {version}")
    kind = MESSAGE_TYPES.get(type_tag) if isinstance(type_tag, int) else None
    if kind is None:
        raise ChannelError("message: unknown message type")
    return kind._from_items(items[2:])


def record_aad(label: bytes, direction: int, sequence: int) -> bytes:
    """Additional data of a record: protocol label, direction byte, 64-bit big-endian sequence."""
    return label + struct.pack(">BQ", direction, sequence)
