"""Backbones, taps, heads and checkpoints, on the shipped EfficientNet-Lite0 weights and tiny open_clip models."""

import copy
import json
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet
from open_clip.transformer import Transformer

from continual.models import Backbone, Head, ModelError, TaskModel, build_backbone, zero_shot_head
from helpers import TINY_CLIP_CONFIG

TINY_VIT = "continual-test-tiny-vit"
TINY_RN = "continual-test-tiny-rn"
TINY_TIMM = "continual-test-tiny-timm"
# Tiny towers in the spirit of open_clip's own tests: width 32, a few layers, 32 px. The text tower keeps
# the real BPE vocabulary size so open_clip's tokenizer ids are valid embeddings.
TEXT_CFG = TINY_CLIP_CONFIG["text_cfg"]
TINY_CONFIGS = {
    TINY_VIT: TINY_CLIP_CONFIG,  # conftest's tiny CLIP, under a name of its own
    TINY_RN: {"embed_dim": 16, "text_cfg": TEXT_CFG,
              "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8}},
    TINY_TIMM: {"embed_dim": 16, "text_cfg": TEXT_CFG,
                "vision_cfg": {"image_size": 32, "timm_model_name": "test_resnet", "timm_pool": "avg", "timm_proj": "linear"}},
}


def model_cfg(**overrides):
    fields = dict(family="efficientnet_lite0", arch=None, pretrained=None, image_size=None, head_init="random")
    return SimpleNamespace(**{**fields, **overrides})


def clip_cfg(arch=TINY_VIT, **overrides):
    return model_cfg(family="open_clip", arch=arch, **overrides)


def uint8_images(batch, size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def hook_count(module):
    return sum(len(m._forward_hooks) for m in module.modules())


@pytest.fixture(scope="module", autouse=True)
def tiny_open_clip_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in TINY_CONFIGS.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def effnet():
    return build_backbone(model_cfg(image_size=64)).eval()


@pytest.fixture()
def clip_model(tiny_clip):
    """conftest's tiny CLIP as the open_clip model a user holds: its random weights (seed 0), loaded."""
    arch, checkpoint = tiny_clip
    model = open_clip.create_model(arch)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


def save_state(module, path):
    torch.save(module.state_dict(), path)
    return str(path)


# ------------------------------------------------------------------ EfficientNet-Lite0


def test_efficientnet_features_and_pinned_numbers(effnet):
    assert (effnet.family, effnet.feature_dim, effnet.image_size, effnet.normalize_features) == (
        "efficientnet_lite0", 1280, 64, False)
    assert not any(name.startswith("net._fc") for name in effnet.state_dict())  # ImageNet classifier dropped
    with torch.no_grad():
        features = effnet(effnet.preprocess(uint8_images(2, 64)))
    assert features.shape == (2, 1280)
    # Pinned on CPU from the shipped weights: a change in weights, preprocessing or pooling shows up here.
    torch.testing.assert_close(features.mean(dim=1), torch.tensor([0.1293, 0.1405]), atol=1e-3, rtol=0)
    torch.testing.assert_close(features[0, :3], torch.tensor([1.0842, 0.0, 1.2260]), atol=1e-3, rtol=0)


def test_efficientnet_default_image_size_is_224():
    assert build_backbone(model_cfg()).image_size == 224


def test_efficientnet_preprocess_is_minus_one_to_one(effnet):
    images = uint8_images(2, 64)
    expected = (images.float() / 255 - 0.5) / 0.5
    assert torch.equal(effnet.preprocess(images), expected)
    assert effnet.preprocess(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).min() == -1
    with pytest.raises(TypeError):
        effnet.preprocess(expected)  # already float: refuse rather than normalise twice
    with pytest.raises(ValueError):
        effnet.preprocess(torch.zeros(1, 3, 64, 32, dtype=torch.uint8))  # not square
    # Stored at another size (CIFAR's 32 px): resized to the model's on the images' device.
    small = uint8_images(2, 32)
    resized = torch.nn.functional.interpolate(small.float(), size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(effnet.preprocess(small), (resized / 255 - 0.5) / 0.5)
    assert effnet.preprocess(uint8_images(2, 128)).shape == (2, 3, 64, 64)  # shrunk (antialiased)


def test_efficientnet_taps_are_stage_ends(effnet):
    assert effnet.tap_names == ["blocks.0", "blocks.2", "blocks.4", "blocks.10", "blocks.15"]
    x = effnet.preprocess(uint8_images(2, 64))
    with torch.no_grad():
        features, taps = effnet.forward_with_taps(x)
        plain = effnet(x)
    assert [tuple(t.shape) for t in taps] == [
        (2, 16, 32, 32), (2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4), (2, 320, 2, 2)]
    assert torch.equal(features, plain)


def test_taps_hooks_exist_only_during_forward_with_taps(effnet):
    x = effnet.preprocess(uint8_images(1, 64))
    with torch.no_grad():
        effnet.forward_with_taps(x)
        assert hook_count(effnet) == 0
        effnet(x)
    assert hook_count(effnet) == 0
    # A deep copy (the frozen LDIFS reference) taps itself, not the original.
    reference = copy.deepcopy(effnet)
    with torch.no_grad():
        _, taps = reference.forward_with_taps(x)
    assert len(taps) == 5 and hook_count(effnet) == 0 and hook_count(reference) == 0


def hooked_taps(backbone, modules, x, *, seq_first=False):
    """The taps as they were caught before issue #24: forward hooks on the tap modules during a plain
    forward (outputs transposed to batch-first where the blocks run (L, B, D)). The oracle the forward's
    own taps must equal."""
    captured = []
    handles = [m.register_forward_hook(lambda m, a, out: captured.append(out.transpose(0, 1) if seq_first else out))
               for m in modules]
    try:
        features = backbone(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(captured) == len(modules)
    return features, captured


def assert_same(got, expected):
    features, taps = got
    hook_features, hook_taps = expected
    assert torch.equal(features, hook_features)
    assert len(taps) == len(hook_taps)
    for tap, hook_tap in zip(taps, hook_taps):
        assert tap.shape == hook_tap.shape and tap.dtype == hook_tap.dtype == torch.float32
        assert torch.equal(tap, hook_tap)


@pytest.mark.parametrize("training", [False, True])
def test_efficientnet_taps_equal_the_hooked_taps(effnet, training):
    """The blocks loop returns the very tensors hooks on the stage-end blocks caught; in train mode, with
    the same seed, drop-connect draws the same numbers in the same order."""
    backbone = copy.deepcopy(effnet).train(training)
    x = backbone.preprocess(uint8_images(3, 64, seed=1))
    blocks = [backbone.net._blocks[i] for i in (0, 2, 4, 10, 15)]
    torch.manual_seed(3)
    got = backbone.forward_with_taps(x)
    torch.manual_seed(3)
    expected = hooked_taps(backbone, blocks, x)
    assert_same(got, expected)
    torch.manual_seed(3)
    two = backbone.forward_with_taps(x, ["blocks.10", "blocks.2"])  # a subset, in the order asked
    assert_same(two, (expected[0], [expected[1][3], expected[1][1]]))


def test_efficientnet_checkpoint_round_trip(effnet, tmp_path):
    path = save_state(effnet.net, tmp_path / "lite0.pt")
    loaded = build_backbone(model_cfg(image_size=64, pretrained=path)).eval()
    x = effnet.preprocess(uint8_images(2, 64))
    with torch.no_grad():
        assert torch.equal(loaded(x), effnet(x))


@pytest.mark.parametrize("make_file", ["missing", "text", "pickled_module", "wrong_arch"])
def test_efficientnet_bad_checkpoints(make_file, tmp_path):
    path = tmp_path / "bad.pt"
    if make_file == "text":
        path.write_text("not a checkpoint")
    elif make_file == "pickled_module":
        torch.save(torch.nn.Linear(2, 2), path)  # refused by weights_only, never unpickled
    elif make_file == "wrong_arch":
        save_state(EfficientNet.from_name("efficientnet-b0", image_size=64), path)
    with pytest.raises(ModelError) as error:
        build_backbone(model_cfg(image_size=64, pretrained=str(path)))
    assert error.value.key == "pretrained"
    assert str(path) in str(error.value)


def test_spec_errors_name_the_key():
    with pytest.raises(ModelError) as error:
        build_backbone(model_cfg(family="resnet"))
    assert error.value.key == "family"
    with pytest.raises(ModelError) as error:
        build_backbone(model_cfg(head_init="zero_shot"))
    assert error.value.key == "head_init"
    with pytest.raises(ModelError) as error:
        build_backbone(model_cfg(image_size=0))
    assert error.value.key == "image_size"
    with pytest.raises(ModelError) as error:
        build_backbone(clip_cfg(arch="ViT-Q-99"))
    assert error.value.key == "arch" and "ViT-B-32" in str(error.value)
    with pytest.raises(ModelError) as error:
        build_backbone(clip_cfg(pretrained="no-such-tag-or-file"))
    assert error.value.key == "pretrained"


def test_zero_shot_head_needs_open_clip(effnet):
    with pytest.raises(ModelError) as error:
        zero_shot_head(effnet, ["cat", "dog"])
    assert error.value.key == "head_init"


# ------------------------------------------------------------------ open_clip


def test_open_clip_vit_taps():
    backbone = build_backbone(clip_cfg())
    assert (backbone.family, backbone.feature_dim, backbone.image_size, backbone.normalize_features) == (
        "open_clip", 16, 32, True)
    assert backbone.tap_names == ["ln_pre", "resblocks.0", "resblocks.1", "resblocks.2", "resblocks.3"]
    x = backbone.preprocess(uint8_images(3, 32))
    features, taps = backbone.forward_with_taps(x)
    assert features.shape == (3, 16)
    assert [tuple(t.shape) for t in taps] == [(3, 17, 32)] * 5  # 16 patches + class token, width 32
    assert torch.equal(features, backbone(x))
    assert hook_count(backbone) == 0


def test_open_clip_vit_taps_with_sequence_first_blocks():
    """A tower whose blocks run (L, B, D) (older open_clip) must still give batch-first taps."""
    backbone = build_backbone(clip_cfg()).eval()
    x = backbone.preprocess(uint8_images(3, 32))
    with torch.no_grad():
        features, taps = backbone.forward_with_taps(x)
        old = backbone.visual.transformer
        seq_first = Transformer(old.width, old.layers, heads=2, batch_first=False)
        seq_first.load_state_dict(old.state_dict())
        backbone.visual.transformer = seq_first
        features_sf, taps_sf = backbone.forward_with_taps(x)
    assert not backbone.visual.transformer.batch_first
    torch.testing.assert_close(features_sf, features)
    for tap, tap_sf in zip(taps, taps_sf, strict=True):
        assert tap_sf.shape == tap.shape == (3, 17, 32)
        torch.testing.assert_close(tap_sf, tap)


def test_open_clip_resnet_taps():
    backbone = build_backbone(clip_cfg(arch=TINY_RN)).eval()
    assert backbone.tap_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        features, taps = backbone.forward_with_taps(backbone.preprocess(uint8_images(2, 32)))
    assert features.shape == (2, 16)
    assert [tuple(t.shape) for t in taps] == [(2, 8, 8, 8), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2), (2, 256, 1, 1)]


def test_open_clip_vit_taps_equal_the_hooked_taps():
    backbone = build_backbone(clip_cfg()).eval()
    v = backbone.visual
    x = backbone.preprocess(uint8_images(3, 32, seed=1))
    with torch.no_grad():
        expected = hooked_taps(backbone, [v.ln_pre, *v.transformer.resblocks], x)
        assert_same(backbone.forward_with_taps(x), expected)
        assert_same(backbone.forward_with_taps(x, ["resblocks.2", "ln_pre"]),
                    (expected[0], [expected[1][3], expected[1][0]]))
        assert_same(backbone.forward_with_taps(x, ["ln_pre"]), (expected[0], expected[1][:1]))
        # Blocks run (L, B, D), as older open_clip's: the hooks' outputs transposed, exactly.
        old = v.transformer
        v.transformer = Transformer(old.width, old.layers, heads=2, batch_first=False)
        v.transformer.load_state_dict(old.state_dict())
        expected = hooked_taps(backbone, [v.ln_pre], x)
        expected_blocks = hooked_taps(backbone, list(v.transformer.resblocks), x, seq_first=True)
        assert_same(backbone.forward_with_taps(x), (expected[0], expected[1] + expected_blocks[1]))


def test_open_clip_resnet_taps_equal_the_hooked_taps():
    backbone = build_backbone(clip_cfg(arch=TINY_RN)).eval()
    v = backbone.visual
    x = backbone.preprocess(uint8_images(2, 32, seed=1))
    with torch.no_grad():
        expected = hooked_taps(backbone, [v.avgpool, v.layer1, v.layer2, v.layer3, v.layer4], x)
        assert_same(backbone.forward_with_taps(x), expected)
        # One early layer alone: the features are still the whole tower's.
        assert_same(backbone.forward_with_taps(x, ["layer1"]), (expected[0], expected[1][1:2]))


def test_open_clip_other_towers_refuse_taps_only_when_asked():
    backbone = build_backbone(clip_cfg(arch=TINY_TIMM)).eval()  # building and plain forward work
    assert backbone(backbone.preprocess(uint8_images(1, 32))).shape == (1, 16)
    with pytest.raises(ModelError) as error:
        backbone.forward_with_taps(backbone.preprocess(uint8_images(1, 32)))
    assert error.value.key == "arch" and "ViT and ModifiedResNet" in str(error.value)


def test_open_clip_image_size_override_and_patch_check():
    assert build_backbone(clip_cfg(image_size=48)).image_size == 48
    with pytest.raises(ModelError) as error:
        build_backbone(clip_cfg(image_size=36))  # not a multiple of the patch size 8
    assert error.value.key == "image_size"


def test_open_clip_preprocess_uses_clip_mean_std():
    backbone = build_backbone(clip_cfg())
    images = uint8_images(2, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.preprocess(images), (images.float() / 255 - mean) / std)


def test_open_clip_checkpoint_round_trip(clip_model, tmp_path):
    path = save_state(clip_model, tmp_path / "tiny_clip.pt")
    backbone = build_backbone(clip_cfg(pretrained=path)).eval()
    x = backbone.preprocess(uint8_images(2, 32))
    with torch.no_grad():
        assert torch.equal(backbone(x), clip_model.visual(x))


def test_open_clip_bad_checkpoint(effnet, tmp_path):
    path = save_state(effnet.net, tmp_path / "not_clip.pt")
    with pytest.raises(ModelError) as error:
        build_backbone(clip_cfg(pretrained=path))
    assert error.value.key == "pretrained"


def test_open_clip_trains_only_the_image_tower():
    backbone = build_backbone(clip_cfg())
    text_model = backbone._text.model
    backbone_params = {id(p) for p in backbone.parameters()}
    text_params = list(text_model.parameters())
    assert text_params and not backbone_params & {id(p) for p in text_params}
    assert all(name.startswith("visual.") for name in backbone.state_dict())
    assert not any(p.requires_grad for p in text_params) and not text_model.training
    backbone.train()  # flipping the backbone's mode leaves the text side alone
    assert not text_model.training
    # The frozen LDIFS reference is a deep copy: it gets its own image tower, and shares the text side.
    reference = copy.deepcopy(backbone)
    assert reference.visual is not backbone.visual and reference._text is backbone._text


def test_zero_shot_head_matches_hand_computation(clip_model, tmp_path):
    backbone = build_backbone(clip_cfg(pretrained=save_state(clip_model, tmp_path / "tiny_clip.pt"))).eval()
    classes = ["cat", "dog", "traffic light"]
    templates = ["a photo of a {}.", "a blurry photo of the {}."]
    head = zero_shot_head(backbone, classes, templates=templates)
    assert head.normalize and head.linear.weight.shape == (3, 16)
    scale = clip_model.logit_scale.exp()
    torch.testing.assert_close(head.linear.weight.norm(dim=1), scale.expand(3))
    assert torch.equal(head.linear.bias, torch.zeros(3))

    tokenizer = open_clip.get_tokenizer(TINY_VIT)
    x = backbone.preprocess(uint8_images(4, 32))
    with torch.no_grad():
        rows = []
        for name in classes:
            embeddings = F.normalize(clip_model.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1)
            rows.append(F.normalize(embeddings.mean(dim=0), dim=0))
        expected = scale * F.normalize(clip_model.encode_image(x), dim=-1) @ torch.stack(rows).T
        torch.testing.assert_close(head(backbone(x)), expected)


def test_zero_shot_head_default_templates():
    backbone = build_backbone(clip_cfg())
    head = zero_shot_head(backbone, ["a", "b", "c", "d"])
    assert head.linear.weight.shape == (4, 16) and head.normalize


# ------------------------------------------------------------------ heads and the task model


def test_head_normalize():
    torch.manual_seed(0)
    features = torch.randn(5, 8)
    plain, normalized = Head(8, 3, normalize=False), Head(8, 3, normalize=True)
    normalized.load_state_dict(plain.state_dict())
    torch.testing.assert_close(plain(features), plain.linear(features))
    torch.testing.assert_close(normalized(features), plain.linear(F.normalize(features, dim=-1)))
    torch.testing.assert_close(normalized(3 * features), normalized(features))  # scale-invariant


def test_task_model_routes_to_the_task_head():
    backbone = build_backbone(clip_cfg()).eval()
    heads = {"a": Head(16, 3, normalize=True), "b": Head(16, 5, normalize=True)}
    model = TaskModel(backbone, heads)
    assert isinstance(model.backbone, Backbone) and set(model.heads) == {"a", "b"}
    x = backbone.preprocess(uint8_images(2, 32))
    with torch.no_grad():
        features = backbone(x)
        torch.testing.assert_close(model(x, "a"), heads["a"](features))
        torch.testing.assert_close(model(x, "b"), heads["b"](features))
    with pytest.raises(KeyError, match="no head for task 'c'"):
        model(x, "c")
    # Gradients reach the backbone and only the routed head.
    model(x, "b").sum().backward()
    assert heads["b"].linear.weight.grad is not None and heads["a"].linear.weight.grad is None
    assert backbone.visual.conv1.weight.grad is not None


def test_inference_form_matches_features(effnet):
    x = effnet.preprocess(uint8_images(8, 64, seed=3))
    fused = effnet.for_inference().eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in effnet.modules())  # the original is untouched
    effnet.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), effnet(x), atol=2e-4, rtol=1e-4)
