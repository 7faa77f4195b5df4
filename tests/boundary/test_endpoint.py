"""Two endpoints over real pipes: calls both ways, OCALLs during a long ECALL, typed errors."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from enclave_kms import edl
from enclave_kms.edl_endpoint import Endpoint, RemoteError, error_from_frame
from enclave_kms.errors import (
    BoundaryError,
    EnclaveKMSError,
    IntegrityError,
    NotFoundError,
    PolicyError,
)


def _noop(**_: Any) -> dict[str, Any]:
    return {}


def _handlers(kind: edl.Kind, **overrides: Any) -> dict[str, Any]:
    calls = edl.ECALLS if kind == "ecall" else edl.OCALLS
    table: dict[str, Any] = {c.name: _noop for c in calls}
    table.update(overrides)
    return table


class Pair:
    def __init__(self, ecalls: dict[str, Any], ocalls: dict[str, Any]) -> None:
        h2e_r, h2e_w = os.pipe()
        e2h_r, e2h_w = os.pipe()
        self.frames: list[tuple[str, bytes]] = []
        self.enclave = Endpoint(
            os.fdopen(h2e_r, "rb", buffering=0),
            os.fdopen(e2h_w, "wb", buffering=0),
            serves="ecall",
            handlers=ecalls,
        ).start()
        self.host = Endpoint(
            os.fdopen(e2h_r, "rb", buffering=0),
            os.fdopen(h2e_w, "wb", buffering=0),
            serves="ocall",
            handlers=ocalls,
            observer=lambda d, b: self.frames.append((d, b)),
        ).start()

    def close(self) -> None:
        self.host.close()
        self.enclave.close()


@pytest.fixture
def store() -> dict[str, bytes]:
    return {}


@pytest.fixture
def pair(store: dict[str, bytes]) -> Iterator[Pair]:
    holder: dict[str, Pair] = {}
    stop = threading.Event()

    def set_up_server(port: int, keep_server_up: bool) -> dict[str, Any]:
        # A long-running ECALL that makes OCALLs while it runs, as the HTTPS server does.
        enclave = holder["p"].enclave
        for i in range(20):
            enclave.call("store_put", kind="key", id=f"k{i}", expected_version=0, blob=b"sealed")
        enclave.call("log", level="info", message=f"serving on {port}")
        stop.wait(5)
        return {}

    def get_report() -> dict[str, Any]:
        quote = holder["p"].enclave.call("get_quote", report=bytes(432))["quote"]
        return {"pem_key": b"-----BEGIN PUBLIC KEY-----", "report": quote}

    def store_put(kind: str, id: str, expected_version: int, blob: bytes) -> dict[str, Any]:
        store[f"{kind}/{id}"] = blob
        return {"ok": True}

    def store_get(kind: str, id: str) -> dict[str, Any]:
        if id == "tampered":
            raise IntegrityError("record key/tampered failed authentication")
        if id == "crash":
            raise RuntimeError("secret-bearing internal detail")
        return {"version": 0}

    p = Pair(
        _handlers("ecall", set_up_server=set_up_server, get_report=get_report),
        _handlers(
            "ocall",
            store_put=store_put,
            store_get=store_get,
            get_quote=lambda report: {"quote": b"Q" + report[:3]},
        ),
    )
    holder["p"] = p
    yield p
    stop.set()
    p.close()


def test_ocalls_run_while_a_long_ecall_is_in_flight(pair: Pair, store: dict[str, bytes]) -> None:
    def serve() -> None:
        with contextlib.suppress(BoundaryError):  # closed at teardown while still serving
            pair.host.call("set_up_server", port=8443, keep_server_up=True)

    server = threading.Thread(target=serve)
    server.start()
    # While set_up_server runs, another ECALL (itself making an OCALL) completes.
    result = pair.host.call("get_report", timeout=5)
    assert result["report"] == b"Q\x00\x00\x00"
    for _ in range(100):
        if len(store) == 20:
            break
        threading.Event().wait(0.05)
    assert len(store) == 20


def test_typed_errors_cross_the_boundary(pair: Pair) -> None:
    with pytest.raises(IntegrityError, match="failed authentication"):
        pair.enclave.call("store_get", kind="key", id="tampered", timeout=5)


def test_unexpected_errors_are_opaque(pair: Pair) -> None:
    with pytest.raises(EnclaveKMSError) as info:
        pair.enclave.call("store_get", kind="key", id="crash", timeout=5)
    assert type(info.value) is EnclaveKMSError
    assert info.value.code == "internal"
    assert "secret" not in info.value.message


def test_undeclared_calls_cannot_be_made(pair: Pair) -> None:
    with pytest.raises(BoundaryError, match="undeclared ocall"):
        pair.enclave.call("read_file", path="/etc/shadow")
    with pytest.raises(BoundaryError, match="undeclared parameter"):
        pair.enclave.call("store_get", kind="key", id="x", path="/")


def test_handler_tables_must_match_the_declarations() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader, os.fdopen(w, "wb") as writer:
        with pytest.raises(BoundaryError, match="missing"):
            Endpoint(reader, writer, serves="ocall", handlers={"log": _noop})
        with pytest.raises(BoundaryError, match="undeclared"):
            Endpoint(reader, writer, serves="ocall", handlers={**_handlers("ocall"), "exec": _noop})


def test_results_out_of_bounds_are_refused_on_the_receiving_side() -> None:
    p = Pair(_handlers("ecall"), _handlers("ocall", get_quote=lambda report: {"quote": "text"}))
    try:
        with pytest.raises(BoundaryError, match="must be bytes"):
            p.enclave.call("get_quote", report=bytes(432), timeout=5)
    finally:
        p.close()


def test_observer_sees_every_frame(pair: Pair) -> None:
    pair.enclave.call("log", level="info", message="hello", timeout=5)
    directions = [d for d, _ in pair.frames]
    assert directions == ["recv", "send"]
    frame = edl.decode_frame(pair.frames[0][1][4:])
    assert frame.fn == "log"


def test_closing_fails_pending_calls() -> None:
    release = threading.Event()

    def slow_log(level: str, message: str) -> dict[str, Any]:
        release.wait(5)
        return {}

    p = Pair(_handlers("ecall"), _handlers("ocall", log=slow_log))
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            p.enclave.call("log", level="info", message="x")
        except BoundaryError as exc:
            errors.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    threading.Event().wait(0.2)
    p.enclave.close()
    t.join(5)
    release.set()
    p.close()
    assert errors
    assert "closed" in str(errors[0])


def test_error_codes_map_back_to_their_classes() -> None:
    assert isinstance(error_from_frame("not_found", "no key"), NotFoundError)
    policy = error_from_frame("policy_violation", "mr_enclave not allowed")
    assert isinstance(policy, PolicyError)
    assert policy.violations == ("mr_enclave not allowed",)
    unknown = error_from_frame("weird", "x")
    assert isinstance(unknown, RemoteError)
    assert unknown.code == "weird"


def test_a_call_arriving_after_close_is_refused_not_crashed() -> None:
    p = Pair(_handlers("ecall"), _handlers("ocall"))
    p.host.close()
    with pytest.raises(BoundaryError, match="closed"):
        p.host._on_frame(edl.Frame(7, "call", fn="log", body={"level": "info", "message": "x"}))
    p.close()
