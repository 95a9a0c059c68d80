"""Progress bars for what is slow besides training: loading data, LDIFS's anchor cache and every
evaluation pass, which with a CLIP at 224 px on a large dataset took minutes with nothing on screen.

A bar counts images (or, for loading, datasets) and shows the rate and an ETA. It goes when done
(`leave=False`): the lines that stay are training's, one per task. Only rank 0 shows one under torchrun.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

from continual import distributed


def bar(total: int, desc: str, *, enabled: bool, unit: str = "img") -> tqdm:
    """A bar of `total` units; a disabled bar's update() and close() do nothing, so callers need no `if`."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not enabled or not distributed.is_main(), dynamic_ncols=True)
