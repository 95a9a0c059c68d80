"""Faults around the run folder (#11): runs racing for its lock, a lock file with anything in it, a full
disk, and an --out the tool cannot write in. Full disks and read-only mounts are real: small tmpfs
mounts (as root; skipped where mounting is not permitted)."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from continual import checkpoints
from continual.config import ConfigError
from continual.files import DiskFull, atomic_write, make_folder
from continual.out_folder import check_output
from continual.run_folder import RunFolder
from continual.run_lock import RunLock, RunLocked
from helpers import digits, fill, small_tmpfs, tiny_sequence

HOST = socket.gethostname()


# ----------------------------------------------------------------------------------------------------
# Helpers (small_tmpfs and fill, which test_store and test_ldifs use too, are in helpers.py)


def dead_pid() -> int:
    """The PID of a process that has just exited (reaped), as a killed run leaves in its lock."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


# ----------------------------------------------------------------------------------------------------
# The lock: processes racing for it


def _contend(folder, barrier, won, i, rounds):
    """One of the racing processes: every round, all try at once; winners hold until everyone has tried."""
    for _ in range(rounds):
        barrier.wait()
        lock = RunLock(folder)
        try:
            lock.__enter__()
            won[i] = 1
        except RunLocked:
            won[i] = 0
        barrier.wait()  # everyone has tried
        if won[i]:
            lock.__exit__(None, None, None)
        barrier.wait()  # released: the next round may be set up


def test_processes_entering_at_once_get_exactly_one_holder(tmp_path):
    """4 processes x 50 rounds, starting from: no lock file, one left by a killed run, garbage. The old
    O_EXCL lock with stale takeover let two or three in, in 7 of 100 rounds of 3 processes."""
    n, rounds = 4, 50
    ctx = multiprocessing.get_context("fork")
    barrier, won = ctx.Barrier(n + 1, timeout=30), ctx.Array("i", n)
    workers = [ctx.Process(target=_contend, args=(tmp_path, barrier, won, i, rounds)) for i in range(n)]
    for w in workers:
        w.start()
    stale = json.dumps({"pid": dead_pid(), "host": HOST, "started": "2026-11-26 10:00:00"}).encode()
    winners = []
    try:
        for r in range(rounds):
            start = [None, stale, b"", b"{trunc"][r % 4]
            if start is not None:
                (tmp_path / ".lock").write_bytes(start)
            barrier.wait()
            barrier.wait()
            winners.append(sum(won))
            barrier.wait()
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in workers] == [0] * n
    assert winners == [1] * rounds, f"rounds with other than one holder: {[(r, k) for r, k in enumerate(winners) if k != 1]}"
    assert not (tmp_path / ".lock").exists()


def _take_turns(folder, seconds, counts, i):
    """Take the lock as often as possible for `seconds`; inside, claim a marker only one may hold."""
    marker = folder / "inside"
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with RunLock(folder):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    counts[2 * i + 1] += 1  # two inside at once
                    continue
                os.close(fd)
                time.sleep(0.0002)
                os.unlink(marker)
                counts[2 * i] += 1
        except RunLocked:
            pass


