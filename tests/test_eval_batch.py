"""training.eval_batch_size: auto (evaluate.auto_eval_batch) and training.fused (issue #24)."""

from __future__ import annotations

import pytest
import torch

from continual.config.schema import TrainingConfig
from continual.evaluate import EVAL_BATCH_CAP, EVAL_BATCH_CPU, auto_eval_batch, fitting_batch
from continual.train import Trainer


@pytest.mark.parametrize("fixed, per_image, free, expected", [
    (0, 1, 2 * 1024, 1024),             # room for 1024 exactly: taken
    (0, 1, 2 * 1023, 512),              # one short of 1024: the power of two below
    (0, 1, 10**12, EVAL_BATCH_CAP),     # any amount of room: capped
    (100, 10, 2 * (100 + 10 * 37), 32),  # the fixed part counts: 37 fit, 32 taken
    (0, 10**9, 10**9, 1),               # not even one image fits in half: 1, and torch says so when it runs
    (10**12, 1, 10**9, 1),              # fixed part larger than the room
])
def test_fitting_batch(fixed, per_image, free, expected):
    assert fitting_batch(fixed_bytes=fixed, per_image_bytes=per_image, free_bytes=free) == expected


def test_auto_is_64_on_cpu():
    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    assert auto_eval_batch(torch.nn.Identity(), images, device=torch.device("cpu"), bf16=False) == EVAL_BATCH_CPU == 64


def test_schema_takes_auto_or_a_number():
    assert TrainingConfig().eval_batch_size == "auto"
    assert TrainingConfig(eval_batch_size=128).eval_batch_size == 128
    with pytest.raises(ValueError, match="auto"):
        TrainingConfig(eval_batch_size="largest")
    assert TrainingConfig().fused == "auto"
    with pytest.raises(ValueError):
        TrainingConfig(fused="yes please")


def _step(fused, params, optimizer):
    params = [torch.nn.Parameter(p.clone()) for p in params]
    trainer = Trainer(TrainingConfig(lr=1e-2, fused=fused, optimizer=optimizer), device=torch.device("cpu"), progress=False)
    optimizer = trainer.make_optimizer(params)
    for _ in range(3):
        optimizer.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        optimizer.step()
    return optimizer, params


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_fused_is_the_same_update(optimizer):
    torch.manual_seed(0)
    start = [torch.randn(5, 4), torch.randn(7)]
    plain, ps = _step("auto", start, optimizer)
    fused, fs = _step(True, start, optimizer)
    assert not plain.defaults.get("fused") and fused.defaults["fused"] is True
    for p, f in zip(ps, fs):
        torch.testing.assert_close(p, f, rtol=1e-5, atol=1e-6)
        assert not torch.equal(p, start[0] if p.shape == start[0].shape else start[1])  # it moved


def test_fused_auto_means_cuda_only():
    from continual.train import use_fused
    auto = TrainingConfig()
    assert use_fused(auto, torch.device("cuda")) and not use_fused(auto, torch.device("cpu"))
    assert use_fused(TrainingConfig(fused=True), torch.device("cpu"))
    assert not use_fused(TrainingConfig(fused=False), torch.device("cuda"))
