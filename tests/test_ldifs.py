"""The LDIFS penalty and its frozen anchor, on the real EfficientNet-Lite0 backbone at a tiny size."""

import copy
from types import SimpleNamespace

import pytest
import torch

from continual.config.schema import TrainingConfig
from continual.datasets.tasks import Split, TaskData
from continual.methods.ldifs import LDIFS, AnchorCache, FrozenBackbone, feature_distance
from continual.methods.options import LDIFSOptions
from continual.models import Head, TaskModel, build_backbone
from continual.train import Batch, Trainer

TRAINING = TrainingConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.1, warmup_steps=0,
                           grad_clip=1.0, batchnorm="frozen", eval_batch_size=64)


@pytest.fixture(scope="module")
def backbone():
    cfg = SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=32,
                          head_init="linear_probe")
    return build_backbone(cfg)


def tiny_task(n=16, classes=2):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    split = Split(images=images, labels=labels)
    return TaskData(name="t", dataset="synthetic", class_names=[str(c) for c in range(classes)], train=split, test=split)


def make(backbone, options=None):
    model = TaskModel(copy.deepcopy(backbone), freeze_batchnorm=True)
    model.heads["t"] = Head(backbone.feature_dim, 2, normalize=False)
    return model, LDIFS(options or LDIFSOptions(), pretrained=backbone)


def test_penalty_is_zero_before_training_and_positive_after(backbone):
    model, method = make(backbone, LDIFSOptions(cache="off"))
    task = tiny_task()
    x = backbone.preprocess(task.train.images[:8])
    model.eval()
    batch = Batch(x, task.train.labels[:8], torch.arange(8), "t")
    with torch.no_grad():
        assert float(method.loss_terms(model, batch)["ldifs"]) == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    method.fit_task(model, task, step=1, trainer=Trainer(TRAINING, device=torch.device("cpu"), progress=False))
    model.eval()
    with torch.no_grad():
        assert float(method.loss_terms(model, batch)["ldifs"]) > 1e-4


def test_anchor_gets_no_gradient_and_never_changes(backbone):
    model, method = make(backbone, LDIFSOptions(cache="off"))
    before = {k: v.clone() for k, v in method.anchor.state_dict().items()}
    assert not any(p.requires_grad for p in method.anchor.parameters())
    task = tiny_task()
    x = backbone.preprocess(task.train.images[:8])
    model.train()
    terms = method.loss_terms(model, Batch(x, task.train.labels[:8], torch.arange(8), "t"))
    sum(terms.values()).backward()
    assert all(p.grad is None for p in method.anchor.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())
    method.fit_task(model, task, step=1, trainer=Trainer(TRAINING, device=torch.device("cpu"), progress=False))
    method.fit_task(model, task, step=2, trainer=Trainer(TRAINING, device=torch.device("cpu"), progress=False))
    after = method.anchor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running stats included
    # and the model itself did move away from it
    assert not all(torch.equal(before[f"backbone.{k}"], v) for k, v in model.backbone.state_dict().items())


def test_frozen_backbone_refuses_train_mode(backbone):
    frozen = FrozenBackbone(backbone)
    frozen.train()
    holder = torch.nn.ModuleList([frozen])
    holder.train()
    assert not any(m.training for m in frozen.modules())


def test_previous_anchor_is_refreshed_after_each_task(backbone):
    model, method = make(backbone, LDIFSOptions(anchor="previous"))
    trainer = Trainer(TRAINING, device=torch.device("cpu"), progress=False)
    task = tiny_task()
    method.fit_task(model, task, step=1, trainer=trainer)
    after_task_1 = copy.deepcopy(model.backbone.state_dict())
    method.fit_task(model, task, step=2, trainer=trainer)
    anchor = method.anchor.backbone.state_dict()
    assert all(torch.equal(anchor[k], after_task_1[k]) for k in anchor)


def test_feature_distance_by_hand():
    a = [torch.tensor([[3.0, 4.0], [1.0, 0.0]])]
    b = [torch.tensor([[6.0, 8.0], [0.0, 2.0]])]
    # sample 1: same direction -> 0; sample 2: orthogonal unit vectors -> |e1 - e2|^2 = 2
    assert float(feature_distance(a, b)) == pytest.approx(1.0)
    two = feature_distance(a + a, b + [torch.tensor([[3.0, 4.0], [1.0, 0.0]])])
    assert float(two) == pytest.approx(0.5)  # mean over taps


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_cached_anchor_gives_the_papers_loss(backbone, tmp_path, where):
    """The cache replaces the anchor's forward per step by a lookup: same penalty (float16 on disk)."""
    task = tiny_task()
    trainer = Trainer(TRAINING, device=torch.device("cpu"), progress=False, scratch=tmp_path)
    losses = {}
    for cache in ("off", where):
        torch.manual_seed(0)  # the head's initial weights too
        model, method = make(backbone, LDIFSOptions(cache=cache))
        stats = method.fit_task(model, task, step=1, trainer=trainer)
        losses[cache] = stats.losses
        assert stats.extra["anchor_cache"] == cache
    assert losses[where]["ce"] == pytest.approx(losses["off"]["ce"], rel=1e-4)
    assert losses[where]["ldifs"] == pytest.approx(losses["off"]["ldifs"], rel=1e-2 if where == "disk" else 1e-4)
    assert losses["off"]["ldifs"] > 0
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == (5 if where == "disk" else 0)  # one per tap
    method.cache.close()
    assert not list(tmp_path.glob("*.npy"))


def test_cache_is_built_once_per_task_and_follows_the_anchor(backbone, monkeypatch):
    builds = []
    build = AnchorCache.build.__func__
    monkeypatch.setattr(AnchorCache, "build", classmethod(lambda cls, *a, **k: builds.append(1) or build(cls, *a, **k)))
    two_epochs = TRAINING.model_copy(update={"epochs": 2})  # 2 visits an image: cache: auto caches
    trainer = Trainer(two_epochs, device=torch.device("cpu"), progress=False)
    task = tiny_task()
    model, method = make(backbone)  # anchor: pretrained -> the same taps for the same images
    method.fit_task(model, task, step=1, trainer=trainer)
    method.fit_task(model, task, step=2, trainer=trainer)
    assert len(builds) == 1
    model, method = make(backbone, LDIFSOptions(anchor="previous"))  # a new anchor each task -> rebuilt
    method.fit_task(model, task, step=1, trainer=trainer)
    method.fit_task(model, task, step=2, trainer=trainer)
    assert len(builds) == 3


def test_a_disk_cache_on_a_full_disk_is_disk_full_not_a_crash(backbone, monkeypatch):
    """The taps' memory-mapped files are allocated up front: on a full disk their lazily written pages
    would kill the process with SIGBUS in the middle of a step. (The plan refuses a cache larger than the
    free space before this, test_ldifs_cache_rule.py; here the disk fills between the two.)"""
    from helpers import fill, small_tmpfs

    from continual.methods import ldifs
    from continual.files import DiskFull

    monkeypatch.setattr(ldifs, "free_disk", lambda folder: 10**12)
    with small_tmpfs(1) as disk:
        fill(disk, leave=4096)
        trainer = Trainer(TRAINING, device=torch.device("cpu"), progress=False, scratch=disk / "cache")
        model, method = make(backbone, LDIFSOptions(cache="disk"))
        with pytest.raises(DiskFull, match="the disk is full"):
            method.fit_task(model, tiny_task(n=512), step=1, trainer=trainer)
