"""Property-based run of schemathesis over the OpenAPI document, in process, as the admin:
no generated request — valid or deliberately invalid — may produce a 5xx, and every
response must conform to the documented status codes, content type and schema."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from enclave_kms.enclave.keys.release import ReleaseService
from enclave_kms.errors import CollateralUnavailableError
from tests.enclave.api_world import World, make_world, world_fixture

MAX_EXAMPLES = 6

# Key names the generated requests are pointed at (half of them), by operation family, so
# the run reaches the cryptography and not only "key not found".
KEYS = {
    "aes": ["st-aes"],
    "hmac": ["st-hmac"],
    "sig": ["st-rsa", "st-ec256", "st-ec384", "st-ed"],
}
TYPES = {
    "st-aes": "aes256-gcm",
    "st-hmac": "hmac-sha256",
    "st-rsa": "rsa-2048",
    "st-ec256": "ec-p256",
    "st-ec384": "ec-p384",
    "st-ed": "ed25519",
}
FAMILY = {
    "encrypt": "aes",
    "decrypt": "aes",
    "encrypt-batch": "aes",
    "decrypt-batch": "aes",
    "rewrap": "aes",
    "datakey": "aes",
    "hmac": "hmac",
    "verify-hmac": "hmac",
    "sign": "sig",
    "verify": "sig",
    "export": "aes",
}


@pytest.fixture(scope="module")
def st_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world whose RSA key generation reuses one key per size: generated keys are valid,
    and the run spends its time on the API rather than on primes."""
    cache: dict[tuple[int, int], rsa.RSAPrivateKey] = {}
    original: Callable[..., rsa.RSAPrivateKey] = rsa.generate_private_key

    def cached(public_exponent: int, key_size: int, backend: Any = None) -> rsa.RSAPrivateKey:
        slot = (public_exponent, key_size)
        if slot not in cache:
            cache[slot] = original(public_exponent, key_size)
        return cache[slot]

    patch = pytest.MonkeyPatch()
    patch.setattr(rsa, "generate_private_key", cached)
    try:
        for world in world_fixture(tmp_path_factory.mktemp("schemathesis")):
            assert world.store is not None  # key release on, its collateral never available

            def no_collateral(_quote: bytes) -> Any:
                raise CollateralUnavailableError("no collateral in this test")

            world.ctx.release = ReleaseService(world.store, world.ctx.kms, no_collateral)
            for name, type in TYPES.items():
                r = world.post("/v1/keys", {"name": name, "type": type, "exportable": True})
                assert r.status_code == 201, r.text
            yield world
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def api_schema(st_world: World) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", st_world.client.app)


def _aim(case: Any) -> None:
    """Point half of the key operations at an existing key of the right type."""
    params = case.path_parameters or {}
    name = params.get("name")
    if not isinstance(name, str):
        return
    action = case.path.rsplit("/", 1)[-1]
    family = FAMILY.get(action) if case.path != "/v1/keys/{name}" else None
    digest = zlib.crc32(name.encode())
    if family is None or digest % 2:
        return
    choices = KEYS[family]
    params["name"] = choices[(digest >> 1) % len(choices)]


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _check(case: Any, world: World, statuses: Counter[int]) -> None:
    _aim(case)
    response = case.call(headers=world.auth)
    statuses[response.status_code] += 1
    assert response.status_code < 500, (case.method, case.path, response.text)
    case.validate_response(response, checks=CHECKS)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(st_world: World, api_schema: Any, mode: GenerationMode) -> None:
    """Every operation, valid then invalid data: any failure names the operation."""
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 46  # 4 key release, 3 recovery, 7 replicas (join: 404 here)

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            _check(case, st_world, statuses)

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # no parameters: nothing to make invalid
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    # The run reached the operations themselves, not only the validation layer.
    successes = sum(n for status, n in statuses.items() if status < 300)
    wanted = sum(statuses.values()) // 4 if mode is GenerationMode.POSITIVE else 1
    assert successes >= wanted, statuses


def test_the_run_left_a_valid_audit_chain_naming_every_operation(st_world: World) -> None:
    from enclave_kms.enclave.state.audit import verify_chain

    records = st_world.storage.audit_records()
    assert verify_chain(records).records == len(records)
    schema = st_world.client.get("/openapi.json").json()
    declared = {op["x-operation"] for item in schema["paths"].values() for op in item.values()}
    audited = {event["op"] for event in st_world.audit_events()}
    assert declared <= audited


STATEFUL_EXAMPLES = 12  # each scenario builds a fresh installation (~0.5 s each)
STATEFUL_STEPS = 6


def test_stateful_workflows_never_fail_the_server(
    st_world: World, api_schema: Any, tmp_path: Path
) -> None:
    """Schemathesis chains operations along the links it infers from the OpenAPI document
    (create a key, then encrypt, rotate, patch, delete, restore it; issue a token, then read
    and revoke it ...), bounded to a few dozen short scenarios: no 5xx and every answer as
    documented. Each scenario runs against fresh services and storage (scenarios must not
    depend on what an earlier one left behind), with the admin token of that installation."""
    statuses: Counter[int] = Counter()
    app = st_world.client.app
    original = app.state.enclave_kms  # type: ignore[attr-defined]
    worlds: list[World] = []

    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            fresh = make_world(tmp_path / f"scenario-{len(worlds)}")
            worlds.append(fresh)
            for name, type in TYPES.items():
                r = fresh.post("/v1/keys", {"name": name, "type": type, "exportable": True})
                assert r.status_code == 201, r.text
            app.state.enclave_kms = fresh.ctx  # type: ignore[attr-defined]

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            _aim(case)
            case.headers = {**(case.headers or {}), **worlds[-1].auth}
            return {}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            statuses[response.status_code] += 1
            assert response.status_code < 500, (case.method, case.path, response.text)
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    try:
        Workflow.run(
            settings=settings(
                max_examples=STATEFUL_EXAMPLES,
                stateful_step_count=STATEFUL_STEPS,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
        )
    finally:
        app.state.enclave_kms = original  # type: ignore[attr-defined]
        for world in worlds:
            world.storage.close()
    assert sum(n for status, n in statuses.items() if status < 300) > 0, statuses
