"""The run folder, `<out>/<sequence name>/`: the one module that knows its layout.

    config.yaml                     the resolved sequence; its presence means "a run of ours is here"
    .lock                           flock(2)ed by the process writing here; holds its PID, host and start time
    <method>/accuracy_matrix.csv    step, one column per task (sequence order), one per probe (`probe:<name>`)
    <method>/accuracy_matrix.json   the same rows as a JSON list of records
    <method>/metrics.json           per step: average accuracy over seen tasks, forgetting, BWT; timings
    <method>/curves.png             accuracy of each task and probe against the step (drawn by the report)
    <method>/events.out.tfevents.*  TensorBoard's scalars (continual/monitor.py): `tensorboard --logdir <out>`
    checkpoints/start.pt            step 0, shared by every method (continual/checkpoints.py says what is in it)
    checkpoints/<method>/step-K.pt  after step K
    cache/<method>/                 large recomputable files (LDIFS's anchor taps on disk), removed at the end
    index.html, summary.md, summary.csv, environment.json   the report (continual/report/)

The runner writes through it, the report reads through it, and a run that finds a folder taken says
how far the run in it got.
Every file is written atomically (a temporary name, then rename): readers never see half a file, and a
full disk is a DiskFull naming the folder, never a half-written file under a final name.
No torch here: the report and `continual report` use it too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pandas as pd
import yaml

from continual import metrics
from continual.config import ConfigError
from continual.files import BadFile, open_regular, read_json
from continual.methods.options import item_key

CONFIG = "config.yaml"
MATRIX_CSV, MATRIX_JSON, METRICS, CURVES = "accuracy_matrix.csv", "accuracy_matrix.json", "metrics.json", "curves.png"
EVENTS = "events.out.tfevents.*"  # TensorBoard's event files, as its writer names them: one per process
INDEX, SUMMARY_MD, SUMMARY_CSV, ENVIRONMENT = "index.html", "summary.md", "summary.csv", "environment.json"
TABLES_TEX, FIGURES = "tables.tex", "figures"  # `continual report --latex`, `--format`: figures/<name>.<format>
REPORT_RECORD = "report.json"  # which of those the report was asked for, so that every rewrite redraws them
REPORT_FILES = (INDEX, SUMMARY_MD, SUMMARY_CSV, ENVIRONMENT, TABLES_TEX, REPORT_RECORD)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, content: str | bytes) -> None:
    """Write to a temporary name in the same folder, then rename: readers never see half a file."""
    with atomic_file(path) as f:
        f.write(content.encode() if isinstance(content, str) else content)


@contextmanager
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
    written is left as it was; the run can continue with --resume once there is room."""

    def __init__(self, folder: Path, cause: OSError | None = None):
        self.folder = Path(folder)
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


class RunExists(Exception):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


class RunLocked(Exception):
    """Another live process is writing into this run folder."""


