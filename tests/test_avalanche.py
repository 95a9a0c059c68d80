"""The Avalanche baselines: run through avalanche-lib, on our model and settings, scored by our evaluator."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import continual
from continual import metrics

ROOT = Path(__file__).resolve().parents[1]

DIGITS = [
    {"name": "low", "dataset": "digits", "classes": [0, 1, 2], "train_per_class": 16, "test_per_class": 10},
    {"name": "high", "dataset": "digits", "classes": [7, 8, 9], "train_per_class": 16, "test_per_class": 10},
    {"name": "pair", "dataset": "digits", "classes": [4, 5], "train_per_class": 16, "test_per_class": 10},
]


def test_only_one_module_imports_avalanche():
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "continual").rglob("*.py")
                       if re.search(r"^\s*(import avalanche|from avalanche)", p.read_text(), re.M))
    assert importers == ["continual/methods/avalanche.py"]


def test_naive_matches_finetune_exactly_on_full_batches(tmp_path, tiny_clip):
    """Parity with a peer. With one full batch per epoch the gradient does not depend on the data order
    (the only thing Avalanche's DataLoader draws differently), and the tiny ViT has no dropout, so
    Avalanche's Naive and our finetune must agree to float precision: same model and heads, optimiser
    (fresh per task, backbone + current head), schedule, clipping, epochs. A difference in any of them
    moves accuracies by whole test images (1/30), far above the 1e-6 allowed here."""
    arch, checkpoint = tiny_clip
    seq = {"name": "parity", "seed": 1,
           "model": {"family": "open_clip", "arch": arch, "pretrained": str(checkpoint), "head_init": "linear_probe"},
           "tasks": DIGITS[:2], "training": {"epochs": 3, "batch_size": 64, "lr": 3.0e-3, "warmup_steps": 1},
           "methods": ["finetune", "naive"], "download": False}
    folder = continual.run(seq, out=tmp_path, progress=False)
    runs = continual.load_run(folder)
    pd.testing.assert_frame_equal(runs["finetune"], runs["naive"], atol=1e-6, rtol=0)
    values = runs["finetune"].to_numpy()
    assert (values[1:] != values[0]).any()  # training did change things
    fits = {m: json.loads((folder / m / "metrics.json").read_text())["timings"] for m in ("finetune", "naive")}
    for a, b in zip(fits["finetune"][1:], fits["naive"][1:]):
        assert a["train_steps"] == b["train_steps"] == 3
        # Same images in another order, so the batch mean is summed in another order: float noise only,
        # but this random tiny CLIP's losses are ~100 and three steps amplify it to a few 1e-3.
        assert a["losses"]["ce"] == pytest.approx(b["losses"]["ce"], rel=1e-2)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    seq = {"name": "baselines", "seed": 0, "model": {"family": "efficientnet_lite0", "image_size": 32},
           "tasks": DIGITS, "probes": [{"name": "p", "dataset": "digits", "classes": [6, 3], "train_per_class": 16,
                                         "test_per_class": 10}],
           "training": {"batch_size": 16, "lr": 1.0e-4, "warmup_steps": 1},
           "methods": [{"ewc": {"lambda": 1.0e4, "mode": "online", "decay": 0.5}}, {"lwf": {"alpha": 2}},
                       {"replay": {"memory_size": 40}}],
           "download": False}
    return continual.run(seq, out=tmp_path_factory.mktemp("baselines"), progress=False)


def test_baselines_write_the_same_files_as_our_methods(baselines):
    for method in ("ewc", "lwf", "replay"):
        matrix = pd.read_csv(baselines / method / "accuracy_matrix.csv")
        assert list(matrix.columns) == ["step", "low", "high", "pair", "probe:p"]
        assert len(matrix) == 4 and matrix.drop(columns="step").notna().all().all()
        doc = json.loads((baselines / method / "metrics.json").read_text())
        assert doc["complete"] and (baselines / method / "curves.png").exists()
        assert all(t["fit_seconds"] > 0 for t in doc["timings"][1:])


def test_penalties_are_logged_and_act_only_after_the_first_task(baselines):
    for method in ("ewc", "lwf"):
        timings = json.loads((baselines / method / "metrics.json").read_text())["timings"]
        assert timings[1]["losses"][method] == 0.0  # nothing to protect yet
        assert timings[2]["losses"][method] > 0.0 and timings[3]["losses"][method] > 0.0


def test_replay_buffer_is_recorded_and_bounded(baselines):
    timings = json.loads((baselines / "replay" / "metrics.json").read_text())["timings"]
    assert [t["buffer_images"] for t in timings[1:]] == [40, 40, 40]
    # stored images ride along in each batch (Avalanche's ReplayDataLoader): the number of steps per task
    # still follows the new task's data
    assert timings[2]["train_steps"] == timings[1]["train_steps"]


def test_step_zero_is_shared_with_our_methods(baselines):
    runs = continual.load_run(baselines)
    assert runs["ewc"].loc[0].equals(runs["lwf"].loc[0]) and runs["lwf"].loc[0].equals(runs["replay"].loc[0])


@pytest.mark.parametrize("seed", range(5))
def test_bwt_and_forgetting_agree_with_avalanche_functional(seed):
    from avalanche.evaluation.functional import forgetting as avalanche_forgetting

    R = np.random.default_rng(seed).uniform(size=(6, 5))  # step 0 + 5 tasks
    F = avalanche_forgetting(R[1:])  # Avalanche: rows = after each experience, F[t, k] = R[k, k] - R[t, k]
    for i in range(2, 6):
        assert metrics.backward_transfer(R)[i] == pytest.approx(-F[i - 1, : i - 1].mean())
    # our forgetting uses the best accuracy since learning; on a matrix that only decays they coincide
    # R2[i, j] = 0.9 when task j+1 is learned (step j+1), then 0.1 lower at every later step
    R2 = np.array([[0.9 - 0.1 * (i - j - 1) if i > j else 0.1 for j in range(5)] for i in range(6)])
    F2 = avalanche_forgetting(R2[1:])
    for i in range(2, 6):
        assert metrics.forgetting(R2)[i] == pytest.approx(F2[i - 1, : i - 1].mean())
