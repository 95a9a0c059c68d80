"""family: timm, the models users bring: any timm architecture, weights from a local file, LDIFS taps
at timm's feature stages. On timm's own tiny test architectures (random weights, 32 px)."""

import json

import pytest
import torch
import yaml

from continual.cli import main
from continual.config import load_sequence
from continual.models import ModelError, build_backbone
from helpers import digits, tiny_sequence


def model(**changes):
    return load_sequence({"name": "t", "model": {"family": "timm", "arch": "test_resnet", "image_size": 32,
                                                 **changes},
                          "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1]}],
                          "methods": ["finetune"]}).model


@pytest.mark.parametrize("arch, taps", [("test_resnet", ["act1", "layer1", "layer2", "layer3", "layer4"]),
                                        ("test_vit", [f"blocks.{i}" for i in range(6)])])
def test_features_and_taps_at_timms_feature_stages(arch, taps):
    backbone = build_backbone(model(arch=arch))
    assert backbone.tap_names == taps and backbone.image_size == 32
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    features, tapped = backbone.forward_with_taps(backbone.preprocess(images))
    assert features.shape == (2, backbone.feature_dim) and len(tapped) == len(taps)
    assert all(t.shape[0] == 2 for t in tapped)


def test_weights_come_from_a_local_file_with_or_without_the_classifier(tmp_path):
    import timm

    torch.manual_seed(0)
    full = timm.create_model("test_resnet", num_classes=10)  # as a user's fine-tuned checkpoint would be
    torch.save(full.state_dict(), tmp_path / "w.pt")
    backbone = build_backbone(model(pretrained=str(tmp_path / "w.pt")))
    assert torch.equal(backbone.net.conv1[0].weight, full.conv1[0].weight)
    torch.save(timm.create_model("test_convnext", num_classes=0).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="does not fit timm test_resnet"):
        build_backbone(model(pretrained=str(tmp_path / "other.pt")))


def test_an_unknown_architecture_is_refused_by_run_naming_the_key(tmp_path, capsys):
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump({"name": "t", "model": {"family": "timm", "arch": "resnet5O"},
                                   "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1]}],
                                   "methods": ["finetune"], "download": False}))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{seq}: model.arch: unknown timm architecture 'resnet5O'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_timm_needs_an_arch(tmp_path, capsys):
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump({"name": "t", "model": {"family": "timm"}, "methods": ["finetune"],
                                   "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1]}]}))
    assert main(["validate", str(seq)]) == 2
    assert "timm needs `arch`" in capsys.readouterr().err


def test_a_timm_sequence_runs_end_to_end_with_ldifs(tmp_path):
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(tiny_sequence(
        name="t", model={"family": "timm", "arch": "test_resnet", "image_size": 32},
        tasks=[digits("low", [0, 1], test=5), digits("high", [8, 9], test=5)], training={"batch_size": 8},
        methods=["finetune", "ldifs"])))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    for method in ("finetune", "ldifs"):
        doc = json.loads((tmp_path / "out" / "t" / method / "metrics.json").read_text())
        assert doc["complete"] and [t["train_steps"] for t in doc["timings"][1:]] == [2, 2]
    ldifs = json.loads((tmp_path / "out" / "t" / "ldifs" / "metrics.json").read_text())
    assert ldifs["timings"][1]["first_losses"]["ldifs"] == pytest.approx(0.0, abs=1e-5)  # anchor = start


@pytest.mark.parametrize("arch, from_forward", [("test_resnet", True), ("test_vit", True), ("test_convnext", True),
                                                ("test_vit_relpos", True), ("test_mambaout", False)])
def test_taps_equal_the_hooked_taps(arch, from_forward):
    """Where timm's forward_intermediates gives exactly the stage modules' outputs, the taps come from it;
    MambaOut's returns NCHW where its stages give NHWC, so its taps are still caught by hooks. Either
    way: the very tensors forward hooks on the feature_info modules catch, and no hook left behind."""
    backbone = build_backbone(model(arch=arch)).eval()
    modules = dict(backbone.net.named_modules())
    stages = [modules[name] for name in backbone.tap_names]
    x = backbone.preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(1)))
    captured = []
    handles = [m.register_forward_hook(lambda m, a, out: captured.append(out)) for m in stages]
    with torch.no_grad():
        hook_features = backbone(x)
        for handle in handles:
            handle.remove()
        features, taps = backbone.forward_with_taps(x)
        _, two = backbone.forward_with_taps(x, backbone.tap_names[-1:0:-2])
    assert backbone._intermediates_fit is from_forward
    assert torch.equal(features, hook_features) and len(taps) == len(captured)
    assert all(t.shape == c.shape and torch.equal(t, c) for t, c in zip(taps, captured))
    assert all(torch.equal(t, c) for t, c in zip(two, captured[-1:0:-2]))
    assert not any(m._forward_hooks for m in backbone.modules())


def test_the_first_tapped_batch_checks_in_eval_mode_and_restores_each_modules_mode():
    backbone = build_backbone(model()).train()
    frozen = backbone.net.bn1
    frozen.eval()  # as TaskModel(freeze_batchnorm=True) leaves BatchNorm layers
    modes = {name: m.training for name, m in backbone.named_modules()}
    x = backbone.preprocess(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    backbone.forward_with_taps(x)
    assert backbone._intermediates_fit is True
    assert {name: m.training for name, m in backbone.named_modules()} == modes and not frozen.training
