"""RAIL (issue #26): a ridge-regression adapter on frozen CLIP features, solved by recursive least squares task by
task (primal) or by kernel ridge regression on every feature kept (dual), fused with zero-shot CLIP. What defines
it: after any number of tasks the adapter is the closed-form ridge solution on every image seen so far, the fusion
is the reference code's (linghan1997/Regression-based-Analytic-Incremental-Learning primal_RAIL.py l. 253-273),
and the backbone never changes, so the probes keep their pre-trained scores."""

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
from continual.methods.options import RAILOptions
from continual.methods.rail import RAIL, Expansion, FusedHead, rbf, rls_update
from continual.models import Head, TaskModel
from continual.train import Trainer
from helpers import digits, stopped_in_step_2_and_resumed, tiny_clip_model, tiny_clip_sequence


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny CLIP's ops are too small to share between threads (test_zscl.py says how much). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequence(tiny_clip, *, setting="task_incremental", rail=None, **changes) -> dict:
    return tiny_clip_sequence(
        tiny_clip, name="rail", seed=4, setting=setting, model=tiny_clip_model(tiny_clip, head_init="zero_shot"),
        tasks=[digits("a", [0, 1, 2], 12, 6), digits("b", [3, 4], 12, 6), digits("c", [5, 6, 7], 12, 6)],
        probes=[digits("p", [8, 9], 8, 4)], methods=[{"rail": rail or {"width": 64}}], **changes)


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "rail.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def closed_form(X: torch.Tensor, Y: torch.Tensor, ridge: float) -> torch.Tensor:
    return torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ Y)


