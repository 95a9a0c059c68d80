"""Every seed a run uses, derived in one place from the sequence's `seed`.

A run draws randomness for three purposes: which images a task or probe selects (`data`), the
initial random heads (`head`) and each training step's shuffling, dropout and replay sampling
(`step`). Each gets its own stream, keyed by the run seed, the purpose and what it is for (a step
number, a dataset and class), hashed by numpy's SeedSequence. So streams never collide (the
`seed * 1009 + step` this replaced gave seed 0, step 1009 the stream of seed 1, step 0), any
non-negative seed works, and a stream depends only on its own keys: a step draws the same numbers
whichever methods ran before it and whether the run was resumed in between.

No torch here: data selection uses it without loading a model, and `continual validate` loads none.
"""

from __future__ import annotations

import zlib

import numpy as np


def derive(seed: int, purpose: str, *keys: int | str) -> int:
    """A 64-bit seed for one use of the run seed, e.g. derive(seed, "step", 3)."""
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in (purpose, *keys)]
    low, high = np.random.SeedSequence([seed, *words]).generate_state(2, np.uint32)
    return int(high) << 32 | int(low)


def generator(seed: int, purpose: str, *keys: int | str) -> np.random.Generator:
    """A numpy Generator on the stream `derive` names."""
    return np.random.default_rng(derive(seed, purpose, *keys))
