"""training.augment: what each kind does to a batch, that its draws are seeded (the same batch for the same
seed, nothing drawn for none, a resumed run identical to an uninterrupted one), that our loop and the
Avalanche strategy both train on augmented batches, and that LDIFS then runs its anchor per step."""

import copy
import json

import pytest
import torch
import yaml

from continual import methods
from continual.augment import RATIO, SCALE, augment, crop_flip_transforms, generator
from continual.cli import main
from continual.config import ConfigError, ModelConfig, TrainingConfig, load_sequence
from continual.datasets.tasks import Split, TaskData
from continual.methods import METHODS
from continual.methods.options import LDIFSOptions
from continual.models import Head, TaskModel, build_backbone
from continual.train import Trainer
from helpers import assert_same_results, resume_sequence, tiny_clip_model

SEQ = resume_sequence()  # test_resume's


def images(n=16, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def flipped(out, x):
    """Per image: False if unchanged, True if mirrored left to right; anything else fails."""
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(k or m for k, m in zip(kept, mirrored))
    return torch.tensor(mirrored) & ~torch.tensor(kept)


@pytest.mark.parametrize("kind", ["none", "flip", "crop", "crop_flip"])
def test_each_kind_keeps_shape_dtype_and_device(kind):
    x = images(size=24)
    out = augment(x, kind, 0)
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    assert (out is x) == (kind == "none")


@pytest.mark.parametrize("kind", ["flip", "crop", "crop_flip"])
def test_the_same_seed_gives_the_same_batch_and_another_seed_another(kind):
    x = images(n=32)
    assert torch.equal(augment(x, kind, 3), augment(x, kind, 3))
    assert torch.equal(augment(x, kind, torch.Generator().manual_seed(3)), augment(x, kind, 3))
    assert not torch.equal(augment(x, kind, 3), augment(x, kind, 4))
    g = torch.Generator().manual_seed(3)  # a generator goes on: the next batch draws afresh
    assert not torch.equal(augment(x, kind, g), augment(x, kind, g))


def test_flip_mirrors_about_half_the_images_and_copies_the_rest_exactly():
    x = images(n=64)
    assert 16 < int(flipped(augment(x, "flip", 0), x).sum()) < 48
    asymmetric = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    asymmetric[..., 0] = 255  # the left column white
    outs = [augment(asymmetric, "flip", seed) for seed in range(20)]
    assert {int(o[0, 0, 0, 0]) for o in outs} == {0, 255}  # some flipped: the white column on the right
    assert all(int(o[0, 0, 0, 0]) + int(o[0, 0, 0, 3]) == 255 for o in outs)


def test_crop_boxes_lie_inside_the_image_with_open_clips_scale_and_a_ratio_in_range():
    theta = crop_flip_transforms(20000, generator=torch.Generator().manual_seed(0))
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    x0, y0 = (theta[:, 0, 2] + 1 - w) / 2, (theta[:, 1, 2] + 1 - h) / 2
    eps = 1e-6
    assert (x0 >= -eps).all() and (x0 + w <= 1 + eps).all() and (y0 >= -eps).all() and (y0 + h <= 1 + eps).all()
    assert ((w * h >= SCALE[0] - eps) & (w * h <= SCALE[1] + eps)).all()
    assert ((w / h >= RATIO[0] - eps) & (w / h <= RATIO[1] + eps)).all()
    assert 0.45 < float((theta[:, 0, 0] < 0).float().mean()) < 0.55  # mirrored half the time


def test_crop_is_crop_flips_boxes_never_mirrored():
    # The same draws: the same boxes, in the same order, whatever is flipped; images crop_flip leaves unmirrored
    # come out of crop alike, pixel for pixel.
    with_flip, without = (crop_flip_transforms(64, generator=torch.Generator().manual_seed(2), flip=f)
                          for f in (True, False))
    assert (without[:, 0, 0] > 0).all() and torch.equal(without[:, 0, 0], with_flip[:, 0, 0].abs())
    assert torch.equal(without[:, :, 2], with_flip[:, :, 2]) and torch.equal(without[:, 1], with_flip[:, 1])
    x = images(n=64)
    kept = with_flip[:, 0, 0] > 0
    assert 0 < int(kept.sum()) < 64
    assert torch.equal(augment(x, "crop", 2)[kept], augment(x, "crop_flip", 2)[kept])


def test_crop_flip_of_the_whole_image_gives_it_back_exactly():
    # The identity box, and its mirror, through the same bicubic resampling: no pixel moves or changes.
    from continual.augment import _crop_flip
    x = images(n=2)
    theta = torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[-1.0, 0, 0], [0, 1, 0]]])
    out = _crop_flip(x, theta)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))


