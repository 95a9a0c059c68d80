"""The Avalanche baselines: run through avalanche-lib, on our model and settings, scored by our evaluator."""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import continual
from continual import methods, metrics
from continual.config import DataSpec, ModelConfig, TrainingConfig
from continual.datasets.tasks import load_task
from continual.methods import METHODS
from continual.models import Head, TaskModel, build_backbone
from continual.train import Trainer
from helpers import digits, tiny_sequence

ROOT = Path(__file__).resolve().parents[1]

DIGITS = [digits("low", [0, 1, 2], 16, 10), digits("high", [7, 8, 9], 16, 10), digits("pair", [4, 5], 16, 10)]


def test_only_one_module_imports_avalanche():
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "continual").rglob("*.py")
                       if re.search(r"^\s*(import avalanche|from avalanche)", p.read_text(), re.M))
    assert importers == ["continual/methods/avalanche.py"]


def test_naive_matches_finetune_exactly_in_float64(tiny_clip):
    """Parity with a peer, exact by construction. Avalanche's Naive and our finetune train the same
    float64 model on two tasks, one full batch per epoch: the gradient then depends on the data order
    (the only thing Avalanche's DataLoader draws differently) only through the order a batch is summed
    in, which float64 turns into ~1e-16 relative differences, and the tiny ViT has no dropout. So every
    weight must agree to 1e-9 while training moves them by more than 1e-3: a difference in the model,
    heads, optimiser (fresh per task, backbone + current head), schedule, clipping or epochs would
    show. (In float32 this random CLIP's losses of ~100 turned the same reordering into 1e-2 on AMD EPYC.)"""
    arch, checkpoint = tiny_clip
    backbone = build_backbone(ModelConfig(family="open_clip", arch=arch, pretrained=str(checkpoint)))
    tasks = [load_task(DataSpec(**spec), image_size=backbone.image_size, data_root=ROOT, seed=1) for spec in DIGITS[:2]]
    trainer = Trainer(TrainingConfig(epochs=3, batch_size=64, lr=3.0e-3, warmup_steps=1), device=torch.device("cpu"),
                      progress=False)
    torch.manual_seed(0)
    heads = {t.name: Head(backbone.feature_dim, len(t.class_names), normalize=True) for t in tasks}
    start = TaskModel(copy.deepcopy(backbone), copy.deepcopy(heads)).double()
    trained, stats = {}, {}
    for name in ("finetune", "naive"):
        model = copy.deepcopy(start)
        method = methods.build(METHODS[name](), pretrained=backbone)
        stats[name] = [method.fit_task(model, task, step=step, trainer=trainer) for step, task in enumerate(tasks, 1)]
        trained[name] = model.state_dict()
    moved = max((trained["finetune"][k] - v).abs().max().item() for k, v in start.state_dict().items())
    apart = max((trained["finetune"][k] - v).abs().max().item() for k, v in trained["naive"].items())
    assert moved > 1e-3 and apart < 1e-9, (moved, apart)
    for ours, theirs in zip(stats["finetune"], stats["naive"]):
        assert ours.steps == theirs.steps == 3
        assert ours.losses["ce"] == pytest.approx(theirs.losses["ce"], rel=1e-9)
        assert ours.first_losses["ce"] == pytest.approx(theirs.first_losses["ce"], rel=1e-9)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    seq = tiny_sequence(name="baselines", seed=0, tasks=DIGITS, probes=[digits("p", [6, 3], 16, 10)],
                        training={"batch_size": 16, "lr": 1.0e-4, "warmup_steps": 1},
                        methods=[{"ewc": {"lambda": 1.0e4, "mode": "online", "decay": 0.5}}, {"lwf": {"alpha": 2}},
                                 {"replay": {"memory_size": 40}}])
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
