"""TDX TD report bodies as embedded in DCAP quotes v4/v5 (Intel TDX DCAP Quote Library spec).

`TdReport10` is the 584-byte TD Quote Body of TDX 1.0 (quote v4, tee_type 0x81, and quote v5
body type 2); `TdReport15` is the 648-byte body of TDX 1.5 (quote v5 body type 3), which appends
`tee_tcb_svn2` and `mr_service_td`. Measurements are SHA-384 (48 bytes). We parse them for
inspection and policy; `to_bytes` returns the exact bytes so a quote round-trips.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

from enclave_kms.errors import FormatError

# tee_tcb_svn, mr_seam, mr_signer_seam, seam_attributes, td_attributes, xfam, mr_td,
# mr_config_id, mr_owner, mr_owner_config, rt_mr0..3, report_data
_FMT10 = "<16s48s48s8s8s8s48s48s48s48s48s48s48s48s64s"
_SIZES10 = (16, 48, 48, 8, 8, 8, 48, 48, 48, 48, 48, 48, 48, 48, 64)


def _check_sizes(obj: object, sizes: tuple[int, ...]) -> None:
    for f, size in zip(fields(obj), sizes, strict=True):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not isinstance(value, bytes) or len(value) != size:
            raise FormatError(f"{f.name}: expected {size} bytes")


def _need(data: bytes, size: int, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) != size:
        raise FormatError(f"{what}: expected {size} bytes, got {len(data)}")
    return bytes(data)


@dataclass(frozen=True)
class TdReport10:
    """TDX 1.0 TD quote body (584 bytes)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rt_mr0: bytes
    rt_mr1: bytes
    rt_mr2: bytes
    rt_mr3: bytes
    report_data: bytes

    SIZE = 584

    def __post_init__(self) -> None:
        _check_sizes(self, _SIZES10)

    @classmethod
    def parse(cls, data: bytes) -> TdReport10:
        return cls(*struct.unpack(_FMT10, _need(data, cls.SIZE, "TD report 1.0")))

    def to_bytes(self) -> bytes:
        return struct.pack(_FMT10, *(getattr(self, f.name) for f in fields(TdReport10)))

    @property
    def rt_mrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rt_mr0, self.rt_mr1, self.rt_mr2, self.rt_mr3)

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES bit 0 (TUD.DEBUG): the TD's state is visible to the host."""
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True)
class TdReport15(TdReport10):
    """TDX 1.5 TD quote body (648 bytes): the 1.0 body + `tee_tcb_svn2` + `mr_service_td`."""

    tee_tcb_svn2: bytes = bytes(16)
    mr_service_td: bytes = bytes(48)

    SIZE = 648

    def __post_init__(self) -> None:
        _check_sizes(self, (*_SIZES10, 16, 48))

    @classmethod
    def parse(cls, data: bytes) -> TdReport15:
        raw = _need(data, cls.SIZE, "TD report 1.5")
        return cls(*struct.unpack(_FMT10, raw[:584]), *struct.unpack("<16s48s", raw[584:]))

    def to_bytes(self) -> bytes:
        return super().to_bytes() + self.tee_tcb_svn2 + self.mr_service_td
