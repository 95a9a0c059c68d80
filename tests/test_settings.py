"""Settings and schedules (issue #13): class-incremental (one grown head), multi-domain (MTIL), steps_per_task,
and LP-FT's head phase. What defines each, checked on tiny real models and data."""
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from continual import checkpoints, methods
from continual.config import ConfigError, TrainingConfig, dump_sequence, load_sequence
from continual.datasets.tasks import load_task
from continual.evaluate import accuracy, extract_features, fit_linear_head
from continual.methods.options import FinetuneOptions, NaiveOptions
from continual.models import Head, TaskModel, build_backbone
from continual.report.tables import chance, read_run
from continual.run_folder import RunFolder
from continual.runner import run_sequence
from continual.train import Trainer
from helpers import digits, tiny_sequence


def doc(**changes):
    return tiny_sequence(**{"name": "s", "seed": 0, "methods": ["frozen"],
                            "tasks": [digits("a", [0, 1]), digits("b", [2, 3]), digits("c", [4, 5])], **changes})


@pytest.fixture(scope="module")
def parts():
    backbone = build_backbone(SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=32,
                                              head_init="linear_probe"))
    tasks = [load_task(SimpleNamespace(name=n, dataset="digits", classes=c, train_per_class=16, test_per_class=4,
                                       path=None, templates=None), image_size=32, data_root=Path("/nonexistent"), seed=0)
             for n, c in (("a", [0, 1]), ("b", [2, 3]))]
    return backbone, tasks


def two_heads(backbone, *, class_incremental):
    torch.manual_seed(0)
    a, b = Head(backbone.feature_dim, 2, normalize=False), Head(backbone.feature_dim, 2, normalize=False)
    with torch.no_grad():  # task a's head says "one of mine" loudly, whatever the image
        a.linear.weight.zero_()
        a.linear.bias.fill_(20.0)
    return TaskModel(copy.deepcopy(backbone), {"a": a, "b": b}, freeze_batchnorm=True, class_incremental=class_incremental)


def test_class_incremental_logits_are_every_head_up_to_the_task_and_labels_are_offset(parts):
    backbone, tasks = parts
    model = two_heads(backbone, class_incremental=True).eval()  # no drop-connect: one forward, one answer
    x = backbone.preprocess(tasks[1].train.images[:4])
    features = model.backbone(x)
    assert torch.equal(model(x, "a"), model.heads["a"](features))
    assert torch.equal(model(x, "b"), torch.cat([model.heads["a"](features), model.heads["b"](features)], dim=1))
    assert (model.label_offset("a"), model.label_offset("b")) == (0, 2)
    assert two_heads(backbone, class_incremental=False).label_offset("b") == 0

    trainer = Trainer(TrainingConfig(batch_size=8, warmup_steps=1, lr=1e-3, steps_per_task=2), device=torch.device("cpu"),
                      progress=False)
    stats = {}
    for cil in (True, False):
        model = two_heads(backbone, class_incremental=cil)
        start_a = model.heads["a"].linear.bias.clone()
        torch.manual_seed(1)
        stats[cil] = methods.build(FinetuneOptions(), pretrained=backbone).fit_task(model, tasks[1], step=2, trainer=trainer)
        # one grown head: task a's rows train with b's classes (the softmax spans both); task-incremental: untouched
        assert torch.equal(model.heads["a"].linear.bias, start_a) != cil
    # b's images compete with a's loud classes only when class-incremental, and only with labels 2 and 3: had
    # they stayed 0 and 1 (a's classes), the cross-entropy would be about log 2
    assert stats[True].first_losses["ce"] > 15 and stats[False].first_losses["ce"] < 5


