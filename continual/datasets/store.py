"""Decoded images kept on disk, so that a dataset's files are decoded and resized once, not at every run.

One store per (dataset, split, stored size, source), in `<data_root>/.continual-store/<name>/`:

    images.u8      uint8 (N, 3, S, S), row i = image i of the split; a sparse file, filled as rows are needed
    filled.npy     bool (N,): which rows are decoded (replaced atomically after their pixels are on disk)
    manifest.json  what the rows are: dataset, split, size, resize rule, the source's identity, versions
    .lock          flock(2) held while rows are written

The folder's name ends in a digest of everything the pixels depend on: the source's files (each one's
path, size and modification time), the labels, the resize rule, the stored size and the versions of the
libraries that decode them. A changed file, another torchvision or another resize therefore opens
another store: one is never silently reused for images it does not hold.

Only the rows a run selects are decoded (a task of 100 images per class decodes those, not the whole
dataset), in parallel worker processes; `continual data prepare` fills them ahead of time. Readers need
no lock: a row is read only once `filled.npy` says so, and a filled row never changes. Writers take
the lock, so two runs of a sweep never decode the same rows twice or write one row at the same time.
Rows are read with pread, not mmap: the page cache serves them without counting in the process's
memory. No torch at import: `continual data list` reads manifests only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from continual import progress
from continual.datasets.catalog import DataError
from continual.files import DiskFull, atomic_write, open_regular, read_json

FORMAT = 1
FOLDER = ".continual-store"  # under data_root
# How `source.pil_resize_crop` resizes: its rule is part of every stored pixel, so it is part of the key.
RESIZE_RULE = "shorter side to S, PIL bilinear (antialiased when shrinking), centre crop, RGB"
CHECKPOINT_ROWS = 8192  # rows decoded between two updates of filled.npy: an interrupted build keeps them
READERS = min(4, os.cpu_count() or 1)  # threads reading one batch's rows
PROGRESS_FROM = 2000  # rows to decode before a progress bar is worth showing


def store_root(data_root: Path) -> Path:
    return Path(data_root) / FOLDER


def source_identity(folder: Path) -> str:
    """A digest of every file under `folder` (relative path, size, modification time): what a store's
    pixels were decoded from. os.scandir, not rglob: 100k files take about a second."""
    digest = hashlib.sha256()
    entries = []
    stack = [str(folder)]
    prefix = len(os.path.join(str(folder), ""))
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    if entry.name.startswith(".") and entry.name != ".":  # our own store, .DS_Store, ...
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=True):
                        st = entry.stat(follow_symlinks=True)
                        entries.append(f"{entry.path[prefix:]}\0{st.st_size}\0{st.st_mtime_ns}")
        except FileNotFoundError:
            continue
    for line in sorted(entries):
        digest.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return f"{len(entries)} files, sha256 {digest.hexdigest()}"


@dataclass(frozen=True)
class Key:
    """Everything a store's pixels depend on. Its digest names the store's folder."""

    dataset: str
    split: str
    size: int
    source: str  # source_identity(...) of the dataset's files, or another description of where pixels come from
    labels: str  # sha256 of the split's labels and of which source images they are (a subset's order)
    versions: dict
    # Where the dataset's files were read, for `data list` to tell image folders apart. Not part of the key:
    # the same files elsewhere give the same pixels (`source` covers their content).
    files: str = field(default="", compare=False)

    def manifest(self, n: int) -> dict:
        return {"format": FORMAT, "dataset": self.dataset, "split": self.split, "size": self.size, "images": n,
                "channels": 3, "resize": RESIZE_RULE, "source": self.source, "labels": self.labels,
                "versions": self.versions}

    @property
    def folder_name(self) -> str:
        blob = json.dumps(self.manifest(0) | {"images": None}, sort_keys=True).encode()
        return f"{self.dataset}-{self.split}-{self.size}px-{hashlib.sha256(blob).hexdigest()[:16]}"


def key_for(dataset: str, split: str, size: int, *, source: str, labels: np.ndarray, order: str = "",
            files: str = "") -> Key:
    # Versions from package metadata: importing torchvision to read its version took 3 s of a warm start.
    versions = {"continual-store": FORMAT, **{name: _version(name) for name in ("pillow", "torch", "torchvision")}}
    labels_digest = hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes() + order.encode()).hexdigest()
    return Key(dataset, split, size, source, labels_digest, versions, files)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return "absent"


class Store:
    """An open store: read rows, fill missing ones (`ensure`)."""

    def __init__(self, folder: Path, key: Key, n: int):
        self.folder, self.key, self.n = folder, key, n
        self.row_bytes = 3 * key.size * key.size
        self._fd: int | None = None
        self._filled: np.ndarray | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._opening = threading.Lock()  # the read-ahead thread and the main one may both read first

    @property
    def images_path(self) -> Path:
        return self.folder / "images.u8"

    @property
    def filled_path(self) -> Path:
        return self.folder / "filled.npy"

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    @classmethod
    def open(cls, data_root: Path, key: Key, n: int) -> Store:
        """The store for `key`, created if absent and recreated if what is on disk is not it (another
        format, a truncated images file, an unreadable manifest)."""
        folder = store_root(data_root) / key.folder_name
        store = cls(folder, key, n)
        if not store._intact():
            with store._locked():
                if not store._intact():
                    store._create()
        return store

    # ---- on disk

    def _intact(self) -> bool:
        try:
            manifest = read_json(self.manifest_path)
            filled = _read_filled(self.filled_path, self.n)
            images = os.stat(self.images_path)
        except (FileNotFoundError, NotADirectoryError, ValueError):  # absent, or not what we write: rebuild
            return False  # (ValueError: BadFile too, a folder or a FIFO where a file of ours belongs)
        except OSError as err:  # unreadable (another user's 0600 file, EIO, ESTALE): never rebuild over it
            raise DataError("dataset", f"{self.key.dataset}: cannot read the image store {self.folder}: "
                                       f"{err.strerror or err}") from None
        if isinstance(manifest, dict):
            manifest.pop("files", None)  # where the files were read: not what the pixels depend on
        return (manifest == self.key.manifest(self.n) and filled is not None and stat.S_ISREG(images.st_mode)
                and images.st_size == self.n * self.row_bytes)

    def _create(self) -> None:
        """Empty files for the store (under the lock). Whatever was there is removed first: a store that
        is not intact is rebuilt, never patched. The manifest comes last, so its presence says the rest
        is there."""
        try:
            for path in (self.manifest_path, self.filled_path, self.images_path):
                if path.is_dir() and not path.is_symlink():  # a folder where a file of ours belongs: damage too
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
            with open(self.images_path, "wb") as f:
                f.truncate(self.n * self.row_bytes)  # sparse: disk is used as rows are written
            _atomic_save(self.filled_path, np.zeros(self.n, dtype=bool))
            where = {"files": self.key.files} if self.key.files else {}
            _atomic_write(self.manifest_path, (json.dumps(self.key.manifest(self.n) | where, indent=1) + "\n").encode())
        except OSError as err:
            raise self._write_error(err) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.folder / ".lock"
        try:
            if os.path.lexists(self.folder) and not self.folder.is_dir():  # a file (or a dangling link) named as
                self.folder.unlink()                                        # the store: damage, rebuilt
            self.folder.mkdir(parents=True, exist_ok=True)
            if lock.is_dir() and not lock.is_symlink():  # a folder where the lock file belongs: damage too
                shutil.rmtree(lock)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise self._write_error(err) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another run is filling this store: say so, then wait for it
                print(f"waiting for another run storing images in {self.folder}", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:  # ENOLCK (NFS mounted nolock), ENOSYS (Lustre without flock)
            os.close(fd)
            raise DataError("dataset", f"{self.key.dataset}: cannot lock the image store {self.folder} "
                                       f"({err.strerror or err}); put data_root on a file system with flock, or "
                                       "run `continual data prepare` once before starting runs in parallel") from None
        try:
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write_error(self, err: OSError) -> DataError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(self.folder if self.folder.exists() else self.folder.parent).free
            return DataError("dataset", f"{self.key.dataset}: the disk is full while storing decoded images in "
                                        f"{self.folder} ({free / 2**30:.1f} GiB free); free some space or set "
                                        "data_root elsewhere, then run again (stored rows are kept)")
        return DataError("dataset", f"{self.key.dataset}: cannot write the image store {self.folder}: "
                                    f"{err.strerror or err}; data_root must be writable")

    def filled(self) -> np.ndarray:
        if self._filled is None or not self._filled.all():
            try:
                self._filled = _read_filled(self.filled_path, self.n)
            except OSError:
                self._filled = None
            if self._filled is None:  # being recreated (or damaged since it was opened): nothing counts as filled
                return np.zeros(self.n, dtype=bool)
        return self._filled

    # ---- reading

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (k, 3, S, S) for filled `rows`, in their order: one pread per run of consecutive rows, each
        straight into its place in the output (no copy to reorder), spread over READERS threads (pread
        releases the GIL; the copies from the page cache then run on several cores)."""
        s = self.key.size
        out = np.empty((len(rows), 3, s, s), dtype=np.uint8)
        if not len(rows):
            return out
        if self._fd is None:
            raise RuntimeError("Store.read before ensure: rows are read once ensure has stored them")
        flat = out.reshape(len(rows), -1)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = [(a, min(a + 16, stop))  # runs of at most 16 rows, so that threads share a long one too
                for start, stop in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist())
                for a in range(start, stop, 16)]

        def read_runs(part: list[tuple[int, int]]) -> None:
            for start, stop in part:
                view = memoryview(flat[start:stop]).cast("B")
                if os.preadv(self._fd, [view], int(rows[start]) * self.row_bytes) != len(view):
                    raise DataError("dataset", f"{self.key.dataset}: the image store {self.images_path} is "
                                               "truncated (read past its end); delete its folder and run again")

        threads = min(READERS, len(runs) // 4)
        if threads < 2:
            read_runs(runs)
        else:
            with self._opening:
                if self._readers is None:
                    self._readers = ThreadPoolExecutor(READERS, thread_name_prefix="store-read")
            list(self._readers.map(read_runs, [runs[i::threads] for i in range(threads)]))
        return out

    def close(self, _close=os.close) -> None:  # _close: still there when __del__ runs at interpreter exit
        if self._readers is not None:
            self._readers.shutdown(wait=False)
            self._readers = None
        if self._fd is not None:
            _close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    # ---- filling

    def ensure(self, rows: np.ndarray, decode: Callable[[int, int], object], *, workers: int | None = None) -> int:
        """Decode and write the rows among `rows` not stored yet; returns how many were decoded. Then the
        images file stays open for reading: the rows this run reads are those it saw filled, even if the
        store's folder is deleted or rebuilt by another run meanwhile (the open file keeps its data)."""
        decoded = self._ensure(rows, decode, workers=workers)
        with self._opening:
            if self._fd is None:
                self._fd = os.open(self.images_path, os.O_RDONLY)
        return decoded

    def _ensure(self, rows: np.ndarray, decode, *, workers: int | None) -> int:
        if self.filled()[rows].all():
            return 0
        with self._locked():
            self._filled = None
            if not self._intact():  # deleted or damaged since it was opened
                self._create()
            filled = self.filled().copy()
            missing = np.unique(rows[~filled[rows]])
            if len(missing):
                self._fill(missing, decode, filled, workers=workers)
            return len(missing)

    def _fill(self, missing: np.ndarray, decode, filled: np.ndarray, *, workers: int | None) -> None:
        from torch.utils.data import DataLoader

        workers = default_workers() if workers is None else workers
        if len(missing) < 256:
            workers = 0  # starting processes costs more than a few hundred images
        writer = _DecodeAndWrite(decode, missing, size=self.key.size, path=self.images_path, row_bytes=self.row_bytes,
                                 dataset=self.key.dataset, split=self.key.split)
        loader = DataLoader(writer, batch_size=32, num_workers=workers, collate_fn=_as_list,
                            multiprocessing_context="fork" if workers else None, prefetch_factor=4 if workers else None)
        bar = progress.bar(len(missing), f"storing {self.key.dataset} {self.key.split} at {self.key.size} px",
                           enabled=len(missing) >= PROGRESS_FROM)
        fd = os.open(self.images_path, os.O_WRONLY)
        done: list[int] = []
        # Syncing 8,192 rows (1.2 GB at 224 px) takes seconds: a thread does it (then marks them), so that
        # the workers go on decoding meanwhile. Measured on this project's 2-core machine: 1.06x one thread
        # when the sync stopped the build, 2.0x onto tmpfs (no sync cost).
        flusher = ThreadPoolExecutor(1, thread_name_prefix="store-sync")
        pending = None
        try:
            for batch in loader:
                for row, problem in batch:
                    if isinstance(problem, OSError):
                        raise problem
                    if problem is not None:  # what was decoded stays decoded
                        if pending is not None:
                            pending.result()
                        self._mark(fd, filled, done)
                        raise DataError(*problem)
                    done.append(row)
                bar.update(len(batch))
                if len(done) >= CHECKPOINT_ROWS:
                    if pending is not None:
                        pending.result()  # one sync at a time; its errors surface here
                    pending, done = flusher.submit(self._mark, fd, filled, done), []
            if pending is not None:
                pending.result()
            self._mark(fd, filled, done)
        except OSError as err:
            flusher.shutdown(wait=True)
            with contextlib.suppress(OSError):  # keep what is on disk, if the disk lets us say so
                self._mark(fd, filled, done)
            raise self._write_error(err) from None
        finally:
            flusher.shutdown(wait=True)  # before the file is closed under it
            bar.close()
            os.close(fd)
            writer.close()
            self._filled = None

    def _mark(self, fd: int, filled: np.ndarray, done: list[int]) -> None:
        """Rows in `done` are on disk: sync them, then say so in filled.npy."""
        if not done:
            return
        os.fdatasync(fd)
        filled[np.asarray(done)] = True
        _atomic_save(self.filled_path, filled)


def default_workers() -> int:
    """Decoding processes: the cores this process may use, at most 16."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return min(cores, 16) if sys.platform.startswith("linux") else 0  # fork is Linux's safe default


class _DecodeAndWrite:
    """A torch Dataset over the missing rows whose items decode a row and write it into the store, in
    the worker process: only row numbers cross back to the parent (150 KB of pixels a row through a pipe,
    then a write by one process, held 16 workers to 4.4x one). Problems are returned, not raised: a
    worker's exception reaches the parent as a RuntimeError with a traceback, not the message that names
    the file (a DataError) or the errno that says the disk is full (an OSError)."""

    def __init__(self, decode, rows: np.ndarray, *, size: int, path: Path, row_bytes: int, dataset: str, split: str):
        self.decode, self.rows, self.size, self.path, self.row_bytes = decode, rows, size, path, row_bytes
        self.dataset, self.split = dataset, split
        self.fd: int | None = None
        self.pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        try:
            pixels = np.ascontiguousarray(np.asarray(self.decode(row, self.size)), dtype=np.uint8)
        except DataError as err:
            return row, (err.key, err.message)
        except Exception as err:  # a torchvision dataset's own reader: PIL's errors, a missing file, ...
            return row, ("dataset", f"{self.dataset}: cannot decode image {row} of its {self.split} split: "
                                    f"{' '.join(str(err).split()) or type(err).__name__}")
        try:
            if self.pid != os.getpid():  # opened once per process (a forked worker gets its own)
                self.fd, self.pid = os.open(self.path, os.O_WRONLY), os.getpid()
            data = pixels.tobytes()
            if os.pwrite(self.fd, data, row * self.row_bytes) != len(data):  # a short write: the disk filled
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return row, None
        except OSError as err:
            return row, OSError(err.errno, err.strerror)

    def close(self) -> None:
        if self.fd is not None and self.pid == os.getpid():
            os.close(self.fd)
        self.fd = None


def _as_list(batch):
    return batch


def _atomic_write(path: Path, data: bytes) -> None:
    """files.atomic_write, with a full disk as the OSError behind it: a DiskFull speaks of runs and --resume,
    while the store says it in its own words (Store._write_error)."""
    try:
        atomic_write(path, data)
    except DiskFull as err:
        raise err.cause from None


def _read_filled(path: Path, n: int) -> np.ndarray | None:
    """filled.npy as _atomic_save writes it (bool, shape (n,)), or None for anything else: its header is
    read first, so that a damaged one claiming 10**11 rows is refused, not allocated (np.load would try).
    OSError when it cannot be read; a folder or a FIFO is a BadFile (a ValueError: damage)."""
    with open_regular(path) as f:
        try:
            if np.lib.format.read_magic(f) != (1, 0):
                return None
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        except ValueError:  # not an .npy file at all, or its header cut short
            return None
        if shape != (n,) or dtype != np.dtype(bool):
            return None
        data = f.read(n + 1)
    return np.frombuffer(data, dtype=bool).copy() if len(data) == n else None


def _atomic_save(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    _atomic_write(path, buffer.getvalue())


# ---- what is stored (`continual data list`) -----------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    folder: Path
    dataset: str
    split: str
    size: int
    images: int
    filled: int
    disk_bytes: int  # blocks actually used (the images file is sparse)
    modified: float
    files: str = ""  # where the dataset's files were read (image folders: the user's folder)


def list_stores(data_root: Path) -> list[Stored]:
    """Every store under data_root, from manifests and file sizes only (no torch)."""
    found = []
    root = store_root(data_root)
    for manifest_path in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        folder = manifest_path.parent
        try:
            manifest = read_json(manifest_path)
            keys = ("dataset", "split", "size", "images")
            fields = [manifest.get(k) for k in keys] if isinstance(manifest, dict) else []
            if [type(v) for v in fields] != [str, str, int, int]:
                continue  # damaged: rebuilt by the next run that needs it
            filled = _read_filled(folder / "filled.npy", manifest["images"])
            if filled is None:
                continue
            filled = int(filled.sum())
            used = sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())
            modified = max(p.stat().st_mtime for p in folder.iterdir() if p.is_file())
        except (OSError, ValueError, KeyError):
            continue
        files = manifest.get("files")
        found.append(Stored(folder, *fields, filled, used, modified, files if isinstance(files, str) else ""))
    return found


def describe(stores: list[Stored], data_root: Path) -> str:
    if not stores:
        return f"no stored images under {store_root(data_root)}"
    lines = [f"{'dataset':<16} {'split':<6} {'size':>6} {'images stored':>19} {'on disk':>10}  last written      folder"]
    for s in stores:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.modified))
        lines.append(f"{s.dataset:<16} {s.split:<6} {s.size:>4}px {s.filled:>9,} of {s.images:<7,} "
                     f"{_size(s.disk_bytes):>10}  {when}  {s.folder.name}")
        if s.dataset == "imagefolder" and s.files:  # which of the user's folders: every one is `imagefolder`
            lines.append(f"{'':<16} images of {s.files}")
    total = sum(s.disk_bytes for s in stores)
    lines.append(f"{len(stores)} store(s), {_size(total)} under {store_root(data_root)}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