class RunFolder:
    """One run's folder. Paths, what is complete, and how to claim it for a new or resumed run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- where things are

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    def method(self, name: str) -> Path:
        return self.path / name

    def checkpoints(self, name: str | None = None) -> Path:
        """checkpoints/ (start.pt lives there), or one method's checkpoint folder."""
        return self.path / "checkpoints" if name is None else self.path / "checkpoints" / name

    @property
    def start_checkpoint(self) -> Path:
        return self.checkpoints() / "start.pt"

    def step_checkpoint(self, name: str, step: int) -> Path:
        return self.checkpoints(name) / f"step-{step}.pt"

    def checkpoint_steps(self, name: str) -> list[int]:
        """Steps of method `name` with a checkpoint, ascending (temporary files of an interrupted write ignored)."""
        folder = self.checkpoints(name)
        found = [re.fullmatch(r"step-(\d+)\.pt", p.name) for p in folder.glob("step-*.pt")] if folder.is_dir() else []
        return sorted(int(m.group(1)) for m in found if m)

    def prune_checkpoints(self, name: str, *, keep: int) -> None:
        """Keep the newest `keep` step checkpoints of one method (0: none) and no leftover temporary files."""
        steps = self.checkpoint_steps(name)
        for step in steps[: max(0, len(steps) - keep)]:
            self.step_checkpoint(name, step).unlink(missing_ok=True)
        for tmp in self.checkpoints(name).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def cache(self, name: str) -> Path:
        return self.path / "cache" / name

    def methods_with_results(self) -> list[str]:
        """Methods that have written at least their matrix, by folder name."""
        return sorted(p.parent.name for p in self.path.glob(f"*/{MATRIX_CSV}"))

    # ---- writing

    def create(self) -> None:
        """The folder itself (and --out above it); after check_output, so only a full disk can fail here."""
        make_folder(self.path)

    def write_config(self, text: str) -> None:
        atomic_write(self.config, text)

    def write_step(self, method: str, *, rows: list[dict[str, float]], tasks: list[str], n_steps: int,
                   timings: list[dict], classes: list[int] | None = None, setting: str = "task_incremental") -> None:
        """(Re)write the numbers of one method after a step; `rows` are the matrix rows so far, `classes`
        each task's number of classes (the report draws chance level from them)."""
        folder = self.method(method)
        make_folder(folder)
        matrix = pd.DataFrame(rows)
        matrix.insert(0, "step", range(len(rows)))
        atomic_write(folder / MATRIX_CSV, matrix.to_csv(index=False, float_format="%.6f"))
        atomic_write(folder / MATRIX_JSON, matrix.to_json(orient="records", indent=1))
        per_step = metrics.step_metrics(matrix[tasks].to_numpy())
        doc = {"method": method, "steps_done": len(rows) - 1, "steps_total": n_steps,
               "complete": len(rows) - 1 == n_steps, "steps": per_step, "final": per_step[-1], "timings": timings,
               "setting": setting}
        if classes is not None:
            doc["classes"] = dict(zip(tasks, classes, strict=True))
        atomic_write(folder / METRICS, json.dumps(doc, indent=1, allow_nan=False))

    def record_failure(self, method: str, error: str) -> None:
        """Mark a method's results as failed (its rows so far stay as they are), for the report and the user."""
        try:
            doc = self.read_metrics(method) or {"method": method, "steps": []}
        except (OSError, ValueError):  # damaged: the error is what matters now
            doc = {"method": method, "steps": []}
        doc.update(complete=False, error=error)
        path = self.method(method) / METRICS
        make_folder(path.parent)
        atomic_write(path, json.dumps(doc, indent=1, allow_nan=False))

    # ---- reading

    def read_matrix(self, method: str) -> pd.DataFrame:
        return pd.read_csv(self.method(method) / MATRIX_CSV, index_col="step")

    def read_metrics(self, method: str) -> dict | None:
        """A method's metrics.json, None when it has none; a BadFile (ValueError) when it is damaged (not
        JSON, nested too deeply, not an object), an OSError when it cannot be read."""
        path = self.method(method) / METRICS
        if not path.exists():
            return None
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise BadFile(f"{path} holds a JSON {type(doc).__name__}, not the object continual writes")
        return doc

    def progress(self) -> str:
        """How far each method got, e.g. "finetune 3/3 steps, ldifs 1/3 steps"."""
        done = []
        for path in sorted(self.path.glob(f"*/{METRICS}")):
            try:
                doc = read_json(path)
                done.append(f"{path.parent.name} {doc['steps_done']}/{doc['steps_total']} steps")
            except (OSError, ValueError, KeyError, TypeError):  # TypeError: a JSON list or number
                done.append(f"{path.parent.name} unreadable")
        return ", ".join(done) or "no step finished yet"

    # ---- claiming it for a run

    def claim(self, config_text: str, *, resume: bool, overwrite: bool, may_differ: tuple[str, ...] = ()) -> str:
        """Make the folder ours for a run of `config_text` (called holding its lock) and return the config
        to write: nothing computed is discarded unless asked, and a resume must be of the same sequence
        (except keys in `may_differ`). Methods may be added on resume (each method's options must be the
        same as before); the config then lists the run's methods, then the new ones."""
        new = yaml.safe_load(config_text)
        on_disk = self._run_here(new["name"], resume=resume, overwrite=overwrite)
        if on_disk is None or overwrite:
            self._discard()
            return config_text
        on_disk = _as_today(on_disk)
        old_methods = {item_key(item): item for item in on_disk["methods"]}  # by label, else by name
        new_methods = {item_key(item): item for item in new["methods"]}
        differ = differences({**on_disk, "methods": None}, {**new, "methods": None})
        differ += [(f"methods.{name}{'.' + key if key else ''}", a, b) for name in old_methods.keys() & new_methods.keys()
                   for key, a, b in differences(_entry(old_methods[name]), _entry(new_methods[name]))]
        differ = [(key, f"was {a!r} in this run, is {b!r} now") for key, a, b in differ if key not in may_differ]
        if differ:
            raise ConfigError(str(self.config), differ + [("", "resume needs the sequence the run was started "
                                                               "with; use --overwrite to start again with this one")])
        merged = {**old_methods, **new_methods}  # the run's order, then methods new to it
        return yaml.safe_dump({**new, "methods": list(merged.values())}, sort_keys=False)

    def check_free(self, name: str, *, resume: bool, overwrite: bool) -> None:
        """The RunExists that `claim` would raise for a run of `name`, said before the model and data are
        loaded (seconds to minutes) rather than after; nothing is read but the folder's own files, nothing
        written. `claim` decides again under the lock. A folder another run holds is left to its lock,
        whose RunLocked says who holds it, rather than a RunExists that says to add --resume."""
        if self.lock_holder() is None:
            self._run_here(name, resume=resume, overwrite=overwrite)

    def _run_here(self, name: str, *, resume: bool, overwrite: bool) -> dict | None:
        """The config of our run of `name` in this folder (None: none), or RunExists where a new run may not
        start here: a run without --resume or --overwrite, results without a config, another's config."""
        on_disk = self._our_config(name)
        if on_disk is None and self._holds_results() and not overwrite:  # an --overwrite stopped after config.yaml went
            raise RunExists(f"{self.path} holds results of a run but no {CONFIG} (an interrupted --overwrite?), "
                            "so they cannot be checked against this sequence; add --overwrite to discard "
                            "them, or choose another --out")
        if on_disk is not None and not resume and not overwrite:
            raise RunExists(f"{self.path} already holds a run of '{name}' ({self.progress()}); "
                            "add --resume to continue it, --overwrite to discard it, or choose another --out")
        return on_disk

    def _our_config(self, name: str) -> dict | None:
        """The config.yaml of our run of `name` here, None when there is none; a config.yaml that is not
        one (another tool's, another sequence's, unreadable) is never resumed or overwritten: RunExists."""
        if not self.config.exists():
            return None
        try:
            with open_regular(self.config) as f:  # a FIFO there would block a plain read forever
                doc = yaml.safe_load(f.read().decode())
        except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:  # ValueError: BadFile, not UTF-8
            doc, why = None, f"cannot be read ({' '.join(str(err).split())[:120]})"  # RecursionError: nested deeply
        else:
            why = "was not written by continual"
        methods = doc.get("methods") if isinstance(doc, dict) else None
        ours = (isinstance(doc, dict) and {"name", "model", "tasks", "training", "methods"} <= doc.keys()
                and isinstance(methods, list) and all(isinstance(m, dict) and len(m) == 1 for m in methods))
        if ours and doc["name"] == name:
            return doc
        if ours:
            why = f"holds a run of '{doc['name']}', not of '{name}'"
        raise RunExists(f"{self.config} {why}, so nothing here is resumed or overwritten; choose another --out")

    def _holds_results(self) -> bool:
        return self.start_checkpoint.exists() or bool(self._method_folders())

    def _method_folders(self) -> list[Path]:
        return [p for p in self.path.iterdir() if p.is_dir() and not p.is_symlink()
                and any((p / f).exists() for f in (MATRIX_CSV, METRICS))] if self.path.is_dir() else []

    def _discard(self) -> None:
        """What --overwrite removes: the files a run writes, by name, and the folders they leave empty;
        nothing else that may be here. config.yaml goes last: until then the folder is still a run of ours
        (an interrupted --overwrite is finished by the next one)."""
        def remove(folder: Path, patterns: tuple[str, ...]) -> None:
            for pattern in patterns:
                for path in folder.glob(pattern):
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

        ours = (EVENTS, MATRIX_CSV, MATRIX_JSON, METRICS, CURVES, ".*.tmp")  # what marks a method folder: last
        for folder in self._method_folders():
            remove(folder, ours)
        checkpoints = self.checkpoints()
        if checkpoints.is_dir():
            for folder in [p for p in checkpoints.iterdir() if p.is_dir() and not p.is_symlink()]:
                remove(folder, ("step-*.pt", ".*.tmp"))
            remove(checkpoints, ("start.pt", ".*.tmp"))
        cache = self.path / "cache"
        if cache.is_dir():
            for folder in [p for p in cache.iterdir() if p.is_dir() and not p.is_symlink()]:
                remove(folder, ("*-tap*.npy",))
            remove(cache, ())
        for name in REPORT_FILES:
            (self.path / name).unlink(missing_ok=True)
        if (self.path / FIGURES).is_dir():
            remove(self.path / FIGURES, ("*.png", "*.pdf", "*.svg", ".*.tmp"))
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self.config.unlink(missing_ok=True)

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def lock_holder(self) -> dict | None:
        """{pid, host, started} of the run holding this folder's lock, as far as can be told without taking
        it (a probe that took the lock, even briefly, could make a starting run fail): a record whose process
        is alive on this host, or any record from another host (whose processes cannot be asked). None when
        no run holds it here."""
        holder = _holder(_read(self.path / ".lock")) if (self.path / ".lock").is_file() else None
        if holder is None or holder["host"] != socket.gethostname():
            return holder
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return None  # a killed run's record: the kernel dropped its lock with it
        except PermissionError:
            pass  # alive, another user's
        return holder


