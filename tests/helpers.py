"""Plain helpers the test files share: tiny sequences, run folders written by hand, small disks, fuzzing pools.

Fixtures live in conftest.py; constants and functions live here, imported by name (`from helpers import
tiny_sequence`): a test file never imports another test file. Light at import (no torch): the fuzz files
import this too.
"""

import contextlib
import errno
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from continual.run_folder import RunFolder

# ---- the tiny CLIP ------------------------------------------------------------------------------------------

TINY_CLIP_ARCH = "continual-tiny-vit"
# A CLIP small enough for CPU tests, in the spirit of open_clip's own tests: width 32, 4 blocks, 32 px.
# The text tower keeps the real BPE vocabulary size so the tokenizer's ids are valid embeddings.
# conftest.py's `tiny_clip` registers it with open_clip and saves its random weights.
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "head_width": 16, "patch_size": 8},
}


# ---- tiny sequences -----------------------------------------------------------------------------------------
# Fresh dicts on every call: a test may edit what it gets. A test's own values go in as changes, so what
# it sets apart from the common shape reads at the call.

def digits(name: str, classes: list, train: int = 8, test: int = 4) -> dict:
    """A task (or probe) of the bundled digits: `train` and `test` images of each class."""
    return {"name": name, "dataset": "digits", "classes": list(classes), "train_per_class": train,
            "test_per_class": test}


def tiny_sequence(**changes) -> dict:
    """EfficientNet-Lite0 at 32 px on two tasks of the bundled digits ([0, 1], then [2, 3]; 8 training and 4
    test images a class), batches of 8 after one warm-up step, fine-tuning, nothing downloaded. `changes`
    replace top-level keys whole."""
    return {"name": "tiny", "model": {"family": "efficientnet_lite0", "image_size": 32},
            "tasks": [digits("a", [0, 1]), digits("b", [2, 3])],
            "training": {"batch_size": 8, "warmup_steps": 1}, "methods": ["finetune"], "download": False, **changes}


def end_to_end_sequence(**changes) -> dict:
    """test_run's sequence, which test_ddp and test_costs run too: two tasks of three digit classes (the
    second's named as strings) and a probe, 16 training and 10 test images a class; fine-tuning and LDIFS."""
    return tiny_sequence(**{
        "seed": 3,
        "tasks": [digits("low", [0, 1, 2], 16, 10), digits("high", ["7", "8", "9"], 16, 10)],
        "probes": [digits("mid", [4, 5], 16, 10)],
        "training": {"batch_size": 16, "warmup_steps": 1, "lr": 1.0e-4},
        "methods": ["finetune", {"ldifs": {"lambda": 10}}], **changes})


def resume_sequence(**changes) -> dict:
    """test_resume's sequence, which test_augment runs too: every method with state to carry across a
    resume, two tasks and a probe of 12 training and 6 test images a class."""
    return tiny_sequence(**{
        "seed": 1,
        "tasks": [digits("a", [0, 1], 12, 6), digits("b", [2, 3], 12, 6)],
        "probes": [digits("p", [8, 9], 12, 6)],
        "methods": ["finetune", "ldifs", "ewc", "lwf", "replay"], **changes})


def tiny_clip_model(tiny_clip, **changes) -> dict:
    """The `model` section naming conftest's tiny CLIP: `tiny_clip` is that fixture's (arch, checkpoint)."""
    arch, checkpoint = tiny_clip
    return {"family": "open_clip", "arch": arch, "pretrained": str(checkpoint), **changes}


def tiny_clip_sequence(tiny_clip, **changes) -> dict:
    """tiny_sequence on conftest's tiny CLIP, at lr 1e-4."""
    return tiny_sequence(**{"model": tiny_clip_model(tiny_clip),
                            "training": {"batch_size": 8, "warmup_steps": 1, "lr": 1.0e-4}, **changes})


# L2-SP at λ = 100 over seeds 0 and 1 of tiny.yaml (test_sweep's and test_clusters' tiny_sequence files): 2 cells,
# one done before a kill, one after.
L2SP_SWEEP = {"name": "lam", "sequences": ["tiny.yaml"], "methods": ["l2sp"], "seeds": [0, 1],
              "grid": {"methods.l2sp.lambda": [100]}, "out": "runs"}


def tiny_setting():
    """(backbone, head, task): EfficientNet-Lite0 at 32 px, a head seeded 0, a task of 3 digit classes."""
    from types import SimpleNamespace

    import torch

    from continual.datasets.tasks import load_task
    from continual.models import Head, build_backbone

    backbone = build_backbone(SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=32,
                                              head_init="linear_probe"))
    spec = SimpleNamespace(name="t", dataset="digits", classes=[0, 1, 2], train_per_class=16, test_per_class=4,
                           path=None, templates=None)
    task = load_task(spec, image_size=32, data_root=Path("/nonexistent"), seed=0)
    torch.manual_seed(0)
    return backbone, Head(backbone.feature_dim, 3, normalize=False), task


# ---- run folders --------------------------------------------------------------------------------------------

