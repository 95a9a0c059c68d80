"""One run per run folder: the lock a run holds on `<folder>/.lock` while it writes there, and who holds it.

The kernel drops a flock(2) when its process dies, so a killed run's lock is simply taken; the file also
records the holder's PID, host and start time, for the message a second run gets. No torch here: the
live report takes the lock while it draws, and `continual sweep status` asks who holds a folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from continual.files import DiskFull, full_disk


class RunLocked(Exception):
    """Another live process is writing into this run folder."""


def lock_holder(folder: Path) -> dict | None:
    """{pid, host, started} of the run holding the lock of run folder `folder`, as far as can be told without
    taking it (a probe that took the lock, even briefly, could make a starting run fail): a record whose
    process is alive on this host, or any record from another host (whose processes cannot be asked). None
    when no run holds it here."""
    path = Path(folder) / ".lock"
    holder = _holder(_read(path)) if path.is_file() else None
    if holder is None or holder["host"] != socket.gethostname():
        return holder
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return None  # a killed run's record: the kernel dropped its lock with it
    except PermissionError:
        pass  # alive, another user's
    return holder


class RunLock:
    """One run per folder: flock(2) on `<folder>/.lock`, which also holds the writer's PID, host and
    start time for the message a second run gets. The kernel drops the lock when its process dies, so a
    lock left by a killed run is simply taken: there is no stale-lock takeover to race on.

    Guaranteed on a local file system and on NFS v3 (with lockd) and v4, where Linux emulates flock with
    whole-file POSIX locks the server arbitrates across nodes (a Slurm job resumed on another node takes
    the lock its dead predecessor held). Not guaranteed: NFS mounted with `nolock` or Lustre with
    `localflock` (locks are local to each node); if a node holding the lock dies or loses the server, NFS
    v4 frees its lock only after the lease (about 90 s). Lustre without `flock` refuses locks: a message.
    Because NFS locks belong to the process, not to the open file, the holder must never open and close
    `.lock` again while holding it (that would drop the lock there): it reads its record through its fd."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        for _ in range(100):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(self._busy(_holder(_read(self.path)))) from None
            except OSError as err:
                os.close(fd)
                raise RunLocked(f"{self.path}: this file system does not support locks ({err.strerror}), "
                                "so a second run could not be kept out; use an --out on another one") from None
            # Its holder may have released it (unlinking the file) between our open and our lock:
            # then we locked a file nobody else will look at, so try again with the new one.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        else:
            raise RunLocked(f"{self.path}: could not take the run lock (it changes hands too fast)")
        self._fd = fd
        try:
            # Whatever the file says (a killed run's record, garbage), nobody holds it: only flock decides.
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
        except OSError as err:
            self._release(unlink=True)
            raise (DiskFull(self.path.parent, err) if full_disk(err) else err) from None
        except BaseException:
            self._release(unlink=self.held)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release(unlink=True)

    def _release(self, *, unlink: bool) -> None:
        """Unlink while still holding the lock (so nobody can have taken this file meanwhile), then close."""
        if self._fd is None:
            return
        try:
            if unlink and _same_file(self._fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass  # removed by hand, or the folder went read-only: the lock is released by the close anyway
        finally:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            if full_disk(err):
                raise DiskFull(self.path.parent, err) from None
            if err.errno == errno.EISDIR:
                problem = "is a folder, where the run's lock file belongs; move it away, then run again"
            elif err.errno == errno.ELOOP:
                problem = "is a symbolic link, where the run's lock file belongs; remove it, then run again"
            else:
                problem = f"cannot be opened as the run's lock ({err.strerror})"
            raise RunLocked(f"{self.path} {problem}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunLocked(f"{self.path} is not a plain file, where the run's lock file belongs; "
                            "move it away, then run again")
        return fd

    def _busy(self, holder: dict | None) -> str:
        who = ("PID {pid} on {host}, started {started}".format(**holder) if holder is not None
               else "it has not written who it is yet")
        return f"{self.path.parent}: another run is writing here ({who}); wait for it, stop it, or use another --out"


def _read(path: Path) -> bytes:
    """The lock's record as its holder wrote it; it may be writing it right now, so wait a little for it."""
    for _ in range(10):
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
        except OSError:
            return b""
        if _holder(data) is not None:
            break
        time.sleep(0.02)
    return data


def _holder(data: bytes) -> dict | None:
    """The record {pid, host, started} in a lock file, or None for anything else (empty, cut short by a
    kill, written by hand): garbage means nobody, since only flock says whether the lock is held."""
    try:
        holder = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: '[[[[...' nested deeper than json can go
        return None
    if not isinstance(holder, dict):
        return None
    pid, host, started = holder.get("pid"), holder.get("host"), holder.get("started")
    # Linux PIDs are 1..2**22 (PID_MAX_LIMIT); -1 and 0 would make kill() ask about whole process groups.
    if type(pid) is not int or not 0 < pid <= 2**22 or not isinstance(host, str) or not isinstance(started, str):
        return None
    return {"pid": pid, "host": host[:100], "started": started[:40]}


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
