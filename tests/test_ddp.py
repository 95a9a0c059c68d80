"""One run over several ranks (issue #14): `torchrun --nproc_per_node=2 -m continual run`, two CPU ranks on
gloo, gives the numbers of one process training the same global batch; what cannot run so is refused."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from continual import distributed
from continual.augment import augment
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.models import TaskModel
from continual.runner import check_distributed, load_inputs, run_sequence
from helpers import end_to_end_sequence

ROOT = Path(__file__).resolve().parents[1]

# 48 training images a task in batches of 15 (15, 15, 15, 3): every batch splits unevenly over two ranks (8 + 7,
# and 2 + 1 for the last), so the weighting of each rank's share is exercised at every step. SGD, not AdamW:
# AdamW's first updates are lr · g / |g| per weight, so a weight whose gradient is ~0 moves by ±lr whichever
# way float reduction order tips it (measured: 18 of 3.4M weights differ by up to 2·lr after 4 steps), which
# would hide a wrong gradient below that noise; SGD's update is linear in the gradient.
# Otherwise test_run's sequence: EfficientNet-Lite0 at 32 px (BatchNorm frozen, the default), two tasks, a probe.
SEQ = end_to_end_sequence(
    training={"batch_size": 15, "warmup_steps": 1, "optimizer": "sgd", "lr": 0.01},
    methods=[{"ldifs": {"lambda": 10}}],  # cross-entropy, and a feature distance to an anchor cache both ranks fill
    keep_checkpoints=2,
)
# The step trained over two ranks agrees with the one process's to 1.2e-7 in every weight (measured, AMD EPYC;
# heads to 7e-9): float sums in another order (each rank's share, then DDP's all-reduce). Training moved the
# weights by 7.5e-2 in that step, so a wrong gradient (a share weighted wrongly, an image seen twice or never,
# another augmentation or drop-connect) would show orders of magnitude above the bound. Over two whole tasks
# they agreed to 5.3e-6 (task 2 starts from a linear-probe head that L-BFGS fits on features differing ~1e-7,
# and its near-constant features get weights ~1e3-fold more sensitive).
WEIGHTS_ATOL = 1e-5


def torchrun(args: list[str], *, cwd: Path) -> subprocess.Popen:
    """Two ranks of `continual ARGS`, started now; their output goes to cwd/torchrun.log (not a pipe this
    process might not read while they write)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # one thread a rank: two ranks on two cores
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(cwd / "torchrun.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "continual", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process run folder, the same run's folder over two ranks, their stderr). The one process runs
    here, at one thread as each rank does (so that every batch's kernels sum alike). Once it has written
    step 1, its folder is copied as a run killed then leaves it, and two ranks resume the copy while this
    process goes on to step 2: each rank reads the step-1 checkpoint, and they train step 2 (task 2's anchor
    cache computed half by each) and score it (features computed half by each, the probe's head fit on all
    of them). A resume, not a whole run, to keep the test short (most of its 20 s is the launch, start-up
    and report of a torchrun): a step trains alike whichever step it is."""
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(SEQ))
    shared, ranks = tmp / "ranks" / "tiny", []

    def after(method: str, step: int, n_steps: int) -> None:
        if step == 1:
            shutil.copytree(tmp / "single" / "tiny", shared)
            ranks.append(torchrun(["run", "tiny.yaml", "--out", "ranks", "--quiet", "--resume"], cwd=tmp))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_sequence(load_sequence(SEQ), out=tmp / "single", progress=False, on_step=after)
        assert ranks[0].wait(timeout=300) == 0, (tmp / "torchrun.log").read_text()[-4000:]
    finally:
        torch.set_num_threads(threads)
        for proc in ranks:
            if proc.poll() is None:  # this process failed first: torchrun stops its ranks on SIGTERM
                proc.terminate()
                proc.wait(timeout=60)
    return single, shared, (tmp / "torchrun.log").read_text()


def test_two_ranks_give_the_single_process_numbers(runs):
    single, shared, err = runs
    ours, theirs = (pd.read_csv(f / "ldifs" / "accuracy_matrix.csv", index_col="step") for f in (shared, single))
    # Equal, every step, task and probe: weights within WEIGHTS_ATOL move no test image across a decision
    # boundary here (an image that close to one would flip between CPUs too, see test_run's pins).
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    before = torch.load(single / "checkpoints" / "ldifs" / "step-1.pt", weights_only=True)["backbone"]
    a, b = (torch.load(f / "checkpoints" / "ldifs" / "step-2.pt", weights_only=True) for f in (shared, single))
    assert a["rows"] == b["rows"]
    for key, value in b["backbone"].items():
        torch.testing.assert_close(a["backbone"][key], value, rtol=0, atol=WEIGHTS_ATOL, msg=key)
    for task, head in b["heads"].items():
        torch.testing.assert_close(a["heads"][task], head, rtol=0, atol=WEIGHTS_ATOL)
    assert max(float((value - before[key]).abs().max()) for key, value in b["backbone"].items()) > 1e-2  # moved
    # The whole batch's loss terms, from each rank's weighted share (float64 sums of float32 terms).
    assert set(a["timings"][-1]["losses"]) == {"ce", "ldifs"}
    for term, value in b["timings"][-1]["losses"].items():
        assert a["timings"][-1]["losses"][term] == pytest.approx(value, rel=1e-4)
    # One process printed: rank 0 (the plan, the resume); and nothing of rank 1 is left on disk.
    assert err.count("ldifs: resuming after step 1/2") == 1 and err.count("tiny: 1 method") == 1
    assert not (shared / "cache").exists() and not list(shared.rglob(".*.tmp"))
    assert (shared / "index.html").is_file()


def test_methods_that_cannot_run_distributed_are_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """Refused on torchrun's environment alone, before the process group, a model or the output folder:
    rank 0 names each method and why (exit status 2); every other rank leaves quietly, failed."""
    seq = tmp_path / "tiny.yaml"
    seq.write_text(yaml.safe_dump({**SEQ, "methods": ["finetune", "naive", {"ewc": {"lambda": 1.0}}]}))
    clip = {**SEQ, "model": {"family": "open_clip", "arch": "ViT-B-32", "pretrained": "openai"}, "methods": ["flyp"]}
    (tmp_path / "clip.yaml").write_text(yaml.safe_dump(clip))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"error: {seq}: methods[1]: naive cannot run under torchrun (2 ranks): Avalanche "
                             "trains with its own loop and plugins")
    assert err[1].startswith(f"{seq}: methods[2]: ewc cannot run under torchrun") and "DistributedDataParallel" in err[1]
    assert main(["run", str(tmp_path / "clip.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "flyp cannot run under torchrun (2 ranks): its contrastive loss compares each image with every " \
           "caption in the batch" in err
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit:
        main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"])
    assert exit.value.code == 2 and capsys.readouterr().err == ""
    assert not (tmp_path / "out").exists() and not torch.distributed.is_initialized()


@pytest.fixture(scope="module")
def inputs():
    return load_inputs(load_sequence(SEQ), source="tiny.yaml", device=torch.device("cpu"))


def test_what_this_model_and_data_cannot_do_over_ranks_is_refused(inputs, monkeypatch):
    """Trained BatchNorm statistics on CPUs (torch syncs them between GPUs only), and a batch of fewer
    images than ranks (a rank would train on nothing)."""
    cpu, frozen, train = torch.device("cpu"), load_sequence(SEQ), load_sequence(SEQ, ["training.batchnorm=train"])
    monkeypatch.setenv("WORLD_SIZE", "3")
    check_distributed(frozen, ["finetune"], inputs, device=cpu, source="tiny.yaml")  # batches of 15, 15, 15, 3
    check_distributed(train, ["finetune"], inputs, device=torch.device("cuda"), source="tiny.yaml")  # SyncBatchNorm
    with pytest.raises(ConfigError) as err:
        check_distributed(train, ["finetune"], inputs, device=cpu, source="tiny.yaml")
    assert [key for key, _ in err.value.problems] == ["training.batchnorm"]
    assert "set training.batchnorm: frozen, or run on GPUs" in str(err.value)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError) as err:
        check_distributed(frozen, ["finetune", "joint"], inputs, device=cpu, source="tiny.yaml")
    assert [key for key, _ in err.value.problems] == ["training.batch_size"] * 2  # low, high; joint: 96 leave 6
    assert "task low: 48 training images in batches of 15 make a batch of 3, fewer than the 4 ranks" in str(err.value)


@pytest.mark.parametrize("kind", ["flip", "crop_flip"])
def test_each_rank_augments_its_images_as_one_process_does(kind, monkeypatch):
    images = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8)
    whole = augment(images, kind, 5)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, rows in (("0", slice(0, 4)), ("1", slice(4, 7))):
        monkeypatch.setenv("RANK", rank)
        assert distributed.share(7) == rows
        torch.testing.assert_close(augment(images[rows], kind, 5, whole=7, rows=rows), whole[rows], rtol=0, atol=0)


def test_each_rank_drops_connections_as_one_process_does(inputs):
    """EfficientNet's drop-connect draws a number per image: a rank's share draws the whole batch's and
    keeps its own, so each image is dropped as in one process and the generator ends where one process's does."""
    backbone = TaskModel(copy.deepcopy(inputs.backbone), freeze_batchnorm=True).train().backbone  # as Trainer.fit
    x = backbone.preprocess(inputs.tasks[0].train.images[:6])
    torch.manual_seed(0)
    whole, after = backbone(x), torch.rand(1)
    for rows in (slice(0, 3), slice(3, 6)):
        torch.manual_seed(0)
        with backbone.sharing(6, rows):
            part = backbone(x[rows])
        torch.testing.assert_close(part, whole[rows], rtol=0, atol=1e-6)
        assert torch.rand(1) == after
        torch.manual_seed(0)
        assert not torch.allclose(backbone(x[rows]), whole[rows], atol=1e-2)  # unshared: other draws
