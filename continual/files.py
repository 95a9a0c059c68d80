"""Reading and writing files a user can reach (a model config JSON, a store's manifest, a run's metrics).

Reading: one exception that says in one line what is wrong, never a traceback and never a hang. What is
there but is not what it should be (a folder, a FIFO, not UTF-8, not JSON, nested too deeply) is a BadFile,
a ValueError, so that a caller's `except ValueError` for "not what we wrote" covers it; a file that cannot
be opened (absent, no permission, EIO) stays the OSError open raised, since callers treat those apart.

Writing: every file is written atomically (a temporary name, then rename): readers never see half a file,
and a full disk is a DiskFull naming the folder, never a half-written file under a final name.

No torch, no numpy, no pandas: the config module reads model configs with it, the image store writes
through it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
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


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    with atomic_file(path) as f:
        f.write(content.encode() if isinstance(content, str) else content)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path` through: it is a temporary name in the same folder, fsynced and renamed to
    `path` when the block ends. On any error (Ctrl-C included) the temporary file is removed and `path`
    is as it was; a full disk or quota, however the writer reports it, is a DiskFull."""
    try:
        # A name of its own: two writers of one file (the run, and `continual report` watching it) never
        # share a temporary file; `.<name>.<random>.tmp` is what a kill can leave, and pruning removes.
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp's 0600 would hide results from a team)
        f = _Recording(os.fdopen(fd, "wb"))
    except OSError as err:
        raise (DiskFull(path.parent, err) if full_disk(err) else err) from None
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException as err:
        f.close_quietly()
        tmp.unlink(missing_ok=True)
        full = full_disk(err) or f.full
        if full is not None:
            raise DiskFull(path.parent, full) from None
        if isinstance(err, (IsADirectoryError, NotADirectoryError)) and path.is_dir():
            raise InTheWay(f"{path} is a folder where continual writes a file; move it away, then run the "
                           "command again (a run: with --resume)") from None
        raise


def make_folder(path: Path) -> None:
    """mkdir -p, with a full disk (no room for one more folder entry) as a DiskFull."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if full_disk(err):
            raise DiskFull(path, err) from None
        raise


class InTheWay(Exception):
    """Something that is not a file (a folder) stands where the run writes one: nothing is overwritten, and the
    run stops with a message naming it (exit status 2)."""


class DiskFull(Exception):
    """A write of the run failed because its disk (or the user's quota on it) is full. The file being
    written is left as it was; the run can continue with --resume once there is room. `cause`: the
    ENOSPC or EDQUOT OSError (the image store says it in its own words)."""

    def __init__(self, folder: Path, cause: OSError | None = None):
        self.folder, self.cause = Path(folder), cause
        what = ("your disk quota there is used up" if cause is not None and cause.errno == errno.EDQUOT
                else "the disk is full")
        super().__init__(f"{self.folder}: cannot write: {what} ({_free_space(self.folder)}); "
                         "free some space, then run again with --resume")


def full_disk(err: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT behind `err`, if any. torch.save reports one as RuntimeError('... unexpected
    pos ...') with the OSError only as its context, so the chain of causes is searched."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _free_space(folder: Path) -> str:
    """Free space on the disk of `folder` (or of its nearest existing parent), e.g. "12.5 MiB free"."""
    for path in (folder, *folder.parents):
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            continue
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if free >= size:
                return f"{free / size:.1f} {unit} free"
        return f"{free} bytes free"
    return "free space unknown"


class _Recording:
    """A file that remembers a full-disk error from its writes: torch.save's C++ writer replaces it
    with 'unexpected pos', and a buffered file raises it again on close."""

    def __init__(self, f: BinaryIO):
        self._f, self.full = f, None

    def write(self, data) -> int:
        return self._call(self._f.write, data)

    def flush(self) -> None:
        self._call(self._f.flush)

    def close(self) -> None:
        self._call(self._f.close)

    def fileno(self) -> int:
        return self._f.fileno()

    def _call(self, op, *args):
        try:
            return op(*args)
        except OSError as err:
            self.full = self.full or full_disk(err)
            raise

    def close_quietly(self) -> None:
        try:
            self._f.close()  # a buffered file flushes what it holds first, which fails again on a full disk
        except OSError as err:
            self.full = self.full or full_disk(err)
            try:
                self._f.close()  # the second close only releases the descriptor
            except OSError:
                pass
