"""LDIFS's `distance:` (per_sample, or the paper code's) and `taps:` (a subset of the backbone's taps),
on tiny real backbones: the EfficientNet-Lite0 of test_ldifs.py and the tiny CLIP ViT of conftest.py."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from continual.config.schema import TrainingConfig
from continual.datasets.tasks import Split, TaskData
from continual.methods.ldifs import LDIFS, FrozenBackbone, cache_key, feature_distance, paper_distance
from continual.methods.options import LDIFSOptions
from continual.models import Backbone, Head, ModelError, TaskModel, build_backbone
from continual.train import Batch, Trainer
from helpers import digits, tiny_clip_sequence

TRAINING = TrainingConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=0.1, warmup_steps=0,
                           grad_clip=1.0, batchnorm="frozen", eval_batch_size=64)
EFFNET_TAPS = ["blocks.0", "blocks.2", "blocks.4", "blocks.10", "blocks.15"]


def reference_distance(outs1: list[torch.Tensor], outs2: list[torch.Tensor]) -> torch.Tensor:
    """The paper code's loss written out again (omegafragger/ldifs_code, loss/ldifs.py lines 11-13 and
    28-42): each tap divided by (its L2 norm along dim 1 + 1e-10), squared differences averaged over every
    element of a sample, then over taps, then over the batch."""
    per_tap = []
    for a, b in zip(outs1, outs2, strict=True):
        na = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
        per_tap.append((na - nb).pow(2).flatten(1).mean(dim=1))  # (B,)
    return torch.stack(per_tap).mean()  # every tap has the batch's B rows: the mean of means is the mean


@pytest.fixture(scope="module")
def effnet():
    cfg = SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=32,
                          head_init="linear_probe")
    return build_backbone(cfg).eval()  # as the frozen anchor: BatchNorm on its running statistics


@pytest.fixture(scope="module")
def vit(tiny_clip):
    arch, checkpoint = tiny_clip
    cfg = SimpleNamespace(family="open_clip", arch=arch, pretrained=str(checkpoint), image_size=None,
                          head_init="linear_probe")
    return build_backbone(cfg).eval()


def images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def moved(backbone, model_seed=1):
    """A TaskModel whose backbone is the pre-trained one plus small noise, so every tap differs."""
    model = TaskModel(copy.deepcopy(backbone), freeze_batchnorm=True)
    model.heads["t"] = Head(backbone.feature_dim, 2, normalize=False)
    g = torch.Generator().manual_seed(model_seed)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def penalty(method, model, backbone, n=8):
    x = backbone.preprocess(images(n))
    with torch.no_grad():
        return method.loss_terms(model, Batch(x, torch.arange(n) % 2, torch.arange(n), "t"))["ldifs"]


def test_paper_distance_by_hand():
    # (B=1, L=2, D=1): the channel normalised across the two tokens: [3, 4]/5 against [4, 3]/5 -> 0.04 each
    a3, b3 = torch.tensor([[[3.0], [4.0]]]), torch.tensor([[[4.0], [3.0]]])
    # (B=1, D=2): normalised along D: e1 against e2 -> 1 per element
    a2, b2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(paper_distance([a3], [b3])) == pytest.approx(0.04, rel=1e-6)
    assert float(paper_distance([a3, a2], [b3, b2])) == pytest.approx((0.04 + 1.0) / 2, rel=1e-6)  # mean over taps
    # Normalised per channel across tokens, the paper's distance ignores a channel's scale; ours does not.
    a, b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert float(paper_distance([a], [b])) == 0.0
    assert float(feature_distance([a], [b])) > 0.01
    # and the mean over the batch: a second sample equal to its anchor halves it
    assert float(paper_distance([torch.cat([a3, a3])], [torch.cat([b3, a3])])) == pytest.approx(0.02, rel=1e-6)


def test_paper_distance_matches_the_reference_formula(vit, effnet):
    """On random tensors and on real taps: ViT (B, L, D) and EfficientNet (B, C, H, W)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 17, 32), (4, 6), (4, 8, 3, 3)]
    a = [torch.randn(s, generator=g) for s in shapes]
    b = [torch.randn(s, generator=g) for s in shapes]
    torch.testing.assert_close(paper_distance(a, b), reference_distance(a, b), rtol=1e-6, atol=0)
    for backbone in (vit, effnet):
        model = moved(backbone)
        method = LDIFS(LDIFSOptions(distance="paper", cache="off", lambda_=3.0), pretrained=backbone)
        x = backbone.preprocess(images())
        with torch.no_grad():
            taps = model.backbone.forward_with_taps(x)[1]
            anchor = backbone.forward_with_taps(x)[1]
        expected = 3.0 * reference_distance(taps, anchor)
        assert float(expected) > 1e-6
        torch.testing.assert_close(penalty(method, model, backbone), expected, rtol=1e-5, atol=0)


