"""One entry point for every evidence form we accept, detected from the bytes (DESIGN §8).

Forms: raw DCAP quote (v3/v4/v5), Open Enclave report (16-byte header + quote), Open Enclave
evidence (quote + custom-claims buffer), the tutorial's enclave-info JSON, RA-TLS certificates
(PEM or DER), and any of the binary forms as one line of hex text (optional `0x`).

Detection only looks at unambiguous markers: `{` for JSON, a PEM armour or a DER SEQUENCE tag
(0x30, which no quote or OE header starts with) for certificates, the OE report header's exact
version/type/size, and otherwise a quote. A quote followed by bytes is OE evidence when those
bytes are what `report_data` binds or parse as OE custom claims; otherwise the bytes are
padding (see `sgx.quote`) and the form stays "raw quote". Loading checks structure and reports
whether held data is bound; it proves nothing about authenticity, which is `verify`'s job.
"""

from __future__ import annotations

import hashlib
import hmac
import string
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from enclave_kms.attestation.ratls import (
    RaTlsCertificate,
    RaTlsForm,
    check_ratls_binding,
    extract_evidence,
    verify_ratls_certificate,
)
from enclave_kms.errors import AttestationError, BindingError, EnclaveKMSError, FormatError
from enclave_kms.sgx.oe import (
    OE_REPORT_HEADER_VERSION,
    OE_REPORT_TYPE_SGX_REMOTE,
    OeEvidence,
    OeReportHeader,
    parse_custom_claims,
    parse_oe_report,
)
from enclave_kms.sgx.quote import Quote, parse_quote
from enclave_kms.sgx.tutorial import EnclaveInfo

_HEX = frozenset(string.hexdigits)
_WHITESPACE = b" \t\r\n"


class EvidenceForm(StrEnum):
    RAW_QUOTE = "raw-quote"
    OE_REPORT = "oe-report"
    OE_EVIDENCE = "oe-evidence"
    TUTORIAL_JSON = "tutorial-json"
    RATLS_CERTIFICATE = "ratls-certificate"


@dataclass(frozen=True)
class Evidence:
    """Evidence in a normal shape: the quote, and the data its `report_data` should bind.

    `held_data` is EnclaveHeldData (tutorial JSON), the custom-claims buffer (OE evidence) or the
    bound key encoding (RA-TLS); `binds_held_data` is None when the form carries no held data.
    `extra` holds form-specific details for display (custom claims, certificate facts).
    """

    form: EvidenceForm
    quote: Quote
    quote_bytes: bytes
    held_data: bytes | None = None
    binds_held_data: bool | None = None
    hex_encoded: bool = False
    source: bytes = field(default=b"", repr=False)
    extra: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, compare=False
    )

    def check_bindings(self, *, now: datetime) -> None:
        """Everything that ties the quote to its container, before the quote is verified.

        RA-TLS: self-signature, validity at `now` (always) and key binding, as in
        `verify_ratls_certificate`. Other forms: if held data is present, `report_data[0:32]`
        must be its SHA-256. Loading alone never raises for these, so `inspect` can show them.
        """
        if self.form is EvidenceForm.RATLS_CERTIFICATE:
            verify_ratls_certificate(self.source, now=now)
        elif self.binds_held_data is False:
            raise BindingError(
                f"{self.form.value}: report_data[0:32] is not SHA-256 of the held data",
                step="held_data_binding",
            )


