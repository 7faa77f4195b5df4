"""SIGSTRUCT: layout at the SDK's offsets, signature over the right bytes, MRSIGNER known answer."""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.errors import (
    EnclaveKMSError,
    FormatError,
    SignatureError,
    UnsupportedFormatError,
)
from enclave_kms.sgx.report import AttributeFlags, Attributes
from enclave_kms.sgx.sigstruct import (
    HEADER,
    HEADER2,
    Sigstruct,
    SigstructConfig,
    decode_date,
    encode_date,
    generate_signing_key,
    mr_signer_from_public_key,
)

AZURE_MRSIGNER = "62ba6bcab59700c340bdbcd36bf74c6e0d6892cdf91671dca93bcbfff81ef9f2"
ENCLAVE_HASH = hashlib.sha256(b"an enclave").digest()
DATE = dt.date(2024, 5, 6)
CONFIG = SigstructConfig(
    isv_prod_id=0x1234,
    isv_svn=0x0102,
    attributes=Attributes(int(AttributeFlags.MODE64BIT), 0x3),
    attribute_mask=Attributes((1 << 64) - 1, 0x3),
)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return generate_signing_key()


@pytest.fixture(scope="module")
def signed(key: rsa.RSAPrivateKey) -> Sigstruct:
    return Sigstruct.sign(ENCLAVE_HASH, CONFIG, key, DATE)


# --------------------------------------------------------------------------- MRSIGNER


def test_mr_signer_known_answer_azure_sample(sgx_testdata: Path) -> None:
    pem = (sgx_testdata / "azure-maa-oe-sample" / "signing_public.pem").read_bytes()
    public = serialization.load_pem_public_key(pem)
    assert isinstance(public, rsa.RSAPublicKey)
    assert mr_signer_from_public_key(public).hex() == AZURE_MRSIGNER


def test_mr_signer_is_little_endian_modulus_hash(key: rsa.RSAPrivateKey) -> None:
    n = key.public_key().public_numbers().n
    expected = hashlib.sha256(n.to_bytes(384, "little")).digest()
    assert mr_signer_from_public_key(key.public_key()) == expected
    assert expected != hashlib.sha256(n.to_bytes(384, "big")).digest()


def test_generated_key_is_sgx_shaped(key: rsa.RSAPrivateKey) -> None:
    assert key.key_size == 3072
    assert key.public_key().public_numbers().e == 3


def test_other_signing_key_gives_other_mr_signer(
    key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    a = Sigstruct.sign(ENCLAVE_HASH, CONFIG, key, DATE)
    b = Sigstruct.sign(ENCLAVE_HASH, CONFIG, other_key, DATE)
    assert a.mr_enclave == b.mr_enclave
    assert a.mr_signer != b.mr_signer
    assert b.mr_signer == mr_signer_from_public_key(other_key.public_key())


def test_rejects_keys_sgx_cannot_use(key: rsa.RSAPrivateKey) -> None:
    n = key.public_key().public_numbers().n
    e65537 = rsa.RSAPublicNumbers(65537, n).public_key()
    with pytest.raises(UnsupportedFormatError, match="e=65537"):
        mr_signer_from_public_key(e65537)
    short = rsa.RSAPublicNumbers(3, (n >> 1024) | 1).public_key()
    with pytest.raises(UnsupportedFormatError, match="RSA-2048"):
        mr_signer_from_public_key(short)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UnsupportedFormatError):
        mr_signer_from_public_key(ec_key.public_key())  # type: ignore[arg-type]
    with pytest.raises(UnsupportedFormatError):
        Sigstruct.sign(ENCLAVE_HASH, CONFIG, ec_key, DATE)  # type: ignore[arg-type]


def test_rejects_65537_private_key() -> None:
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(UnsupportedFormatError, match="RSA-3072 with e=3"):
        Sigstruct.sign(ENCLAVE_HASH, CONFIG, wrong, DATE)


