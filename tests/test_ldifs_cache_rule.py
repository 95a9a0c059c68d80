"""When LDIFS's `cache: auto` builds the anchor cache (issue #24): only where each image is visited more
than PAYS_FROM times over the task and the taps fit the budget of where they would live; decided, said and
recorded before anything is allocated. On the tiny EfficientNet-Lite0 of test_ldifs.py."""

import copy
from types import SimpleNamespace

import pytest
import torch

from continual.config.schema import TrainingConfig
from continual.datasets.tasks import Split, TaskData
from continual.methods import ldifs
from continual.methods.ldifs import LDIFS, PAYS_FROM, CacheTooLarge, plan_cache
from continual.methods.options import LDIFSOptions
from continual.models import Head, TaskModel, build_backbone
from continual.files import DiskFull
from continual.train import Trainer

GB = 10**9
# A ViT-B/16's five taps at 224 px: (197 tokens, 768 wide) each (docs/methods/ldifs.md, "How LDIFS is computed").
VIT_B16 = 5 * 197 * 768


def training(**changes):
    base = dict(batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.1, warmup_steps=0, grad_clip=1.0,
                batchnorm="frozen", eval_batch_size=64)
    return TrainingConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def backbone():
    cfg = SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=32,
                          head_init="linear_probe")
    return build_backbone(cfg)


def tiny_task(n=16):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    split = Split(images=images, labels=torch.arange(n) % 2)
    return TaskData(name="t", dataset="synthetic", class_names=["0", "1"], train=split, test=split)


def fit(backbone, options, train, scratch=None):
    torch.manual_seed(0)
    model = TaskModel(copy.deepcopy(backbone), freeze_batchnorm=True)
    model.heads["t"] = Head(backbone.feature_dim, 2, normalize=False)
    method = LDIFS(options, pretrained=backbone)
    trainer = Trainer(train, device=torch.device("cpu"), progress=False, scratch=scratch, label="ldifs 1:t")  # as the runner labels it
    return method, method.fit_task(model, tiny_task(), step=1, trainer=trainer)


def test_the_rule_by_hand():
    room = dict(gpu_free=None, ram_free=100 * GB, disk_free=100 * GB)
    once = plan_cache("auto", images=1000, visits=1000, per_sample=10, **room)
    assert (once.where, once.visits, once.estimate) == ("off", 1.0, 20_000)
    assert "1,000 visits to 1,000 images, 1.00 each: under 1.5" in once.reason
    assert plan_cache("auto", images=1000, visits=1499, per_sample=10, **room).where == "off"
    twice = plan_cache("auto", images=1000, visits=1500, per_sample=10, **room)
    assert (twice.where, twice.on_gpu, twice.estimate) == ("memory", False, 40_000)  # float32 in host memory
    on_gpu = plan_cache("auto", images=1000, visits=2000, per_sample=10, **{**room, "gpu_free": 80_000})
    assert (on_gpu.where, on_gpu.on_gpu, on_gpu.estimate) == ("memory", True, 20_000)  # float16, a quarter of 80k
    # Host memory takes a quarter of what is available; the disk half its free space; else per step.
    big = dict(images=1000, visits=2000, per_sample=10**6)  # 4 GB in float32, 2 GB in float16
    assert plan_cache("auto", **big, gpu_free=None, ram_free=16 * GB, disk_free=None).where == "memory"
    on_disk = plan_cache("auto", **big, gpu_free=None, ram_free=15 * GB, disk_free=4 * GB)
    assert (on_disk.where, on_disk.estimate) == ("disk", 2 * GB)
    nowhere = plan_cache("auto", **big, gpu_free=7 * GB, ram_free=15 * GB, disk_free=3.9 * GB)
    assert nowhere.where == "off" and nowhere.estimate == 2 * GB
    assert nowhere.reason.endswith("2.0 GB in float16, 4.0 GB in float32 fit none of a quarter of free GPU memory "
                                   "(7.0 GB), a quarter of available RAM (15.0 GB), half the scratch disk's free "
                                   "space (3.9 GB)")
    # Forced: whatever the visits, refused only where the cache cannot fit at all.
    assert plan_cache("memory", images=1000, visits=10, per_sample=10, **room).where == "memory"
    assert plan_cache("disk", images=1000, visits=10, per_sample=10, **room).where == "disk"
    assert plan_cache("off", images=1000, visits=10**6, per_sample=10, **room).where == "off"
    with pytest.raises(MemoryError, match="cache: memory needs 4.0 GB of host memory .* 3.0 GB is available"):
        plan_cache("memory", **big, gpu_free=None, ram_free=3 * GB, disk_free=100 * GB)
    with pytest.raises(CacheTooLarge, match="cache: disk needs 2.0 GB .* 1.0 GB free: the disk is full") as err:
        plan_cache("disk", **big, gpu_free=None, ram_free=100 * GB, disk_free=1 * GB)
    assert isinstance(err.value, DiskFull)  # the runner stops the run as on a full disk


