"""Two real enclave processes, the host relaying: the protocol works both ways, every attack
is refused with a typed error, and no plaintext ever crosses the relay or the logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_kms.enclave.channel_ecalls import channel_message
from enclave_kms.errors import ChannelError, PolicyError, ReplayError
from enclave_kms.host.channel_demo import POLICY_ATTACKS, run_demo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("channel-demo")


def test_happy_path_both_ways_without_plaintext_on_the_relay(work_dir: Path) -> None:
    lines: list[str] = []
    logs: list[str] = []
    result = run_demo(work_dir, messages=4, say=lines.append, stderr_sink=logs.append)
    assert result.rejected is None
    assert (result.messages_a_to_b, result.messages_b_to_a) == (4, 4)
    frames = b"".join(wire for _, _, wire in result.frames)
    assert len(result.frames) > 20
    haystacks = [frames, "\n".join(lines + logs).encode()]
    for index in range(4):
        for role in ("initiator", "responder"):
            secret = f"message {index} from the {role}".encode()
            for hay in haystacks:
                assert secret not in hay
    # The plaintext format itself is what we searched for (the search is not vacuous).
    assert b"message 0 from the initiator" in channel_message(0, "initiator", bytes(32))


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        ("replay", ReplayError),
        ("reorder", ReplayError),
        ("tamper", ChannelError),
        ("truncate", ChannelError),
        ("bad-signature", ChannelError),
        ("wrong-signer", PolicyError),
        ("wrong-product", PolicyError),
        ("low-svn", PolicyError),
        ("debug-peer", PolicyError),
    ],
)
def test_every_attack_is_refused_and_closes_the_channel(
    work_dir: Path, attack: str, error: type[Exception]
) -> None:
    lines: list[str] = []
    result = run_demo(work_dir, attack=attack, say=lines.append)
    assert isinstance(result.rejected, error), result.rejected
    assert (attack in POLICY_ATTACKS) == isinstance(result.rejected, PolicyError)
    assert any("channel closed" in line for line in lines)