def write_run(folder, config: dict, rows: dict[str, list[tuple]], *, timings=None):
    """A run folder as `continual run` writes it, by hand: config.yaml, and each method's rows (one tuple a step:
    its tasks' accuracies, then its probes'); `timings(number of rows)` gives its timings (default: 1 s each)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tasks = [t["name"] for t in config["tasks"]]
    columns = tasks + [f"probe:{p['name']}" for p in config.get("probes", [])]
    timings = timings or (lambda n: [{"step": s, "fit_seconds": 1.0, "eval_seconds": 1.0} for s in range(n)])
    for method, matrix in rows.items():
        RunFolder(folder).write_step(method, rows=[dict(zip(columns, r)) for r in matrix], tasks=tasks,
                                     n_steps=len(tasks), timings=timings(len(matrix)))
    return folder


def assert_same_results(folder, reference, method):
    """`method`'s accuracy matrix, losses and step-2 checkpoint in run folder `folder` are `reference`'s exactly."""
    import torch

    assert (folder / method / "accuracy_matrix.csv").read_text() == (reference / method / "accuracy_matrix.csv").read_text()
    ours, theirs = (json.loads((f / method / "metrics.json").read_text()) for f in (folder, reference))
    assert ours["complete"] and [t.get("losses") for t in ours["timings"]] == [t.get("losses") for t in theirs["timings"]]
    ours, theirs = (torch.load(f / "checkpoints" / method / "step-2.pt", weights_only=True) for f in (folder, reference))
    assert ours["backbone"].keys() == theirs["backbone"].keys()
    assert all(torch.equal(ours["backbone"][k], theirs["backbone"][k]) for k in ours["backbone"])
    assert all(torch.equal(ours["heads"][t]["weight"], theirs["heads"][t]["weight"]) for t in theirs["heads"])


def stopped_in_step_2_and_resumed(seq: Path, out: Path, method: str, monkeypatch, capsys) -> tuple[Path, Path, str]:
    """Run sequence file `seq` whole into out/whole; into out/cut with `method` stopped by Ctrl-C as it starts
    fitting step 2 (its class's fit_task raising KeyboardInterrupt, as tests/test_resilience.py's), then resumed.
    Returns the two run folders (<out>/whole/<name>, <out>/cut/<name>) and what the runs printed on stderr."""
    import continual.methods
    from continual.cli import main

    class Interrupted(continual.methods.implementation(method)):
        def fit_task(self, model, task, *, step, trainer):
            if step == 2:
                raise KeyboardInterrupt
            return super().fit_task(model, task, step=step, trainer=trainer)

    assert main(["run", str(seq), "--out", str(out / "whole"), "--quiet"]) == 0
    with monkeypatch.context() as patch:
        patch.setitem(continual.methods.CLASSES, method, Interrupted)
        assert main(["run", str(seq), "--out", str(out / "cut"), "--quiet"]) == 130
    assert main(["run", str(seq), "--out", str(out / "cut"), "--quiet", "--resume"]) == 0
    name = yaml.safe_load(seq.read_text())["name"]
    return out / "whole" / name, out / "cut" / name, capsys.readouterr().err


# ---- small disks ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def small_tmpfs(size_mb: float, *, options: str = ""):
    """A fresh tmpfs of `size_mb` MiB (more mount options in `options`, e.g. "ro" or "nr_inodes=16"),
    unmounted at the end. Skips the test where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    where = Path(tempfile.mkdtemp(prefix="continual-tmpfs-"))
    opts = ",".join(o for o in (f"size={round(size_mb * 1024)}k", options) if o)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    except FileNotFoundError:
        proc = subprocess.CompletedProcess([], 1, "", "no mount command")
    if proc.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); these tests need root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)  # something still has a file open there
        where.rmdir()


def fill(folder: Path, *, leave: int = 0) -> Path:
    """Fill the disk of `folder` with one file, then give back `leave` bytes of it. Returns the file."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


# ---- fuzzing (test_fuzz.py, test_fuzz_sweep.py) ----------------------------------------------------------------

ODD_NAMES = ["..", ".", "a/b", "a" * 300, "train", "step", "", " ", "-a", "a.b", "~", "é", "x\ny"]
ODD_NUMBERS = [-1, 0, 1, 1e308, -1e308, float("inf"), float("-inf"), float("nan"), 2**70, 2**63, 0.5, True]


def paths(node, prefix=()) -> list[tuple]:
    """Every key path into a YAML document: ("tasks", 0, "classes"), ..."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        found.append(prefix + (key,))
        found += paths(value, prefix + (key,))
    return found


def leaves(node) -> list:
    """Every scalar value of a document: swapped into other keys, they give plausible wrong types."""
    if isinstance(node, dict):
        return [v for value in node.values() for v in leaves(value)]
    if isinstance(node, list):
        return [v for value in node for v in leaves(value)]
    return [node]


@contextlib.contextmanager
def inside(folder: Path):
    """Work in `folder`, so that a relative path a mutant names lands there, where it is seen."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def everything_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}
