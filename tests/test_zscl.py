"""ZSCL (issue #13): distillation of the pre-trained CLIP on reference images, l2 to the task's start and the
weight ensemble, checked against ZSCL's own formulas (Thunderbeee/ZSCL mtil/src/models/finetune.py, helpers.py),
and a run through the runner that resumes to the same numbers."""
import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from continual import methods
from continual.config import ConfigError, TrainingConfig, load_sequence
from continual.datasets import prompts
from continual.datasets.tasks import load_task
from continual.methods.options import ZSCLOptions
from continual.methods.zscl import WeightEnsemble, distillation
from continual.models import TaskModel, build_backbone, text_tower, zero_shot_head
from continual.runner import run_sequence
from continual.train import Batch, FitStats, Trainer
from helpers import digits, tiny_clip_model, tiny_clip_sequence


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny CLIP's ops are too small to share between threads: on 2 busy cores, a step took 2.2 s with
    two threads and 0.03 s with one. Restored after this file."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(name, classes, per_class=8):
    return SimpleNamespace(name=name, dataset="digits", classes=classes, train_per_class=per_class,
                           test_per_class=4, path=None, templates=None)


@pytest.fixture(scope="module")
def setting(tiny_clip):
    arch, checkpoint = tiny_clip
    backbone = build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=str(checkpoint),
                                              image_size=None, head_init="zero_shot"))
    task, ref = (load_task(s, image_size=32, data_root=Path("/nonexistent"), seed=0)
                 for s in (spec("t", [0, 1, 2]), spec("ref", [5, 6, 7])))
    context = methods.Context(tasks=[task], probes=[], references={"ref": ref},
                              templates={("tasks", "t"): prompts.templates("digits"),
                                         ("references", "ref"): prompts.templates("digits")})
    head = zero_shot_head(backbone, prompts.readable_names("digits", task.class_names),
                          templates=prompts.templates("digits"))
    return backbone, head, task, ref, context


def model_of(setting) -> TaskModel:
    backbone, head, *_ = setting
    return TaskModel(copy.deepcopy(backbone), {"t": copy.deepcopy(head)}, freeze_batchnorm=True)


class Recording(Trainer):
    """Records the trained weights after every optimiser step (what the ensemble sees)."""

    def fit(self, model, task, *, after_step=None, **kwargs):
        params = self.trainable_parameters(model, task.name)
        self.start, self.snapshots = [p.detach().clone() for p in params], {}

        def spy(i):
            self.snapshots[i] = [p.detach().clone() for p in params]
            after_step(i)
        return super().fit(model, task, after_step=spy, **kwargs)


def test_distillation_is_zero_at_the_start_grows_as_weights_move_and_the_ensemble_ends_the_task(setting):
    backbone, _, task, _, context = setting
    trainer = Recording(TrainingConfig(batch_size=8, warmup_steps=1, lr=1e-3, epochs=2), device=torch.device("cpu"),
                        progress=False)
    model = model_of(setting)
    options = ZSCLOptions(reference="ref", reference_batch_size=8, we_freq=2)
    torch.manual_seed(1)
    stats = methods.build(options, pretrained=backbone, context=context).fit_task(model, task, step=1, trainer=trainer)
    # Before the first update the model is the teacher: its distributions are the teacher's (to float error:
    # the frozen teacher runs in eval mode, where torch's attention takes another kernel), and l2 is 0.
    assert stats.first_losses["zscl"] < 1e-6 and stats.first_losses["zscl_text"] < 1e-6
    assert stats.first_losses["l2"] == 0
    assert stats.losses["zscl"] > 0 and stats.losses["zscl_text"] > 0 and stats.losses["l2"] > 0
    # 24 images in batches of 8, 2 epochs: 6 steps; snapshots after steps 1, 3, 5 (ZSCL's iterations 0, 2, 4)
    assert stats.steps == 6 and stats.extra["zscl_we_snapshots"] == 3
    kept = [trainer.start] + [trainer.snapshots[i] for i in (1, 3, 5)]
    for k, p in enumerate(trainer.trainable_parameters(model, "t")):
        assert torch.allclose(p, torch.stack([s[k] for s in kept]).mean(0), atol=1e-6)
    assert not torch.equal(p, trainer.snapshots[6][k])  # the last step's weights are not what ends the task


