"""X-TAIL (issue #26; RAIL, Xu et al. NeurIPS 2024): tasks are datasets of their own, and every test image is
predicted among the classes of all of them, learned or not, with no domain label. Checked on the tiny CLIP with
two "domains": the bundled digits and MNIST."""
import copy
import json

import numpy as np
import pytest
import torch
import yaml

from continual import runner
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.evaluate import accuracy, evaluate, extract_features, fit_linear_head
from continual.models import TaskModel
from continual.run_folder import RunFolder
from helpers import digits, tiny_clip_model, tiny_clip_sequence

CPU = torch.device("cpu")


def doc(tiny_clip, **changes) -> dict:
    """Domain a: digits 0, 1 (2 classes); domain b: MNIST 2, 3, 4 (3 classes). 5 classes in all."""
    return tiny_clip_sequence(tiny_clip, **{
        "name": "x", "setting": "x_tail", "model": tiny_clip_model(tiny_clip, head_init="zero_shot"),
        "tasks": [digits("a", [0, 1], 16, 6), {**digits("b", [2, 3, 4], 4, 6), "dataset": "mnist"}],
        "training": {"batch_size": 8, "warmup_steps": 1, "lr": 1e-4, "steps_per_task": 2, "device": "cpu"},
        "methods": ["finetune"], **changes})


@pytest.fixture(scope="module")
def setup(tiny_clip):
    seq = load_sequence(doc(tiny_clip))
    inputs = runner.load_inputs(seq, source="<test>", device=CPU)
    return seq, inputs


def start_model(seq, inputs, *, all_classes: bool, class_incremental: bool = False) -> TaskModel:
    model = TaskModel(copy.deepcopy(inputs.backbone), freeze_batchnorm=True, class_incremental=class_incremental,
                      all_classes=all_classes)
    model.heads.update(runner._initial_heads(seq, model.backbone, inputs.tasks))
    return model


def row(model, inputs, *, learned=0):
    return evaluate(model, inputs.tasks, [], learned=learned, head_init="zero_shot", zero_shot_probes=None,
                    batch_size=64, device=CPU, class_incremental=model.class_incremental,
                    all_classes=model.all_classes).row


def test_the_head_spans_the_union_of_every_domains_classes(setup):
    seq, inputs = setup
    model = start_model(seq, inputs, all_classes=True).eval()
    assert model.class_incremental and [h.linear.out_features for h in model.heads.values()] == [2, 3]
    x = model.backbone.preprocess(inputs.tasks[1].test.images[:4])
    # trained as class-incremental: a task's logits span the domains learned up to it (RAIL's adapter regresses
    # on those), labels offset past the earlier domains' classes
    assert [model(x, t).shape[1] for t in ("a", "b")] == [2, 5] and model.label_offset("b") == 2

    # scored among all 5 classes at every step, a domain learned or not: by hand, both heads side by side
    encoder = model.backbone.for_inference()
    tests = [extract_features(encoder, t.test, batch_size=64, device=CPU) for t in inputs.tasks]
    heads = list(model.heads.values())
    for learned in (0, 1, 2):
        got = row(model, inputs, learned=learned)
        assert got["a"] == accuracy(heads, tests[0], inputs.tasks[0].test.labels)
        assert got["b"] == accuracy(heads, tests[1], inputs.tasks[1].test.labels + 2)


def test_a_domain_is_scored_among_the_other_domains_classes_too(setup):
    seq, inputs = setup
    encoder = inputs.backbone.for_inference()
    a = inputs.tasks[0]
    features = extract_features(encoder, a.train, batch_size=64, device=CPU)
    probe = fit_linear_head(features, a.train.labels, 2, normalize=inputs.backbone.normalize_features)
    own = accuracy(probe, extract_features(encoder, a.test, batch_size=64, device=CPU), a.test.labels)
    assert own > 0.5  # a's head alone gets most of a's test images right
    rows = {}
    for setting, (cil, every) in {"multi_domain": (False, False), "class_incremental": (True, False),
                                  "x_tail": (False, True)}.items():
        model = start_model(seq, inputs, class_incremental=cil, all_classes=every)
        model.heads["a"] = copy.deepcopy(probe)
        with torch.no_grad():  # one of b's classes wins every image, whatever it shows
            model.heads["b"].linear.bias.fill_(1e4)
        rows[setting] = row(model, inputs)
    # Before anything is learned, a's images: among a's classes (multi_domain; class_incremental, a being the
    # first domain), they score a's own accuracy; among a's and b's (x_tail), b's class wins every one.
    assert rows["multi_domain"]["a"] == rows["class_incremental"]["a"] == own
    assert rows["x_tail"]["a"] == 0.0
    assert rows["x_tail"]["b"] == rows["class_incremental"]["b"]  # b after a: the same 5 classes either way


def test_x_tail_refuses_what_it_cannot_score(tiny_clip):
    with pytest.raises(ConfigError, match=r"model\.head_init: linear_probe: setting x_tail .* zero_shot"):
        load_sequence(doc(tiny_clip, model=tiny_clip_model(tiny_clip)))
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.dataset: digits is also tasks\[0\]'s: setting x_tail"):
        load_sequence(doc(tiny_clip, tasks=[digits("a", [0, 1]), digits("b", [2, 3])]))
    assert load_sequence(doc(tiny_clip)).one_head


def test_finetune_runs_end_to_end_and_frozen_scores_no_better_than_per_domain(tiny_clip, tmp_path):
    matrices = {}
    for setting in ("x_tail", "multi_domain"):
        path = tmp_path / f"{setting}.yaml"
        path.write_text(yaml.safe_dump(doc(tiny_clip, setting=setting, methods=["frozen", "finetune"])))
        assert main(["run", str(path), "--out", str(tmp_path / setting), "--quiet"]) == 0
        folder = RunFolder(tmp_path / setting / "x")
        matrices[setting] = {m: folder.read_matrix(m).to_numpy() for m in ("frozen", "finetune")}
        assert matrices[setting]["finetune"].shape == (3, 2) and not np.isnan(matrices[setting]["finetune"]).any()
    x, md = matrices["x_tail"]["frozen"], matrices["multi_domain"]["frozen"]
    # The same zero-shot heads, more competitors: right among all classes means right among the domain's own.
    assert (x <= md + 1e-9).all() and (x < md).any() and (x == x[0]).all()
    assert json.loads((tmp_path / "x_tail" / "x" / "finetune" / "metrics.json").read_text())["setting"] == "x_tail"
