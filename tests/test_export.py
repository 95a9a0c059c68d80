"""Models that travel (issue #27, docs/export.md): keep_models writes a method's model in its family's format with
its heads and card; another sequence naming it as `pretrained:` (open_clip: `arch: local-dir:`) starts from it, its
features bit for bit and its step-0 row the first run's last; `continual export` writes the same from a checkpoint,
and refuses what it cannot do before writing anything."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from helpers import digits, tiny_clip_sequence, tiny_sequence

from continual import checkpoints
from continual.cli import main
from continual.config import dump_sequence, load_sequence
from continual.models import build_backbone, trainable
from continual.runner import run_sequence, trained_backbone

PROBES = [digits("p", [8, 9])]


def run(tmp, doc: dict, *, out: str) -> dict:
    """Run `doc` into tmp/out (the runner alone: the report is not what is tested here, and drawing it takes
    seconds); its run folder and each method's rows (the JSON records)."""
    folder = run_sequence(load_sequence(doc), out=tmp / out, progress=False, tensorboard=False)
    return {"folder": folder, **{m: json.loads((folder / m / "accuracy_matrix.json").read_text())
                                 for m in [next(iter(m)) if isinstance(m, dict) else m for m in doc["methods"]]}}


@torch.inference_mode()
def features(backbone, images: torch.Tensor) -> torch.Tensor:
    """What evaluation computes of `images`: the inference form in eval mode, on the preprocessed images."""
    return backbone.for_inference().eval()(backbone.preprocess(images))


def trained_model(folder, method: str, step: int):
    """The backbone of `method` after `step` of the run in `folder`, rebuilt from its checkpoint as a resume does
    (the pre-trained model, model.trainable applied, the saved tensors loaded)."""
    seq = load_sequence(folder / "config.yaml")
    state = checkpoints.load(folder / "checkpoints" / method / f"step-{step}.pt", expect={"step": step})
    backbone = trained_backbone(seq, build_backbone(seq.model))
    trainable.load_saved_state(backbone, state["backbone"])
    return backbone, state


IMAGES = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """EfficientNet-Lite0 fine-tuned on two tasks with a probe, keep_models: last, both steps' checkpoints kept."""
    tmp = tmp_path_factory.mktemp("export")
    return run(tmp, tiny_sequence(probes=PROBES, keep_models="last", keep_checkpoints=2), out="first")


def test_an_exported_efficientnet_continues_where_the_run_ended(first, tmp_path):
    model = first["folder"] / "finetune" / "model"
    assert sorted(p.name for p in model.iterdir()) == ["continual.json", "heads.safetensors", "model.pth",
                                                        "model_card.md"]
    card = json.loads((model / "continual.json").read_text())
    assert (card["family"], card["image_size"], card["method"], card["step"], card["trained_on"]) == (
        "efficientnet_lite0", 32, "finetune", 2, ["a", "b"])
    assert card["row"] == {k: v for k, v in first["finetune"][-1].items() if k != "step"}
    assert card["heads"]["b"]["classes"] == ["2", "3"]
    # Features bit for bit: the export loaded by model.pretrained against the run's model after its last step.
    trained, state = trained_model(first["folder"], "finetune", 2)
    loaded = build_backbone(load_sequence(tiny_sequence(model={"family": "efficientnet_lite0",
                                                               "pretrained": str(model)})).model)
    assert loaded.image_size == 32  # the size it was trained at, the export's
    assert torch.equal(features(loaded, IMAGES), features(trained, IMAGES))
    # A second sequence starts from it and its heads: its step 0 is the first run's last row.
    second = run(tmp_path, tiny_sequence(name="second", probes=PROBES, methods=["frozen"],
                                         model={"family": "efficientnet_lite0", "pretrained": str(model)}),
                 out="second")
    assert second["frozen"][0] == {**first["finetune"][-1], "step": 0}
    heads = torch.load(second["folder"] / "checkpoints" / "start.pt", weights_only=True)["heads"]
    assert all(torch.equal(heads[t]["weight"], state["heads"][t]["weight"]) for t in ("a", "b"))


def test_continual_export_writes_what_keep_models_wrote(first, tmp_path, capsys):
    out = tmp_path / "again"
    assert main(["export", str(first["folder"]), "--method", "finetune", "--out", str(out)]) == 0
    kept = first["folder"] / "finetune" / "model"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in kept.iterdir())
    assert all((out / p.name).read_bytes() == p.read_bytes() for p in kept.iterdir())
    assert main(["export", str(first["folder"]), "--method", "finetune", "--step", "1", "--out",
                 str(tmp_path / "one")]) == 0
    card = json.loads((tmp_path / "one" / "continual.json").read_text())
    assert (card["step"], card["trained_on"], list(card["heads"])) == (1, ["a"], ["a"])
    assert card["row"] == {k: v for k, v in first["finetune"][1].items() if k != "step"}


