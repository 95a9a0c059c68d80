"""InfLoRA: per task a LoRA on each ViT block's k and v whose A is designed from the task's attention inputs outside
the subspace kept of earlier tasks' (DualGPM), only B trained, then merged. What defines it: A is orthogonal to the
kept bases, so a later task's update leaves what earlier tasks' inputs have in that subspace untouched; the bases
grow as the reference code's DualGPM grows them (liangyanshuo/InfLoRA methods/inflora.py l. 321-368, transcribed
below); nothing but k and v of the attention changes; a run trains, scores and resumes bit for bit."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from continual import runner
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.methods.inflora import InfLoRA, attentions, design_a, input_covariances, update_basis
from continual.methods.options import InfLoRAOptions
from continual.models import TaskModel
from continual.train import Trainer
from helpers import digits, stopped_in_step_2_and_resumed, tiny_clip_model, tiny_clip_sequence


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny CLIP's ops are too small to share between threads (test_zscl.py says how much). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequence(tiny_clip, *, inflora=None, **changes) -> dict:
    return tiny_clip_sequence(
        tiny_clip, name="inflora", seed=2, model=tiny_clip_model(tiny_clip, head_init="zero_shot"),
        tasks=[digits("a", [0, 1, 2], 12, 6), digits("b", [3, 4], 12, 6), digits("c", [5, 6, 7], 12, 6)],
        probes=[digits("p", [8, 9], 8, 4)], methods=[{"inflora": inflora or {}}],
        training={"batch_size": 12, "warmup_steps": 1, "lr": 5.0e-3, "epochs": 2}, **changes)


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "inflora.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def reference_dual_gpm(feature, activation, threshold):
    """methods/inflora.py l. 326-334 and 341-368 (the 'remove' branch), transcribed in numpy."""
    if feature is None:
        U, S, Vh = np.linalg.svd(activation, full_matrices=False)
        sval_ratio = (S ** 2) / (S ** 2).sum()
        r = np.sum(np.cumsum(sval_ratio) < threshold)
        return U[:, 0:max(r, 1)]
    U1, S1, Vh1 = np.linalg.svd(activation, full_matrices=False)
    sval_total = (S1 ** 2).sum()
    act_hat = activation - np.dot(np.dot(feature, feature.transpose()), activation)
    U, S, Vh = np.linalg.svd(act_hat, full_matrices=False)
    sval_hat = (S ** 2).sum()
    sval_ratio = (S ** 2) / sval_total
    accumulated_sval = (sval_total - sval_hat) / sval_total
    r = 0
    for ii in range(sval_ratio.shape[0]):
        if accumulated_sval < threshold:
            accumulated_sval += sval_ratio[ii]
            r += 1
        else:
            break
    if r == 0:
        return feature
    Ui = np.hstack((feature, U[:, 0:r]))
    return Ui[:, 0:Ui.shape[0]] if Ui.shape[1] > Ui.shape[0] else Ui


def covariance(generator, d, n, spread):
    """The mean of x xᵀ over n inputs x of dimension d, their scales decaying as `spread` ** i."""
    x = torch.randn(n, d, generator=generator, dtype=torch.float64) * spread ** torch.arange(d, dtype=torch.float64)
    x = x @ torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64)).Q
    return x.T @ x / n


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.97])
def test_the_kept_bases_grow_as_the_reference_code_grows_them(threshold):
    generator = torch.Generator().manual_seed(0)
    ours = theirs = None
    for task in range(3):
        cov = covariance(generator, 24, 200, 0.8)
        ours = update_basis(ours, cov, threshold)
        theirs = reference_dual_gpm(theirs, cov.numpy(), threshold)
        assert ours.shape == theirs.shape  # the same number of directions kept, task after task
        # the same subspace (each direction's sign is the SVD's choice)
        assert torch.allclose(ours @ ours.T, torch.from_numpy(theirs @ theirs.T), atol=1e-9)
        assert torch.allclose(ours.T @ ours, torch.eye(ours.shape[1], dtype=torch.float64), atol=1e-9)
    assert ours.shape[1] > 1  # later tasks added directions


def test_a_is_orthogonal_to_the_kept_bases_and_spans_the_tasks_inputs_outside_them():
    generator = torch.Generator().manual_seed(1)
    first, second = covariance(generator, 24, 200, 0.8), covariance(generator, 24, 200, 0.8)
    basis = update_basis(None, first, 0.95)
    a = design_a(second, basis, 4)
    assert a.shape == (4, 24)
    assert (a @ basis).abs().max() < 1e-12  # it maps what lies in span(M) to zero
    assert torch.allclose(a @ a.T, torch.eye(4, dtype=torch.float64) / 3, atol=1e-12)  # orthonormal rows over √3
    # the top directions of the task's covariance with span(M) projected out (inflora.py l. 149-154)
    outside = second - basis @ basis.T @ second
    top = torch.linalg.svd(outside).U[:, :4]
    assert torch.allclose(3 * a.T @ a, top @ top.T, atol=1e-9)
    # before any basis: the top directions of the covariance itself (l. 126-128)
    assert torch.allclose(3 * design_a(first, None, 4).T @ design_a(first, None, 4),
                          (lambda u: u @ u.T)(torch.linalg.svd(first).U[:, :4]), atol=1e-9)


@pytest.fixture(scope="module")
def setup(tiny_clip):
    seq = load_sequence(sequence(tiny_clip))
    inputs = runner.load_inputs(seq, source="<test>", device=torch.device("cpu"))
    return seq, inputs, runner._context(seq, inputs)


class Watched(InfLoRA):
    """InfLoRA that keeps, per task, the A it designed, the trained B and the bases it started from."""

    def fit_task(self, model, task, *, step, trainer):
        self.started_from = [b.clone() for b in self.bases]
        stats = super().fit_task(model, task, step=step, trainer=trainer)
        self.factors = [(u.a.double().clone(), u.b_k.detach().double().clone(), u.b_v.detach().double().clone())
                        for u in self.adapters]
        return stats


def test_task_2s_update_changes_only_k_and_v_and_leaves_task_1s_kept_inputs_alone(setup):
    seq, inputs, context = setup
    method = Watched(InfLoRAOptions(rank=4), pretrained=inputs.backbone, context=context)
    model = TaskModel(copy.deepcopy(inputs.backbone), runner._initial_heads(seq, inputs.backbone, inputs.tasks))
    trainer = Trainer(seq.training, device=torch.device("cpu"), progress=False)
    layers = attentions(model.backbone)
    torch.manual_seed(0)
    first = method.fit_task(model, inputs.tasks[0], step=1, trainer=trainer)
    assert first.steps == 6 and set(first.losses) == {"ce"}  # 2 epochs of 3 batches
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    # tasks 1's and 2's attention inputs, per block, with the model as task 1 left it
    task_1, task_2 = (input_covariances(model.backbone, t.train.images, layers, batch_size=64,
                                        device=torch.device("cpu"), bf16=False) for t in inputs.tasks[:2])
    stats = method.fit_task(model, inputs.tasks[1], step=2, trainer=trainer)
    assert stats.extra["inflora_threshold"] == pytest.approx(0.95 + 0.05 / 3)  # raised for task 2 of 3
    assert len(method.bases) == len(layers) == 4
    assert all(m.shape[1] >= k.shape[1] for m, k in zip(method.bases, method.started_from))  # bases only grow

    after = model.backbone.state_dict()
    assert all(p.requires_grad for p in model.backbone.parameters())  # `full` as it was, once the task is merged
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)}  # only k, v
    for i, (attn, (a, b_k, b_v), basis) in enumerate(zip(layers, method.factors, method.started_from)):
        key = f"visual.transformer.resblocks.{i}.attn.in_proj_weight"
        d = attn.embed_dim
        delta = (after[key] - before[key]).double()
        assert torch.equal(after[key][:d], before[key][:d])  # q is never adapted
        assert b_k.abs().max() > 0 and b_v.abs().max() > 0  # B trained
        # the merged weight is W + [0; B_k A; B_v A]
        assert torch.allclose(delta[d:], torch.cat([b_k @ a, b_v @ a]), atol=1e-6)
        assert (a @ basis).abs().max() < 1e-6  # A (float32) orthogonal to task 1's kept basis
        # Interference-free: on task 1's inputs x, the update's effect B A x is that of x's part outside span(M):
        # E‖B A x‖² = tr(B A C₁ Aᵀ Bᵀ) = tr(B A P C₁ P Aᵀ Bᵀ), P = I − M Mᵀ
        update = torch.cat([b_k, b_v]) @ a
        outside = torch.eye(d, dtype=torch.float64) - basis @ basis.T
        effect = torch.trace(update @ task_1[i] @ update.T)
        assert effect == pytest.approx(float(torch.trace(update @ outside @ task_1[i] @ outside @ update.T)),
                                       rel=1e-4)
        # A: the top directions of task 2's inputs outside span(M), from the model as task 1 left it
        assert torch.allclose(a.T @ a, (lambda e: e.T @ e)(design_a(task_2[i], basis, 4)), atol=1e-6)
        # ... on which task 1's inputs weigh far less than on the top directions of task 2's inputs themselves
        # (what a LoRA designed without projecting span(M) out would adapt; 0.37 to 0.42 of it here)
        plain = design_a(task_2[i], None, 4)
        assert torch.trace(a @ task_1[i] @ a.T) < 0.6 * torch.trace(plain @ task_1[i] @ plain.T)


class StoppedInTraining(InfLoRA):
    """Ctrl-C at the second optimiser step."""

    def loss_terms(self, model, batch):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return super().loss_terms(model, batch)


def test_a_task_stopped_in_training_leaves_the_weights_as_they_were_and_no_adapter_behind(setup):
    seq, inputs, context = setup
    method = StoppedInTraining(InfLoRAOptions(), pretrained=inputs.backbone, context=context)
    model = TaskModel(copy.deepcopy(inputs.backbone), runner._initial_heads(seq, inputs.backbone, inputs.tasks))
    trainer = Trainer(seq.training, device=torch.device("cpu"), progress=False)
    with pytest.raises(KeyboardInterrupt):
        method.fit_task(model, inputs.tasks[0], step=1, trainer=trainer)
    assert method.adapters[0].b_k.abs().max() > 0  # one step of B was taken ...
    state = model.backbone.state_dict()  # ... and not merged: the pre-trained tensors, under their own names
    assert state.keys() == inputs.backbone.state_dict().keys()
    assert all(torch.equal(v, state[k]) for k, v in inputs.backbone.state_dict().items())
    assert all(p.requires_grad for p in model.backbone.parameters())


def run(tmp_path: Path, doc: dict, *more: str) -> int:
    return main(["run", str(write(tmp_path, doc)), "--out", str(tmp_path / "out"), "--quiet", *more])


@pytest.mark.parametrize("setting", ["task_incremental", "class_incremental"])
def test_a_run_trains_only_b_and_the_heads_and_changes_only_k_and_v(tiny_clip, tmp_path, setting, capsys):
    assert run(tmp_path, sequence(tiny_clip, setting=setting)) == 0
    folder = tmp_path / "out" / "inflora" / "inflora"
    doc = json.loads((folder / "metrics.json").read_text())
    assert doc["complete"]
    steps = doc["timings"][1:]
    assert [t["train_steps"] for t in steps] == [6, 4, 6]
    # 4 blocks × (B_k + B_v, 32 × 10 each), plus the heads that train: the task's own (16 features + a bias per
    # class), class-incremental every head up to the task's
    heads = {"task_incremental": [3, 2, 3], "class_incremental": [3, 5, 8]}[setting]
    assert [t["trainable_parameters"] for t in steps] == [4 * 2 * 32 * 10 + 17 * n for n in heads]
    kept = [t["inflora_kept"] for t in steps]
    assert all(len(k) == 4 and all(0 < n <= 32 for n in k) for k in kept)
    assert all(b >= a for earlier, later in zip(kept, kept[1:]) for a, b in zip(earlier, later))
    assert all(math.isfinite(t["losses"]["ce"]) for t in steps)
    lines = (folder / "accuracy_matrix.csv").read_text().splitlines()
    assert len(lines) == 5  # header, step 0 and a row per task
    checkpoint = torch.load(tmp_path / "out" / "inflora" / "checkpoints" / "inflora" / "step-3.pt", weights_only=True)
    pretrained = runner.load_inputs(load_sequence(sequence(tiny_clip)), source="<test>",
                                    device=torch.device("cpu")).backbone.state_dict()
    changed = {k for k in pretrained if not torch.equal(checkpoint["backbone"][k], pretrained[k])}
    assert changed == {f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(4)}
    assert all(torch.equal(checkpoint["backbone"][k][:32], pretrained[k][:32]) for k in changed)  # q rows



def test_a_run_stopped_in_step_2_resumes_bit_for_bit(tiny_clip, tmp_path, monkeypatch, capsys):
    whole, cut, err = stopped_in_step_2_and_resumed(write(tmp_path, sequence(tiny_clip)), tmp_path, "inflora",
                                                    monkeypatch, capsys)
    assert "inflora: resuming after step 1/3" in err
    assert (cut / "inflora" / "accuracy_matrix.csv").read_bytes() == \
        (whole / "inflora" / "accuracy_matrix.csv").read_bytes()
    ours, theirs = (torch.load(f / "checkpoints" / "inflora" / "step-3.pt", weights_only=True) for f in (cut, whole))
    assert sorted(theirs["method_state"]) == ["bases"] and len(theirs["method_state"]["bases"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(ours["method_state"]["bases"], theirs["method_state"]["bases"]))
    assert all(torch.equal(ours["backbone"][k], v) for k, v in theirs["backbone"].items())
    assert all(torch.equal(ours["heads"][t]["weight"], theirs["heads"][t]["weight"]) for t in theirs["heads"])


@pytest.mark.parametrize("change, message", [
    ({"model": {"family": "efficientnet_lite0", "image_size": 32}},
     "methods[0].inflora: InfLoRA adapts the attention of an open_clip ViT image tower (model.family: open_clip), "
     "not efficientnet_lite0"),
    ({"trainable": "lora"}, "methods[0].inflora: InfLoRA trains its own adapters (B of each block's k and v) and "
                            "freezes the rest itself: it needs model.trainable: full, not lora"),
    ({"inflora": {"rank": 40}}, "methods[0].inflora.rank: 40 is more than the attention's width, 32"),
], ids=["efficientnet", "lora", "rank"])
def test_what_it_cannot_do_is_refused_naming_it_before_anything_is_written(tiny_clip, tmp_path, capsys, change,
                                                                          message):
    doc = sequence(tiny_clip, inflora=change.get("inflora"))
    if "model" in change:
        doc["model"] = change["model"]
    if "trainable" in change:
        doc["model"]["trainable"] = change["trainable"]
    assert run(tmp_path, doc) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_thresholds_that_fall_are_refused(tiny_clip):
    with pytest.raises(ConfigError, match="threshold_end"):
        load_sequence(sequence(tiny_clip, inflora={"threshold": 0.9, "threshold_end": 0.8}))