def test_per_sample_is_the_default_and_unchanged(effnet):
    model = moved(effnet)
    x = effnet.preprocess(images())
    with torch.no_grad():
        taps = model.backbone.forward_with_taps(x)[1]
        anchor = effnet.forward_with_taps(x)[1]
    expected = 10.0 * feature_distance(taps, anchor)
    for options in (LDIFSOptions(cache="off"), LDIFSOptions(cache="off", distance="per_sample"),
                    LDIFSOptions(cache="off", taps=list(EFFNET_TAPS))):
        assert torch.equal(penalty(LDIFS(options, pretrained=effnet), model, effnet), expected)


def test_forward_with_taps_returns_the_named_taps_without_hooks(effnet, monkeypatch):
    x = effnet.preprocess(images(2))
    with torch.no_grad():
        features, every = effnet.forward_with_taps(x)
        hooked = []
        register = nn.Module.register_forward_hook
        monkeypatch.setattr(nn.Module, "register_forward_hook",
                            lambda self, *a, **k: hooked.append(self) or register(self, *a, **k))
        features_2, two = effnet.forward_with_taps(x, ["blocks.10", "blocks.2"])
    assert hooked == []  # the forward returns its taps (issue #24): nothing for torch.compile to trip on
    assert torch.equal(features_2, features)
    assert torch.equal(two[0], every[3]) and torch.equal(two[1], every[1])  # in the order asked
    assert all(not m._forward_hooks for m in effnet.modules())
    with pytest.raises(ValueError, match=r"unknown taps \['blocks.99'\].*blocks.0, blocks.2"):
        effnet.forward_with_taps(x, ["blocks.99"])


@pytest.mark.parametrize("distance", ["per_sample", "paper"])
def test_one_tap_uses_only_that_tap(vit, distance):
    model = moved(vit)
    x = vit.preprocess(images())
    with torch.no_grad():
        taps = model.backbone.forward_with_taps(x)[1]
        anchor = vit.forward_with_taps(x)[1]
    one = LDIFS(LDIFSOptions(distance=distance, cache="off", taps=["resblocks.2"]), pretrained=vit)
    every = LDIFS(LDIFSOptions(distance=distance, cache="off"), pretrained=vit)
    assert vit.tap_names[3] == "resblocks.2" and one.tap_names == ["resblocks.2"] and every.tap_names is None
    function = {"per_sample": feature_distance, "paper": paper_distance}[distance]
    assert torch.equal(penalty(one, model, vit), 10.0 * function([taps[3]], [anchor[3]]))
    assert float(penalty(one, model, vit)) != pytest.approx(float(penalty(every, model, vit)), rel=1e-3)


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_the_anchor_cache_holds_only_the_selected_taps(effnet, tmp_path, where):
    n = 16
    task_images = images(n)
    labels = torch.arange(n) % 2
    split = Split(images=task_images, labels=labels)
    task = TaskData(name="t", dataset="synthetic", class_names=["0", "1"], train=split, test=split)
    trainer = Trainer(TRAINING, device=torch.device("cpu"), progress=False, scratch=tmp_path)
    losses = {}
    for cache in ("off", where):
        torch.manual_seed(0)
        model = moved(effnet).train()
        method = LDIFS(LDIFSOptions(distance="paper", cache=cache, taps=["blocks.15", "blocks.4"]), pretrained=effnet)
        assert method.tap_names == ["blocks.4", "blocks.15"]  # the model's order, whatever the YAML's
        losses[cache] = method.fit_task(model, task, step=1, trainer=trainer).losses
    assert len(method.cache.taps) == 2
    assert [tuple(t.shape) for t in method.cache.taps] == [(n, 40, 4, 4), (n, 320, 1, 1)]
    assert len(list(tmp_path.glob("*.npy"))) == (2 if where == "disk" else 0)
    assert losses[where]["ldifs"] == pytest.approx(losses["off"]["ldifs"], rel=1e-2 if where == "disk" else 1e-4)
    method.cache.close()
    # The key changes with the selection; the same taps in any order are the same key; all of them is None's.
    anchor = FrozenBackbone(effnet)
    keys = {str(names): cache_key(anchor, task_images, names)
            for names in (None, ["blocks.4"], ["blocks.15"], ["blocks.4", "blocks.15"], EFFNET_TAPS)}
    assert len(set(keys.values())) == 4 and keys["None"] == keys[str(EFFNET_TAPS)]