# --------------------------------------------------------------------------- layout


def test_layout_at_sdk_offsets(signed: Sigstruct, key: rsa.RSAPrivateKey) -> None:
    raw = signed.to_bytes()
    assert len(raw) == 1808
    assert raw[0:12] == HEADER
    assert raw[12:16] == bytes(4)  # type: release signing
    assert raw[16:20] == bytes(4)  # vendor: not Intel
    assert struct.unpack_from("<I", raw, 20)[0] == 0x20240506  # BCD date
    assert raw[24:40] == HEADER2
    assert raw[44:128] == bytes(84)
    n = key.public_key().public_numbers().n
    assert raw[128:512] == n.to_bytes(384, "little")
    assert raw[512:516] == b"\x03\x00\x00\x00"
    assert struct.unpack_from("<II", raw, 900) == (0, 0xFFFFFFFF)  # miscselect, miscmask
    assert raw[912:928] == bytes(16)  # isv family id
    assert raw[928:944] == Attributes(int(AttributeFlags.MODE64BIT), 0x3).to_bytes()
    assert raw[944:960] == b"\xff" * 8 + b"\x03" + bytes(7)
    assert raw[960:992] == ENCLAVE_HASH
    assert raw[992:1024] == bytes(32)  # reserved + isv ext prod id
    assert struct.unpack_from("<HH", raw, 1024) == (0x1234, 0x0102)
    assert raw[1028:1040] == bytes(12)


def test_signature_is_pkcs1v15_sha256_over_header_and_body(
    signed: Sigstruct, key: rsa.RSAPrivateKey
) -> None:
    """Independent of Sigstruct.verify: check with cryptography over bytes 0..127 ‖ 900..1027."""
    raw = signed.to_bytes()
    s = int.from_bytes(raw[516:900], "little")
    key.public_key().verify(
        s.to_bytes(384, "big"), raw[0:128] + raw[900:1028], padding.PKCS1v15(), hashes.SHA256()
    )


def test_q1_q2_are_the_einit_helpers(signed: Sigstruct, key: rsa.RSAPrivateKey) -> None:
    """q1 = ⌊s²/n⌋ and, with r = s² mod n, q2 = ⌊r·s/n⌋ (the same value, computed differently)."""
    raw = signed.to_bytes()
    n = key.public_key().public_numbers().n
    s = int.from_bytes(raw[516:900], "little")
    q1 = int.from_bytes(raw[1040:1424], "little")
    q2 = int.from_bytes(raw[1424:1808], "little")
    r = s * s - q1 * n
    assert 0 <= r < n
    assert q2 == r * s // n
    # …and that lets EINIT get s³ mod n with no division: s³ = q2·n + (r·s - q2·n).
    assert (r * s - q2 * n) % n == pow(s, 3, n)


def test_round_trip_and_fields(signed: Sigstruct, key: rsa.RSAPrivateKey) -> None:
    again = Sigstruct.parse(signed.to_bytes())
    assert again == signed
    assert again.to_bytes() == signed.to_bytes()
    again.verify()
    assert again.mr_enclave == ENCLAVE_HASH
    assert again.mr_signer == mr_signer_from_public_key(key.public_key())
    assert (again.isv_prod_id, again.isv_svn) == (0x1234, 0x0102)
    assert again.signed_date == DATE
    assert again.debug is False


def test_debug_attributes_are_signed(key: rsa.RSAPrivateKey) -> None:
    debug_config = SigstructConfig(
        isv_prod_id=1,
        isv_svn=1,
        attributes=Attributes(int(AttributeFlags.MODE64BIT | AttributeFlags.DEBUG), 0x3),
        attribute_mask=Attributes((1 << 64) - 1, 0x3),
    )
    sig = Sigstruct.sign(ENCLAVE_HASH, debug_config, key, DATE)
    assert sig.debug is True
    assert sig.to_bytes()[928] == 0x06