@pytest.mark.parametrize(("images", "caches"), [
    (3_334, True), (1_880, True), (21_600, True), (8_144, True),  # Aircraft, DTD, EuroSAT, Cars
    (50_000, False), (60_000, False), (75_750, False),  # CIFAR-100, MNIST, Food-101
])
def test_mtil_at_1000_steps_of_64_with_vit_b16(images, caches):
    """README's table: MTIL's tasks at steps_per_task 1000 × batch 64 (64,000 visits), room to spare."""
    plan = plan_cache("auto", images=images, visits=64_000, per_sample=VIT_B16, gpu_free=None, ram_free=10**15,
                      disk_free=None)
    assert (plan.where == "memory") == caches
    assert plan_cache("auto", images=images, visits=64_000, per_sample=VIT_B16, gpu_free=None, ram_free=0,
                      disk_free=None).estimate == images * VIT_B16 * 2  # 1.51 MB an image in float16
    assert 64_000 / PAYS_FROM["cuda"] == pytest.approx(42_667, abs=1)  # the largest task that caches


@pytest.mark.parametrize(("steps", "cached"), [(1, False), (2, True), (3, True), (4, True)])
def test_auto_caches_only_when_steps_times_batch_pass_the_images(backbone, steps, cached):
    """16 images, batch 8, on a CPU (PAYS_FROM["cpu"], 0.75): 1 step visits half of them (the anchor per step);
    2, 3 and 4 steps visit each image 1, 1.5 and 2 times: cached. The losses are the anchor-per-step ones
    either way."""
    assert PAYS_FROM["cpu"] == 0.75
    method, stats = fit(backbone, LDIFSOptions(), training(steps_per_task=steps))
    assert stats.extra["anchor_cache"] == ("memory" if cached else "off")
    assert (method.cache is not None) == cached
    assert stats.extra["anchor_visits_per_image"] == steps * 8 / 16
    assert stats.extra["anchor_cache_estimate_bytes"] > 0 and stats.extra["anchor_cache_reason"]
    _, per_step = fit(backbone, LDIFSOptions(cache="off"), training(steps_per_task=steps))
    assert per_step.extra["anchor_cache"] == "off"
    assert per_step.extra["anchor_cache_reason"] == "cache: off (the paper's way)"
    assert stats.losses["ce"] == pytest.approx(per_step.losses["ce"], rel=1e-4)
    assert stats.losses["ldifs"] == pytest.approx(per_step.losses["ldifs"], rel=1e-4)
    assert per_step.losses["ldifs"] > 0


def test_a_budget_too_small_runs_the_anchor_per_step(backbone, tmp_path, monkeypatch, capsys):
    allocated = []
    monkeypatch.setattr(ldifs, "_allocate", lambda *a, **k: allocated.append(1))
    monkeypatch.setattr(ldifs, "available_memory", lambda: 4_000)
    monkeypatch.setattr(ldifs, "free_disk", lambda folder: 8_000)
    method, stats = fit(backbone, LDIFSOptions(), training(epochs=3), scratch=tmp_path)
    assert stats.extra["anchor_cache"] == "off" and method.cache is None and not allocated
    assert "fit none of a quarter of available RAM (0.0 MB), half the scratch disk's free space (0.0 MB)" in \
        stats.extra["anchor_cache_reason"]
    line, = [line for line in capsys.readouterr().err.splitlines() if "anchor" in line]
    assert line.startswith("ldifs 1:t: anchor per step, no cache: 48 visits to 16 images, 3.00 each, but ")


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_the_estimate_is_said_before_anything_is_allocated_and_is_the_size(backbone, tmp_path, monkeypatch, where):
    events = []
    plan, allocate, say = ldifs.plan_cache, ldifs._allocate, LDIFS.say
    monkeypatch.setattr(ldifs, "plan_cache", lambda *a, **k: events.append("estimate") or plan(*a, **k))
    monkeypatch.setattr(ldifs, "_allocate", lambda *a, **k: events.append("allocate") or allocate(*a, **k))
    monkeypatch.setattr(LDIFS, "say", lambda self, *a: events.append("said") or say(self, *a))
    method, stats = fit(backbone, LDIFSOptions(cache=where), training(), scratch=tmp_path)  # forced at 1 visit
    assert events == ["estimate", "said", "allocate"]
    assert stats.extra["anchor_cache"] == where and stats.extra["anchor_visits_per_image"] == 1.0
    assert method.cache.nbytes == method.cache_plan.estimate  # float32 in memory, float16 on disk
    assert stats.extra["anchor_cache_estimate_bytes"] == method.cache.nbytes
    method.cache.close()


def test_a_forced_disk_cache_larger_than_the_free_space_is_refused_before_writing(backbone, tmp_path, monkeypatch):
    allocated = []
    monkeypatch.setattr(ldifs, "_allocate", lambda *a, **k: allocated.append(1))
    monkeypatch.setattr(ldifs, "free_disk", lambda folder: 1_000)
    with pytest.raises(DiskFull, match=r"cache: disk needs 0.2 MB .* 0.0 MB free: the disk is full for it, nothing"):
        fit(backbone, LDIFSOptions(cache="disk"), training(epochs=4), scratch=tmp_path / "cache")
    assert not allocated and not (tmp_path / "cache").exists()


def test_free_disk_and_memory_read_this_machine(tmp_path):
    assert ldifs.free_disk(tmp_path / "not" / "made" / "yet") == ldifs.free_disk(tmp_path) > 0
    assert ldifs.available_memory() > 0
