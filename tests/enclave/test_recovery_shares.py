"""The k-of-n construction on real bytes (enclave/custody, custody/wire, client/recovery):
any k shares restore the SRK, k-1 do not, and every part the host can touch is bound."""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave_kms.client.recovery import (
    ShareFile,
    generate_officer_key,
    load_officer_key,
)
from enclave_kms.enclave.custody.recovery import RecoverySession
from enclave_kms.enclave.custody.shares import (
    RecoverySet,
    combine,
    share_answer,
    split,
)
from enclave_kms.errors import (
    InvalidRequestError,
    RecoveryDuplicateError,
    RecoveryError,
    RecoveryShareError,
)
from enclave_kms.wire import custody as wire


@pytest.fixture(scope="module")
def officers() -> list[x25519.X25519PrivateKey]:
    return [load_officer_key(generate_officer_key()[0]) for _ in range(4)]


@pytest.fixture(scope="module")
def srk() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def made(srk: bytes, officers: list[x25519.X25519PrivateKey]) -> RecoverySet:
    return split(srk, 3, [k.public_key() for k in officers])


def files(made: RecoverySet) -> list[ShareFile]:
    return [ShareFile.parse(share_answer(made, s, verified=True)) for s in made.shares]


def test_any_k_restore_and_k_minus_1_do_not(
    made: RecoverySet, srk: bytes, officers: list[x25519.X25519PrivateKey]
) -> None:
    opened = [f.open(k) for f, k in zip(files(made), officers, strict=True)]
    assert all(srk not in s and srk.hex().encode() not in s for s in opened)
    for subset in itertools.combinations(opened, 3):
        assert combine(subset) == srk
    assert made.matches(srk)
    for pair in itertools.combinations(opened, 2):
        with pytest.raises(RecoveryError):
            combine(pair)
    assert not made.matches(os.urandom(32))


def test_the_stored_set_round_trips_and_binds_everything(made: RecoverySet, srk: bytes) -> None:
    again = RecoverySet.parse(made.to_bytes())
    assert again == made
    assert again.matches(srk)
    moved = dataclasses.replace(made, threshold=2)
    assert not moved.matches(srk)  # the MAC covers k
    with pytest.raises(RecoveryError):
        RecoverySet.parse(made.to_bytes()[:-3])


def test_a_share_opens_only_for_its_officer_index_and_set(
    made: RecoverySet, officers: list[x25519.X25519PrivateKey]
) -> None:
    first, second = files(made)[:2]
    with pytest.raises(RecoveryShareError, match="another officer"):
        first.open(officers[1])
    swapped = dataclasses.replace(first, sealed=second.sealed)  # the host swaps ciphertexts
    with pytest.raises(RecoveryShareError, match="does not open"):
        swapped.open(officers[0])
    moved = dataclasses.replace(first, index=2, digest=second.digest)
    with pytest.raises(RecoveryShareError):
        moved.open(officers[0])
    flipped = bytearray(wire.unb64(first.sealed))
    flipped[40] ^= 1
    with pytest.raises(RecoveryShareError):
        dataclasses.replace(first, sealed=wire.b64(bytes(flipped))).open(officers[0])


def test_split_refuses_bad_parameters(srk: bytes, officers: list[x25519.X25519PrivateKey]) -> None:
    keys = [k.public_key() for k in officers]
    for threshold, named in ((1, keys[:3]), (4, keys[:3]), (2, [keys[0], keys[0]])):
        with pytest.raises(InvalidRequestError):
            split(srk, threshold, named)


def _seal(session: RecoverySession, set_id: bytes, index: int, share: bytes) -> bytes:
    return wire.SUITE.encrypt(
        wire.encode_submission(set_id, index, share),
        x25519.X25519PublicKey.from_public_bytes(session.session_key),
        info=wire.submit_info(session.session_id),
    )


def test_session_refuses_wrong_duplicate_forged_and_replayed(
    made: RecoverySet, srk: bytes, officers: list[x25519.X25519PrivateKey]
) -> None:
    restored: list[bytes] = []
    opened = [f.open(k) for f, k in zip(files(made), officers, strict=True)]

    def new_session() -> RecoverySession:
        return RecoverySession(
            made,
            quote_for=lambda data: data,
            collateral_for=lambda quote: b"{}",
            restore=lambda key, events: restored.append(key),
        )

    session = new_session()
    first = _seal(session, made.set_id, 1, opened[0])
    assert session.submit(session.session_id, first)["needed"] == 2
    with pytest.raises(RecoveryDuplicateError):
        session.submit(session.session_id, first)  # replayed within the session
    with pytest.raises(RecoveryShareError, match="does not match"):
        session.submit(session.session_id, _seal(session, made.set_id, 2, opened[2]))
    with pytest.raises(RecoveryShareError, match="another recovery set"):
        session.submit(session.session_id, _seal(session, os.urandom(16), 2, opened[1]))
    other = new_session()
    with pytest.raises(RecoveryShareError, match="another recovery session"):
        other.submit(session.session_id, first)  # replayed to a later session
    with pytest.raises(RecoveryShareError, match="not sealed"):
        other.submit(other.session_id, first)
    assert (
        session.submit(session.session_id, _seal(session, made.set_id, 2, opened[1]))["needed"] == 1
    )
    assert not restored  # k-1 shares restore nothing
    done = session.submit(session.session_id, _seal(session, made.set_id, 4, opened[3]))
    assert done["state"] == "restored"
    assert restored == [srk]
    outcomes = [(e.op, e.outcome) for e in session.events]
    assert ("recovery.submit", "recovery_share_duplicate") in outcomes
    assert ("recovery.submit", "recovery_share_invalid") in outcomes


