"""Whether `--out` can hold a run folder, said before anything is loaded (seconds to minutes) rather than
at the first write: a file on the way, a symbolic link to nowhere or in a loop, a read-only file system, no
permission. What the run folder holds is continual/run_folder.py's.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from continual.config import ConfigError
from continual.files import DiskFull, full_disk


def check_output(out: Path, name: str) -> None:
    """Refuse an --out the run could not write its folder `<out>/<name>` in, before anything is loaded:
    a file on the way, a symbolic link to nowhere or in a loop, a read-only file system, no permission.
    Only the nearest existing folder is looked at and written to (a temporary file, removed at once);
    nothing is created. A full disk is a DiskFull."""
    out = Path(out)
    for path in (out / name, *(out / name).parents):
        problem = _unusable(path)
        if problem is None:
            continue  # does not exist (yet): the folder above decides
        if problem:
            raise ConfigError("--out", [(str(out), problem)])
        return  # the nearest existing folder, and it can be written in


def _unusable(path: Path) -> str | None:
    """What is wrong with `path` for holding the run ("" when nothing), or None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError as err:
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError as missing:
            if missing.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ELOOP):
                return None  # not there (or a folder above is a file or unusable: that one is reported)
            return f"{path} cannot be used ({missing.strerror})"  # e.g. a name too long for the file system
        if not is_link:
            return f"{path} cannot be used ({err.strerror})"
        target = os.readlink(path)
        if err.errno == errno.ELOOP:
            return f"{path} is a symbolic link in a loop (to {target}); point it at a folder or remove it"
        if err.errno == errno.ENOENT:
            return f"{path} is a symbolic link to {target}, which does not exist; create it or remove the link"
        return f"{path} is a symbolic link to {target}, which cannot be used ({err.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        kind = "a file" if stat.S_ISREG(st.st_mode) else "not a folder"
        return f"{path} is {kind}; expected a folder for the results"
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"{path} is on a read-only file system; choose an --out on a writable one"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"cannot write in {path}: permission denied"
    # Root passes os.access everywhere, yet may still be refused (an NFS export that squashes root, ACLs,
    # a read-only bind mount on an old kernel): only a real file tells.
    try:
        fd, probe = tempfile.mkstemp(prefix=".continual-check-", dir=path)
    except OSError as err:
        if full_disk(err):
            raise DiskFull(path, err) from None
        if err.errno == errno.EROFS:
            return f"{path} is on a read-only file system; choose an --out on a writable one"
        return f"cannot write in {path}: {(err.strerror or str(err)).lower()}"
    os.close(fd)
    os.unlink(probe)
    return ""