def load_evidence(data: bytes, *, form: EvidenceForm | None = None) -> Evidence:
    """Detect the form of `data` and parse it; typed errors only (FormatError and friends).

    With `form` declared, the bytes must be that form (FormatError otherwise): declared OE
    evidence must carry a custom-claims buffer that parses, and declared raw quote ignores
    (never trusts) trailing bytes. Undeclared, trailing bytes that look like an OE claims
    buffer but do not parse are refused, never downgraded to a raw quote.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"evidence: expected bytes, got {type(data).__name__}")
    if form is not None and not isinstance(form, EvidenceForm):
        raise FormatError(f"evidence form: {form!r} is not an EvidenceForm")
    raw = strip_comment_lines(bytes(data))
    if not raw.strip(_WHITESPACE):
        raise FormatError("evidence: empty input")
    text = raw.strip(_WHITESPACE)
    if text[:1] == b"{":
        found = replace(_from_tutorial_json(text), source=text)
    elif text.startswith(b"-----BEGIN"):
        found = replace(_from_certificate(text), source=text)
    else:
        hexed = _maybe_hex(text)
        if hexed is not None:
            found = replace(_load_binary(hexed, form), source=hexed, hex_encoded=True)
        else:
            found = replace(_load_binary(raw, form), source=raw)
    if form is not None and found.form is not form:
        raise FormatError(
            f"evidence was declared {form.value} but is {found.form.value}", step="evidence_form"
        )
    return found


def _load_binary(raw: bytes, form: EvidenceForm | None = None) -> Evidence:
    if raw[:1] == b"\x30":
        return _from_certificate(raw)
    if len(raw) >= OeReportHeader.SIZE:
        header = OeReportHeader.parse(raw[: OeReportHeader.SIZE])
        if (
            header.version == OE_REPORT_HEADER_VERSION
            and header.report_type == OE_REPORT_TYPE_SGX_REMOTE
        ):
            if header.report_size != len(raw) - OeReportHeader.SIZE and _looks_like_endorsements(
                raw
            ):
                raise FormatError(
                    "evidence: this is an Open Enclave endorsements blob (collateral), not evidence"
                )
            _h, quote = parse_oe_report(raw)
            return Evidence(EvidenceForm.OE_REPORT, quote, quote.to_bytes())
    quote = parse_quote(raw)
    if form is EvidenceForm.RAW_QUOTE:
        return Evidence(EvidenceForm.RAW_QUOTE, quote, quote.to_bytes())
    if not quote.trailing:
        if _binds(quote, b""):
            # What OE's SGX_ECDSA attester emits without claims: the bare quote binds SHA-256("").
            return Evidence(
                EvidenceForm.OE_EVIDENCE,
                quote,
                quote.to_bytes(),
                b"",
                True,
                extra=MappingProxyType({"custom_claims": "(empty buffer)"}),
            )
        return Evidence(EvidenceForm.RAW_QUOTE, quote, quote.to_bytes())
    bound = _binds(quote, quote.trailing)
    claims = _claims_or_none(quote.trailing)
    if claims is None and (form is EvidenceForm.OE_EVIDENCE or _claims_shaped(quote.trailing)):
        # Never downgrade: a claims buffer that does not parse is tampered evidence, not a
        # raw quote with padding (its claims and binding would silently be dropped).
        try:
            parse_custom_claims(quote.trailing)
        except EnclaveKMSError as exc:
            raise FormatError(
                f"OE evidence: the custom-claims buffer does not parse ({exc}); refusing "
                "rather than reading it as a raw quote (declare the form raw-quote to "
                "ignore trailing bytes)",
                step="evidence_form",
            ) from None
    if not bound and claims is None:
        return Evidence(EvidenceForm.RAW_QUOTE, quote, quote.to_bytes())
    evidence = OeEvidence.parse(raw)
    return Evidence(
        EvidenceForm.OE_EVIDENCE,
        evidence.quote,
        evidence.quote.to_bytes(),
        evidence.custom_claims_buffer,
        bound,
        extra=MappingProxyType(claims or {"custom_claims": "(not OE custom claims)"}),
    )


def _from_tutorial_json(text: bytes) -> Evidence:
    info = EnclaveInfo.parse(text)
    # The JSON's identity fields are unsigned copies of the quote's: show only disagreements.
    problems = info.inconsistencies()
    extra = {"EnclaveHeldDataHex": f"{len(info.enclave_held_data)} bytes"}
    extra["json_fields_match_quote"] = "yes" if not problems else "NO"
    for i, problem in enumerate(problems):
        extra[f"mismatch_{i}"] = problem
    return Evidence(
        EvidenceForm.TUTORIAL_JSON,
        info.quote,
        info.quote_bytes,
        info.enclave_held_data,
        info.binds_held_data(),
        extra=MappingProxyType(extra),
    )


def _from_certificate(data: bytes) -> Evidence:
    cert = RaTlsCertificate.parse(data)
    ratls = extract_evidence(cert)
    try:
        cert.verify_self_signature()
        self_signature = "valid"
    except AttestationError as exc:
        self_signature = f"INVALID ({exc.message})"
    try:
        check_ratls_binding(cert, ratls)
        bound = True
    except AttestationError:
        bound = False
    extra = {
        "ratls_form": ratls.form.value,
        "extension_oid": ratls.oid,
        "self_signature": self_signature,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "spki_sha256": cert.spki_sha256.hex(),
    }
    if ratls.form is RaTlsForm.OE_EVIDENCE and ratls.claims is not None:
        extra["custom_claims"] = f"{len(ratls.claims)} bytes"
    quote = parse_quote(ratls.quote_bytes)
    return Evidence(
        EvidenceForm.RATLS_CERTIFICATE,
        quote,
        ratls.quote_bytes,
        ratls.held_data,
        bound,
        extra=MappingProxyType(extra),
    )


def _binds(quote: Quote, held: bytes) -> bool:
    return hmac.compare_digest(quote.body.report_data[:32], hashlib.sha256(held).digest())


def _claims_or_none(buffer: bytes) -> dict[str, str] | None:
    try:
        claims = parse_custom_claims(buffer)
    except EnclaveKMSError:
        return None
    out = {"custom_claims": f"{len(claims)} claim(s)"}
    for claim in claims:
        out[f"claim:{claim.name}"] = _display(claim.value)
    return out


def _claims_shaped(buffer: bytes) -> bool:
    """Whether trailing bytes start like an OE custom-claims header (version 1, or a small
    claim count): one flipped byte cannot change both fields, so a tampered buffer still
    looks like claims while padding (zeros) and unrelated junk do not."""
    if len(buffer) < 16:
        return False
    version, count = struct.unpack_from("<QQ", buffer, 0)
    return bool(version == 1 or 0 < count <= 1024)


def _display(value: bytes) -> str:
    """Printable ASCII as text, everything else as hex (claims are arbitrary bytes)."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return value.hex()
    return text if text.isprintable() else value.hex()


def _maybe_hex(text: bytes) -> bytes | None:
    """Hex text (one line, optional 0x) decoded; None when `text` is not hex text."""
    body = text[2:] if text[:2].lower() == b"0x" else text
    if not body or len(body) % 2:
        return None
    try:
        s = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not all(c in _HEX for c in s):
        return None
    return bytes.fromhex(s)


def _looks_like_endorsements(raw: bytes) -> bool:
    """OE endorsements share the report header's first 8 bytes (version 1, SGX type 2)."""
    buffer_size, num_elements = struct.unpack_from("<II", raw, 8)
    return bool(buffer_size == len(raw) - OeReportHeader.SIZE and 0 < num_elements < 64)


def strip_comment_lines(data: bytes) -> bytes:
    """Drop leading `#` lines (licence headers on test vectors), nothing else."""
    while data[:1] == b"#":
        newline = data.find(b"\n")
        if newline < 0:
            return b""
        data = data[newline + 1 :]
    return data
