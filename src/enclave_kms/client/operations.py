"""Every API operation of the SDK, written once for both clients.

An operation is a method that returns the `core.Call` to send, or, when it needs several
requests (BYOK import fetches the wrapping key first), a generator that yields each Call and
receives its result: a sans-I/O flow. `@operation` turns it into a descriptor; on a
`KMSClient` it becomes a blocking method returning the result, on an `AsyncKMSClient` a
coroutine method. So a new operation is one method here, with its public signature, and
type checkers see the right return type on each client.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeAlias, TypeVar, overload

from enclave_kms.client import core
from enclave_kms.client.session import Session
from enclave_kms.client.types import (
    AuditHead,
    BatchItem,
    DataKey,
    ExportedKey,
    Health,
    IssuedToken,
    KeyInfo,
    KeyPage,
    ReplicaPolicy,
    RsaKeyPair,
    TokenInfo,
    TokenPage,
    TokenPolicy,
)
from enclave_kms.errors import EnclaveKMSError

if TYPE_CHECKING:
    from enclave_kms.client.aio import AsyncKMSClient
    from enclave_kms.client.failover import FailoverKMSClient
    from enclave_kms.client.sync import KMSClient

P = ParamSpec("P")
T = TypeVar("T")

Flow: TypeAlias = Generator[core.Call[Any], Any, T]
"""Several requests: yields each Call, is sent its result, returns the operation's result."""
Step: TypeAlias = core.Call[T] | Flow[T]


def run_flow(step: Step[T], send: Callable[[core.Call[Any]], Any]) -> T:
    """Drive a step with a blocking `send` (the async client has its own three-line loop)."""
    if isinstance(step, core.Call):
        return send(step)  # type: ignore[no-any-return]
    try:
        call = next(step)
        while True:
            call = step.send(send(call))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class Operation(Generic[P, T]):
    """A descriptor binding one operation to the transport of the client it is read from."""

    def __init__(self, build: Callable[Concatenate[Any, P], Step[T]]) -> None:
        self._build = build
        self._name = build.__name__
        self.__doc__ = build.__doc__
        signature = inspect.signature(build)
        self.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Operation[P, T]: ...
    @overload
    def __get__(
        self, obj: AsyncKMSClient, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, obj: KMSClient | FailoverKMSClient, owner: type[Any]) -> Callable[P, T]: ...
    def __get__(self, obj: Any, owner: type[Any]) -> Any:
        if obj is None:
            return self
        bound = obj._bind(self._build)
        bound.__name__ = self._name
        bound.__qualname__ = f"{type(obj).__name__}.{self._name}"
        bound.__doc__ = self.__doc__
        bound.__signature__ = self.__signature__
        obj.__dict__[self._name] = bound  # bind once per client: later reads skip __get__
        return bound


def operation(build: Callable[Concatenate[Any, P], Step[T]]) -> Operation[P, T]:
    return Operation(build)