class OneBatch(Trainer):
    """Moves the weights as an update would, then takes the method's loss terms on one fixed batch."""

    def fit(self, model, task, *, loss_terms, **kwargs):
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}
        noise = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in self.trainable_parameters(model, task.name):
                p.add_(0.5 * p.std(unbiased=False) * torch.randn(p.shape, generator=noise))
        self.x = model.backbone.preprocess(task.train.images[:8])
        torch.manual_seed(5)
        self.terms = loss_terms(model, Batch(self.x, task.train.labels[:8], torch.arange(8), task.name))
        return FitStats(steps=1, seconds=0.0, losses={})


def test_each_term_is_zscls_formula_worked_by_hand(setting):
    backbone, _, task, ref, context = setting
    trainer = OneBatch(TrainingConfig(batch_size=8), device=torch.device("cpu"), progress=False)
    model = model_of(setting)
    options = ZSCLOptions(reference="ref", reference_batch_size=16, temperature=2.0, image_weight=1.0,
                          text_weight=0.5, l2=3.0, we_freq=None)  # no ensemble: it would undo the moves
    method = methods.build(options, pretrained=backbone, context=context)
    method.fit_task(model, task, step=1, trainer=trainer)
    terms, T = trainer.terms, 2.0

    torch.manual_seed(5)
    rows = torch.randperm(len(ref.train.labels))[:16]
    x = backbone.preprocess(ref.train.images[rows])
    # finetune.py lines 249-267: exp(logit_scale) · normalised image @ normalised reference text, the
    # teacher's text embeddings (here the class prompts') on both sides
    text = F.normalize(zero_shot_head(backbone, prompts.readable_names("digits", ref.class_names),
                                      templates=prompts.templates("digits")).linear.weight, dim=-1)
    scale = text_tower(backbone).model.logit_scale.exp()
    with torch.no_grad():
        teacher = scale * F.normalize(backbone(x), dim=-1) @ text.T
        student = scale * F.normalize(model.backbone(x), dim=-1) @ text.T

    teacher, student = teacher.double(), student.double()  # no float32 cancellation in CE − entropy

    def zscl(t, s):  # helpers.py lines 64-67
        return F.cross_entropy(s / T, F.softmax(t / T, dim=1), reduction="mean") * T**2

    def entropy(t):  # of the teacher: what separates ZSCL's soft cross-entropy from the KL we log
        p = F.softmax(t / T, dim=1)
        return -(p * p.log()).sum(1).mean() * T**2

    terms = {k: float(v.detach()) for k, v in terms.items()}
    assert terms["zscl"] > 1e-3  # the weights moved enough for the check to mean something
    assert terms["zscl"] == pytest.approx(float(zscl(teacher, student) - entropy(teacher)), rel=1e-4)
    assert terms["zscl_text"] == pytest.approx(0.5 * float(zscl(teacher.T, student.T) - entropy(teacher.T)), rel=1e-4)
    with torch.no_grad():
        assert terms["ce"] == pytest.approx(float(F.cross_entropy(model(trainer.x, "t"), task.train.labels[:8])),
                                                   rel=1e-5)
    moved = sum(float((p.detach() - trainer.start[n]).pow(2).sum()) for n, p in model.named_parameters()
                if n.startswith("backbone.") or n.startswith("heads.@t."))
    assert moved > 0 and terms["l2"] == pytest.approx(3.0 * moved, rel=1e-5)
    assert set(terms) == {"ce", "zscl", "zscl_text", "l2"}

    # Same gradients as ZSCL's soft cross-entropy: the teacher's entropy does not depend on the student.
    t, s = torch.randn(5, 7), torch.randn(5, 7, requires_grad=True)
    zscl_float = lambda t, s: F.cross_entropy(s / T, F.softmax(t / T, dim=1)) * T**2  # noqa: E731
    ours, = torch.autograd.grad(distillation(t, s, temperature=T), s)
    theirs, = torch.autograd.grad(zscl_float(t, s), s)
    assert torch.allclose(ours, theirs, atol=1e-7)

    # Reference batches: shuffled passes over the 24 images, each pass's last batch short (a DataLoader's).
    drawn = [method.reference_rows() for _ in range(3)]
    assert [len(r) for r in drawn] == [8, 16, 8]  # the rest of the pass the batch above began, then a new one
    assert sorted(torch.cat([rows, drawn[0]]).tolist()) == list(range(24))
    assert sorted(torch.cat(drawn[1:]).tolist()) == list(range(24))


