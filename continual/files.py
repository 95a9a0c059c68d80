"""Reading files a user can reach (a model config JSON, a store's manifest, a run's metrics): one
exception that says in one line what is wrong, never a traceback and never a hang. What is there but is
not what it should be (a folder, a FIFO, not UTF-8, not JSON, nested too deeply) is a BadFile, a
ValueError, so that a caller's `except ValueError` for "not what we wrote" covers it; a file that cannot
be opened (absent, no permission, EIO) stays the OSError open raised, since callers treat those apart.
No torch, no numpy: the config module reads model configs with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# As deep as a sequence file may nest (config/loading.py's YAML rule): real configs nest 3 or 4 deep, and
# json's C parser raises RecursionError near 1,000 levels, well inside a plausible file (issue #23).
MAX_DEPTH = 64


class BadFile(ValueError):
    """`path` is there but is not a file of the kind expected; str() says why in one line."""


@contextlib.contextmanager
def open_regular(path: str | Path) -> Iterator[BinaryIO]:
    """`path` opened for reading if it is a regular file (links followed), else BadFile. Opened
    non-blocking: open() on a FIFO waits for a writer that may never come; a FIFO is refused instead."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a folder opens too: fstat tells
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise BadFile(f"{path} is {kind}, not a file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        yield f


def read_json(path: str | Path) -> object:
    """The JSON document in the regular file `path`: BadFile when it is not one (what open_regular
    refuses, not UTF-8, not valid JSON, nested more than MAX_DEPTH deep), OSError when it cannot be read."""
    with open_regular(path) as f:
        data = f.read()
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise BadFile(f"{path} is not UTF-8 text (byte {err.start})") from None
    except RecursionError:  # '[[[[...': json's parser recurses once per level
        raise BadFile(f"{path} is nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as err:  # JSONDecodeError, or an integer of over 4,300 digits
        raise BadFile(f"{path} is not valid JSON ({' '.join(str(err).split())[:120]})") from None
    if _depth(doc) > MAX_DEPTH:
        raise BadFile(f"{path} is nested too deeply (more than {MAX_DEPTH} levels)")
    return doc


def _depth(doc: object) -> int:
    """How deep lists and objects nest in `doc` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in children)
    return deepest