def test_recursive_least_squares_in_any_batches_is_the_ridge_solution_on_all_of_them():
    torch.manual_seed(0)
    X, labels = torch.randn(70, 12, dtype=torch.float64), torch.randint(0, 5, (70,))
    Y = F.one_hot(labels, 5).double()
    R, W = torch.eye(12, dtype=torch.float64) / 0.3, torch.zeros(12, 5, dtype=torch.float64)
    for start, stop in ((0, 8), (8, 9), (9, 40), (40, 70)):  # uneven batches, one of a single image
        rls_update(R, W, X[start:stop], Y[start:stop])
    assert torch.allclose(W, closed_form(X, Y, 0.3), atol=1e-12, rtol=0)
    assert torch.allclose(R, torch.linalg.inv(X.T @ X + 0.3 * torch.eye(12, dtype=torch.float64)), atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def setup(tiny_clip):
    seq = load_sequence(sequence(tiny_clip))
    inputs = runner.load_inputs(seq, source="<test>", device=torch.device("cpu"))
    return seq, inputs, runner._context(seq, inputs)


def fit_two_tasks(setup, options: RAILOptions):
    seq, inputs, context = setup
    method = RAIL(options, pretrained=inputs.backbone, context=context)
    model = TaskModel(copy.deepcopy(inputs.backbone))
    trainer = Trainer(seq.training, device=torch.device("cpu"), progress=False)
    torch.manual_seed(0)
    for step, task in enumerate(inputs.tasks[:2], start=1):
        stats = method.fit_task(model, task, step=step, trainer=trainer)
    assert stats.steps == 0 and stats.losses == {}
    features = torch.cat([extract_features(inputs.backbone, t.train, batch_size=64, device=torch.device("cpu"))
                          for t in inputs.tasks[:2]])
    labels = torch.cat([inputs.tasks[0].train.labels, inputs.tasks[1].train.labels + 3])
    return method, model, F.normalize(features.double(), dim=1), F.one_hot(labels, 8).double()  # 8: the classes of all three tasks


def test_after_two_tasks_the_primal_adapter_is_the_ridge_solution_on_both(setup):
    method, model, f, Y = fit_two_tasks(setup, RAILOptions(width=32, ridge=0.5))
    X = torch.relu(f @ method.projection.double().T)  # the random hidden layer, drawn once and kept
    assert method.projection.shape == (32, 16)
    assert torch.allclose(method.W, closed_form(X, Y, 0.5), atol=1e-10, rtol=0)
    assert method.W[:, 5:].abs().max() == 0  # task c's classes: not learned, zero (the reference's padding)
    # every task's head is its columns of W; c's has none
    for name, columns in (("a", slice(0, 3)), ("b", slice(3, 5))):
        assert torch.equal(model.heads[name].linear.weight, method.W[:, columns].T)
    assert model.heads["c"].linear.in_features == 0


def test_after_two_tasks_the_dual_adapter_is_kernel_ridge_regression_on_every_feature_kept(setup):
    method, model, f, Y = fit_two_tasks(setup, RAILOptions(form="dual", kernel_gamma=2.0, kernel_ridge=0.01))
    assert torch.allclose(method.memory, f, atol=1e-12, rtol=0)
    K = torch.exp(-2.0 * torch.cdist(f, f).pow(2))  # the reference's kernel (utils.py l. 86)
    alpha = torch.linalg.solve(K + 0.01 * torch.eye(len(f), dtype=f.dtype), Y)
    assert torch.allclose(method.alpha, alpha, atol=1e-7, rtol=0)
    assert torch.allclose(rbf(f, f, 2.0), K, atol=1e-12, rtol=0)


def test_the_fusion_worked_by_hand():
    """Three classes: task a's two learned, task b's one not; features 2-d, the adapter on them directly."""
    zero_shot = Head(2, 3, normalize=True)
    with torch.no_grad():
        zero_shot.linear.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]]))
        zero_shot.linear.bias.zero_()
    seen = torch.tensor([True, True, False])
    W = torch.tensor([[0.5, 0.1], [0.2, 0.3]], dtype=torch.float64)
    a = FusedHead(Expansion(), zero_shot, columns=slice(0, 2), seen=seen, adapter=W, weight=0.8)
    b = FusedHead(Expansion(), zero_shot, columns=slice(2, 3), seen=seen, adapter=None, weight=0.8)
    features = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])  # normalised: (1, 0) and (-1, 0)
    # (1, 0): zero-shot logits (2, 0, -2), argmax class 0, learned: (1 - 0.8)·p + 0.8·(f W, 0)
    z = math.exp(2) + 1 + math.exp(-2)
    p = [math.exp(2) / z, 1 / z, math.exp(-2) / z]
    first = [0.2 * p[0] + 0.8 * 0.5, 0.2 * p[1] + 0.8 * 0.1, 0.2 * p[2]]
    # (-1, 0): logits (-2, 0, 2), argmax class 2, not learned: zero-shot's softmax alone, adapter unused
    second = [p[2], p[1], p[0]]
    scores = torch.cat([a(features), b(features)], dim=1)
    assert torch.allclose(scores, torch.tensor([first, second]), atol=1e-6)

    # the same as the reference's lines, transcribed (primal_RAIL.py l. 253-273)
    outputs = F.softmax(100 / 100 * zero_shot(features), dim=-1)
    mask = torch.argmax(outputs, dim=-1) < 2
    adapted = F.normalize(features[mask], dim=-1).double() @ W
    adapted = F.pad(adapted, pad=(0, outputs.size(-1) - adapted.size(-1), 0, 0), mode="constant", value=0).float()
    outputs[mask] = (1 - 0.8) * outputs[mask] + 0.8 * adapted
    assert torch.allclose(scores, outputs, atol=1e-6)


