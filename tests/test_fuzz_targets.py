"""A short, deterministic fuzz run in the test suite over the same harnesses `make fuzz` uses:
every target, its real seeds, the issue's crash inputs, and bounded single-byte mutations,
truncations and extensions. Only typed errors may come out."""

from __future__ import annotations

import random

import pytest

from tests.fuzz.targets import TARGETS, run_one, seeds

PER_SEED = 150  # mutations per seed: the whole run stays a few seconds


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_raises_only_typed_errors(name: str) -> None:
    rng = random.Random(f"issue-17-{name}")
    for seed in seeds(name):
        run_one(name, seed)
        for _ in range(PER_SEED):
            data = bytearray(seed)
            choice = rng.random()
            if data and choice < 0.6:
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            elif data and choice < 0.8:
                del data[rng.randrange(len(data)) :]
            else:
                data += rng.randbytes(rng.randrange(1, 32))
            run_one(name, bytes(data))