class Tapless(Backbone):
    """A backbone whose tower has no taps (as an open_clip timm tower)."""

    def __init__(self):
        super().__init__(family="timm", feature_dim=4, image_size=32, normalize_features=False,
                         mean=(0.5,) * 3, std=(0.5,) * 3)

    @property
    def tap_names(self):
        raise ModelError("arch", "no taps for this tower")


def test_unknown_and_repeated_taps_are_problems(effnet):
    assert LDIFS.problems(LDIFSOptions(), effnet) == []
    assert LDIFS.problems(LDIFSOptions(taps=["blocks.0", "blocks.15"]), effnet) == []
    problems = LDIFS.problems(LDIFSOptions(taps=["blocks.99", "blocks.0", "blocks.0", "ln_pre"]), effnet)
    assert problems == [
        ("taps", f"unknown tap 'blocks.99' (this model's taps: {', '.join(EFFNET_TAPS)})"),
        ("taps", "tap 'blocks.0' is listed twice"),
        ("taps", f"unknown tap 'ln_pre' (this model's taps: {', '.join(EFFNET_TAPS)})"),
    ]
    with pytest.raises(ValueError, match=r"methods.ldifs.taps: unknown tap 'blocks.99' \(this model's taps: blocks.0"):
        LDIFS(LDIFSOptions(taps=["blocks.99"]), pretrained=effnet)
    assert LDIFS.problems(LDIFSOptions(taps=["x"]), Tapless()) == [("taps", "no taps for this tower")]
    assert LDIFS.problems(LDIFSOptions(), Tapless()) == []  # taps: None asks nothing of the model here


def test_a_run_with_the_paper_distance_on_two_taps(tmp_path, tiny_clip):
    from continual.config import load_sequence
    from continual.runner import run_sequence

    doc = tiny_clip_sequence(tiny_clip, seed=3, tasks=[digits("low", [0, 1]), digits("high", [7, 8])],
                             methods=[{"ldifs": {"distance": "paper", "taps": ["resblocks.3", "ln_pre"]}}])
    source = tmp_path / "tiny.yaml"
    source.write_text(yaml.safe_dump(doc))
    folder = run_sequence(load_sequence(source), out=tmp_path / "out", source=str(source), progress=False)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    options = config["methods"][0]["ldifs"]
    assert options["distance"] == "paper" and options["taps"] == ["resblocks.3", "ln_pre"]
    timings = json.loads((folder / "ldifs" / "metrics.json").read_text())["timings"]
    assert [t["step"] for t in timings] == [0, 1, 2]  # step 0: the loaded model, evaluated only
    for step in timings[1:]:
        # 16 images, batch 8, one epoch: each image visited once, which on a CPU pays for the cache (PAYS_FROM)
        assert step["train_steps"] == 2 and step["anchor_cache"] == "memory" and step["anchor_visits_per_image"] == 1.0
        assert step["anchor_cache_reason"].startswith("16 visits to 16 images, 1.00 each; ")
        assert step["anchor_cache_estimate_bytes"] == 16 * (17 + 17) * 32 * 4  # 2 taps of (17, 32), float32 in memory
        assert set(step["losses"]) == {"ce", "ldifs"}
        assert 0 <= step["losses"]["ldifs"] <= 10.0 * 4 / 17  # λ · 4 / (17 tokens) at most
