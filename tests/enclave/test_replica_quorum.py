"""The replicas' state-head confirmation (enclave/replicas.py) from the host's position: it
carries the answers between enclaves, so it can drop, replay, forge or pick them."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.enclave import replicas as mod
from enclave_kms.enclave.replicas import LocalHead, ReplicaSet, needed_peers
from enclave_kms.errors import NotReadyError

KEY = ec.generate_private_key(ec.SECP256R1())


def _replica(replica: int, generation: int, peers: tuple[str, ...] = ()) -> ReplicaSet:
    return ReplicaSet(
        replica=replica,
        peers=peers,
        installation="inst",
        signing_key=KEY,
        local_head=lambda: LocalHead(generation, bytes(32)),
    )


def _route(monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
    """The 'network': `answer(url, payload)` stands in for the peer's HTTPS answer."""
    monkeypatch.setattr(mod, "_post_json", lambda url, path, payload: answer(url, payload))


def test_majority_sizes() -> None:
    assert [needed_peers(n) for n in (1, 2, 3, 4)] == [1, 1, 2, 2]


def test_ready_once_a_peer_confirms_and_not_before(monkeypatch: pytest.MonkeyPatch) -> None:
    peer = _replica(2, generation=7)
    me = _replica(1, generation=7, peers=("https://p2",))
    with pytest.raises(NotReadyError):
        me.require_ready()
    _route(monkeypatch, lambda url, p: peer.confirm(bytes.fromhex(p["nonce"])))
    assert me.check_once()
    me.require_ready()


def test_a_peer_that_saw_more_keeps_a_restored_database_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peer = _replica(2, generation=9)
    me = _replica(1, generation=7, peers=("https://p2",))
    _route(monkeypatch, lambda url, p: peer.confirm(bytes.fromhex(p["nonce"])))
    assert not me.check_once()
    assert "behind the installation" in me.reason
    with pytest.raises(NotReadyError, match="generation 9"):
        me.require_ready()


def test_a_replayed_answer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host keeps an answer from an earlier round (old nonce) and plays it back."""
    peer = _replica(2, generation=3)  # an old answer, from before the database moved on
    old = peer.confirm(bytes(32))
    me = _replica(1, generation=3, peers=("https://p2",))
    _route(monkeypatch, lambda url, p: old)
    assert not me.check_once()
    assert me.views()[0].error == "answer not signed by this installation's audit key"


def test_forged_or_self_answers_count_for_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    stranger = ReplicaSet(
        replica=2,
        peers=(),
        installation="inst",
        signing_key=other_key,  # another installation's enclave (or the host)
        local_head=lambda: LocalHead(1, bytes(32)),
    )
    me = _replica(1, generation=1, peers=("https://p2", "https://p3"))
    myself = _replica(1, generation=1)  # the host loops our own answer back as a peer's

    def answer(url: str, payload: dict[str, str]) -> dict[str, Any]:
        who = stranger if url.endswith("p2") else myself
        return who.confirm(bytes.fromhex(payload["nonce"]))

    _route(monkeypatch, answer)
    assert not me.check_once()
    errors = [v.error for v in me.views()]
    assert errors == [
        "answer not signed by this installation's audit key",
        "answered as this replica's own id 1",
    ]


def test_two_answers_from_one_peer_id_are_one_confirmation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 3 peers, 2 must confirm: the host cannot point two URLs at the same replica."""
    peer = _replica(2, generation=5)
    me = _replica(1, generation=5, peers=("https://a", "https://b", "https://c"))

    def answer(url: str, payload: dict[str, str]) -> dict[str, Any]:
        if url == "https://c":
            raise OSError("down")
        return peer.confirm(bytes.fromhex(payload["nonce"]))

    _route(monkeypatch, answer)
    assert not me.check_once()
    assert me.reason.startswith("1 of the 2 peer confirmations needed")
    assert me.views()[2].error == "unreachable (OSError)"
