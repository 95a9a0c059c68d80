"""open_clip models users bring, in open_clip's own forms: `arch: local-dir:<folder>` (a model saved
with open_clip_config.json and its weights) and `arch: <model config>.json` next to a checkpoint."""

import json
import shutil

import pytest
import torch
import yaml

from conftest import TINY_CLIP_CONFIG
from continual.cli import main
from continual.config import load_sequence
from continual.models import ModelError, build_backbone, clip, zero_shot_head


def sequence(tmp_path, **model):
    doc = {"name": "t", "model": {"family": "open_clip", **model},
           "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1]}], "methods": ["finetune"]}
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_model_config_json_next_to_its_weights(tmp_path, tiny_clip):
    _, checkpoint = tiny_clip
    (tmp_path / "my-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    shutil.copy(checkpoint, tmp_path / "my-clip.pt")
    seq = load_sequence(sequence(tmp_path, arch="my-clip.json", pretrained="my-clip.pt"))  # next to the file
    backbone = build_backbone(seq.model)
    state = torch.load(checkpoint, weights_only=True)
    assert torch.equal(backbone.visual.conv1.weight, state["visual.conv1.weight"])
    assert zero_shot_head(backbone, ["zero", "one"]).linear.weight.shape == (2, 16)


def test_a_local_dir_saved_as_open_clip_saves_models(tmp_path, tiny_clip, capsys):
    _, checkpoint = tiny_clip
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    path = sequence(tmp_path, arch="local-dir:saved")
    assert main(["validate", str(path)]) == 2  # no weights yet: open_clip would build random ones
    assert f"local-dir:{folder}: no weights (.safetensors, .bin or .pth) in {folder}" in capsys.readouterr().err
    with pytest.raises(ModelError, match="no weights"):  # run says the same
        clip.build(arch=f"local-dir:{folder}", pretrained=None, image_size=None)
    shutil.copy(checkpoint, folder / "open_clip_pytorch_model.bin")
    backbone = build_backbone(load_sequence(path).model)
    state = torch.load(checkpoint, weights_only=True)
    assert torch.equal(backbone.visual.conv1.weight, state["visual.conv1.weight"])
    assert zero_shot_head(backbone, ["zero", "one"]).linear.weight.shape == (2, 16)
    shutil.copy(checkpoint, tmp_path / "x.pt")
    assert main(["validate", str(sequence(tmp_path, arch="local-dir:saved", pretrained="x.pt"))]) == 2
    assert "model.pretrained: " in capsys.readouterr().err
    with pytest.raises(ModelError, match="holds its own weights; leave pretrained unset"):
        clip.build(arch=f"local-dir:{folder}", pretrained=str(tmp_path / "x.pt"), image_size=None)


@pytest.mark.parametrize("arch, words", [("local-dir:nowhere", "no open_clip_config.json in"),
                                         ("nowhere.json", "model config file not found: ")])
def test_validate_refuses_a_missing_model(tmp_path, capsys, arch, words):
    path = sequence(tmp_path, arch=arch)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: model.arch: " in err and words in err
