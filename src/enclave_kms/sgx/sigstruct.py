"""SGX SIGSTRUCT (Intel SDM vol. 3D, 38.13) and MRSIGNER.

SIGSTRUCT is the enclave author's signature over the enclave's measurement (ENCLAVEHASH) and
its launch parameters (product id, SVN, attributes). EINIT refuses an enclave whose measured
pages do not hash to ENCLAVEHASH or whose signature does not verify, and the CPU reports the
signer as MRSIGNER = SHA-256 of the modulus *as stored here*, i.e. little-endian, 384 bytes.
That is why the byte order below matters: a big-endian hash gives a different, useless MRSIGNER.

Layout (1808 bytes; integers little-endian):

    0    HEADER (12: 06000000E100000000000100h)   12  TYPE (u32: bit 31 = debug signing key)
    16   VENDOR (u32: 0x8086 Intel, 0 others)     20  DATE (u32, BCD yyyymmdd)
    24   HEADER2 (16: 01010000600000006000000001000000h)
    40   SWDEFINED (u32)                          44  reserved (84)
    128  MODULUS (384, LE)  512 EXPONENT (u32 = 3)  516 SIGNATURE (384, LE)
    900  MISCSELECT (u32)   904 MISCMASK (u32)
    908  CET_ATTRIBUTES (u8)  909 CET_ATTRIBUTES_MASK (u8)  910 reserved (2)
    912  ISVFAMILYID (16)   928 ATTRIBUTES (16)   944 ATTRIBUTEMASK (16)
    960  ENCLAVEHASH (32)   992 reserved (16)     1008 ISVEXTPRODID (16)
    1024 ISVPRODID (u16)    1026 ISVSVN (u16)
    1028 reserved (12)      1040 Q1 (384, LE)     1424 Q2 (384, LE)

The signature is RSA-3072 (e = 3) PKCS#1 v1.5 with SHA-256 over bytes 0..127 ‖ 900..1027.
Q1 and Q2 let EINIT check s^3 mod n without a division: q1 = ⌊s²/n⌋, q2 = ⌊(s³ - q1·s·n)/n⌋.
This module is pure: keys and the date are arguments; RSA is `cryptography`'s, never our own.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from enclave_kms.errors import FormatError, SignatureError, UnsupportedFormatError
from enclave_kms.sgx.report import AttributeFlags, Attributes

SIZE = 1808
KEY_BITS = 3072
KEY_BYTES = 384
EXPONENT = 3

HEADER = bytes.fromhex("06000000E100000000000100")
HEADER2 = bytes.fromhex("01010000600000006000000001000000")
TYPE_DEBUG = 0x8000_0000
VENDOR_INTEL = 0x8086

# The signed regions: the 128-byte header and the 128-byte body.
HEADER_REGION = slice(0, 128)
BODY_REGION = slice(900, 1028)

_FMT = struct.Struct(
    "<12sIII16sI84s"  # header .. reserved              (0..128)
    "384sI384s"  # modulus, exponent, signature         (128..900)
    "IIBB2s16s16s16s32s16s16sHH"  # body                (900..1028)
    "12s384s384s"  # reserved, q1, q2                   (1028..1808)
)
assert _FMT.size == SIZE

_U64 = (1 << 64) - 1

#: What SGX requires of every enclave: 64-bit mode; x87 and SSE state (XFRM bits 0 and 1).
DEFAULT_XFRM = 0x3


@dataclass(frozen=True)
class SigstructConfig:
    """The launch parameters an author signs besides the enclave hash.

    Defaults follow the SGX SDK's: no MISCSELECT bits and all of them enforced, vendor 0 (not
    Intel), no KSS identifiers. `attribute_mask` says which ATTRIBUTES bits EINIT must match.
    """

    isv_prod_id: int
    isv_svn: int
    attributes: Attributes
    attribute_mask: Attributes
    misc_select: int = 0
    misc_mask: int = 0xFFFF_FFFF
    cet_attributes: int = 0
    cet_attributes_mask: int = 0
    isv_family_id: bytes = bytes(16)
    isv_ext_prod_id: bytes = bytes(16)
    vendor: int = 0
    header_type: int = 0
    swdefined: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)


def _check_range(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise FormatError(f"sigstruct {name}: {value!r} does not fit in {bits} bits")


def _check_fields(obj: SigstructConfig | Sigstruct) -> None:
    for name, bits in (
        ("isv_prod_id", 16),
        ("isv_svn", 16),
        ("misc_select", 32),
        ("misc_mask", 32),
        ("cet_attributes", 8),
        ("cet_attributes_mask", 8),
        ("vendor", 32),
        ("swdefined", 32),
    ):
        _check_range(name, getattr(obj, name), bits)
    for name in ("isv_family_id", "isv_ext_prod_id"):
        value = getattr(obj, name)
        if not isinstance(value, bytes) or len(value) != 16:
            raise FormatError(f"sigstruct {name}: expected 16 bytes")
    if obj.header_type not in (0, TYPE_DEBUG):
        raise FormatError(f"sigstruct type: {obj.header_type:#x} (only bit 31 may be set)")
    for name in ("attributes", "attribute_mask"):
        attrs = getattr(obj, name)
        if not isinstance(attrs, Attributes) or not (
            0 <= attrs.flags <= _U64 and 0 <= attrs.xfrm <= _U64
        ):
            raise FormatError(f"sigstruct {name}: flags and xfrm must be 64-bit")


def check_signing_key(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> rsa.RSAPublicNumbers:
    """SGX accepts only RSA-3072 with public exponent 3; anything else is refused here, early."""
    if isinstance(key, rsa.RSAPrivateKey):
        key = key.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise UnsupportedFormatError(
            f"enclave signing key: expected RSA-3072 with e=3, got {type(key).__name__}"
        )
    numbers = key.public_numbers()
    if key.key_size != KEY_BITS or numbers.e != EXPONENT:
        raise UnsupportedFormatError(
            f"enclave signing key: SGX needs RSA-{KEY_BITS} with e={EXPONENT}, "
            f"got RSA-{key.key_size} with e={numbers.e}"
        )
    return numbers


def mr_signer_from_public_key(key: rsa.RSAPublicKey) -> bytes:
    """MRSIGNER as the CPU computes it: SHA-256 of the 384-byte little-endian modulus."""
    numbers = check_signing_key(key)
    return hashlib.sha256(numbers.n.to_bytes(KEY_BYTES, "little")).digest()


def generate_signing_key() -> rsa.RSAPrivateKey:
    """A fresh enclave signing key: RSA-3072, e = 3 (the only shape EINIT accepts)."""
    return rsa.generate_private_key(public_exponent=EXPONENT, key_size=KEY_BITS)


def encode_date(date: dt.date) -> int:
    """DATE field: the digits of yyyymmdd read as hex (BCD), e.g. 2024-05-06 → 0x20240506."""
    return int(f"{date.year:04d}{date.month:02d}{date.day:02d}", 16)


def decode_date(value: int) -> dt.date | None:
    """Inverse of `encode_date`; None when the field is not a valid BCD date."""
    text = f"{value:08x}"
    if not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _q1_q2(signature: int, modulus: int) -> tuple[int, int]:
    q1 = signature * signature // modulus
    q2 = (signature**3 - q1 * signature * modulus) // modulus
    return q1, q2


@dataclass(frozen=True)
class Sigstruct:
    """A parsed or freshly signed SIGSTRUCT. Reserved fields must be zero (EINIT requires it)."""

    vendor: int
    date: int
    swdefined: int
    modulus: bytes  # 384 bytes, little-endian, exactly as stored
    exponent: int
    signature: bytes  # 384 bytes, little-endian
    misc_select: int
    misc_mask: int
    cet_attributes: int
    cet_attributes_mask: int
    isv_family_id: bytes
    attributes: Attributes
    attribute_mask: Attributes
    enclave_hash: bytes
    isv_ext_prod_id: bytes
    isv_prod_id: int
    isv_svn: int
    q1: bytes  # 384 bytes, little-endian
    q2: bytes  # 384 bytes, little-endian
    header_type: int = 0

    SIZE = SIZE

    def __post_init__(self) -> None:
        _check_fields(self)
        for name, size in (
            ("modulus", KEY_BYTES),
            ("signature", KEY_BYTES),
            ("q1", KEY_BYTES),
            ("q2", KEY_BYTES),
            ("enclave_hash", 32),
        ):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                raise FormatError(f"sigstruct {name}: expected {size} bytes")
        _check_range("date", self.date, 32)
        _check_range("exponent", self.exponent, 32)

    # ------------------------------------------------------------------ bytes

    @classmethod
    def parse(cls, data: bytes) -> Sigstruct:
        """Parse exactly 1808 bytes; wrong constants or non-zero reserved bytes are refused."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FormatError(f"sigstruct: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) != SIZE:
            raise FormatError(f"sigstruct: expected {SIZE} bytes, got {len(data)}")
        (
            header,
            header_type,
            vendor,
            date,
            header2,
            swdefined,
            reserved0,
            modulus,
            exponent,
            signature,
            misc_select,
            misc_mask,
            cet_attributes,
            cet_attributes_mask,
            reserved1,
            isv_family_id,
            attributes,
            attribute_mask,
            enclave_hash,
            reserved2,
            isv_ext_prod_id,
            isv_prod_id,
            isv_svn,
            reserved3,
            q1,
            q2,
        ) = _FMT.unpack(data)
        if header != HEADER:
            raise FormatError("sigstruct header: not 06000000E100000000000100h")
        if header2 != HEADER2:
            raise FormatError("sigstruct header2: not 01010000600000006000000001000000h")
        for name, value, offset in (
            ("reserved", reserved0, 44),
            ("reserved", reserved1, 910),
            ("reserved", reserved2, 992),
            ("reserved", reserved3, 1028),
        ):
            if any(value):
                raise FormatError(f"sigstruct {name} bytes at offset {offset} are not zero")
        if exponent != EXPONENT:
            raise UnsupportedFormatError(f"sigstruct exponent: {exponent} (SGX requires 3)")
        return cls(
            vendor=vendor,
            date=date,
            swdefined=swdefined,
            modulus=modulus,
            exponent=exponent,
            signature=signature,
            misc_select=misc_select,
            misc_mask=misc_mask,
            cet_attributes=cet_attributes,
            cet_attributes_mask=cet_attributes_mask,
            isv_family_id=isv_family_id,
            attributes=Attributes.parse(attributes),
            attribute_mask=Attributes.parse(attribute_mask),
            enclave_hash=enclave_hash,
            isv_ext_prod_id=isv_ext_prod_id,
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            q1=q1,
            q2=q2,
            header_type=header_type,
        )

    def to_bytes(self) -> bytes:
        return _FMT.pack(
            HEADER,
            self.header_type,
            self.vendor,
            self.date,
            HEADER2,
            self.swdefined,
            bytes(84),
            self.modulus,
            self.exponent,
            self.signature,
            self.misc_select,
            self.misc_mask,
            self.cet_attributes,
            self.cet_attributes_mask,
            bytes(2),
            self.isv_family_id,
            self.attributes.to_bytes(),
            self.attribute_mask.to_bytes(),
            self.enclave_hash,
            bytes(16),
            self.isv_ext_prod_id,
            self.isv_prod_id,
            self.isv_svn,
            bytes(12),
            self.q1,
            self.q2,
        )

    @property
    def signed_bytes(self) -> bytes:
        """The 256 bytes the signature covers: header (0..127) ‖ body (900..1027)."""
        raw = self.to_bytes()
        return raw[HEADER_REGION] + raw[BODY_REGION]

    # ------------------------------------------------------------------ identity

    @property
    def mr_enclave(self) -> bytes:
        """ENCLAVEHASH: the MRENCLAVE the author signed."""
        return self.enclave_hash

    @property
    def mr_signer(self) -> bytes:
        """MRSIGNER: SHA-256 of the modulus bytes exactly as stored (little-endian)."""
        return hashlib.sha256(self.modulus).digest()

    @property
    def signed_date(self) -> dt.date | None:
        return decode_date(self.date)

    @property
    def debug(self) -> bool:
        """Whether the signed ATTRIBUTES ask for a debug enclave."""
        return bool(self.attributes.flags & AttributeFlags.DEBUG)

    def public_key(self) -> rsa.RSAPublicKey:
        modulus = int.from_bytes(self.modulus, "little")
        try:
            key = rsa.RSAPublicNumbers(self.exponent, modulus).public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise FormatError(f"sigstruct modulus: not a usable RSA public key ({exc})") from None
        check_signing_key(key)
        return key

    # ------------------------------------------------------------------ signing

    @classmethod
    def sign(
        cls,
        enclave_hash: bytes,
        config: SigstructConfig,
        private_key: rsa.RSAPrivateKey,
        date: dt.date,
    ) -> Sigstruct:
        """Sign `enclave_hash` and `config` as the SGX signing tools do (see module docstring)."""
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise UnsupportedFormatError(
                "enclave signing key: expected an RSA private key, "
                f"got {type(private_key).__name__}"
            )
        numbers = check_signing_key(private_key)
        if not isinstance(enclave_hash, bytes) or len(enclave_hash) != 32:
            raise FormatError("sigstruct enclave_hash: expected 32 bytes")
        unsigned = cls(
            vendor=config.vendor,
            date=encode_date(date),
            swdefined=config.swdefined,
            modulus=numbers.n.to_bytes(KEY_BYTES, "little"),
            exponent=EXPONENT,
            signature=bytes(KEY_BYTES),
            misc_select=config.misc_select,
            misc_mask=config.misc_mask,
            cet_attributes=config.cet_attributes,
            cet_attributes_mask=config.cet_attributes_mask,
            isv_family_id=config.isv_family_id,
            attributes=config.attributes,
            attribute_mask=config.attribute_mask,
            enclave_hash=enclave_hash,
            isv_ext_prod_id=config.isv_ext_prod_id,
            isv_prod_id=config.isv_prod_id,
            isv_svn=config.isv_svn,
            q1=bytes(KEY_BYTES),
            q2=bytes(KEY_BYTES),
            header_type=config.header_type,
        )
        signature_be = private_key.sign(unsigned.signed_bytes, padding.PKCS1v15(), hashes.SHA256())
        s = int.from_bytes(signature_be, "big")
        q1, q2 = _q1_q2(s, numbers.n)
        return replace(
            unsigned,
            signature=s.to_bytes(KEY_BYTES, "little"),
            q1=q1.to_bytes(KEY_BYTES, "little"),
            q2=q2.to_bytes(KEY_BYTES, "little"),
        )

    def verify(self) -> None:
        """Check the signature over the signed regions and the Q1/Q2 helpers, as EINIT does.

        Raises SignatureError naming what failed; FormatError if the key is unusable.
        """
        key = self.public_key()
        modulus = int.from_bytes(self.modulus, "little")
        s = int.from_bytes(self.signature, "little")
        if s >= modulus:
            raise SignatureError("sigstruct signature: not smaller than the modulus")
        try:
            key.verify(
                s.to_bytes(KEY_BYTES, "big"), self.signed_bytes, padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise SignatureError(
                "sigstruct signature: does not verify over the header and body"
            ) from None
        q1, q2 = _q1_q2(s, modulus)
        if int.from_bytes(self.q1, "little") != q1 or int.from_bytes(self.q2, "little") != q2:
            raise SignatureError("sigstruct q1/q2: do not match the signature")


# Re-exported so callers building configs need only this module.
__all__ = [
    "DEFAULT_XFRM",
    "SIZE",
    "AttributeFlags",
    "Attributes",
    "Sigstruct",
    "SigstructConfig",
    "check_signing_key",
    "decode_date",
    "encode_date",
    "generate_signing_key",
    "mr_signer_from_public_key",
]
