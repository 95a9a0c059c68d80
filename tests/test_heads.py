"""The head a task starts from, and what the learned-worse warning measures about it (issue #23): the
linear probe gives a feature that barely varies no huge raw weight, and the first batch's cross-entropy
is recorded in training mode and in eval mode, so that the warning names the cause it measured."""
import copy

import pytest
import torch

from continual import runner
from continual.config import ModelConfig, TrainingConfig
from continual.datasets.tasks import Split, TaskData
from continual.evaluate import feature_scale, fit_linear_head
from continual.methods.finetune import Finetune
from continual.methods.options import FinetuneOptions
from continual.models import TaskModel, build_backbone
from continual.train import FitStats, Trainer


def features_with_a_near_constant_column(seed=0, n=300):
    """Three classes told apart by two ordinary features (std ~1, overlapping), and a third feature that
    is zero but for a class-dependent 1e-4: perfectly informative, and as near-constant as the channels
    EfficientNet-Lite0 leaves at 32 px (std 1e-4 to 1e-3)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    ordinary = centres[labels] + torch.randn(n, 2, generator=g)
    tiny = 1e-4 * (labels == 2).float() + 1e-6 * torch.randn(n, generator=g)
    return torch.cat([ordinary, tiny[:, None]], dim=1), labels


def test_a_near_constant_feature_gets_no_huge_weight():
    x, y = features_with_a_near_constant_column()
    head = fit_linear_head(x, y, 3, normalize=False)
    w = head.linear.weight.detach()
    # Standardised by its own std (std + 1e-6 before the fix) the third feature's weight folded back to
    # 4.7e4 (measured); under the floor it is penalised in the units of the others: 7e-4.
    assert w[:, 2].abs().max() < 1
    assert w[:, :2].abs().max() < 10
    # The probe still fits the ordinary features: well above chance (1/3) on these overlapping classes.
    assert (head(x).argmax(1) == y).float().mean() > 0.6
    # What training mode does to such a feature (drop-connect moves a near-dead channel by ~0.5 at 32 px):
    # the logits move by less than one unit, not by 28,000 as before the fix.
    noisy = x.clone()
    noisy[:, 2] += 0.6
    assert (head(noisy) - head(x)).abs().max() < 1


def test_feature_scale_is_each_std_floored_at_their_root_mean_square():
    x, _ = features_with_a_near_constant_column()
    std = x.std(0)
    rms = std.pow(2).mean().sqrt()
    scale = feature_scale(x)
    assert torch.equal(scale[:2], std[:2])  # ordinary features: their own spread, as before
    assert scale[2] == pytest.approx(float(rms), rel=1e-6)  # the near-constant one: the floor
    assert torch.all(feature_scale(torch.ones(5, 3)) > 0)  # every feature constant: no division by zero


def test_the_probe_ignores_an_exactly_constant_feature_and_folds_its_scaling_back():
    x, y = features_with_a_near_constant_column()
    x = torch.cat([x[:, :2], torch.full((len(x), 1), 3.0)], dim=1)  # a dead channel: the same on every image
    head = fit_linear_head(x, y, 3, normalize=False)
    assert torch.all(head.linear.weight[:, 2] == 0)
    shifted = fit_linear_head(x * 10 + 5, y, 3, normalize=False)  # affine in the features: same predictions
    assert torch.equal(head(x).argmax(1), shifted(x * 10 + 5).argmax(1))


@pytest.mark.parametrize("first_ce, classes, cause", [
    ({"train": 9.24, "eval": 0.068}, 5, "training_mode"),  # issue #23's wise_ft step, 5 classes (ln 5 = 1.61)
    ({"train": 0.79, "eval": 0.121}, 5, "updates"),        # its finetune step: noisier, but better than a guess
    ({"train": 3.0, "eval": 1.2}, 5, "updates"),           # worse than a guess in both modes: a bad head, not noise
    ({"eval": 0.1}, 5, None),                              # the training forward was not seen
    ({}, 5, None),                                         # a method with its own loop (Avalanche's)
])
def test_the_cause_read_off_the_first_batch(first_ce, classes, cause):
    assert runner.worse_cause(first_ce, classes=classes) == cause


def test_the_warning_says_what_it_measured():
    training = TrainingConfig(lr=5e-4, warmup_steps=10)
    rows = [{"animals": 0.8}, {"animals": 0.4}]
    noise = FitStats(steps=32, seconds=1.0, losses={"ce": 2.5}, first_losses={"ce": 9.24},
                     first_ce={"train": 9.24, "eval": 0.068})
    said = runner._worse_message("wise_ft", "animals", rows, noise, training, classes=5)
    assert "cross-entropy 9.24 in training mode and 0.068 in eval mode (a uniform guess: 1.61)" in said
    assert "Training started from noise" in said and "over the last epoch: 2.5" in said
    assert "lower training.lr" not in said
    sound = FitStats(steps=4, seconds=1.0, losses={"ce": 0.76}, first_losses={"ce": 0.185},
                     first_ce={"train": 0.185, "eval": 0.05})
    said = runner._worse_message("finetune", "animals", rows, sound, training, classes=5)
    assert "sound in both modes, so the updates made it worse (4 optimiser steps at lr 0.0005, 3 of them warm-up)" in said
    unmeasured = FitStats(steps=4, seconds=1.0, losses={"ce": 0.76}, first_losses={"ce": 0.185})
    said = runner._worse_message("ewc", "animals", rows, unmeasured, training, classes=5)
    assert "went from 0.185 on the first batch to 0.76" in said and "likely a learning rate" in said


@pytest.fixture(scope="module")
def tiny():
    """EfficientNet-Lite0 at 32 px with a linear-probe head on 24 synthetic images of 3 classes."""
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(family="efficientnet_lite0", image_size=32))
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(24) % 3
    images[labels == 1, 0] = 255  # something to tell the classes apart by
    images[labels == 2, 1] = 0
    split = Split(images=images, labels=labels)
    task = TaskData(name="t", dataset="synthetic", class_names=["a", "b", "c"], train=split, test=split)
    model = TaskModel(backbone, freeze_batchnorm=True)
    with torch.no_grad():
        features = model.backbone.eval()(model.backbone.preprocess(images))
    model.heads["t"] = fit_linear_head(features, labels, 3, normalize=False)
    return model, task


def test_the_first_batch_is_measured_in_both_modes_and_training_is_unchanged(tiny, monkeypatch):
    start, task = tiny
    trainer = Trainer(TrainingConfig(batch_size=8, lr=1e-4, warmup_steps=1, steps_per_task=2),
                      device=torch.device("cpu"), progress=False)
    model = copy.deepcopy(start)
    torch.manual_seed(3)
    stats = Finetune(FinetuneOptions(), pretrained=model.backbone).fit_task(model, task, step=1, trainer=trainer)
    # "train": the cross-entropy of the very forward finetune trained on (drop-connect on)
    assert stats.first_ce["train"] == pytest.approx(stats.first_losses["ce"], rel=1e-6)
    # "eval": the same batch (the first of the order seed 3 draws), through the model as it started, in eval mode
    torch.manual_seed(3)
    first = torch.randperm(len(task.train.labels))[:8]
    with torch.no_grad():
        reference = copy.deepcopy(start).eval()
        logits = reference(reference.backbone.preprocess(task.train.images[first]), "t")
    assert stats.first_ce["eval"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, task.train.labels[first])), rel=1e-5)
    # the extra eval-mode forward draws nothing and changes nothing: training without it ends the same
    monkeypatch.setattr(Trainer, "first_batch_ce", lambda self, model, batch, seen, weight=1.0: {})
    again = copy.deepcopy(start)
    torch.manual_seed(3)
    Finetune(FinetuneOptions(), pretrained=again.backbone).fit_task(again, task, step=1, trainer=trainer)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert model.training and not any(m.training for m in model.modules()
                                      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
