"""The published fine-tuning baselines (issue #13): what defines each, and a run of each through the CLI."""
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from continual import methods
from continual.cli import main
from continual.config import TrainingConfig
from continual.datasets.tasks import load_task
from continual.methods.options import FinetuneOptions, L2SPOptions, WiseFTOptions
from continual.models import TaskModel
from continual.train import Trainer
from helpers import digits, tiny_sequence, tiny_setting


@pytest.fixture(scope="module")
def setting():
    backbone, head, task = tiny_setting()
    trainer = Trainer(TrainingConfig(batch_size=16, warmup_steps=1, lr=1e-3), device=torch.device("cpu"),
                      progress=False)
    return backbone, head, task, trainer


def train(options, setting):
    """The backbone after one task of the method `options` names, and its FitStats."""
    backbone, head, task, trainer = setting
    model = TaskModel(copy.deepcopy(backbone), {"t": copy.deepcopy(head)}, freeze_batchnorm=True)
    torch.manual_seed(1)
    stats = methods.build(options, pretrained=backbone).fit_task(model, task, step=1, trainer=trainer)
    return model.backbone, stats


def distance(a, b) -> float:
    return sum(float((p.detach() - q.detach()).pow(2).sum()) for p, q in zip(a.parameters(), b.parameters()))


def test_l2sp_is_zero_at_the_start_and_pulls_the_weights_back(setting):
    pretrained = setting[0]
    finetuned, _ = train(FinetuneOptions(), setting)
    held, stats = train(L2SPOptions(lambda_=1e4), setting)
    assert stats.first_losses["l2sp"] == 0.0  # the weights are the pre-trained ones before the first update
    assert stats.losses["l2sp"] > 0
    assert distance(held, pretrained) < 0.5 * distance(finetuned, pretrained)
    same, _ = train(L2SPOptions(lambda_=0.0), setting)  # λ = 0 is fine-tuning, update for update
    assert distance(same, finetuned) == 0.0


def test_wise_ft_alpha_0_is_the_anchor_1_is_finetuning_and_between_is_the_line(setting):
    pretrained = setting[0]
    finetuned, _ = train(FinetuneOptions(), setting)
    zero, _ = train(WiseFTOptions(alpha=0.0), setting)
    one, stats = train(WiseFTOptions(alpha=1.0), setting)
    half, _ = train(WiseFTOptions(alpha=0.5), setting)
    assert all(torch.equal(a, b) for a, b in zip(zero.state_dict().values(), pretrained.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), finetuned.state_dict().values()))
    for h, p, f in zip(half.parameters(), pretrained.parameters(), finetuned.parameters()):
        assert torch.allclose(h, (p + f) / 2, atol=1e-6)
    assert stats.extra["wise_ft_alpha"] == 1.0


def test_both_run_through_the_cli_and_options_are_checked(tmp_path, capsys):
    doc = tiny_sequence(name="base", seed=0,
                        methods=[{"l2sp": {"lambda": 0.1}}, {"wise_ft": {"alpha": 0.5, "anchor": "previous"}}])
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(doc))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    for name in ("l2sp", "wise_ft"):
        metrics = json.loads((tmp_path / "out" / "base" / name / "metrics.json").read_text())
        assert len(metrics["timings"]) == 3
    doc["methods"] = [{"wise_ft": {"alpha": 1.5}}]
    seq.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(seq)]) == 2
    assert "methods[0].wise_ft.alpha" in capsys.readouterr().err


def test_frozen_forgets_nothing_and_trains_nothing(tmp_path):
    import continual

    doc = tiny_sequence(name="ref", seed=0, probes=[digits("p", [5, 6])], methods=["frozen"])
    folder = continual.run(doc, out=tmp_path, progress=False)
    matrix = continual.load_run(folder)["frozen"]
    assert (matrix == matrix.iloc[0]).all().all()  # every step scores what the pre-trained model did
    metrics = json.loads((folder / "frozen" / "metrics.json").read_text())
    assert metrics["final"]["bwt"] == 0 and [t["train_steps"] for t in metrics["timings"][1:]] == [0, 0]


def test_joint_trains_once_on_every_task_and_fills_only_the_last_row(tmp_path):
    import continual
    from continual.datasets.source import concatenated, resize_uint8

    # tiny_sequence's two digit tasks, then one of MNIST (a local `digits` below is a task, not the helper)
    doc = tiny_sequence(name="j", seed=0, methods=["joint"], tasks=[
        *tiny_sequence()["tasks"],
        {"name": "m", "dataset": "mnist", "classes": [4, 5], "train_per_class": 4, "test_per_class": 4}])
    folder = continual.run(doc, out=tmp_path, progress=False)
    matrix = continual.load_run(folder)["joint"]
    assert matrix.loc[[1, 2]].isna().all().all() and matrix.loc[[0, 3]].notna().all().all()
    metrics = json.loads((folder / "joint" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["final"]["forgetting"] is None
    assert [t["train_steps"] for t in metrics["timings"][1:]] == [0, 0, 5]  # 40 images of all three, batches of 8
    assert metrics["timings"][3]["joint_images"] == 40
    assert sorted(p.name for p in (folder / "checkpoints" / "joint").iterdir()) == ["step-3.pt"]

    # The union of the tasks' images, each read at one size: digits' 8 px and MNIST's 28 px resized alike.
    digits = load_task(SimpleNamespace(name="d", dataset="digits", classes=[0, 1], train_per_class=4, test_per_class=2,
                                       path=None, templates=None), image_size=32, data_root=Path("/nonexistent"), seed=0)
    mnist = load_task(SimpleNamespace(name="m", dataset="mnist", classes=[0, 1], train_per_class=4, test_per_class=2,
                                      path=None, templates=None), image_size=32, data_root=Path("/nonexistent"), seed=0)
    both = concatenated([digits.train.images, mnist.train.images], 32)
    rows = torch.tensor([9, 0, 7, 8])  # mnist, digits, digits, mnist
    expected = torch.stack([resize_uint8(mnist.train.images[[1]], 32)[0], resize_uint8(digits.train.images[[0]], 32)[0],
                            resize_uint8(digits.train.images[[7]], 32)[0], resize_uint8(mnist.train.images[[0]], 32)[0]])
    assert len(both) == 16 and torch.equal(both[rows], expected)
