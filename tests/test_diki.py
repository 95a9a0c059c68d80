"""DIKI: per-task key/value prompts in a residual attention branch of the frozen CLIP image tower, each image using
the prompts of the task whose feature Gaussian fits it best, scaled by that fit. What defines it: with prompts that
add nothing (values 0, or weight 0) the model is the frozen CLIP bit for bit; the branch is the reference's
(lloongx/DIKI clip/attention.py l. 84-144) and the weight its (DIKI.py l. 167-172); an image far from every learned
task gets the frozen CLIP's features; earlier tasks' prompts and the backbone never change."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from continual import runner
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.evaluate import extract_features
from continual.methods.diki import DIKI, calibrate, prompted_block
from continual.methods.options import DIKIOptions
from continual.models import TaskModel
from continual.train import Trainer
from helpers import digits, stopped_in_step_2_and_resumed, tiny_clip_model, tiny_clip_sequence

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny CLIP's ops are too small to share between threads (test_zscl.py says how much). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequence(tiny_clip, *, diki=None, **changes) -> dict:
    # lr 0.05: the prompts start at 0 and train alone, so the tiny CLIP's 1e-4 would leave them near it
    return tiny_clip_sequence(
        tiny_clip, name="diki", seed=2, model=tiny_clip_model(tiny_clip, head_init="zero_shot"),
        tasks=[digits("a", [0, 1, 2], 12, 6), digits("b", [3, 4], 12, 6)], probes=[digits("p", [8, 9], 8, 4)],
        training={"batch_size": 12, "warmup_steps": 1, "lr": 0.05, "weight_decay": 0.0}, keep_checkpoints=2,
        methods=[{"diki": diki or {"depth": 2, "length": 4}}], **changes)


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "diki.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def setup(tiny_clip):
    seq = load_sequence(sequence(tiny_clip))
    inputs = runner.load_inputs(seq, source="<test>", device=CPU)
    return seq, inputs, runner._context(seq, inputs)


def features(backbone, split) -> torch.Tensor:
    return extract_features(backbone, split, batch_size=64, device=CPU)


def test_prompts_that_add_nothing_leave_the_frozen_clip_bit_for_bit(setup):
    seq, inputs, context = setup
    method = DIKI(DIKIOptions(depth=3, length=5), pretrained=inputs.backbone, context=context)
    model = TaskModel(copy.deepcopy(inputs.backbone))
    backbone = method.wrap(model)
    assert list(backbone.state_dict()) == list(inputs.backbone.state_dict())  # a checkpoint's keys are the tower's
    frozen = features(inputs.backbone, inputs.tasks[0].test)
    assert torch.equal(features(backbone, inputs.tasks[0].test), frozen)  # nothing learned yet
    # a task's prompts as they start: keys U(−1, 1), values 0; trained (task given) and chosen per image alike
    torch.manual_seed(0)
    method.prompts.add(device=CPU)
    assert method.prompts.keys[0].abs().max() > 0 and method.prompts.values[0].abs().max() == 0
    f = F.normalize(features(inputs.backbone, inputs.tasks[0].train).double(), dim=1)
    method.means, method.covariances = f.mean(0, keepdim=True), torch.cov(f.T)[None] + 1e-7 * torch.eye(16)
    method.learned = ["a"]
    assert torch.equal(features(backbone, inputs.tasks[0].test), frozen)
    backbone.task = 0
    assert torch.equal(features(backbone, inputs.tasks[0].test), frozen)
    backbone.task = None
    with torch.no_grad():  # values that add something now: the features move
        method.prompts.values[0].normal_()
    assert not torch.allclose(features(backbone, inputs.tasks[0].test), frozen, atol=1e-3)
    method.means = method.means + 10  # every image far from the task's Gaussian: weight 0 in float64, frozen CLIP
    assert (calibrate(frozen, method.means, method.tril())[1] == 0).all()
    assert torch.equal(features(backbone, inputs.tasks[0].test), frozen)
    with backbone.unprompted():
        assert torch.equal(features(backbone, inputs.tasks[0].test), frozen)
    # the backbone never trains: its parameters are frozen, prompts are the method's
    assert not any(p.requires_grad for p in backbone.parameters())


def test_the_residual_branch_is_the_reference_attention():
    """open_clip's block with prompts against the reference's multi_head_attention_forward transcribed
    (clip/attention.py l. 84-146, sequence-first, keys and values the prompts as they are), each image its weight."""
    from open_clip.transformer import ResidualAttentionBlock

    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4).eval()
    x, key, value, weight = torch.randn(3, 7, 32), torch.randn(3, 5, 32), torch.randn(3, 5, 32), torch.rand(3)
    ours = prompted_block(block, x, key, value, weight)

    attn, (B, L, E), H = block.attn, x.shape, 4
    h = block.ln_1(x).transpose(0, 1)  # (L, B, E), as theirs
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(t.shape[0], B * H, E // H).transpose(0, 1).reshape(B, H, t.shape[0], E // H)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    prefix = F.scaled_dot_product_attention(split(q), split(key.transpose(0, 1)), split(value.transpose(0, 1)))
    out = out.permute(2, 0, 1, 3).reshape(L * B, E) + (prefix * weight.view(B, 1, 1, 1)).permute(2, 0, 1, 3).reshape(L * B, E)
    a = F.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(L, B, E).transpose(0, 1)
    x2 = x + a
    theirs = x2 + block.mlp(block.ln_2(x2))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_the_weight_is_the_gaussian_log_likelihood_through_the_reference_sigmoid():
    torch.manual_seed(1)
    d = 6
    means = torch.randn(2, d, dtype=torch.float64) * 0.3
    A = torch.randn(2, d, d, dtype=torch.float64) * 0.2
    covariances = A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
    x = torch.randn(4, d)
    index, weight = calibrate(x, means, torch.linalg.cholesky(covariances))
    f = F.normalize(x.double(), dim=1)
    by_hand = torch.empty(4, 2, dtype=torch.float64)
    for t in range(2):
        delta = f - means[t]
        maha = (delta @ torch.linalg.inv(covariances[t]) * delta).sum(1)
        by_hand[:, t] = -0.5 * (d * math.log(2 * math.pi) + torch.logdet(covariances[t]) + maha)
    assert torch.equal(index, by_hand.argmax(1))
    assert torch.allclose(weight, torch.sigmoid(by_hand.max(1).values / d - 1), atol=1e-12, rtol=0)


def fit_two_tasks(setup):
    seq, inputs, context = setup
    method = DIKI(DIKIOptions(depth=2, length=4), pretrained=inputs.backbone, context=context)
    model = TaskModel(copy.deepcopy(inputs.backbone))
    trainer = Trainer(seq.training, device=CPU, progress=False)
    kept = []
    for step, task in enumerate(inputs.tasks, start=1):
        torch.manual_seed(step)
        stats = method.fit_task(model, task, step=step, trainer=trainer)
        kept.append(copy.deepcopy(method.state_dict()))
    return method, model, kept, stats


def test_training_moves_only_the_new_task_prompts_and_far_images_keep_the_frozen_clip(setup):
    seq, inputs, context = setup
    method, model, kept, stats = fit_two_tasks(setup)
    assert stats.steps == 2 and set(stats.losses) == {"ce"}
    first, second = kept
    assert first["values"][0].abs().max() > 0  # task a's prompts trained
    assert torch.equal(second["keys"][0], first["keys"][0]) and torch.equal(second["values"][0], first["values"][0])
    assert not torch.equal(second["values"][1], torch.zeros_like(second["values"][1]))
    assert second["means"].shape == (2, 16) and second["covariances"].shape == (2, 16, 16)
    pretrained = inputs.backbone.state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in model.backbone.state_dict().items())
    # an image of a learned task uses its prompts (weight > 0: the features move); images unlike every task's
    # (uniform noise) get a weight near 0, so (nearly) the frozen CLIP's features
    torch.manual_seed(5)
    own = inputs.tasks[0].train.images[:6]
    noise = torch.randint(0, 256, own.shape, dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        x = model.backbone.preprocess(torch.cat([own, noise]))
        frozen = inputs.backbone(x)
        index, weight = calibrate(frozen, method.means, method.tril())
        ours = model.backbone(x)
    assert (weight[:6] > 0.5).all() and (index[:6] == 0).all()
    assert not torch.allclose(ours[:6], frozen[:6], atol=1e-4)
    moved = (ours - frozen).abs().max(1).values
    assert (weight[6:] < 0.01).all() and moved[6:].max() < 0.01 * moved[:6].min()


def test_a_run_trains_only_prompts_scores_and_keeps_the_pretrained_backbone(tiny_clip, tmp_path, capsys):
    assert main(["run", str(write(tmp_path, sequence(tiny_clip))), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    folder = tmp_path / "out" / "diki"
    doc = json.loads((folder / "diki" / "metrics.json").read_text())
    assert doc["complete"]
    steps = doc["timings"][1:]
    # 36 and 24 training images in batches of 12; one task's keys and values train: 2 blocks · 4 prompts · 32 · 2
    assert [t["train_steps"] for t in steps] == [3, 2] and {t["trainable_parameters"] for t in steps} == {512}
    assert all(0 <= t["diki_own_task"] <= 1 and 0 < t["diki_weight"] < 1 for t in steps)
    lines = (folder / "diki" / "accuracy_matrix.csv").read_text().splitlines()
    assert lines[0] == "step,a,b,probe:p,probe:p:zero_shot" and len(lines) == 4
    pretrained = runner.load_inputs(load_sequence(sequence(tiny_clip)), source="<test>", device=CPU).backbone.state_dict()
    one, two = (torch.load(folder / "checkpoints" / "diki" / f"step-{s}.pt", weights_only=True) for s in (1, 2))
    assert all(torch.equal(two["backbone"][k], v) for k, v in pretrained.items())
    assert torch.equal(two["method_state"]["keys"][0], one["method_state"]["keys"][0])
    assert torch.equal(two["method_state"]["values"][0], one["method_state"]["values"][0])



def test_a_run_stopped_in_step_2_resumes_bit_for_bit(tiny_clip, tmp_path, monkeypatch, capsys):
    whole, cut, err = stopped_in_step_2_and_resumed(write(tmp_path, sequence(tiny_clip)), tmp_path, "diki",
                                                    monkeypatch, capsys)
    assert "diki: resuming after step 1/2" in err
    assert (cut / "diki" / "accuracy_matrix.csv").read_bytes() == (whole / "diki" / "accuracy_matrix.csv").read_bytes()
    ours, theirs = (torch.load(f / "checkpoints" / "diki" / "step-2.pt", weights_only=True) for f in (cut, whole))
    state = theirs["method_state"]
    assert sorted(state) == ["covariances", "keys", "learned", "means", "values"] and state["learned"] == ["a", "b"]
    assert all(torch.equal(ours["method_state"][k], v) for k, v in state.items() if isinstance(v, torch.Tensor))
    assert ours["timings"][-1]["losses"] == theirs["timings"][-1]["losses"]


@pytest.mark.parametrize("change, message", [
    ({"model": {"family": "efficientnet_lite0", "image_size": 32}},
     "methods[0]: diki needs a CLIP text tower (family: open_clip)"),
    ({"diki": {"depth": 5}}, "methods[0].diki.depth: depth 5 is more than the image tower's 4 blocks"),
    ({"trainable": "lora"}, "methods[0].diki: DIKI trains its own prompts and freezes the backbone itself"),
], ids=["no-text-tower", "too-deep", "lora"])
def test_what_it_cannot_do_is_refused_before_anything_is_written(tiny_clip, tmp_path, capsys, change, message):
    doc = sequence(tiny_clip, diki=change.get("diki"))
    if "model" in change:
        doc["model"] = change["model"]
    if "trainable" in change:
        doc["model"]["trainable"] = change["trainable"]
    seq = write(tmp_path, doc)
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{seq}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_tower_that_is_no_vit_is_refused(tiny_clip, setup):
    seq, inputs, context = setup
    other = copy.deepcopy(inputs.backbone)
    other.visual = torch.nn.Identity()
    assert DIKI.problems(DIKIOptions(), other) == [
        ("", "DIKI prompts the attention of a ViT image tower's blocks; this model's image tower is a Identity")]
    with pytest.raises(ConfigError, match="must be greater than 0"):
        load_sequence(sequence(tiny_clip, diki={"length": 0}))