def _entry(item: dict) -> dict:
    """A method item of config.yaml, `{ldifs: {lambda: 10}}`, as the options compared on resume (the method's
    name too, for an entry known by its label)."""
    (name, options), = item.items()
    return {"method": name, **(options or {})}


def _as_today(doc: dict) -> dict:
    """A run's config.yaml as this version writes it: keys added since it was written (`training.augment`,
    a task's `templates`) get their defaults, so a run started before an upgrade can still be resumed.
    A config that is not valid today is compared as written (the differences then name the keys)."""
    from continual.config import Sequence, dump_sequence

    try:
        return yaml.safe_load(dump_sequence(Sequence.model_validate(doc)))
    except Exception:  # pydantic's ValidationError, or anything else an old file holds
        return doc


def differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Key paths (`training.lr`, `tasks[1].classes`) where two YAML trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a + b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [(prefix, a, b)]


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


def load_run(folder: str | Path) -> dict[str, pd.DataFrame]:
    """A run folder (<out>/<sequence name>) -> {method: accuracy matrix indexed by step}, in config.yaml's
    method order (the sequence's), then any other method with results."""
    run = RunFolder(folder)
    out = {name: run.read_matrix(name) for name in _method_order(run)}
    if not out:
        raise FileNotFoundError(f"{folder}: no <method>/{MATRIX_CSV} here; is it a run folder?")
    return out


def load_metrics(folder: str | Path) -> pd.DataFrame:
    """Per-step metrics of every method in a run folder, tidy: method, step, metric, value (the same frame
    as continual.report.load_tables(folder)["metrics"]), methods in config.yaml's order. FileNotFoundError
    when the folder holds no results; continual.report.ReportError when its config.yaml is unreadable."""
    if not RunFolder(folder).methods_with_results():
        raise FileNotFoundError(f"{folder}: no <method>/{MATRIX_CSV} here; is it a run folder?")
    from continual.report.tables import load_tables  # reads this module's files: imported when called

    return load_tables(folder)["metrics"]


def _method_order(run: RunFolder) -> list[str]:
    found = run.methods_with_results()
    try:
        config = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
    except (OSError, ValueError, yaml.YAMLError, RecursionError):  # damaged: the folders' order
        config = {}
    methods = config.get("methods") if isinstance(config, dict) else None
    listed = [key for m in methods if (key := item_key(m)) in found] if isinstance(methods, list) else []
    return listed + [m for m in found if m not in listed]
