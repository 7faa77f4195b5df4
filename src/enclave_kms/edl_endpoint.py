"""One end of the EDL channel: framed calls over a pair of byte streams (the enclave's stdio).

Both the host and the enclave run an `Endpoint`. Each serves one kind of call (the host
serves OCALLs, the enclave ECALLs) and makes the other kind. Everything is derived from the
declarations in `edl.py`: the handler table must cover exactly the declared calls of the
served kind, arguments and results are checked against their declarations on both sides,
and an undeclared call can be neither made nor served.

Calls are concurrent: a reader thread matches results to waiting callers by request id and
runs incoming calls on a small thread pool, so the enclave can make OCALLs (storage, audit,
quotes) while the host's long `set_up_server` ECALL is still in flight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from enclave_kms import edl, errors
from enclave_kms.errors import BoundaryError, EnclaveKMSError

log = logging.getLogger(__name__)

Handler = Callable[..., Mapping[str, Any] | None]
FrameObserver = Callable[[str, bytes], None]

#: The enclave writes this line once it owns its frame stream (its stdout is private to the
#: channel from then on); anything before it is start-up output, never frames. Under Gramine
#: the enclave's stderr is a duplicate of its stdout, so the host cannot tell the two apart by
#: descriptor: it skips to this line instead (a sync point, not a security mechanism).
CHANNEL_PREAMBLE = b"\x1bEKMS-EDL/1: frames follow\n"


def _subclasses(cls: type[EnclaveKMSError]) -> list[type[EnclaveKMSError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out


class RemoteError(EnclaveKMSError):
    """The other side failed with a code that has no class on this side."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_detail(exc: EnclaveKMSError) -> dict[str, Any] | None:
    """The structured fields an `err` frame carries beside code and message."""
    detail: dict[str, Any] = {}
    if isinstance(exc, errors.AttestationError):
        detail["step"] = str(exc.step)[:64]
    if isinstance(exc, errors.PolicyError):
        detail["violations"] = [v[:1024] for v in exc.violations[:64]]
    return detail or None


def error_from_frame(
    code: str, message: str, detail: Mapping[str, Any] | None = None
) -> EnclaveKMSError:
    """Rebuild the typed error an `err` frame names (the EDL's one error mapping), with its
    step (attestation errors) and violations (policy errors) when the frame carries them."""
    for cls in _subclasses(EnclaveKMSError):
        if cls.code == code and cls is not RemoteError:
            exc = cls.__new__(cls)
            EnclaveKMSError.__init__(exc, message)
            if isinstance(exc, errors.PolicyError):
                violations = (detail or {}).get("violations")
                exc.violations = tuple(violations) if violations else (message,)
                exc.subject = None
            if isinstance(exc, errors.AttestationError) and (detail or {}).get("step"):
                exc.step = str((detail or {})["step"])
            return exc
    return RemoteError(code, message)


class Endpoint:
    """Serve `serves`-kind calls with `handlers`; make the opposite kind with `call`."""

    def __init__(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        *,
        serves: edl.Kind,
        handlers: Mapping[str, Handler],
        workers: int = 8,
        observer: FrameObserver | None = None,
    ) -> None:
        declared = {c.name for c in (edl.ECALLS if serves == "ecall" else edl.OCALLS)}
        missing, extra = declared - set(handlers), set(handlers) - declared
        if missing or extra:
            raise BoundaryError(
                f"{serves} handlers must match the EDL: missing {sorted(missing)}, "
                f"undeclared {sorted(extra)}"
            )
        self._reader, self._writer = reader, writer
        self._serves: edl.Kind = serves
        self._makes: edl.Kind = "ocall" if serves == "ecall" else "ecall"
        self._handlers = dict(handlers)
        self._observer = observer
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"edl-{serves}")
        self._write_lock = threading.Lock()
        self._pending: dict[int, Future[Mapping[str, Any]]] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 1
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="edl-reader", daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Stop: fail every pending call, stop accepting work."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(BoundaryError("EDL channel closed"))
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ outgoing calls

    def call(self, name: str, /, timeout: float | None = None, **args: Any) -> dict[str, Any]:
        """Make a declared call of the opposite kind and return its checked result."""
        decl = edl.declared(self._makes, name)
        checked = decl.check(args, "in")
        fut: Future[Mapping[str, Any]] = Future()
        with self._pending_lock:
            if self._closed.is_set():
                raise BoundaryError("EDL channel closed")
            fid = self._next_id
            self._next_id += 1
            self._pending[fid] = fut
        self._send(edl.Frame(fid, "call", fn=name, body=checked))
        try:
            result = fut.result(timeout)
        finally:
            with self._pending_lock:
                self._pending.pop(fid, None)
        return decl.check(result, "out")

    # ------------------------------------------------------------------ plumbing

    def _send(self, frame: edl.Frame) -> None:
        wire = edl.encode_frame(frame)
        if self._observer is not None:
            self._observer("send", wire)
        with self._write_lock:
            try:
                self._writer.write(wire)
                self._writer.flush()
            except (OSError, ValueError) as exc:
                self.close()
                raise BoundaryError(f"EDL channel write failed: {type(exc).__name__}") from None

    def _read_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._reader.read(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while not self._closed.is_set():
                header = self._read_exact(4)
                if header is None:
                    break
                payload = self._read_exact(edl.frame_length(header))
                if payload is None:
                    break
                if self._observer is not None:
                    self._observer("recv", header + payload)
                self._on_frame(edl.decode_frame(payload))
        except BoundaryError as exc:
            # Close *before* reporting: in the enclave, logging is the `log` OCALL, whose reply
            # only this (reader) thread could read, so reporting first would wait on itself.
            self.close()
            log.error("EDL channel closed: %s", exc.message)
        except Exception as exc:  # noqa: BLE001 - whatever a frame provokes, close cleanly
            self.close()
            log.error("EDL channel read failed: %s", type(exc).__name__)
        finally:
            self.close()

    def _on_frame(self, frame: edl.Frame) -> None:
        if frame.t == "call":
            try:
                self._pool.submit(self._serve, frame)
            except RuntimeError:  # closed between reading the frame and dispatching it
                raise BoundaryError("EDL channel closed") from None
            return
        with self._pending_lock:
            fut = self._pending.get(frame.id)
        if fut is None or fut.done():
            raise BoundaryError(f"result for unknown request id {frame.id}")
        if frame.t == "ret":
            fut.set_result(frame.body or {})
        else:
            fut.set_exception(error_from_frame(frame.code, frame.message, frame.detail))

    def _serve(self, frame: edl.Frame) -> None:
        try:
            decl = edl.declared(self._serves, frame.fn)
            args = decl.check(frame.body or {}, "in")
            result = self._handlers[frame.fn](**args) or {}
            reply = edl.Frame(frame.id, "ret", body=decl.check(result, "out"))
        except EnclaveKMSError as exc:
            reply = edl.Frame(
                frame.id, "err", code=exc.code, message=exc.message[:4000], detail=error_detail(exc)
            )
        except Exception:
            log.exception("unexpected failure in %s %s", self._serves, frame.fn)
            reply = edl.Frame(frame.id, "err", code="internal", message="internal error")
        with contextlib.suppress(BoundaryError):
            self._send(reply)
