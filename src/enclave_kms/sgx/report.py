"""SGX report structures (Intel SDM vol. 3D, 38.15 "REPORT", 38.16 "TARGETINFO").

All integers are little-endian as the CPU writes them. `parse` accepts exactly the structure's
size; `to_bytes` returns the exact bytes again, so parse/build round-trips byte for byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntFlag

from enclave_kms.errors import FormatError


def _need(data: bytes, size: int, what: str) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) != size:
        raise FormatError(f"{what}: expected {size} bytes, got {len(data)}")


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise FormatError(f"{what}: expected {size} bytes, got {len(value)}")
    return bytes(value)


class AttributeFlags(IntFlag):
    """SECS.ATTRIBUTES.FLAGS bits (SDM Table 38-3)."""

    INIT = 0x01
    DEBUG = 0x02
    MODE64BIT = 0x04
    PROVISIONKEY = 0x10
    EINITTOKEN_KEY = 0x20
    CET = 0x40
    KSS = 0x80
    AEXNOTIFY = 0x400


@dataclass(frozen=True)
class Attributes:
    """16-byte ATTRIBUTES: 8-byte flags then 8-byte XFRM."""

    flags: int
    xfrm: int

    SIZE = 16

    @classmethod
    def parse(cls, data: bytes) -> Attributes:
        _need(data, cls.SIZE, "attributes")
        flags, xfrm = struct.unpack("<QQ", data)
        return cls(flags, xfrm)

    def to_bytes(self) -> bytes:
        return struct.pack("<QQ", self.flags, self.xfrm)

    @property
    def debug(self) -> bool:
        return bool(self.flags & AttributeFlags.DEBUG)

    @property
    def init(self) -> bool:
        return bool(self.flags & AttributeFlags.INIT)

    @property
    def mode64bit(self) -> bool:
        return bool(self.flags & AttributeFlags.MODE64BIT)

    def flag_names(self) -> list[str]:
        return [f.name or "" for f in AttributeFlags if self.flags & f]


# offset, size of every ReportBody field (SDM 38.15; DCAP "Enclave Report Body")
_BODY_FMT = "<16sI12s16s16s32s32s32s32s64sHHH42s16s64s"


@dataclass(frozen=True)
class ReportBody:
    """The 384-byte SGX report body, as embedded in REPORT and in DCAP quotes."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: Attributes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    reserved1: bytes = field(default=bytes(12), repr=False)
    reserved2: bytes = field(default=bytes(32), repr=False)
    reserved3: bytes = field(default=bytes(32), repr=False)
    reserved4: bytes = field(default=bytes(42), repr=False)

    SIZE = 384

    def __post_init__(self) -> None:
        _fixed(self.cpu_svn, 16, "cpu_svn")
        _fixed(self.isv_ext_prod_id, 16, "isv_ext_prod_id")
        _fixed(self.mr_enclave, 32, "mr_enclave")
        _fixed(self.mr_signer, 32, "mr_signer")
        _fixed(self.config_id, 64, "config_id")
        _fixed(self.isv_family_id, 16, "isv_family_id")
        _fixed(self.report_data, 64, "report_data")
        for name, value, bits in (
            ("misc_select", self.misc_select, 32),
            ("isv_prod_id", self.isv_prod_id, 16),
            ("isv_svn", self.isv_svn, 16),
            ("config_svn", self.config_svn, 16),
        ):
            if not 0 <= value < (1 << bits):
                raise FormatError(f"{name}: {value} does not fit in {bits} bits")

    @classmethod
    def parse(cls, data: bytes) -> ReportBody:
        _need(data, cls.SIZE, "report body")
        (
            cpu_svn,
            misc_select,
            reserved1,
            isv_ext_prod_id,
            attributes,
            mr_enclave,
            reserved2,
            mr_signer,
            reserved3,
            config_id,
            isv_prod_id,
            isv_svn,
            config_svn,
            reserved4,
            isv_family_id,
            report_data,
        ) = struct.unpack(_BODY_FMT, bytes(data))
        return cls(
            cpu_svn=cpu_svn,
            misc_select=misc_select,
            isv_ext_prod_id=isv_ext_prod_id,
            attributes=Attributes.parse(attributes),
            mr_enclave=mr_enclave,
            mr_signer=mr_signer,
            config_id=config_id,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            config_svn=config_svn,
            isv_family_id=isv_family_id,
            report_data=report_data,
            reserved1=reserved1,
            reserved2=reserved2,
            reserved3=reserved3,
            reserved4=reserved4,
        )

    def to_bytes(self) -> bytes:
        return struct.pack(
            _BODY_FMT,
            self.cpu_svn,
            self.misc_select,
            self.reserved1,
            self.isv_ext_prod_id,
            self.attributes.to_bytes(),
            self.mr_enclave,
            self.reserved2,
            self.mr_signer,
            self.reserved3,
            self.config_id,
            self.isv_prod_id,
            self.isv_svn,
            self.config_svn,
            self.reserved4,
            self.isv_family_id,
            self.report_data,
        )


_TARGET_FMT = "<32s16s2s2sI8s64s384s"


@dataclass(frozen=True)
class TargetInfo:
    """512-byte TARGETINFO: whom an EREPORT is for (its report key verifies the MAC)."""

    mr_enclave: bytes
    attributes: Attributes
    config_svn: int = 0
    misc_select: int = 0
    config_id: bytes = bytes(64)

    SIZE = 512

    def __post_init__(self) -> None:
        _fixed(self.mr_enclave, 32, "target mr_enclave")
        _fixed(self.config_id, 64, "target config_id")

    @classmethod
    def parse(cls, data: bytes) -> TargetInfo:
        _need(data, cls.SIZE, "target info")
        mr_enclave, attributes, _r1, config_svn_b, misc_select, _r2, config_id, _r3 = struct.unpack(
            _TARGET_FMT, bytes(data)
        )
        (config_svn,) = struct.unpack("<H", config_svn_b)
        if any(_r1) or any(_r2) or any(_r3):
            raise FormatError("target info: reserved bytes must be zero")
        return cls(mr_enclave, Attributes.parse(attributes), config_svn, misc_select, config_id)

    def to_bytes(self) -> bytes:
        return struct.pack(
            _TARGET_FMT,
            self.mr_enclave,
            self.attributes.to_bytes(),
            bytes(2),
            struct.pack("<H", self.config_svn),
            self.misc_select,
            bytes(8),
            self.config_id,
            bytes(384),
        )


@dataclass(frozen=True)
class Report:
    """432-byte REPORT: body, the KEYID used for the MAC key, and the AES-CMAC over the body."""

    body: ReportBody
    key_id: bytes
    mac: bytes

    SIZE = 432

    def __post_init__(self) -> None:
        _fixed(self.key_id, 32, "key_id")
        _fixed(self.mac, 16, "mac")

    @classmethod
    def parse(cls, data: bytes) -> Report:
        _need(data, cls.SIZE, "report")
        data = bytes(data)
        return cls(ReportBody.parse(data[:384]), data[384:416], data[416:432])

    def to_bytes(self) -> bytes:
        return self.body.to_bytes() + self.key_id + self.mac