# x_tail: every test image among the classes of all the tasks, learned or not: the heads side by side are then the
# reference's fused vector over every domain's classes (primal_RAIL.py l. 236, 270-273). Its tasks are datasets
# of their own: the third is MNIST's (as test_xtail.py's domains).
@pytest.mark.parametrize("setting", ["task_incremental", "class_incremental", "x_tail"])
@pytest.mark.parametrize("rail", [{"width": 64}, {"form": "dual"}], ids=["primal", "dual"])
def test_a_run_trains_nothing_and_keeps_the_pretrained_probe_scores(tiny_clip, tmp_path, setting, rail, capsys):
    doc = sequence(tiny_clip, setting=setting, rail=rail)
    if setting == "x_tail":
        doc["tasks"] = [doc["tasks"][0], {**doc["tasks"][2], "dataset": "mnist"}]
    assert main(["run", str(write(tmp_path, doc)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    folder = tmp_path / "out" / "rail"
    doc = json.loads((folder / "rail" / "metrics.json").read_text())
    assert doc["complete"]
    steps = doc["timings"][1:]
    assert {t["train_steps"] for t in steps} == {0} and {t["trainable_parameters"] for t in steps} == {0}
    # 36, 24 and 36 training images: the primal regresses on each task's, the dual on every image kept
    assert [t["rail_images"] for t in steps] == {("primal", False): [36, 24, 36], ("dual", False): [36, 60, 96],
                                                 ("primal", True): [36, 36], ("dual", True): [36, 72]}[
        "dual" if "form" in rail else "primal", setting == "x_tail"]
    lines = (folder / "rail" / "accuracy_matrix.csv").read_text().splitlines()
    probes = {tuple(line.split(",")[-2:]) for line in lines[1:]}
    assert lines[0].endswith(",probe:p,probe:p:zero_shot") and len(probes) == 1  # all rows: the pre-trained scores
    checkpoint = torch.load(folder / "checkpoints" / "rail" / f"step-{len(steps)}.pt", weights_only=True)
    pretrained = runner.load_inputs(load_sequence(sequence(tiny_clip)), source="<test>",
                                    device=torch.device("cpu")).backbone.state_dict()
    assert all(torch.equal(checkpoint["backbone"][k], pretrained[k]) for k in pretrained)



@pytest.mark.parametrize("rail", [{"width": 64}, {"form": "dual"}], ids=["primal", "dual"])
def test_a_run_stopped_in_step_2_resumes_bit_for_bit(tiny_clip, tmp_path, monkeypatch, rail, capsys):
    whole, cut, err = stopped_in_step_2_and_resumed(write(tmp_path, sequence(tiny_clip, rail=rail)), tmp_path, "rail",
                                                    monkeypatch, capsys)
    assert "rail: resuming after step 1/3" in err
    assert (cut / "rail" / "accuracy_matrix.csv").read_bytes() == (whole / "rail" / "accuracy_matrix.csv").read_bytes()
    ours, theirs = (torch.load(f / "checkpoints" / "rail" / "step-3.pt", weights_only=True) for f in (cut, whole))
    state = theirs["method_state"]
    assert sorted(state) == (["R", "W", "learned", "projection"] if "width" in rail
                             else ["alpha", "labels", "learned", "memory"])
    assert state["learned"] == ["a", "b", "c"]
    assert all(torch.equal(ours["method_state"][k], v) for k, v in state.items() if isinstance(v, torch.Tensor))
    assert all(torch.equal(ours["heads"][t]["weight"], theirs["heads"][t]["weight"]) for t in theirs["heads"])


def test_a_model_without_a_text_tower_is_refused_naming_the_method_before_anything_is_written(tiny_clip, tmp_path,
                                                                                              capsys):
    doc = dict(sequence(tiny_clip), model={"family": "efficientnet_lite0", "image_size": 32})
    seq = write(tmp_path, doc)
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{seq}: methods[0]: rail needs a CLIP text tower (family: open_clip)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_option_of_the_other_form_is_refused_naming_it(tiny_clip):
    with pytest.raises(ConfigError) as err:
        load_sequence(sequence(tiny_clip, rail={"form": "dual", "width": 64}))
    assert "width is not an option of form dual" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_sequence(sequence(tiny_clip, rail={"kernel_gamma": 1.0}))
    assert "kernel_gamma is not an option of form primal" in str(err.value)
