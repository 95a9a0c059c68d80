"""open_clip models users bring, in open_clip's own forms: `arch: local-dir:<folder>` (a model saved
with open_clip_config.json and its weights) and `arch: <model config>.json` next to a checkpoint."""

import json
import shutil

import pytest
import torch
import yaml

from continual.cli import main
from continual.config import load_sequence
from continual.models import ModelError, build_backbone, clip, zero_shot_head
from helpers import TINY_CLIP_CONFIG


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


def hub_cache(cache, repo: str, files: dict) -> None:
    """The Hugging Face hub cache's layout for one model repo: refs/main names a snapshot holding the files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name) if not isinstance(source, str) else (snapshot / name).write_text(source)


def test_an_hf_hub_model_from_the_local_cache_without_network(tmp_path, tiny_clip, monkeypatch, capsys):
    from huggingface_hub import constants

    _, checkpoint = tiny_clip
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(clip, "_reachable", lambda url: False)  # no network: the cache must do
    arch = "hf-hub:someone/tiny-clip"
    with pytest.raises(ModelError, match=r"hf-hub:someone/tiny-clip is not in the local hub cache .* cannot be "
                                         r"reached from this machine: download it where there is network"):
        clip.build(arch=arch, pretrained=None, image_size=None)
    hub_cache(tmp_path / "hub", "someone/tiny-clip", {
        "open_clip_config.json": json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}),
        "open_clip_pytorch_model.bin": checkpoint})
    path = sequence(tmp_path, arch=arch)
    assert main(["validate", str(path)]) == 0
    backbone = build_backbone(load_sequence(path).model)
    state = torch.load(checkpoint, weights_only=True)
    assert torch.equal(backbone.visual.conv1.weight, state["visual.conv1.weight"])
    assert zero_shot_head(backbone, ["zero", "one"]).linear.weight.shape == (2, 16)
    capsys.readouterr()
    assert main(["validate", str(sequence(tmp_path, arch=arch, pretrained="openai"))]) == 2
    assert "model.pretrained: hf-hub:someone/tiny-clip holds its own weights" in capsys.readouterr().err
    assert main(["validate", str(sequence(tmp_path, arch="hf-hub:no-repo-named"))]) == 2
    assert "expected hf-hub:<org>/<repo>" in capsys.readouterr().err