def test_none_draws_nothing_from_torchs_generator():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    assert generator("none") is None
    augment(images(), "none", 0)
    assert torch.equal(torch.rand(4), expected)
    torch.manual_seed(5)
    assert generator("flip") is not None  # any other kind seeds its generator with one draw
    assert not torch.equal(torch.rand(4), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_draws_what_the_cpu_draws():
    x = images(n=8)
    assert torch.equal(augment(x.cuda(), "flip", 1).cpu(), augment(x, "flip", 1))
    diff = (augment(x.cuda(), "crop_flip", 1).cpu().int() - augment(x, "crop_flip", 1).int()).abs()
    assert int(diff.max()) <= 1  # the same boxes; resampling may round a pixel the other way


# ----------------------------------------------------------------------------------------------------
# Our loop and Avalanche's strategy train on augmented batches


@pytest.fixture(scope="module")
def clip(tiny_clip):
    arch, checkpoint = tiny_clip
    return build_backbone(ModelConfig(family="open_clip", arch=arch, pretrained=str(checkpoint)))


def tiny_task(n=16):
    labels = torch.arange(n) % 2
    split = Split(images=images(n=n), labels=labels)
    return TaskData(name="t", dataset="synthetic", class_names=["0", "1"], train=split, test=split)


def seen_batches(clip, name, augment_kind):
    """(index or None, preprocessed input) of every training forward of method `name` on one task."""
    task = tiny_task()
    model = TaskModel(copy.deepcopy(clip), {"t": Head(clip.feature_dim, 2, normalize=True)})
    method = methods.build(METHODS[name](), pretrained=clip)
    trainer = Trainer(TrainingConfig(epochs=2, batch_size=8, warmup_steps=0, augment=augment_kind),
                      device=torch.device("cpu"), progress=False)
    seen = []
    forward = type(model.backbone).forward

    def recording(self, x):
        if self.training:
            seen.append(x.detach().clone())
        return forward(self, x)

    type(model.backbone).forward = recording
    try:
        torch.manual_seed(0)
        method.fit_task(model, task, step=1, trainer=trainer)
    finally:
        type(model.backbone).forward = forward
    return task, seen


@pytest.mark.parametrize("name", ["finetune", "naive"])
def test_our_loop_and_avalanches_train_on_flipped_batches(clip, name):
    task, seen = seen_batches(clip, name, "flip")
    originals = clip.preprocess(task.train.images)
    mirrored = clip.preprocess(task.train.images.flip(-1))
    assert len(seen) == 4  # 2 epochs x 2 batches
    kinds = []
    for batch in seen:
        for x in batch:  # each image the model saw is a training image, as it is or mirrored
            kept = any(torch.equal(x, o) for o in originals)
            flipped = any(torch.equal(x, m) for m in mirrored)
            assert kept or flipped
            kinds.append(flipped and not kept)
    assert any(kinds) and not all(kinds)
    _, again = seen_batches(clip, name, "flip")
    assert all(torch.equal(a, b) for a, b in zip(seen, again))  # seeded: the same batches again
    if name == "finetune":  # (Avalanche without augmentation: test_avalanche's exact parity with finetune)
        _, plain = seen_batches(clip, name, "none")
        assert all(any(torch.equal(x, o) for o in originals) for batch in plain for x in batch)


# ----------------------------------------------------------------------------------------------------
# LDIFS: the anchor per step; the config refuses a cache that cannot hold


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_ldifs_refuses_a_named_cache_with_augmentation_naming_both_keys(cache):
    seq = {**SEQ, "training": {**SEQ["training"], "augment": "crop_flip"},
           "methods": ["finetune", {"ldifs": {"cache": cache}}]}
    with pytest.raises(ConfigError) as err:
        load_sequence(seq)
    [(key, message)] = err.value.problems
    assert key == "methods[1].ldifs.cache" and f"cache: {cache}" in message and "training.augment: crop_flip" in message
    for ok in ("auto", "off"):  # auto runs the anchor per step; off always did
        load_sequence({**seq, "methods": [{"ldifs": {"cache": ok}}]})
    load_sequence({**seq, "training": SEQ["training"]})  # without augmentation any cache is fine


def test_ldifs_built_in_python_with_a_named_cache_and_augmentation_is_refused_too(clip):
    method = methods.build(LDIFSOptions(cache="memory"), pretrained=clip)
    trainer = Trainer(TrainingConfig(augment="flip"), device=torch.device("cpu"), progress=False)
    model = TaskModel(copy.deepcopy(clip), {"t": Head(clip.feature_dim, 2, normalize=True)})
    with pytest.raises(ValueError, match=r"methods.ldifs.cache: memory .* training.augment: flip"):
        method.fit_task(model, tiny_task(), step=1, trainer=trainer)


# ----------------------------------------------------------------------------------------------------
# Resume: a run stopped mid-task and resumed draws the same augmentations


class Killed(BaseException):
    """Stops a run in the middle of a task, as a kill would (nothing in the runner catches it)."""


def test_an_augmented_run_resumes_to_identical_results_and_ldifs_says_its_anchor_ran_per_step(
        tiny_clip, tmp_path, capsys, monkeypatch):
    # test_resume's sequence, smaller (the tiny CLIP, no probe, LDIFS only), with crop_flip. LDIFS trains
    # with the shared loop (Trainer.fit) and its anchor runs on the augmented batch, so both are covered;
    # the Avalanche strategy draws from a generator seeded the same way (tested above).
    seq = {**SEQ, "model": tiny_clip_model(tiny_clip), "probes": [],
           "training": {**SEQ["training"], "augment": "crop_flip"}, "methods": ["ldifs"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(seq))
    reference = tmp_path / "reference"
    assert main(["run", str(path), "--out", str(reference), "--quiet"]) == 0
    assert "anchor runs on every augmented batch" in capsys.readouterr().err
    metrics = json.loads((reference / "tiny" / "ldifs" / "metrics.json").read_text())
    steps = [t for t in metrics["timings"] if t["step"] > 0]
    assert [(t["anchor_cache"], t["anchor_per_step"]) for t in steps] == [("off", "training.augment: crop_flip")] * 2

    # Stopped at the second update of the second task, then resumed: step 2 is trained again from its start.
    out = tmp_path / "out"
    updates = []
    adamw_step = torch.optim.AdamW.step

    def stopping(self, *args, **kwargs):
        updates.append(1)
        if len(updates) == 3 + 2:  # task a has 3 updates (24 images, batch 8)
            raise Killed
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", stopping)
    with pytest.raises(Killed):
        main(["run", str(path), "--out", str(out), "--quiet"])
    monkeypatch.setattr(torch.optim.AdamW, "step", adamw_step)
    assert json.loads((out / "tiny" / "ldifs" / "metrics.json").read_text())["complete"] is False
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert "resuming after step 1/2" in capsys.readouterr().err
    assert_same_results(out / "tiny", reference / "tiny", "ldifs")