def test_the_lock_excludes_while_it_changes_hands(tmp_path):
    """Holders releasing (unlinking .lock) while others open it: nobody may lock a file that is gone."""
    n = 4
    ctx = multiprocessing.get_context("fork")
    counts = ctx.Array("i", 2 * n)
    workers = [ctx.Process(target=_take_turns, args=(tmp_path, 1.5, counts, i)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    assert [w.exitcode for w in workers] == [0] * n
    entered, overlaps = sum(counts[0::2]), sum(counts[1::2])
    assert overlaps == 0 and entered > 50, (entered, overlaps)
    assert not (tmp_path / ".lock").exists()


# ----------------------------------------------------------------------------------------------------
# The lock: who holds it, and what may be in .lock


def hold_in_child(folder: Path):
    """A process that takes the lock and keeps it until killed. Returns its PID once it holds it."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            with RunLock(folder):
                os.write(write, b"1")
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    return pid


def test_a_held_lock_names_its_holder_and_a_killed_holder_releases_it(tmp_path):
    pid = hold_in_child(tmp_path)
    try:
        with pytest.raises(RunLocked) as err, RunLock(tmp_path):
            pass
        assert f"{tmp_path}: another run is writing here (PID {pid} on {HOST}, started " in str(err.value)
        assert "wait for it, stop it, or use another --out" in str(err.value)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == pid  # left behind by the killed holder
    with RunLock(tmp_path) as lock:  # the kernel released it: no stale-lock logic needed
        assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"PID {os.getpid()} on"), RunLock(tmp_path):
            pass
        assert (tmp_path / ".lock").exists()  # the refused one removed nothing
    assert not (tmp_path / ".lock").exists()


def test_garbage_in_a_held_lock_still_says_another_run_is_writing(tmp_path):
    with RunLock(tmp_path):
        (tmp_path / ".lock").write_bytes(b"\x00\xff not json")
        began = time.monotonic()
        with pytest.raises(RunLocked, match="another run is writing here .it has not written who it is yet."), \
                RunLock(tmp_path):
            pass
        assert time.monotonic() - began < 2


GARBAGE = {
    "empty": b"",
    "null": b"null",
    "a list": b"[1, 2, 3]",
    "a string": b'"12345"',
    "cut short": b'{"pid": 12',
    "not utf-8": b"\xff\xfe\x00\x81",
    "nested deeper than json goes": b"[" * 100_000,
    "no host": json.dumps({"pid": 1, "started": "x"}).encode(),
    "non-numeric pid": json.dumps({"pid": "abc", "host": HOST, "started": "x"}).encode(),
    "huge pid": json.dumps({"pid": 10**30, "host": HOST, "started": "x"}).encode(),
    "pid -1": json.dumps({"pid": -1, "host": HOST, "started": "x"}).encode(),
    "pid 0": json.dumps({"pid": 0, "host": HOST, "started": "x"}).encode(),
    "pid true": json.dumps({"pid": True, "host": HOST, "started": "x"}).encode(),
    "pid 1.5": json.dumps({"pid": 1.5, "host": HOST, "started": "x"}).encode(),
    "host a number": json.dumps({"pid": 1, "host": 7, "started": "x"}).encode(),
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_lock_file_with_garbage_in_it_is_taken(tmp_path, content):
    (tmp_path / ".lock").write_bytes(content)
    with RunLock(tmp_path) as lock:
        assert lock.held
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_left_by_a_dead_process_or_another_host_is_taken(tmp_path):
    """Nobody holds these: a killed run here, and one on another node (a Slurm job resumed elsewhere)."""
    for holder in ({"pid": dead_pid(), "host": HOST, "started": "2026-11-26 10:00:00"},
                   {"pid": os.getppid(), "host": "some-other-node", "started": "2026-11-26 10:00:00"}):
        (tmp_path / ".lock").write_text(json.dumps(holder))
        with RunLock(tmp_path):
            pass
        assert not (tmp_path / ".lock").exists()


def test_a_live_pid_in_a_lock_nobody_holds_is_taken(tmp_path):
    """A killed run's PID reused by another process (common in containers, whose PIDs start at 1) must not
    keep the folder locked for ever: only flock says whether a run holds it."""
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": HOST, "started": "2026-11-26 10:00:00"}))
    with RunLock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("kind, words", [
    ("folder", "is a folder, where the run's lock file belongs"),
    ("symlink", "is a symbolic link, where the run's lock file belongs"),
    ("dangling symlink", "is a symbolic link, where the run's lock file belongs"),
    ("fifo", "is not a plain file, where the run's lock file belongs"),
])
def test_a_lock_that_is_not_a_file_is_refused_and_left_alone(tmp_path, kind, words):
    lock = tmp_path / ".lock"
    if kind == "folder":
        lock.mkdir()
        (lock / "keep").write_text("mine")
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text("mine")
        lock.symlink_to(tmp_path / "elsewhere")
    elif kind == "dangling symlink":
        lock.symlink_to(tmp_path / "missing")
    else:
        os.mkfifo(lock)
    with pytest.raises(RunLocked) as err, RunLock(tmp_path):
        pass
    assert str(err.value).startswith(f"{lock} {words}") and "\n" not in str(err.value)
    assert lock.is_symlink() or lock.exists()
    if kind == "folder":
        assert (lock / "keep").read_text() == "mine"
    if kind == "symlink":
        assert (tmp_path / "elsewhere").read_text() == "mine"


# ----------------------------------------------------------------------------------------------------
# A full disk


def assert_disk_full(err: DiskFull, folder: Path):
    msg = str(err)
    assert msg.startswith(f"{folder}: cannot write: the disk is full (") and " free); " in msg, msg
    assert msg.endswith("free some space, then run again with --resume") and "\n" not in msg


def test_atomic_write_on_a_full_disk_leaves_the_old_file(tmp_path):
    with small_tmpfs(1) as disk:
        path = disk / "metrics.json"
        atomic_write(path, "old")
        fill(disk)
        with pytest.raises(DiskFull) as err:
            atomic_write(path, "x" * 100_000)
        assert_disk_full(err.value, disk)
        assert path.read_text() == "old" and leftovers(disk) == []


def test_a_checkpoint_on_a_full_disk_is_disk_full_not_unexpected_pos(tmp_path):
    """torch.save alone says RuntimeError('... unexpected pos ...') and leaves .step-K.pt.tmp."""
    with small_tmpfs(2) as disk:
        run = RunFolder(disk / "tiny")
        checkpoints.save(run.step_checkpoint("ft", 1), {"format": checkpoints.FORMAT, "w": torch.ones(1000)})
        fill(disk, leave=300_000)
        big = {"format": checkpoints.FORMAT, "w": torch.zeros(250_000)}  # 1 MB
        for step in (1, 2):  # over the old one, and a new one
            with pytest.raises(DiskFull) as err:
                checkpoints.save(run.step_checkpoint("ft", step), big)
            assert_disk_full(err.value, run.checkpoints("ft"))
            assert err.value.__suppress_context__  # torch's RuntimeError is not shown under it
        assert leftovers(disk) == [] and run.checkpoint_steps("ft") == [1]
        state = checkpoints.load(run.step_checkpoint("ft", 1), expect={})
        assert torch.equal(state["w"], torch.ones(1000))


def test_write_step_on_a_full_disk_keeps_the_rows_before(tmp_path):
    with small_tmpfs(1) as disk:
        run = RunFolder(disk / "tiny")
        rows = [{"a": 0.5, "b": 0.25}]
        run.write_step("ft", rows=rows, tasks=["a", "b"], n_steps=1, timings=[{}])
        before = run.read_matrix("ft")
        fill(disk)
        with pytest.raises(DiskFull):
            run.write_step("ft", rows=rows + [{"a": 0.75, "b": 0.5}] * 500, tasks=["a", "b"], n_steps=600,
                           timings=[{}] * 501)
        assert run.read_matrix("ft").equals(before) and leftovers(disk) == []


def test_no_inode_left_is_disk_full_too(tmp_path):
    with small_tmpfs(1, options="nr_inodes=8") as disk:
        atomic_write(disk / "config.yaml", "name: tiny\n")
        with pytest.raises(OSError):
            for i in range(10):
                (disk / f"f{i}").touch()
        with pytest.raises(DiskFull):
            atomic_write(disk / "config.yaml", "name: other\n")
        with pytest.raises(DiskFull):
            make_folder(disk / "tiny" / "ft")
        with pytest.raises(DiskFull):
            with RunLock(disk):
                pass
        assert (disk / "config.yaml").read_text() == "name: tiny\n" and leftovers(disk) == []


def test_a_resume_on_a_still_full_disk_is_disk_full_and_releases_the_lock(tmp_path):
    """The runner's first writes of a --resume: the lock (over the killed run's), then config.yaml."""
    with small_tmpfs(1) as disk:
        run = RunFolder(disk / "tiny")
        run.create()
        config = "name: tiny\nmodel: {}\ntasks: []\ntraining: {}\nmethods:\n- finetune: {}\n"
        run.write_config(config)
        (run.path / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": HOST, "started": "x"}))
        fill(disk)
        with pytest.raises(DiskFull) as err, run.lock():
            run.write_config(run.claim(config, resume=True, overwrite=False) or config)
        assert_disk_full(err.value, run.path)
        assert run.config.read_text() == config and leftovers(disk) == []
        assert not (run.path / ".lock").exists()


def test_a_lock_on_a_full_disk_is_disk_full_and_leaves_no_lock(tmp_path):
    with small_tmpfs(1) as disk:
        fill(disk)
        with pytest.raises(DiskFull) as err, RunLock(disk):
            pass
        assert_disk_full(err.value, disk)
        assert not (disk / ".lock").exists()


SEQ = tiny_sequence(tasks=[digits("a", [0, 1], test=5), digits("b", [8, 9], test=5)], training={"batch_size": 8},
                    methods=["finetune", "ldifs"])


def test_a_run_that_fills_the_disk_stops_clearly_and_resumes_to_the_same_results(tmp_path, capsys):
    """The whole CLI on a real full disk: one message and exit status 1, consistent files, the same
    message while still full, and after space is freed --resume ends with the uninterrupted run's numbers."""
    from continual.cli import main

    seq = tmp_path / "seq.yaml"
    seq.write_text(json.dumps(SEQ))
    assert main(["run", str(seq), "--out", str(tmp_path / "reference"), "--quiet"]) == 0
    reference = tmp_path / "reference" / "tiny"
    size = sum(p.stat().st_size for p in reference.rglob("*") if p.is_file())  # about 2 checkpoints of 14 MB
    with small_tmpfs(size * 2 / 2**20) as disk:
        filler = fill(disk, leave=size // 2)  # room for the first method, not the second
        capsys.readouterr()
        assert main(["run", str(seq), "--out", str(disk), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "the disk is full" in err and "then run again with --resume" in err and "Traceback" not in err
        folder = disk / "tiny"
        assert leftovers(disk) == [] and not (folder / ".lock").exists()
        for doc in folder.glob("*/metrics.json"):  # whatever was written is whole
            rows = json.loads((doc.parent / "accuracy_matrix.json").read_text())
            assert json.loads(doc.read_text())["steps_done"] == len(rows) - 1

        assert main(["run", str(seq), "--out", str(disk), "--quiet", "--resume"]) == 1  # still full
        assert "the disk is full" in capsys.readouterr().err and leftovers(disk) == []

        filler.unlink()
        assert main(["run", str(seq), "--out", str(disk), "--quiet", "--resume"]) == 0
        for method in SEQ["methods"]:
            assert (folder / method / "accuracy_matrix.csv").read_text() == \
                (reference / method / "accuracy_matrix.csv").read_text()
            assert json.loads((folder / method / "metrics.json").read_text())["complete"] is True


# ----------------------------------------------------------------------------------------------------
# Output locations the tool cannot use


def out_error(out: Path, name: str = "tiny") -> str:
    with pytest.raises(ConfigError) as err:
        check_output(out, name)
    msg = str(err.value)
    assert msg.startswith(f"--out: {out}: ") and "\n" not in msg, msg
    return msg


def test_usable_outputs_pass_and_nothing_is_created(tmp_path):
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "tiny").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "made")
    for out in (tmp_path / "new" / "deeper", tmp_path / "made", tmp_path / "link", Path(os.path.relpath(tmp_path))):
        check_output(out, "tiny")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link", "made", "tiny"]


@pytest.mark.parametrize("layout", ["out", "run folder", "parent"])
def test_a_file_on_the_way(tmp_path, layout):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    out = {"out": blocker, "run folder": tmp_path, "parent": blocker / "out"}[layout]
    if layout == "run folder":
        blocker = tmp_path / "tiny"
        blocker.write_text("mine")
    assert f"{blocker} is a file; expected a folder for the results" in out_error(out)
    assert blocker.read_text() == "mine"


def test_a_fifo_on_the_way(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    assert f"{tmp_path / 'pipe'} is not a folder; expected a folder for the results" in out_error(tmp_path / "pipe")


@pytest.mark.parametrize("which", ["out", "run folder"])
def test_a_dangling_symlink(tmp_path, which):
    link = tmp_path / "out" if which == "out" else tmp_path / "tiny"
    link.symlink_to(tmp_path / "gone")
    msg = out_error(tmp_path / "out" if which == "out" else tmp_path)
    assert f"{link} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in msg


@pytest.mark.parametrize("loop", ["self", "pair"])
def test_a_symlink_loop(tmp_path, loop):
    out = tmp_path / "out"
    if loop == "self":
        out.symlink_to(out)
    else:
        out.symlink_to(tmp_path / "other")
        (tmp_path / "other").symlink_to(out)
    assert f"{out} is a symbolic link in a loop" in out_error(out)


def test_a_read_only_mount(tmp_path):
    with small_tmpfs(1, options="ro") as disk:
        assert f"{disk} is on a read-only file system" in out_error(disk / "out")


def test_a_read_only_bind_mount(tmp_path):
    with small_tmpfs(1) as disk:
        (disk / "src").mkdir()
        (disk / "ro").mkdir()
        subprocess.run(["mount", "--bind", str(disk / "src"), str(disk / "ro")], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(disk / "ro")], check=True)
            assert f"{disk / 'ro'} is on a read-only file system" in out_error(disk / "ro")
        finally:
            subprocess.run(["umount", str(disk / "ro")], check=True)


def test_a_folder_without_write_permission(tmp_path):
    """As root every permission passes, so the check runs in a child that became `nobody`."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user (as a user, a folder of root's serves the same)")
    top = Path(tempfile.mkdtemp(prefix="continual-perm-"))  # tmp_path is root's 0700 folder: nobody can enter
    try:
        top.chmod(0o755)
        (top / "locked").mkdir(mode=0o555)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read)
                os.setgid(65534)
                os.setuid(65534)
                check_output(top / "locked" / "out", "tiny")
                os.write(write, b"passed")
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                os.write(write, f"{type(err).__name__}: {err}".encode())
            finally:
                os._exit(0)
        os.close(write)
        result = os.read(read, 4096).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert result == f"ConfigError: --out: {top / 'locked' / 'out'}: cannot write in {top / 'locked'}: permission denied"
    finally:
        (top / "locked").rmdir()
        top.rmdir()


def test_no_inode_left_at_the_check_is_disk_full(tmp_path):
    with small_tmpfs(1, options="nr_inodes=4") as disk:
        with pytest.raises(OSError):
            for i in range(10):
                (disk / f"f{i}").touch()
        with pytest.raises(DiskFull):
            check_output(disk / "out", "tiny")
