"""Resume: a run killed at any point and continued with --resume ends with exactly the uninterrupted
run's results; a resume is refused when the sequence or a checkpoint does not fit."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from continual.checkpoints import FORMAT
from continual.cli import main
from helpers import assert_same_results, resume_sequence

ROOT = Path(__file__).resolve().parents[1]

SEQ = resume_sequence()

# Runs the CLI in a subprocess and SIGKILLs it at KILL_AT = kind:method:step, where kind is
#   train       during training of that step's task (at its second optimiser update),
#   files       right after that step's result files are written (before the report),
#   checkpoint  while that step's checkpoint is written (the temporary file is whole, never renamed).
KILLER = r"""
import os, signal, sys
import torch
from continual import runner
from continual.cli import main

kind, method, step = os.environ["KILL_AT"].split(":")
step = int(step)
now = {"method": None, "step": None, "updates": 0}
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

run_method, seed_step = runner.run_method, runner.seed_step
def tracked_run_method(seq, name, *args, **kwargs):
    now["method"] = name
    return run_method(seq, name, *args, **kwargs)
def tracked_seed_step(seed, s):
    now["step"], now["updates"] = s, 0
    seed_step(seed, s)
runner.run_method, runner.seed_step = tracked_run_method, tracked_seed_step

if kind == "train":
    adamw_step = torch.optim.AdamW.step
    def counted(self, *args, **kwargs):
        if (now["method"], now["step"]) == (method, step):
            now["updates"] += 1
            if now["updates"] == 2:
                die()
        return adamw_step(self, *args, **kwargs)
    torch.optim.AdamW.step = counted
elif kind == "files":
    from continual.run_folder import RunFolder
    write_step = RunFolder.write_step
    def written(self, name, **kwargs):
        write_step(self, name, **kwargs)
        if name == method and len(kwargs["rows"]) - 1 == step:
            die()
    RunFolder.write_step = written
elif kind == "checkpoint":
    replace = os.replace
    def renamed(src, dst):
        if str(dst).endswith(os.path.join(method, f"step-{step}.pt")):
            die()
        replace(src, dst)
    os.replace = renamed
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def seq_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "tiny.yaml"
    path.write_text(yaml.safe_dump(SEQ))
    return path


@pytest.fixture(scope="module")
def reference(seq_file, tmp_path_factory):
    """The uninterrupted run of all five methods."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["run", str(seq_file), "--out", str(out), "--quiet"]) == 0
    return out / "tiny"


def run_and_kill(seq_file, out, methods, kill_at):
    env = {**os.environ, "KILL_AT": kill_at, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLER, "run", str(seq_file), "--out", str(out), "--quiet",
                           "--methods", methods], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.mark.parametrize("kill_at, methods", [
    ("train:lwf:2", "lwf,replay"),          # LwF resumes with its teacher; replay starts after the resume
    ("files:ewc:1", "ewc,finetune"),        # EWC resumes with its importances
    ("checkpoint:replay:2", "ldifs,replay"),  # LDIFS was complete; replay resumes with its buffer
])
def test_a_killed_run_resumes_to_identical_results(seq_file, reference, tmp_path, capsys, kill_at, methods):
    out = tmp_path / "out"
    run_and_kill(seq_file, out, methods, kill_at)
    folder = out / "tiny"
    assert (folder / ".lock").exists()  # left by the killed process: stale, taken over below
    assert not list(folder.glob("*/.*.tmp")) and not list(folder.glob("*.json.tmp"))

    assert main(["run", str(seq_file), "--out", str(out), "--quiet", "--methods", methods]) == 2
    assert "add --resume to continue it" in capsys.readouterr().err

    assert main(["run", str(seq_file), "--out", str(out), "--quiet", "--methods", methods, "--resume"]) == 0
    for method in methods.split(","):
        assert_same_results(folder, reference, method)
        assert [p.name for p in (folder / "checkpoints" / method).iterdir()] == ["step-2.pt"]  # keep 1
    assert not (folder / ".lock").exists()


def test_a_resume_with_another_sequence_is_refused_naming_the_keys(seq_file, reference, capsys):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    out = str(reference.parent)
    assert main(["run", str(seq_file), "--out", out, "--quiet", "--resume",
                 "--set", "training.lr=1e-3", "--set", "seed=2"]) == 2
    err = capsys.readouterr().err
    assert f"{reference / 'config.yaml'}: training.lr: was 1e-05 in this run, is 0.001 now" in err
    assert "seed: was 1 in this run, is 2 now" in err
    assert "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before  # nothing touched
    # keep_checkpoints says what is kept, not what is computed: changing it is not a different run
    assert main(["run", str(seq_file), "--out", out, "--quiet", "--resume", "--methods", "finetune",
                 "--set", "keep_checkpoints=2"]) == 0


def test_a_run_written_before_new_keys_existed_still_resumes(seq_file, reference, tmp_path):
    """config.yaml of an older version lacks keys added since (training.augment, a task's templates): they
    take their defaults, so upgrading continual does not strand a half-finished run."""
    folder = tmp_path / "tiny"
    shutil.copytree(reference, folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    del config["training"]["augment"]
    for spec in config["tasks"] + config["probes"]:
        del spec["templates"]
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(seq_file), "--out", str(tmp_path), "--quiet", "--resume", "--methods", "finetune"]) == 0
    assert main(["run", str(seq_file), "--out", str(tmp_path), "--quiet", "--resume", "--methods", "finetune",
                 "--set", "training.augment=flip"]) == 2  # a value other than the default is a difference


@pytest.fixture(scope="module")
def finished(seq_file, tmp_path_factory):
    """A finished two-step finetune run, copied by tests that damage it."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", str(seq_file), "--out", str(out), "--quiet", "--methods", "finetune",
                 "--set", "keep_checkpoints=2"]) == 0
    return out / "tiny"


