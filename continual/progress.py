"""Progress bars: training's, and those of what is slow besides training (loading data, decoding it into
the store, LDIFS's anchor cache, every evaluation pass), which with a CLIP at 224 px on a large dataset took
minutes with nothing on screen.

A bar shows its count, rate and ETA. On a terminal it redraws in place; written to a file (a Slurm job's
log) it adds a line at most every LOG_SECONDS, so that a log shows where a run is without filling up.
Training's bars stay when done, one per task (`leave`); the others go. Under torchrun the callers enable
rank 0's alone. No torch here: the data layer uses it too.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_SECONDS = 30.0  # between two lines of a bar written to a file, not a terminal


def bar(total: int, desc: str, *, enabled: bool, unit: str = "img", leave: bool = False) -> tqdm:
    """A bar of `total` units; a disabled bar's update() and close() do nothing, so callers need no `if`."""
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else LOG_SECONDS)
