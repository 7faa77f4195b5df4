"""One SDK source: each operation is declared once (`client/operations.py`) and both clients
run it over their own transport, with the same public signature."""

from __future__ import annotations

import asyncio
import inspect

from enclave_kms.client import AsyncKMSClient, KMSClient, core
from enclave_kms.client.operations import Flow, Operation, Operations, operation
from tests.client.fakes import FakeServer, World, identity

TOKEN = "ekms_0123456789abcdef_SECRET-TOKEN-VALUE"


def _operations() -> list[str]:
    return sorted(n for n, v in vars(Operations).items() if isinstance(v, Operation))


def test_both_clients_expose_every_operation_with_one_signature(world: World) -> None:
    names = _operations()
    assert {"encrypt", "import_key", "init", "revoke_token", "sign"} <= set(names)
    sync = KMSClient("https://127.0.0.1:1", token=TOKEN, policy=world.policy())
    aio = AsyncKMSClient("https://127.0.0.1:1", token=TOKEN, policy=world.policy())
    for name in names:
        blocking, coroutine = getattr(sync, name), getattr(aio, name)
        assert inspect.signature(blocking) == inspect.signature(coroutine), name
        assert "self" not in inspect.signature(blocking).parameters
        assert not inspect.iscoroutinefunction(blocking), name
        assert inspect.iscoroutinefunction(coroutine), name
        assert getattr(sync, name) is blocking  # bound once per client
    params = inspect.signature(sync.encrypt).parameters
    assert params["associated_data"].kind is inspect.Parameter.KEYWORD_ONLY


class _RoundTrip(Operations):
    """A new multi-request operation, written once, as a test would add one."""

    @operation
    def round_trip(self, name: str, plaintext: bytes) -> Flow[tuple[str, bytes]]:
        ciphertext: str = yield core.encrypt(name, plaintext, None)
        back: bytes = yield core.decrypt(name, ciphertext, None)
        return ciphertext, back


class _SyncRoundTrip(_RoundTrip, KMSClient):
    pass


class _AsyncRoundTrip(_RoundTrip, AsyncKMSClient):
    pass


def test_an_operation_written_once_runs_on_both_transports(world: World) -> None:
    with FakeServer(world, identity()) as fake:
        with _SyncRoundTrip(
            fake.url, token=TOKEN, policy=world.policy(), trust_root=world.root
        ) as kms:
            sync_result = kms.round_trip("orders", b"abc")

        async def scenario() -> tuple[str, bytes]:
            async with _AsyncRoundTrip(
                fake.url, token=TOKEN, policy=world.policy(), trust_root=world.root
            ) as kms:
                return await kms.round_trip("orders", b"abc")

        async_result = asyncio.run(scenario())
    assert sync_result == async_result == ("ekms:v1:" + "Y2Jh", b"abc")
    sent = [r for r in fake.requests if r[0] == "POST"]
    assert sent == [("POST", "/v1/keys/orders/encrypt"), ("POST", "/v1/keys/orders/decrypt")] * 2


def test_init_adopts_the_first_admin_token_on_both_clients(world: World) -> None:
    with FakeServer(world, identity()) as fake:
        kms = KMSClient(fake.url, policy=world.policy(), trust_root=world.root)
        issued = kms.init()
        assert "token=set" in repr(kms)
        kms.close()

        async def scenario() -> str:
            aio = AsyncKMSClient(fake.url, policy=world.policy(), trust_root=world.root)
            try:
                return (await aio.init()).token if "token=none" in repr(aio) else ""
            finally:
                assert "token=set" in repr(aio)
                await aio.close()

        assert asyncio.run(scenario()) == issued.token