def damaged_copy(finished, tmp_path, damage):
    folder = tmp_path / "out" / "tiny"
    shutil.copytree(finished, folder)
    # Unfinished, as a kill after step 2's checkpoint but before its result files leaves it: a finished
    # method is kept as it is by --resume, without reading its checkpoints.
    metrics = folder / "finetune" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "complete": False}))
    path = folder / "checkpoints" / "finetune" / "step-2.pt"
    damage(path)
    return path


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "cannot be read"),
    (lambda p: p.write_text("not a checkpoint\n"), "cannot be read"),
    (lambda p: torch.save({"format": FORMAT, "method": "finetune", "step": 2, "backbone": {"w": torch.zeros(3)},
                           "heads": {}}, p), "does not fit this run's model"),
    (lambda p: torch.save({"format": FORMAT, "method": "ldifs", "step": 2}, p), "holds method 'ldifs', expected 'finetune'"),
    (lambda p: torch.save(torch.zeros(3), p), "not a continual checkpoint"),
    # a run started before the seeds changed (format 1) selected other images: never continued
    (lambda p: torch.save({**torch.load(p, weights_only=True), "format": 1}, p), "older version of continual"),
])
def test_a_checkpoint_that_does_not_fit_is_an_error_not_skipped(finished, seq_file, tmp_path, capsys, damage, words):
    path = damaged_copy(finished, tmp_path, damage)
    before = path.read_bytes()
    assert main(["run", str(seq_file), "--out", str(tmp_path / "out"), "--quiet", "--methods", "finetune",
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and words in err, err
    assert "Traceback" not in err
    assert path.read_bytes() == before and (path.parent / "step-1.pt").exists()


def test_a_pickled_object_is_refused_not_run(finished, seq_file, tmp_path, capsys):
    path = damaged_copy(finished, tmp_path, lambda p: torch.save({"format": FORMAT, "payload": Path("x")}, p))
    assert main(["run", str(seq_file), "--out", str(tmp_path / "out"), "--quiet", "--methods", "finetune",
                 "--resume"]) == 2
    assert f"{path}: cannot be read (UnpicklingError" in capsys.readouterr().err


def test_overwrite_starts_again_and_keep_checkpoints_is_honoured(finished, seq_file, tmp_path):
    folder = tmp_path / "out" / "tiny"
    shutil.copytree(finished, folder)
    assert sorted(p.name for p in (folder / "checkpoints" / "finetune").iterdir()) == ["step-1.pt", "step-2.pt"]
    (folder / "notes.txt").write_text("the user's, not the run's")
    assert main(["run", str(seq_file), "--out", str(tmp_path / "out"), "--quiet", "--methods", "finetune",
                 "--overwrite", "--set", "keep_checkpoints=0"]) == 0
    assert not (folder / "checkpoints" / "finetune").exists() and not (folder / "ldifs").exists()  # the old run's
    assert (folder / "notes.txt").exists()  # --overwrite deletes only what a run of ours writes
    assert (folder / "finetune" / "accuracy_matrix.csv").read_text() == (finished / "finetune" / "accuracy_matrix.csv").read_text()
