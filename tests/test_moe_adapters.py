"""MoE-Adapters (Yu et al., CVPR 2024): top-k routed adapter experts in every block of CLIP's towers, a router per
task, and DDAS autoencoders that send each image to its task's router or to frozen CLIP. What defines it: the
router's gates (the top k, softmaxed: JiazuoYu/MoE-Adapters4CL mtil/clip/model.py l. 429-460), an input DDAS finds
far from every learned task scored exactly as zero-shot CLIP scores it, CLIP's own weights never trained, the most
picked experts frozen after each task."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from continual import runner
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.evaluate import extract_features
from continual.methods.moe_adapters import MoEAdapters, MoEBackbone, MoELayer, ddas_input
from continual.methods.options import MoEAdaptersOptions
from continual.train import Trainer
from helpers import digits, stopped_in_step_2_and_resumed, tiny_clip_model, tiny_clip_sequence


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny CLIP's ops are too small to share between threads (test_zscl.py says how much). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequence(tiny_clip, *, moe=None, **changes) -> dict:
    return tiny_clip_sequence(
        tiny_clip, name="moe", seed=2, model=tiny_clip_model(tiny_clip, head_init="zero_shot"),
        tasks=[digits("a", [0, 1, 2], 8, 4), digits("b", [3, 4], 8, 4)], probes=[digits("p", [8, 9], 4, 4)],
        training={"batch_size": 8, "warmup_steps": 1, "lr": 1.0e-2, "steps_per_task": 3, "label_smoothing": 0.2},
        methods=[{"moe_adapters": moe or {"experts": 4, "ddas_steps": 20}}], **changes)


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_router_gives_each_input_its_top_k_experts_with_weights_summing_to_one():
    torch.manual_seed(0)
    layer = MoELayer(6, experts=5, width=3, routers=2, top_k=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    token = torch.randn(7, 6)
    layer.eval()
    gates = layer.gates(token, 1)
    assert ((gates > 0).sum(1) == 2).all() and torch.allclose(gates.sum(1), torch.ones(7))
    top = (token @ layer.gate[1]).topk(2, dim=1).indices  # clean logits in eval: no noise
    assert torch.equal(torch.sort((gates > 0).nonzero()[:, 1].view(7, 2), dim=1).values, torch.sort(top, dim=1).values)
    assert not torch.equal(gates, layer.gates(token, 0))  # another task's router
    layer.train()  # training: noisy logits, still k experts per input, weights summing to one
    noisy = layer.gates(token, 1)
    assert ((noisy > 0).sum(1) == 2).all() and torch.allclose(noisy.sum(1), torch.ones(7))
    # the layer's output: Σ_e g_e · expert_e(x), over the picked experts (dispatch and combine, model.py l. 495-511)
    layer.eval()
    x = torch.randn(7, 4, 6)  # routed on each input's first token (the class token: model.py l. 474)
    gates = layer.gates(x[:, 0], 1)
    by_hand = sum(gates[:, e, None, None] * layer.experts[e](x) for e in range(5))
    assert torch.allclose(layer(x, 1), by_hand, atol=1e-6)


@pytest.fixture(scope="module")
def setup(tiny_clip):
    seq = load_sequence(sequence(tiny_clip))
    inputs = runner.load_inputs(seq, source="<test>", device=torch.device("cpu"))
    return seq, inputs, runner._context(seq, inputs)


def fit_first_task(setup, options: MoEAdaptersOptions):
    seq, inputs, context = setup
    method = MoEAdapters(options, pretrained=inputs.backbone, context=context)
    start = runner.Start.measure(seq, inputs, device=torch.device("cpu"))
    model = copy.deepcopy(start.model)
    trainer = Trainer(seq.training, device=torch.device("cpu"), progress=False)
    torch.manual_seed(0)
    stats = method.fit_task(model, inputs.tasks[0], step=1, trainer=trainer)
    return method, model, start, stats


def test_an_input_far_from_every_task_is_scored_as_zero_shot_clip_scores_it(setup):
    seq, inputs, _ = setup
    method, model, start, stats = fit_first_task(setup, MoEAdaptersOptions(experts=4, ddas_steps=30))
    assert stats.steps == 3 and set(stats.losses) == {"ce"}
    assert isinstance(model.backbone, MoEBackbone) and model.backbone.feature_dim == 3 * 16  # frozen CLIP + 2 routers
    task = inputs.tasks[0]
    z = extract_features(inputs.backbone, task.train, batch_size=64, device=torch.device("cpu"))
    assert (method.ddas(z) == 0).all()  # every training image of task a: within its own autoencoder's threshold
    far = -z  # the opposite embeddings: far from task a's
    assert (method.ddas(far) == -1).all()
    ae = method.autoencoders[0]
    assert (ae.errors(ddas_input(far)) > method.thresholds[0]).all()

    # a threshold below every error: DDAS sends everything to frozen CLIP, whose scores are zero-shot CLIP's
    method.thresholds = [1e-12]
    model.eval()
    for t in inputs.tasks + inputs.probes:
        head = method.head(t, "tasks" if t in inputs.tasks else "probes", torch.device("cpu"))
        features = extract_features(model.backbone, t.test, batch_size=64, device=torch.device("cpu"))
        assert (features[:, 16:] == 0).all()  # only frozen CLIP's block is filled
        with torch.no_grad():
            ours = head(features)
            zero_shot = (start.model.heads[t.name] if t in inputs.tasks else start.zero_shot_probes[t.name])(
                extract_features(inputs.backbone, t.test, batch_size=64, device=torch.device("cpu")))
        assert torch.allclose(ours, zero_shot, atol=1e-4, rtol=0)


def test_training_moves_only_the_experts_and_the_tasks_router_then_freezes_the_most_picked(setup):
    seq, inputs, _ = setup
    method, model, _, _ = fit_first_task(setup, MoEAdaptersOptions(experts=4, ddas_steps=5, freeze_top=1))
    pretrained = inputs.backbone.state_dict()
    assert all(torch.equal(model.backbone.state_dict()[k], pretrained[k]) for k in pretrained)
    layers = [*method.moe.image, *method.moe.text]
    assert len(layers) == 4 + 1  # the tiny CLIP's image and text blocks
    for layer in layers:
        assert int(layer.frozen.sum()) == 1  # freeze_top experts of each block, after the task
        assert layer.gate[0].abs().sum() > 0 and layer.gate[1].abs().sum() == 0  # task b's router: untouched
        assert sum(e.up.weight.abs().sum() > 0 for e in layer.experts) >= 1  # up starts at zero: trained ones moved



def test_a_run_trains_and_scores_and_a_run_stopped_in_step_2_resumes_bit_for_bit(tiny_clip, tmp_path, monkeypatch,
                                                                                   capsys):
    whole, cut, err = stopped_in_step_2_and_resumed(write(tmp_path, sequence(tiny_clip)), tmp_path, "moe_adapters",
                                                    monkeypatch, capsys)
    doc = json.loads((whole / "moe_adapters" / "metrics.json").read_text())
    assert doc["complete"]
    steps = doc["timings"][1:]
    assert [t["train_steps"] for t in steps] == [3, 3] and all(t["trainable_parameters"] > 0 for t in steps)
    # 2 experts of each of the 5 blocks frozen after each task (the second's router may pick the first's)
    assert steps[0]["moe_frozen_experts"] == 10 and 10 <= steps[1]["moe_frozen_experts"] <= 20
    lines = (whole / "moe_adapters" / "accuracy_matrix.csv").read_text().splitlines()
    assert lines[0].endswith(",probe:p,probe:p:zero_shot") and len(lines) == 4

    assert "moe_adapters: resuming after step 1/2" in err
    assert (cut / "moe_adapters" / "accuracy_matrix.csv").read_bytes() == \
        (whole / "moe_adapters" / "accuracy_matrix.csv").read_bytes()
    ours, theirs = (torch.load(f / "checkpoints" / "moe_adapters" / "step-2.pt", weights_only=True)
                    for f in (cut, whole))
    state = theirs["method_state"]
    assert sorted(state) == ["autoencoders", "moe", "routes", "thresholds"] and state["routes"] == [0, 1]
    assert ours["method_state"]["thresholds"] == state["thresholds"]
    assert all(torch.equal(ours["method_state"]["moe"][k], v) for k, v in state["moe"].items())
    assert all(torch.equal(ours["heads"][t]["weight"], theirs["heads"][t]["weight"]) for t in theirs["heads"])
    # CLIP's own weights: the pre-trained ones after every step
    pretrained = runner.load_inputs(load_sequence(sequence(tiny_clip)), source="<test>",
                                    device=torch.device("cpu")).backbone.state_dict()
    assert all(torch.equal(theirs["backbone"][k], pretrained[k]) for k in pretrained)


def test_a_model_without_a_text_tower_is_refused_naming_the_method_before_anything_is_written(tiny_clip, tmp_path,
                                                                                              capsys):
    doc = dict(sequence(tiny_clip), model={"family": "efficientnet_lite0", "image_size": 32})
    seq = write(tmp_path, doc)
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{seq}: methods[0]: moe_adapters needs a CLIP text tower (family: open_clip)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_trainable_other_than_full_and_more_picks_than_experts_are_refused(tiny_clip, tmp_path, capsys):
    doc = sequence(tiny_clip)
    doc["model"]["trainable"] = "lora"
    seq = write(tmp_path, doc)
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "methods[0].moe_adapters: MoE-Adapters trains its own experts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError) as err:
        load_sequence(sequence(tiny_clip, moe={"experts": 2, "top_k": 3}))
    assert "top_k (3) cannot exceed experts (2)" in str(err.value)


def test_a_non_vit_image_tower_is_refused(setup):
    _, inputs, _ = setup
    plain = copy.deepcopy(inputs.backbone)
    plain.visual = torch.nn.Identity()  # what problems() reads: the tower's kind
    problems = MoEAdapters.problems(MoEAdaptersOptions(), plain)
    assert problems and "ViT image tower" in problems[0][1] and "Identity" in problems[0][1]
    assert MoEAdapters.problems(MoEAdaptersOptions(), inputs.backbone) == []