def test_the_weight_ensemble_is_the_running_mean_of_the_start_and_every_snapshot():
    toy = torch.nn.Linear(2, 1)
    with torch.no_grad():
        for p in toy.parameters():
            p.fill_(0.0)
    ensemble = WeightEnsemble(list(toy.parameters()), every=2)
    for i in range(1, 7):
        with torch.no_grad():
            for p in toy.parameters():
                p.fill_(float(i) ** 2)
        ensemble.after_step(i)
    assert ensemble.n == 3  # after steps 1, 3 and 5
    ensemble.copy_to_params()
    for p in toy.parameters():
        assert torch.allclose(p, torch.full_like(p, (0 + 1 + 9 + 25) / 4))


def sequence(tiny_clip, **zscl):
    return tiny_clip_sequence(
        tiny_clip, name="zscl", seed=2, model=tiny_clip_model(tiny_clip, head_init="zero_shot"),
        tasks=[digits("a", [0, 1, 2]), digits("b", [3, 4])], probes=[digits("p", [8, 9], 4, 4)],
        references=[{"name": "ref", "dataset": "digits", "classes": [5, 6, 7], "train_per_class": 8}],
        methods=[{"zscl": {"reference": "ref", **zscl}}], keep_checkpoints=2)


def test_zscl_is_refused_without_a_text_tower_or_a_named_reference(tiny_clip):
    doc = sequence(tiny_clip)
    with pytest.raises(ConfigError) as err:
        load_sequence({**doc, "model": {"family": "efficientnet_lite0", "image_size": 32}})
    assert "methods[0]: zscl needs a CLIP text tower" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_sequence({**doc, "methods": [{"zscl": {"reference": "imagenet"}}]})
    assert "methods[0].zscl.reference: 'imagenet' is not one of the sequence's `references:` (ref)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_sequence({**doc, "methods": [{"zscl": {"reference": "ref", "we_freq": 0}}]})
    assert "we_freq" in str(err.value)


def test_a_run_completes_and_a_resume_after_step_1_gives_the_same_results(tiny_clip, tmp_path, capsys):
    seq = load_sequence(sequence(tiny_clip, reference_batch_size=8, we_freq=2))
    folder = run_sequence(seq, out=tmp_path / "whole", progress=False)
    metrics = json.loads((folder / "zscl" / "metrics.json").read_text())
    assert metrics["complete"] and [t["train_steps"] for t in metrics["timings"][1:]] == [3, 2]
    assert set(metrics["timings"][1]["losses"]) == {"ce", "zscl", "zscl_text", "l2"}

    # As a kill after step 1's checkpoint leaves it: step 2's checkpoint gone, the method unfinished.
    resumed = tmp_path / "resumed" / "zscl"
    shutil.copytree(folder, resumed)
    (resumed / "checkpoints" / "zscl" / "step-2.pt").unlink()
    doc = json.loads((resumed / "zscl" / "metrics.json").read_text())
    (resumed / "zscl" / "metrics.json").write_text(json.dumps({**doc, "complete": False}))
    capsys.readouterr()
    run_sequence(seq, out=tmp_path / "resumed", progress=False, resume=True)
    assert "zscl: resuming after step 1/2" in capsys.readouterr().err

    matrix = (folder / "zscl" / "accuracy_matrix.csv").read_text()
    assert (resumed / "zscl" / "accuracy_matrix.csv").read_text() == matrix
    again = json.loads((resumed / "zscl" / "metrics.json").read_text())
    assert [t.get("losses") for t in again["timings"]] == [t.get("losses") for t in metrics["timings"]]
    ours, theirs = (torch.load(f / "checkpoints" / "zscl" / "step-2.pt", weights_only=True) for f in (resumed, folder))
    assert all(torch.equal(ours["backbone"][k], theirs["backbone"][k]) for k in theirs["backbone"])
    assert all(torch.equal(ours["heads"][t]["weight"], theirs["heads"][t]["weight"]) for t in theirs["heads"])
