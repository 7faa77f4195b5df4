"""Key release with real processes: the KMS enclave and a workload enclave of another
MRENCLAVE; the released secrets never appear on the host (EDL frames of both enclaves, logs,
files), and the demo's attacks are refused with the right exit code."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

import pytest

from enclave_kms.cli.exits import exit_code_for
from enclave_kms.errors import NonceError, ReleasePolicyNotMetError
from enclave_kms.host.release_demo import run_demo

pytestmark = pytest.mark.slow

_HEX = re.compile(rb"[0-9a-fA-F]{36,}")
_B64 = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")


def leaked(hay: bytes, digests: set[str], sizes: tuple[int, ...]) -> list[str]:
    """Every secret (known only by its SHA-256) found in `hay`: raw, hex or base64, at any
    offset and any base64 alignment."""
    candidates = [hay]
    for match in _HEX.finditer(hay):
        for start in (0, 1):
            text = match.group()[start:]
            candidates.append(binascii.unhexlify(text[: len(text) // 2 * 2]))
    for match in _B64.finditer(hay):
        for shift in range(4):
            text = match.group()[shift:]
            text = text[: len(text) // 4 * 4]
            try:
                candidates.append(base64.b64decode(text))
            except binascii.Error:
                continue
    found = []
    for data in candidates:
        for size in sizes:
            for i in range(len(data) - size + 1):
                if hashlib.sha256(data[i : i + size]).hexdigest() in digests:
                    found.append(f"{size} bytes at {i}")
    return found


def test_the_scan_finds_a_planted_secret() -> None:
    secret = bytes(range(32))
    digests = {hashlib.sha256(secret).hexdigest()}
    for form in (secret, secret.hex().encode(), base64.b64encode(b"x" + secret)):
        assert leaked(b"noise " + form + b" noise", digests, (32,))


def test_release_to_a_workload_enclave_never_shows_the_host_a_secret(tmp_path: Path) -> None:
    frames: list[bytes] = []
    lines: list[str] = []
    result = run_demo(
        tmp_path,
        say=lines.append,
        stderr_sink=lines.append,
        observer=lambda _direction, wire: frames.append(bytes(wire)),
    )
    assert result.rejected is None
    assert [what for what, _ in result.released] == ["export", "decrypt", "datakey", "td-datakey"]
    assert result.kms_mr_enclave != result.workload_mr_enclave
    assert any(b"workload_open" in f for f in frames)  # the relay was observed
    digests = {digest for _, digest in result.released}
    # the decrypted plaintext is the demo's 18-byte record; keys and data keys are 32 bytes
    sizes = (32, len(b"customer record 42"))
    hays = [b"".join(frames), "\n".join(lines).encode()]
    hays += [p.read_bytes() for p in tmp_path.rglob("*.sqlite*") if p.is_file()]
    hays += [p.read_bytes() for p in tmp_path.rglob("*.log") if p.is_file()]
    for hay in hays:
        assert leaked(hay, digests, sizes) == []


@pytest.mark.parametrize(
    ("attack", "error", "code"),
    [("replay", NonceError, 2), ("wrong-measurement", ReleasePolicyNotMetError, 4)],
)
def test_attacks_are_refused(
    tmp_path_factory: pytest.TempPathFactory, attack: str, error: type, code: int
) -> None:
    result = run_demo(tmp_path_factory.mktemp(attack), attack=attack)
    rejected = result.rejected
    assert isinstance(rejected, error)
    assert rejected is not None
    assert exit_code_for(rejected) == code