# --------------------------------------------------------------------------- tampering

SIGNATURE_BREAKING = {
    20: "date (signed header)",
    40: "swdefined (signed header)",
    128: "modulus",
    600: "signature",
    900: "miscselect (signed body)",
    928: "attributes (signed body)",
    944: "attribute mask (signed body)",
    960: "enclave hash (signed body)",
    1010: "isv ext prod id (signed body)",
    1024: "isv prod id (signed body)",
    1026: "isv svn (signed body)",
    1100: "q1",
    1500: "q2",
}


@pytest.mark.parametrize("offset", sorted(SIGNATURE_BREAKING))
def test_any_flipped_byte_is_refused(signed: Sigstruct, offset: int) -> None:
    raw = bytearray(signed.to_bytes())
    raw[offset] ^= 0x01
    tampered = Sigstruct.parse(bytes(raw))
    with pytest.raises((SignatureError, FormatError)):
        tampered.verify()


def test_flipped_signature_byte_names_the_signature(signed: Sigstruct) -> None:
    raw = bytearray(signed.to_bytes())
    raw[960] ^= 0x80
    with pytest.raises(SignatureError, match="does not verify"):
        Sigstruct.parse(bytes(raw)).verify()


def test_flipped_q1_is_caught(signed: Sigstruct) -> None:
    raw = bytearray(signed.to_bytes())
    raw[1100] ^= 0x01
    with pytest.raises(SignatureError, match="q1/q2"):
        Sigstruct.parse(bytes(raw)).verify()


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (0, FormatError),  # header constant
        (30, FormatError),  # header2 constant
        (13, FormatError),  # type: only bit 31 allowed
        (50, FormatError),  # reserved
        (512, UnsupportedFormatError),  # exponent must be 3
        (910, FormatError),  # reserved
        (995, FormatError),  # reserved
        (1030, FormatError),  # reserved
    ],
)
def test_bad_constants_are_refused_at_parse(
    signed: Sigstruct, offset: int, error: type[Exception]
) -> None:
    raw = bytearray(signed.to_bytes())
    raw[offset] ^= 0x04
    with pytest.raises(error):
        Sigstruct.parse(bytes(raw))


def test_wrong_sizes_are_refused(signed: Sigstruct) -> None:
    raw = signed.to_bytes()
    for data in (raw[:-1], raw + b"\0", b""):
        with pytest.raises(FormatError, match="1808"):
            Sigstruct.parse(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_a_typed_error(data: bytes) -> None:
    try:
        parsed = Sigstruct.parse(data)
    except EnclaveKMSError:
        return
    assert parsed.to_bytes() == data


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1808, max_size=1808))
def test_arbitrary_sigstructs_never_verify(data: bytes) -> None:
    base = bytearray(data)
    base[0:12] = HEADER
    base[12:24] = bytes(12)
    base[24:40] = HEADER2
    base[44:128] = bytes(84)
    base[512:516] = b"\x03\0\0\0"
    base[910:912] = bytes(2)
    base[992:1008] = bytes(16)
    base[1028:1040] = bytes(12)
    parsed = Sigstruct.parse(bytes(base))
    assert parsed.to_bytes() == bytes(base)
    with pytest.raises(EnclaveKMSError):
        parsed.verify()


# --------------------------------------------------------------------------- date


@pytest.mark.parametrize(
    ("date", "value"), [(dt.date(2024, 5, 6), 0x20240506), (dt.date(1999, 12, 31), 0x19991231)]
)
def test_date_is_bcd(date: dt.date, value: int) -> None:
    assert encode_date(date) == value
    assert decode_date(value) == date


@pytest.mark.parametrize("value", [0, 0x2024AB01, 0x20241301, 0xFFFFFFFF])
def test_invalid_bcd_dates_decode_to_none(value: int) -> None:
    assert decode_date(value) is None