def test_recovery_app_serves_recovery_only_and_bounds_bodies(made: RecoverySet) -> None:
    from fastapi.testclient import TestClient

    from enclave_kms.enclave.api.recovery_app import recovery_app

    session = RecoverySession(
        made,
        quote_for=lambda data: data,
        collateral_for=lambda quote: b"{}",
        restore=lambda key, events: None,
    )
    with TestClient(recovery_app(session, None, {"mr_enclave": "00"})) as client:  # type: ignore[arg-type]
        assert client.get("/v1/health").json()["status"] == "recovering"
        pending = client.get("/v1/keys/orders")
        assert pending.status_code == 503
        assert pending.json()["error"]["code"] == "recovery_in_progress"
        big = {"session_id": "00" * 16, "sealed": "A" * 100_000}
        too_large = client.post("/v1/sys/recovery/submit", json=big)
        assert too_large.status_code == 413
        # Streamed, no Content-Length: counted as it arrives (support.body_limited).
        streamed = client.post(
            "/v1/sys/recovery/submit",
            content=(b"x" * 8192 for _ in range(16)),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["code"] == "payload_too_large"
        bad = client.post("/v1/sys/recovery/submit", json={"session_id": "00" * 16, "sealed": "!"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "recovery_share_invalid"
        status = client.get("/v1/sys/recovery").json()
        assert status["needed"] == 3
        assert status["session_key"] == wire.b64(session.session_key)


def test_recovery_mode_answers_are_the_wire_classes_the_sdk_decodes(
    made: RecoverySet, officers: list[x25519.X25519PrivateKey]
) -> None:
    """One wire contract in recovery mode too: the recovery app's OpenAPI names a wire class
    for each answer, and real answers (status, a submission, a share) decode through the
    SDK's parser into it and serialise back to the same JSON."""
    import json

    from fastapi.testclient import TestClient
    from pydantic import TypeAdapter

    from enclave_kms import wire as contract
    from enclave_kms.client import recovery as sdk
    from enclave_kms.enclave.api.recovery_app import recovery_app

    session = RecoverySession(
        made,
        quote_for=lambda data: b"quote:" + data,
        collateral_for=lambda quote: b'{"tcb_info": "..."}',
        restore=lambda key, events: None,
    )
    with TestClient(recovery_app(session, None, {"mr_enclave": "00"})) as client:  # type: ignore[arg-type]
        paths = client.get("/openapi.json").json()["paths"]
        named = {
            (method, path): ok["content"]["application/json"]["schema"]["$ref"].rsplit("/")[-1]
            for path, item in paths.items()
            if path.startswith("/v1/sys/recovery")
            for method, operation in item.items()
            for code, ok in operation["responses"].items()
            if code.startswith("2")
        }
        assert named == {
            ("get", "/v1/sys/recovery"): "RecoveryProgress",
            ("post", "/v1/sys/recovery/submit"): "RecoveryProgress",
            ("get", "/v1/sys/recovery/shares/{fingerprint}"): "RecoveryShare",
        }

        def same(raw: dict[str, object], decoded: object) -> None:
            again = json.loads(TypeAdapter(type(decoded)).dump_json(decoded))
            assert {k: v for k, v in again.items() if v is not None} == {
                k: v for k, v in raw.items() if v is not None
            }

        raw = client.get("/v1/sys/recovery").json()
        progress = sdk._status(raw)
        assert isinstance(progress, contract.RecoveryProgress)
        assert progress.session_key == session.session_key
        assert progress.quote == b"quote:" + wire.session_binding(
            session.session_id, session.session_key
        ) + bytes(32)
        assert progress.events[0] == contract.RecoveryStep(
            progress.events[0].time, "recovery.start", "", "ok"
        )
        same(raw, progress)

        opened = files(made)[0].open(officers[0])
        body = {
            "session_id": session.session_id.hex(),
            "sealed": wire.b64(_seal(session, made.set_id, 1, opened)),
        }
        answer = client.post("/v1/sys/recovery/submit", json=body)
        assert answer.status_code == 200, answer.text
        submitted = sdk._progress(answer.json())
        assert (submitted.state, submitted.needed, submitted.quote) == ("recovering", 2, None)
        assert submitted.accepted == (made.shares[0].fingerprint,)
        same(answer.json(), submitted)

        fingerprint = made.shares[1].fingerprint
        share = client.get(f"/v1/sys/recovery/shares/{fingerprint}").json()
        same(share, contract.decode(contract.RecoveryShare, share))
        assert sdk.ShareFile.parse(share).open(officers[1])  # the officer's file opens
