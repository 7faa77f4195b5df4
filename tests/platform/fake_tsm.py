"""A fake configfs-tsm tree that behaves like the kernel's: attributes appear on mkdir, the
report is computed on read from what was written, `generation` counts the writes.

`inblob` and `outblob` are FIFOs served by threads, so reading `outblob` blocks until the
report over the written inblob exists, as it blocks while the TSM produces it; `generation`
is updated before the report is served. The TDX provider is the
simulated platform's TD quoting enclave (the bytes a TDX guest would read)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.tdx import TdIdentity


def _until_reader_gone(fifo: Path) -> None:
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # ENXIO: nobody has it open for reading any more
        os.close(fd)
        time.sleep(0.001)


class FakeTsmEntry:
    def __init__(self, path: Path, quote: Callable[[bytes], bytes], provider: str) -> None:
        self.path = path
        self.inblob = b""
        self.generation = 0
        self.extra_writers = 0  # a racing writer's writes, counted in generation
        self._written = threading.Event()
        self._quote = quote
        self._stop = False
        path.mkdir()
        (path / "provider").write_text(provider + "\n")
        (path / "generation").write_text("0\n")
        self._threads = [
            self._serve("inblob", self._take_inblob, write=False),
            self._serve("outblob", self._wait_quote, write=True),
        ]

    def _serve(self, name: str, action: Callable[..., object], *, write: bool) -> threading.Thread:
        fifo = self.path / name
        os.mkfifo(fifo, 0o600)

        def loop() -> None:
            while not self._stop:
                with contextlib.suppress(OSError):
                    if write:
                        with fifo.open("wb") as fh:  # blocks until the reader opens
                            if not self._stop:
                                fh.write(action())  # type: ignore[arg-type]
                        _until_reader_gone(fifo)  # one value per read, as sysfs gives
                    else:
                        with fifo.open("rb") as fh:
                            data = fh.read()
                        if not self._stop:
                            action(data)

        thread = threading.Thread(target=loop, daemon=True, name=f"fake-tsm-{name}")
        thread.start()
        return thread

    def _take_inblob(self, data: bytes) -> None:
        self.inblob = data
        self.generation += 1 + self.extra_writers
        (self.path / "generation").write_text(f"{self.generation}\n")  # before outblob exists
        self._written.set()

    def _wait_quote(self) -> bytes:
        self._written.wait(10)
        return self._quote(self.inblob)

    def close(self) -> None:
        self._stop = True
        for name, write in (("inblob", True), ("outblob", False)):
            with contextlib.suppress(OSError):  # unblock a thread waiting in open()
                fd = os.open(
                    self.path / name, (os.O_WRONLY if write else os.O_RDONLY) | os.O_NONBLOCK
                )
                os.close(fd)
        for thread in self._threads:
            thread.join(2)


class FakeTsm:
    """The report directory and its `mkdir` (what ConfigfsTsm calls as make_entry)."""

    def __init__(
        self, root: Path, platform: SimPlatform, td: TdIdentity, provider: str = "tdx_guest"
    ) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.platform = platform
        self.td = td
        self.provider = provider
        self.entries: list[FakeTsmEntry] = []
        self.extra_writers = 0

    def mkdir(self, path: Path) -> None:
        entry = FakeTsmEntry(
            path, lambda inblob: self.platform.td_quote(self.td, inblob), self.provider
        )
        entry.extra_writers = self.extra_writers
        self.entries.append(entry)

    def close(self) -> None:
        for entry in self.entries:
            entry.close()
