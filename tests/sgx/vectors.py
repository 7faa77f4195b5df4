"""Loading the real quote vectors of tests/vectors/sgx (see SOURCES.md there)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def read_quote_file(path: Path) -> bytes:
    """Raw bytes of a quote vector: `.hex` files are hex text (optional 0x prefix)."""
    raw = path.read_bytes()
    if path.suffix == ".hex":
        text = raw.decode("ascii").strip()
        text = text.removeprefix("0x")
        return bytes.fromhex(text)
    return raw


def strip_comment_lines(raw: bytes) -> bytes:
    """Open Enclave test files start with `# ...` licence lines; the rest is binary."""
    while raw.startswith(b"#"):
        raw = raw.split(b"\n", 1)[1]
    return raw


@dataclass(frozen=True)
class QuoteVector:
    rel: str
    size: int
    version: int
    tdx: bool
    trailing: int
    cert_type: int
    fmspc: str | None  # upper-case hex, None when the chain is not in the quote
    ca: str | None


QUOTE_VECTORS = (
    QuoteVector("phala-dcap-qvl/sgx_quote", 4600, 3, False, 0, 5, "00A067110000", "processor"),
    QuoteVector("phala-dcap-qvl/tdx_quote", 5006, 4, True, 70, 5, "B0C06F000000", "platform"),
    QuoteVector(
        "phala-dcap-qvl/tdx_quote_outdated", 5006, 5, True, 0, 5, "90C06F000000", "platform"
    ),
    QuoteVector("phala-dcap-qvl/tdx-quote.hex", 5006, 4, True, 70, 5, "B0C06F000000", "platform"),
    QuoteVector(
        "phala-dcap-qvl/quote-from-tappd.hex", 5006, 4, True, 70, 5, "B0C06F000000", "platform"
    ),
    QuoteVector(
        "mobilecoin-attestation/hw_quote.dat", 4600, 3, False, 0, 5, "00906ED50000", "processor"
    ),
    QuoteVector(
        "automata-dcap-rs/quote_v3_sgx_test_verifyv3.hex",
        4734,
        3,
        False,
        0,
        5,
        "00606A000000",
        "platform",
    ),
    QuoteVector(
        "automata-dcap-rs/quote_tdx_00806f050000.dat",
        8000,
        4,
        True,
        3065,
        5,
        "00806F050000",
        "platform",
    ),
    QuoteVector(
        "google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        4974,
        4,
        True,
        39,
        5,
        "50806F000000",
        "platform",
    ),
    QuoteVector("cosmian-intel-sgx-ra/quote.dat", 4734, 3, False, 0, 5, "30606A000000", "platform"),
    QuoteVector("coco-trustee/occlum_quote.dat", 4733, 3, False, 0, 5, "00606A000000", "platform"),
    QuoteVector("intel-qvl-sampledata-testpki/quote.dat", 1054, 3, False, 0, 1, None, None),
)

QUOTE_IDS = [v.rel for v in QUOTE_VECTORS]
