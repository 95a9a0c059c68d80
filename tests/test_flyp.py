"""FLYP: CLIP's contrastive loss between images and their class prompts, the text tower trained too, every
head re-embedded by it after each task; refused without a text tower; resumed exactly."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from continual import checkpoints, runner
from continual.config import ConfigError, load_sequence
from continual.datasets.prompts import readable_names
from continual.evaluate import accuracy, extract_features
from continual.methods.flyp import FLYP
from continual.methods.options import FLYPOptions
from continual.models import TaskModel, zero_shot_head
from continual.models.clip import text_tower
from continual.runner import run_sequence
from continual.train import Batch, Trainer
from helpers import digits, tiny_clip_model, tiny_clip_sequence


def sequence(tiny_clip) -> dict:
    return tiny_clip_sequence(
        tiny_clip, seed=2, model=tiny_clip_model(tiny_clip, head_init="zero_shot"),
        tasks=[digits("a", [0, 1, 2]),
               # its own templates: each task's prompts are its spec's, else its dataset's
               {**digits("b", [7, 8]), "templates": ["a photo of the number {}.", "{}"]}],
        probes=[digits("p", [4, 5])],
        training={"batch_size": 8, "warmup_steps": 1, "lr": 1e-4, "device": "cpu"},
        methods=["flyp"],
    )


@pytest.fixture(scope="module")
def setup(tiny_clip):
    seq = load_sequence(sequence(tiny_clip))
    inputs = runner.load_inputs(seq, source="<test>", device=torch.device("cpu"))
    return seq, inputs, runner._context(seq, inputs)


def fresh(setup):
    seq, inputs, context = setup
    method = FLYP(FLYPOptions(), pretrained=inputs.backbone, context=context)
    model = TaskModel(copy.deepcopy(inputs.backbone))
    return method, model


def by_hand(text, tokenizer, names, templates) -> torch.Tensor:
    """A zero-shot head's weights as FLYP's zeroshot.py builds them: each template's embedding normalised,
    their mean renormalised, times exp(logit_scale)."""
    rows = []
    with torch.no_grad():
        for name in names:
            embedded = text.encode_text(tokenizer([t.format(name) for t in templates]))
            mean = (embedded / embedded.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(mean / mean.norm() * text.logit_scale.exp())
    return torch.stack(rows)


def test_the_loss_is_clip_loss_on_cosine_similarities_times_exp_logit_scale(setup):
    seq, inputs, context = setup
    method, model = fresh(setup)
    task = inputs.tasks[0]
    method.tokens = method.prompt_tokens(task)
    templates = context.templates[("tasks", "a")]
    names = readable_names(task.dataset, task.class_names)
    assert method.tokens.shape == (3, len(templates), 16)  # classes, templates, the tiny CLIP's context
    with torch.no_grad():
        method.text.logit_scale.fill_(1.5)  # not CLIP's initial 1/0.07: the scale must be the tower's own
    rows = torch.arange(7)
    x, y = model.backbone.preprocess(task.train.images[rows]), task.train.labels[rows]
    assert len(set(y.tolist())) < len(y)  # images of one class share a batch: they are negatives of each other

    torch.manual_seed(5)
    terms = method.loss_terms(model, Batch(x, y, rows, "a"))
    torch.manual_seed(5)
    pick = torch.randint(len(templates), (7,))  # one template per image, from torch's global RNG
    captions = [templates[t].format(names[c]) for c, t in zip(y.tolist(), pick.tolist())]
    assert torch.equal(method.tokens[y, pick], method.tokenizer(captions))

    with torch.no_grad():
        image, text = model.backbone(x), method.text.encode_text(method.tokenizer(captions))
    cosine = torch.tensor([[float(F.cosine_similarity(image[i], text[j], dim=0)) for j in range(7)] for i in range(7)])
    logits = cosine * math.exp(1.5)
    per_image = -torch.log_softmax(logits, dim=1).diagonal().mean()
    per_caption = -torch.log_softmax(logits, dim=0).diagonal().mean()
    assert list(terms) == ["flyp"]
    assert float(terms["flyp"].detach()) == pytest.approx(float(per_image + per_caption) / 2, rel=1e-5)

    terms["flyp"].backward()  # both towers and the temperature learn, as in FLYP's one AdamW over all of CLIP
    assert method.text.logit_scale.grad is not None and float(method.text.logit_scale.grad) != 0
    assert method.text.token_embedding.weight.grad.abs().sum() > 0
    assert model.backbone.visual.conv1.weight.grad.abs().sum() > 0


def test_the_untrained_text_tower_gives_the_start_heads_exactly(setup):
    seq, inputs, context = setup
    method, _ = fresh(setup)
    for task in inputs.tasks:
        names, templates = readable_names(task.dataset, task.class_names), context.templates[("tasks", task.name)]
        start = zero_shot_head(inputs.backbone, names, templates=templates)
        ours = method.head(task, "tasks", device=torch.device("cpu"))
        assert torch.equal(ours.linear.weight, start.linear.weight) and ours.normalize
    assert context.templates[("tasks", "b")] == ["a photo of the number {}.", "{}"]


def test_after_a_task_every_head_is_the_trained_text_towers(setup):
    seq, inputs, context = setup
    method, model = fresh(setup)
    shared = text_tower(inputs.backbone).model
    shared_before = {k: v.clone() for k, v in shared.state_dict().items()}
    text_before = {k: v.clone() for k, v in method.text.state_dict().items()}
    image_before = model.backbone.visual.conv1.weight.detach().clone()

    torch.manual_seed(0)
    trainer = Trainer(seq.training, device=torch.device("cpu"), progress=False)
    stats = method.fit_task(model, inputs.tasks[0], step=1, trainer=trainer)
    assert stats.steps == 3 and set(stats.losses) == {"flyp"}  # 24 images in batches of 8
    assert stats.extra["logit_scale"] == pytest.approx(float(method.text.logit_scale.detach().exp()))

    # the method's text tower trained; the backbone's shared one is frozen and untouched
    changed = [k for k, v in method.text.state_dict().items() if not torch.equal(v, text_before[k])]
    assert {"logit_scale", "token_embedding.weight", "text_projection"} <= set(changed)
    assert all(torch.equal(v, shared_before[k]) for k, v in shared.state_dict().items())
    assert not any(p.requires_grad for p in shared.parameters())
    assert not torch.equal(model.backbone.visual.conv1.weight, image_before)
    assert not method.text.training  # eval mode outside training (heads, evaluation)

    # every task's head, learned or not, and every probe's zero-shot head: from the trained text tower
    for group, data, heads in (("tasks", inputs.tasks, model.heads), ("probes", inputs.probes, method.zero_shot_probes)):
        assert sorted(heads) == sorted(d.name for d in data)
        for d in data:
            weight = by_hand(method.text, method.tokenizer, readable_names(d.dataset, d.class_names),
                             context.templates[(group, d.name)])
            assert heads[d.name].normalize and torch.equal(heads[d.name].linear.bias, torch.zeros(len(d.class_names)))
            torch.testing.assert_close(heads[d.name].linear.weight, weight, rtol=1e-5, atol=1e-6)
            start = zero_shot_head(inputs.backbone, readable_names(d.dataset, d.class_names),
                                   templates=context.templates[(group, d.name)])
            assert not torch.equal(heads[d.name].linear.weight, start.linear.weight)

    # what a resume restores: the text tower, and from it the probes' heads
    again, _ = fresh(setup)
    again.load_state_dict(method.state_dict(), model=model, trainer=trainer)
    assert all(torch.equal(v, method.text.state_dict()[k]) for k, v in again.text.state_dict().items())
    assert torch.equal(again.zero_shot_probes["p"].linear.weight, method.zero_shot_probes["p"].linear.weight)


def test_a_model_without_a_text_tower_is_refused_naming_the_method(tiny_clip):
    doc = dict(sequence(tiny_clip), model={"family": "efficientnet_lite0", "image_size": 32},
               methods=["finetune", "flyp"])
    doc["tasks"] = [{k: v for k, v in t.items() if k != "templates"} for t in doc["tasks"]]
    with pytest.raises(ConfigError) as err:
        load_sequence(doc)
    assert err.value.problems == [("methods[1]", "flyp needs a CLIP text tower (family: open_clip): "
                                                 "family efficientnet_lite0 has no text tower")]


class Killed(Exception):
    pass


def test_a_run_stopped_in_step_2_resumes_to_the_uninterrupted_results(setup, tmp_path, monkeypatch, capsys):
    seq, inputs, _ = setup
    reference = run_sequence(seq, out=tmp_path / "ref", progress=False)
    header = (reference / "flyp" / "accuracy_matrix.csv").read_text().splitlines()[0]
    assert header == "step,a,b,probe:p,probe:p:zero_shot"
    doc = json.loads((reference / "flyp" / "metrics.json").read_text())
    assert doc["complete"] and [sorted(t["losses"]) for t in doc["timings"][1:]] == [["flyp"], ["flyp"]]
    assert [t["train_steps"] for t in doc["timings"][1:]] == [3, 2]

    updates = []
    adamw_step = torch.optim.AdamW.step

    def stopping(self, *args, **kwargs):
        updates.append(1)
        if len(updates) == 3 + 1:  # the first update of task b
            raise Killed
        return adamw_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", stopping)
    with pytest.raises(Killed):
        run_sequence(seq, out=tmp_path / "out", progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", adamw_step)
    assert run_sequence(seq, out=tmp_path / "out", progress=False, resume=True) == tmp_path / "out" / "tiny"
    assert "flyp: resuming after step 1/2" in capsys.readouterr().err

    folder = tmp_path / "out" / "tiny"
    assert (folder / "flyp" / "accuracy_matrix.csv").read_text() == (reference / "flyp" / "accuracy_matrix.csv").read_text()
    ours, theirs = (json.loads((f / "flyp" / "metrics.json").read_text())["timings"] for f in (folder, reference))
    assert [t.get("losses") for t in ours] == [t.get("losses") for t in theirs]
    ours, theirs = (torch.load(f / "checkpoints" / "flyp" / "step-2.pt", weights_only=True) for f in (folder, reference))
    for a, b in ((ours["backbone"], theirs["backbone"]), (ours["method_state"]["text"], theirs["method_state"]["text"])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(ours["heads"][t]["weight"], theirs["heads"][t]["weight"]) for t in ("a", "b"))

    # the probe's zero-shot column is scored with the method's text heads, not the pre-trained tower's
    method, model = fresh(setup)
    trainer = Trainer(seq.training, device=torch.device("cpu"), progress=False)
    checkpoints.load_model(model, theirs)
    method.load_state_dict(theirs["method_state"], model=model, trainer=trainer)
    probe = inputs.probes[0]
    features = extract_features(model.backbone, probe.test, batch_size=64, device=torch.device("cpu"))
    last = (reference / "flyp" / "accuracy_matrix.csv").read_text().splitlines()[-1].split(",")
    assert float(last[-1]) == pytest.approx(accuracy(method.zero_shot_probes["p"], features, probe.test.labels), abs=1e-6)