def test_class_incremental_scores_every_task_among_all_classes_seen(tmp_path):
    frozen = {}
    for setting in ("task_incremental", "class_incremental"):
        seq = load_sequence(doc(setting=setting))
        frozen[setting] = pd_matrix(run_sequence(seq, out=tmp_path / setting, progress=False), "frozen")
    til, cil = frozen["task_incremental"], frozen["class_incremental"]
    guess = chance(read_run(tmp_path / "class_incremental" / "s")).to_numpy()
    assert np.allclose(guess[0], [1 / 2, 1 / 4, 1 / 6]) and np.allclose(guess[3], 1 / 6)  # drawn in the curves
    # The same heads, more competitors: a test image right among all classes seen is right among its own.
    assert (cil <= til + 1e-9).all() and cil[0, 0] == til[0, 0] and (cil < til).any()

    # By hand: the frozen backbone's linear probes, side by side up to max(step, j + 1), labels offset.
    seq = load_sequence(doc(setting="class_incremental"))
    backbone = build_backbone(seq.model)
    encoder = backbone.for_inference()
    tasks = [load_task(spec, image_size=32, data_root=seq.root, seed=0) for spec in seq.tasks]
    heads = [fit_linear_head(extract_features(encoder, t.train, batch_size=64, device=torch.device("cpu")),
                             t.train.labels, 2, normalize=False) for t in tasks]
    for step in range(4):
        offset = 0
        for j, task in enumerate(tasks):
            test = extract_features(encoder, task.test, batch_size=64, device=torch.device("cpu"))
            expected = accuracy(heads[: max(step, j + 1)], test, task.test.labels + offset)
            assert cil[step, j] == pytest.approx(expected, abs=1e-6)
            offset += 2


def pd_matrix(folder: Path, method: str) -> np.ndarray:
    return RunFolder(folder).read_matrix(method).to_numpy()


def test_avalanche_baselines_run_in_their_class_incremental_form(tmp_path):
    seq = load_sequence(doc(setting="class_incremental", tasks=doc()["tasks"][:2], methods=["replay", "lwf"],
                            training={"batch_size": 8, "warmup_steps": 1, "steps_per_task": 3}))
    folder = run_sequence(seq, out=tmp_path, progress=False)
    for name in ("replay", "lwf"):
        metrics = json.loads((folder / name / "metrics.json").read_text())
        assert metrics["complete"] and [t["train_steps"] for t in metrics["timings"][1:]] == [3, 3]
    assert json.loads((folder / "lwf" / "metrics.json").read_text())["timings"][2]["losses"]["lwf"] > 0
    state = checkpoints.load(RunFolder(folder).step_checkpoint("replay", 2), expect={"method": "replay", "step": 2})
    groups = state["method_state"]["plugin"]["groups"]
    # one task label for all (a single head), and the buffer keeps each task's images under its offset labels
    assert all(set(g["task_labels"].tolist()) == {0} for g in groups.values())
    assert [sorted(set(g["labels"].tolist())) for g in groups.values()] == [[0, 1], [2, 3]]


def test_steps_per_task_replaces_epochs(parts):
    backbone, tasks = parts  # 32 training images: 4 batches of 8 a pass
    calls = []
    trainer = Trainer(TrainingConfig(batch_size=8, warmup_steps=1, steps_per_task=10), device=torch.device("cpu"),
                      progress=False)
    model = TaskModel(copy.deepcopy(backbone), {"a": Head(backbone.feature_dim, 2, normalize=False)},
                      freeze_batchnorm=True)
    stats = trainer.fit(model, tasks[0], loss_terms=lambda m, b: {"ce": F.cross_entropy(m(b.x, b.task), b.y)},
                        after_step=calls.append)
    assert stats.steps == 10 and calls == list(range(1, 11))  # passes of 4, 4, then 2
    assert trainer.total_steps(32) == 10 and Trainer(TrainingConfig(epochs=3, batch_size=8), device=None).total_steps(32) == 12

    # Avalanche's strategy stops at the same count, task after task (its stop flag must not leak into the next)
    naive = methods.build(NaiveOptions(), pretrained=backbone)
    model = TaskModel(copy.deepcopy(backbone), {t.name: Head(backbone.feature_dim, 2, normalize=False) for t in tasks},
                      freeze_batchnorm=True)
    assert [naive.fit_task(model, t, step=i + 1, trainer=trainer).steps for i, t in enumerate(tasks)] == [10, 10]

    with pytest.raises(ConfigError, match=r"training: .*not both"):
        load_sequence(doc(training={"epochs": 2, "steps_per_task": 10}))
    # config.yaml of such a run reads back as the same sequence (epochs, replaced, is not written)
    seq = load_sequence(doc(training={"batch_size": 8, "steps_per_task": 10}))
    assert load_sequence(yaml.safe_load(dump_sequence(seq))) == seq