class Operations(Session):
    """The KMS API, one method per operation (see `docs/sdk.md`)."""

    # ------------------------------------------------------------------ sys

    @operation
    def health(self) -> Step[Health]:
        return core.health()

    @operation
    def init(self) -> Flow[IssuedToken]:
        """Issue the first admin token (works once per store). The client starts using it."""
        issued: IssuedToken = yield core.init()
        self._adopt_token(issued.token)
        return issued

    @operation
    def audit_head(self) -> Step[AuditHead]:
        return core.audit_head()

    @operation
    def replica_policy(self) -> Step[ReplicaPolicy]:
        """The installation's replica policy (needs the `sys` permission)."""
        return core.read_replica_policy()

    @operation
    def set_replica_policy(self, policy: ReplicaPolicy) -> Step[ReplicaPolicy]:
        """Replace the replica policy, e.g. to allow a new build before an upgrade."""
        return core.write_replica_policy(policy)

    # ------------------------------------------------------------------ keys

    @operation
    def create_key(
        self, name: str, type: str = "aes256-gcm", *, exportable: bool = False
    ) -> Step[KeyInfo]:
        return core.create_key(name, type, exportable)

    @operation
    def list_keys(self, *, after: str = "", limit: int = 100) -> Step[KeyPage]:
        return core.list_keys(after, limit)

    @operation
    def get_key(self, name: str) -> Step[KeyInfo]:
        return core.read_key(name)

    @operation
    def rotate_key(self, name: str) -> Step[KeyInfo]:
        return core.rotate_key(name)

    @operation
    def configure_key(
        self,
        name: str,
        *,
        min_decryption_version: int | None = None,
        enabled: bool | None = None,
    ) -> Step[KeyInfo]:
        return core.configure_key(name, min_decryption_version, enabled)

    @operation
    def delete_key(self, name: str, *, waiting_period_days: int = 7) -> Step[KeyInfo]:
        return core.delete_key(name, waiting_period_days)

    @operation
    def restore_key(self, name: str) -> Step[KeyInfo]:
        return core.restore_key(name)

    @operation
    def wrapping_key(self) -> Step[str]:
        return core.wrapping_key()

    @operation
    def import_key(
        self, name: str, type: str, material: bytes, *, exportable: bool = False
    ) -> Flow[KeyInfo]:
        """BYOK: `material` is wrapped here, to the enclave's wrapping key, before it leaves."""
        pem: str = yield core.wrapping_key()
        imported: KeyInfo = yield core.import_key(
            name, type, core.wrap_material(pem, material), exportable
        )
        return imported

    @operation
    def import_key_version(self, name: str, material: bytes) -> Flow[KeyInfo]:
        pem: str = yield core.wrapping_key()
        imported: KeyInfo = yield core.import_key_version(name, core.wrap_material(pem, material))
        return imported

    @operation
    def export_key(self, name: str, *, version: int | None = None) -> Step[ExportedKey]:
        return core.export_key(name, version)

    # ------------------------------------------------------------------ crypto

    @operation
    def encrypt(
        self, name: str, plaintext: bytes, *, associated_data: bytes | None = None
    ) -> Step[str]:
        return core.encrypt(name, plaintext, associated_data)

    @operation
    def decrypt(
        self, name: str, ciphertext: str | bytes, *, associated_data: bytes | None = None
    ) -> Step[bytes]:
        return core.decrypt(name, ciphertext, associated_data)

    @operation
    def rewrap(
        self, name: str, ciphertext: str | bytes, *, associated_data: bytes | None = None
    ) -> Step[str]:
        return core.rewrap(name, ciphertext, associated_data)

    @operation
    def encrypt_batch(
        self, name: str, items: Sequence[bytes | BatchItem]
    ) -> Step[list[str | EnclaveKMSError]]:
        return core.encrypt_batch(name, items)

    @operation
    def decrypt_batch(
        self, name: str, items: Sequence[str | BatchItem]
    ) -> Step[list[bytes | EnclaveKMSError]]:
        return core.decrypt_batch(name, items)

    @operation
    def generate_data_key(
        self,
        name: str,
        *,
        include_plaintext: bool = True,
        associated_data: bytes | None = None,
    ) -> Step[DataKey]:
        return core.datakey(name, include_plaintext, associated_data)

    @operation
    def sign(
        self,
        name: str,
        message: bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> Step[str]:
        return core.sign(
            name,
            message,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=prehashed,
        )

    @operation
    def verify(
        self,
        name: str,
        message: bytes,
        signature: str | bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> Step[bool]:
        return core.verify(
            name,
            message,
            signature,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=prehashed,
        )

    @operation
    def hmac(self, name: str, data: bytes) -> Step[str]:
        return core.hmac(name, data)

    @operation
    def verify_hmac(self, name: str, data: bytes, mac: str | bytes) -> Step[bool]:
        return core.verify_hmac(name, data, mac)

    @operation
    def random(self, length: int) -> Step[bytes]:
        return core.random(length)

    @operation
    def generate_aes_key(self) -> Step[bytes]:
        return core.generate_aes_key()

    @operation
    def generate_rsa_key_pair(self) -> Step[RsaKeyPair]:
        return core.generate_rsa_key_pair()

    # ------------------------------------------------------------------ tokens

    @operation
    def create_token(
        self,
        name: str,
        policies: Sequence[TokenPolicy | Mapping[str, Sequence[str]]],
        *,
        ttl_seconds: int | None = None,
    ) -> Step[IssuedToken]:
        return core.create_token(name, policies, ttl_seconds)

    @operation
    def list_tokens(self, *, after: str = "", limit: int = 100) -> Step[TokenPage]:
        return core.list_tokens(after, limit)

    @operation
    def get_token(self, token_id: str) -> Step[TokenInfo]:
        return core.read_token(token_id)

    @operation
    def revoke_token(self, token_id: str) -> Step[TokenInfo]:
        return core.revoke_token(token_id)