def test_continual_export_refuses_before_writing(first, tmp_path, capsys):
    run_folder = str(first["folder"])
    assert main(["export", run_folder, "--method", "finetune", "--step", "3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--step: step 3 of finetune is not kept (kept: 1, 2)" in err and err.count("\n") == 1
    assert main(["export", run_folder, "--method", "ldifs", "--out", str(tmp_path / "x")]) == 2
    assert "--method: 'ldifs' did not run in" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["export", run_folder, "--method", "finetune", "--out", str(tmp_path / "taken")]) == 2
    assert "--out:" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--method", "finetune", "--out", str(tmp_path / "x")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and not any((tmp_path / "taken").iterdir())


@pytest.mark.filterwarnings("ignore::continual.runner.TrainingWarning")  # lr 1e-2: so that B moves in 2 steps
def test_a_lora_clip_exports_plain_weights_that_open_clip_loads(tiny_clip, tmp_path):
    """LoRA on the attention (parameter-targeted, added to the weight in the forward) merged into plain open_clip
    weights; loaded back by `arch: local-dir:`, features and the step-0 row are the run's, bit for bit."""
    import open_clip
    from safetensors.torch import load_file

    doc = tiny_clip_sequence(tiny_clip, probes=PROBES, keep_models="every_step", training={
        "batch_size": 8, "warmup_steps": 1, "lr": 1.0e-2})
    doc["model"]["trainable"] = {"kind": "lora", "targets": ["attn"]}
    first = run(tmp_path, doc, out="first")
    model = first["folder"] / "finetune" / "models" / "step-2"
    assert sorted(p.name for p in (first["folder"] / "finetune" / "models").iterdir()) == ["step-1", "step-2"]
    assert not (first["folder"] / "finetune" / "model").exists()
    weights = load_file(str(model / "open_clip_model.safetensors"))
    assert weights.keys() == open_clip.create_model(tiny_clip[0]).state_dict().keys()  # no lora_A, no base_layer
    trained, _ = trained_model(first["folder"], "finetune", 2)
    assert trainable.lora_factors(trained) and trainable.lora_factors(trained)[0].b.abs().sum() > 0  # it trained
    pretrained = build_backbone(load_sequence(doc).model)
    assert not torch.equal(weights["visual.transformer.resblocks.0.attn.in_proj_weight"],
                           pretrained.visual.transformer.resblocks[0].attn.in_proj_weight)  # merged in
    local_dir = {"family": "open_clip", "arch": f"local-dir:{model}"}
    loaded = build_backbone(load_sequence(tiny_clip_sequence(tiny_clip, model=local_dir)).model)
    assert torch.equal(features(loaded, IMAGES), features(trained, IMAGES))
    second = run(tmp_path, tiny_clip_sequence(tiny_clip, name="second", probes=PROBES, methods=["frozen"],
                                              model=local_dir), out="second")
    assert second["frozen"][0] == {**first["finetune"][-1], "step": 0}


def test_an_exported_timm_model_loads_in_timm_and_continues(tmp_path):
    import timm

    first = run(tmp_path, tiny_sequence(probes=PROBES, keep_models="last",
                                        model={"family": "timm", "arch": "test_vit", "image_size": 32}), out="first")
    model = first["folder"] / "finetune" / "model"
    trained, _ = trained_model(first["folder"], "finetune", 2)
    net = timm.create_model(f"local-dir:{model}", pretrained=True).eval()  # timm's own loader, no continual
    with torch.inference_mode():
        assert torch.equal(net(trained.preprocess(IMAGES)), features(trained, IMAGES))
    second = run(tmp_path, tiny_sequence(name="second", probes=PROBES, methods=["frozen"],
                                         model={"family": "timm", "arch": "test_vit", "pretrained": str(model)}),
                 out="second")
    assert second["frozen"][0] == {**first["finetune"][-1], "step": 0}


def test_a_task_named_as_an_exported_head_must_have_its_classes(first, tmp_path, capsys):
    model = str(first["folder"] / "finetune" / "model")
    doc = tiny_sequence(name="other", tasks=[digits("a", [0, 1]), digits("b", [4, 5])],
                        model={"family": "efficientnet_lite0", "pretrained": model})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "other.yaml")]) == 0  # an export folder is a valid pretrained
    assert main(["run", str(tmp_path / "other.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "tasks[1]: the exported head 'b' of" in capsys.readouterr().err
    assert not (tmp_path / "out" / "other").exists()


def test_methods_whose_predictions_need_their_own_state_are_refused_before_anything_is_written(tiny_clip, tmp_path,
                                                                                              capsys):
    """RAIL, DIKI and MoE-Adapters score with state of their own (an adapter, prompts, experts): no backbone and
    linear heads hold what they predict, so keep_models is refused for them at load, and `continual export` too."""
    doc = tiny_clip_sequence(tiny_clip, keep_models="last", methods=["finetune", "rail", "diki", "moe_adapters"])
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "seq.yaml")]) == 2
    err = capsys.readouterr().err
    for i, name in enumerate(["rail", "diki", "moe_adapters"], start=1):
        assert f"keep_models: last cannot write the model of methods[{i}] ({name}): " in err
    assert "methods[0]" not in err
    # A run that kept none (its config.yaml, as the runner writes it): export refuses the method by --method.
    seq = load_sequence({**doc, "keep_models": "none"})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_sequence(seq))
    assert main(["export", str(tmp_path / "run"), "--method", "diki", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--method: the model of diki cannot be exported: its task prompts" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_pretrained_model_replaced_since_the_run(tiny_clip, tmp_path, capsys):
    """With trainable: bias the checkpoint holds the biases alone, put on the pre-trained weights the sequence
    names: a file replaced since the run would be mixed in silently; start.pt's fingerprint refuses it."""
    import shutil

    weights = tmp_path / "clip.pt"
    shutil.copyfile(tiny_clip[1], weights)
    doc = tiny_clip_sequence(tiny_clip, keep_checkpoints=1)
    doc["model"].update(pretrained=str(weights), trainable={"kind": "bias"})
    first = run(tmp_path, doc, out="first")
    state = torch.load(weights, weights_only=True)
    state = {k: v + 1 if k.endswith("proj") and v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, weights)
    assert main(["export", str(first["folder"]), "--method", "finetune", "--out", str(tmp_path / "x")]) == 2
    assert "start.pt" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_class_incremental_heads_keep_the_sequences_order_with_an_exported_head(first, tmp_path):
    """Class-incremental logits are the heads side by side in the tasks' order. An exported head (task b, second
    here) is held from step 0, a new task's linear-probe head added when its task starts: c's must still come
    first, so that b's head is not in c's softmax while c trains, nor its classes offset by b's."""
    model = str(first["folder"] / "finetune" / "model")
    doc = tiny_sequence(name="ci", setting="class_incremental", tasks=[digits("c", [4, 5]), digits("b", [2, 3])],
                        model={"family": "efficientnet_lite0", "pretrained": model}, keep_checkpoints=2)
    folder = run_sequence(load_sequence(doc), out=tmp_path, progress=False, tensorboard=False)
    one, two = (torch.load(folder / "checkpoints" / "finetune" / f"step-{s}.pt", weights_only=True) for s in (1, 2))
    assert list(one["heads"]) == ["c", "b"] and list(two["heads"]) == ["c", "b"]
    exported = load_file(str(first["folder"] / "finetune" / "model" / "heads.safetensors"))
    assert torch.equal(one["heads"]["b"]["weight"], exported["b.weight"])  # untouched while c trained


def test_overwrite_removes_the_models_a_run_wrote_and_what_a_kill_left_of_them(tmp_path):
    doc = tiny_sequence(keep_models="every_step")
    folder = run_sequence(load_sequence(doc), out=tmp_path, progress=False, tensorboard=False)
    method = folder / "finetune"
    assert sorted(p.name for p in (method / "models").iterdir()) == ["step-1", "step-2"]
    (method / ".model.tmp").mkdir()  # a kill in the middle of export.write
    (method / "models" / ".step-3.tmp").mkdir()
    (method / "models" / "mine.txt").write_text("the user's")  # not ours: stays
    run_sequence(load_sequence({**doc, "keep_models": "none"}), out=tmp_path, progress=False, tensorboard=False,
                 overwrite=True)
    assert sorted(p.name for p in (method / "models").iterdir()) == ["mine.txt"]
    assert not (method / ".model.tmp").exists() and not (method / "model").exists()


def test_validate_reads_the_exports_card_for_its_family(first, tmp_path, capsys):
    model = str(first["folder"] / "finetune" / "model")
    doc = tiny_sequence(model={"family": "timm", "arch": "test_vit", "image_size": 32, "pretrained": model})
    (tmp_path / "seq.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "seq.yaml")]) == 2
    assert f"model.pretrained: {model!r} holds an exported efficientnet_lite0 model, not timm: set model.family: " \
           "efficientnet_lite0" in capsys.readouterr().err