def test_a_method_named_only_on_the_command_line_needs_no_required_option(tmp_path):
    seq = load_sequence(doc(methods=["finetune"]))
    with pytest.raises(ConfigError, match=r"--methods: reference: Field required: list the method in the sequence"):
        run_sequence(seq, out=tmp_path, methods=["zscl"], progress=False)
    assert not (tmp_path / "s").exists()


def test_settings_refuse_tasks_they_cannot_hold():
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.dataset: digits is also tasks\[0\]'s: setting multi_domain"):
        load_sequence(doc(setting="multi_domain"))
    shared = doc(setting="class_incremental", tasks=[digits("a", [0, 1]), digits("b", [1, 2])])
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.classes: shares classes 1 with tasks\[0\]"):
        load_sequence(shared)
    load_sequence({**shared, "setting": "task_incremental"})  # a head per task: the same class twice is fine
    with pytest.raises(ConfigError, match=r"setting"):
        load_sequence(doc(setting="class-incremental"))


def test_multi_domain_trains_and_scores_as_task_incremental(tmp_path):
    tasks = [digits("a", [0, 1]), {**digits("m", [0, 1]), "dataset": "mnist", "train_per_class": 4}]
    matrices = {}
    for setting in ("task_incremental", "multi_domain"):
        seq = load_sequence(doc(setting=setting, tasks=tasks, methods=["finetune"],
                                training={"batch_size": 8, "warmup_steps": 1, "steps_per_task": 2}))
        matrices[setting] = pd_matrix(run_sequence(seq, out=tmp_path / setting, progress=False), "finetune")
    assert np.array_equal(matrices["task_incremental"], matrices["multi_domain"])


def test_lp_ft_is_finetune_from_a_linear_probe_head(tmp_path):
    training = {"batch_size": 8, "warmup_steps": 1, "steps_per_task": 3}
    two = doc()["tasks"][:2]
    # With linear-probe heads every method already starts from the probe: lp_ft is finetune, update for update.
    folder = run_sequence(load_sequence(doc(tasks=two, methods=["finetune", "lp_ft"], training=training)),
                          out=tmp_path / "lp", progress=False)
    runs = {m: json.loads((folder / m / "metrics.json").read_text()) for m in ("finetune", "lp_ft")}
    assert np.array_equal(pd_matrix(folder, "finetune"), pd_matrix(folder, "lp_ft"))
    assert [t.get("losses") for t in runs["finetune"]["timings"]] == [t.get("losses") for t in runs["lp_ft"]["timings"]]
    # From random heads, lp_ft first fits the probe: its first batch is far better classified than finetune's.
    seq = load_sequence(doc(tasks=two, methods=["finetune", "lp_ft"], training=training,
                            model={"family": "efficientnet_lite0", "image_size": 32, "head_init": "random"}))
    folder = run_sequence(seq, out=tmp_path / "random", progress=False)
    first = {m: json.loads((folder / m / "metrics.json").read_text())["timings"][1]["first_losses"]["ce"]
             for m in ("finetune", "lp_ft")}
    assert first["lp_ft"] < 0.5 * first["finetune"]
