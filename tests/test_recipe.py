"""ZSCL's MTIL recipe (issue #24): a task's own training settings over the sequence's, label smoothing of
the task's cross-entropy in every loop, and ZSCL's random 80/20 splits of the datasets that ship none
(Thunderbeee/ZSCL mtil/src/datasets/collections.py, split_dataset), on fake files in the real layout."""
import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from continual import methods
from continual.cli import main
from continual.config import ConfigError, DataSpec, TrainingConfig, dump_sequence, load_sequence
from continual.datasets import tasks
from continual.methods import METHODS
from continual.models import TaskModel
from continual.train import Trainer
from helpers import tiny_sequence, tiny_setting

ROOT = Path(__file__).resolve().parents[1]


def sequence(**changes) -> dict:
    return tiny_sequence(**{"name": "recipe", "seed": 0,
                            "training": {"batch_size": 8, "warmup_steps": 1, "steps_per_task": 2}, **changes})


def with_task_training(doc: dict, task: int, training: dict) -> dict:
    doc = copy.deepcopy(doc)
    doc["tasks"][task]["training"] = training
    return doc


def problems(doc: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as err:
        load_sequence(doc)
    return err.value.problems


# ---- a task's own training settings ----------------------------------------------------------------------

def test_a_task_s_keys_go_over_the_sequence_s_and_only_its_own():
    seq = load_sequence(with_task_training(sequence(), 1, {"lr": 5e-5, "label_smoothing": 0.2}))
    assert seq.task_training(0) is seq.training  # a task without `training` trains with the sequence's
    own = seq.task_training(1)
    assert (own.lr, own.label_smoothing, own.steps_per_task, own.batch_size, own.warmup_steps) == (5e-5, 0.2, 2, 8, 1)
    assert (seq.training.lr, seq.training.label_smoothing) == (1e-5, 0.0)
    # a task's epochs replace the sequence's steps_per_task, and the other way round
    assert (load_sequence(with_task_training(sequence(), 1, {"epochs": 3})).task_training(1).steps_per_task) is None
    by_epochs = sequence(training={"batch_size": 8, "epochs": 2})
    steps = load_sequence(with_task_training(by_epochs, 0, {"steps_per_task": 7})).task_training(0)
    assert (steps.steps_per_task, Trainer(steps, device=torch.device("cpu")).total_steps(1000)) == (7, 7)


@pytest.mark.parametrize("key, value", [("device", "cpu"), ("batch_size", 16), ("precision", "fp32"),
                                        ("eval_batch_size", 8), ("log_every", 1), ("augment", "flip")])
def test_run_wide_keys_are_refused_under_a_task(key, value):
    [(where, message)] = problems(with_task_training(sequence(), 1, {key: value}))
    assert where == f"tasks[1].training.{key}"
    assert f"training.{key}" in message and "not per task" in message and "lr" in message


def test_task_training_is_checked_as_the_sequence_s():
    assert problems(with_task_training(sequence(), 0, {"lr": 0})) == [
        ("tasks[0].training.lr", "must be greater than 0, got 0")]
    assert problems(with_task_training(sequence(), 0, {"lrr": 1e-4})) == [
        ("tasks[0].training.lrr", "unknown key (did you mean `lr`?)")]
    assert problems(with_task_training(sequence(), 0, {"epochs": 2, "steps_per_task": 3}))[0][0] == "tasks[0].training"
    assert problems(with_task_training(sequence(), 0, {"label_smoothing": 1.0})) == [
        ("tasks[0].training.label_smoothing", "must be less than 1, got 1.0")]
    doc = sequence(probes=[{"name": "p", "dataset": "digits", "classes": [5, 6], "training": {"lr": 1e-3}}])
    assert problems(doc) == [("probes[0].training", "only a task is trained; a probe takes no `training`")]
    doc = copy.deepcopy(sequence())
    doc["tasks"][0]["model"] = {"family": "timm"}  # one model trains through every task
    [(where, message)] = problems(doc)
    assert where == "tasks[0].model" and "sequence's" in message


def test_config_yaml_records_a_task_s_own_keys_and_reads_back_the_same():
    seq = load_sequence(with_task_training(sequence(), 1, {"lr": 5e-5}))
    raw = yaml.safe_load(dump_sequence(seq))
    assert raw["tasks"][1]["training"] == {"lr": 5e-5} and "training" not in raw["tasks"][0]  # unset: left out
    again = load_sequence(raw)
    assert again == seq and again.task_training(1) == seq.task_training(1)


# ---- every loop trains each task with its settings -------------------------------------------------------

def test_each_task_trains_with_its_own_settings_in_both_loops_and_a_resume_compares_them(tmp_path, capsys):
    doc = with_task_training(sequence(methods=["finetune", "naive"]), 1, {"steps_per_task": 3, "lr": 1e-4,
                                                                          "label_smoothing": 0.1})
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    for name in ("finetune", "naive"):  # ours through Trainer.fit, Avalanche's through its template
        timings = json.loads((out / "recipe" / name / "metrics.json").read_text())["timings"]
        assert [t.get("train_steps", 0) for t in timings] == [0, 2, 3]
    recorded = yaml.safe_load((out / "recipe" / "config.yaml").read_text())
    assert recorded["tasks"][1]["training"] == {"steps_per_task": 3, "lr": 1e-4, "label_smoothing": 0.1}
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 0  # the same: complete
    capsys.readouterr()
    path.write_text(yaml.safe_dump(with_task_training(doc, 1, {"steps_per_task": 3, "lr": 2e-4,
                                                               "label_smoothing": 0.1})))
    assert main(["run", str(path), "--out", str(out), "--quiet", "--resume"]) == 2
    assert "tasks[1].training.lr" in capsys.readouterr().err


# ---- label smoothing ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setting():
    backbone, head, task = tiny_setting()
    with torch.no_grad():  # confident logits: smoothing then moves the loss far from plain cross-entropy
        head.linear.weight.mul_(50)
    return backbone, head, task


def first_ce(name: str, smoothing: float, setting) -> float:
    """The `ce` term on the first batch of method `name`, before any update, at this label smoothing."""
    backbone, head, task = setting
    model = TaskModel(copy.deepcopy(backbone), {"t": copy.deepcopy(head)}, freeze_batchnorm=True)
    trainer = Trainer(TrainingConfig(batch_size=16, steps_per_task=1, warmup_steps=0, label_smoothing=smoothing),
                      device=torch.device("cpu"), progress=False)
    context = methods.Context(tasks=[task], probes=[], references={}, templates={})
    method = methods.build(METHODS[name](), pretrained=backbone, context=context)
    torch.manual_seed(1)
    return method.fit_task(model, task, step=1, trainer=trainer).first_losses["ce"]


@pytest.mark.parametrize("name", ["finetune", "l2sp", "wise_ft", "lp_ft", "ldifs", "naive", "lwf"])
def test_every_method_s_cross_entropy_is_smoothed(name, setting):
    """Label smoothing ε makes the cross-entropy (1 - ε)·CE + ε·U of the same logits (U: against the uniform
    target): affine in ε, with U at least ln C. Plain CE at 0."""
    ce = {eps: first_ce(name, eps, setting) for eps in (0.0, 0.2, 0.4)}
    slope = (ce[0.2] - ce[0.0]) / 0.2
    assert ce[0.4] == pytest.approx(ce[0.0] + 0.4 * slope, rel=1e-4, abs=1e-5)
    assert ce[0.0] + slope >= torch.log(torch.tensor(3.0)).item() - 1e-4  # U = CE + slope
    assert abs(slope) > 1e-3  # it did change the term


def test_the_smoothed_term_is_torch_s_on_the_logits_the_method_made(setting):
    """Batch.ce is the task's cross-entropy with the task's smoothing; a term the method makes otherwise is
    left as it made it (a plugin's own `F.cross_entropy`, FLYP's contrastive loss)."""
    backbone, head, task = setting
    model = TaskModel(copy.deepcopy(backbone), {"t": copy.deepcopy(head)}, freeze_batchnorm=True)
    model.eval()  # no drop-connect: the logits seen here are those trained on
    seen = []

    def terms(model, batch):
        logits = model(batch.x, batch.task)
        seen.append((logits.detach(), batch.y))
        return {"ce": batch.ce(logits), "own": F.cross_entropy(logits, batch.y)}

    trainer = Trainer(TrainingConfig(batch_size=16, steps_per_task=1, label_smoothing=0.3), device=torch.device("cpu"),
                      progress=False)
    stats = trainer.fit(model, task, loss_terms=terms)
    logits, y = seen[0]
    assert stats.first_losses["ce"] == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.3).item(), rel=1e-6)
    assert stats.first_losses["own"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert stats.first_losses["ce"] != pytest.approx(stats.first_losses["own"], rel=1e-3)


# ---- ZSCL's random 80/20 split ------------------------------------------------------------------------------

def grey(path: Path, level: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), (level, level, level)).save(path, format="PNG")  # exact pixels, whatever the name


def eurosat(root: Path) -> Path:
    base = root / "eurosat" / "eurosat" / "2750"  # the archive's layout, as torchvision reads it
    for c, name in enumerate(["AnnualCrop", "Forest", "River"]):
        for i in range(7 + 3 * c):
            grey(base / name / f"{name}_{i + 1}.jpg", 10 + 8 * (c * 10 + i))
    return root


def caltech101(root: Path) -> Path:
    base = root / "caltech101" / "caltech101" / "101_ObjectCategories"
    for c, name in enumerate(["Faces_easy", "accordion", "BACKGROUND_Google"]):
        for i in range(9 - 2 * c):
            grey(base / name / f"image_{i + 1:04d}.jpg", 10 + 8 * (c * 10 + i))
    return root


@pytest.mark.parametrize("dataset, write, cls", [("eurosat", eurosat, "EuroSAT"), ("caltech101", caltech101, "Caltech101")])
def test_random_split_is_zscl_s(tmp_path, dataset, write, cls):
    import torchvision.datasets

    root = write(tmp_path)
    spec = DataSpec(name="t", dataset=dataset, split={"random": 0.8, "seed": 42})
    try:
        task = tasks.load_task(spec, image_size=8, data_root=root, seed=0)
        fixed = tasks.load_task(DataSpec(name="t", dataset=dataset), image_size=8, data_root=root, seed=0)
    finally:
        tasks.clear_cache()
    # ZSCL: torch's random_split of torchvision's dataset, [int(0.8 n), rest], generator seeded 42
    whole = getattr(torchvision.datasets, cls)(root / dataset)
    n = len(whole)
    train, test = torch.utils.data.random_split(range(n), [int(0.8 * n), n - int(0.8 * n)],
                                                generator=torch.Generator().manual_seed(42))

    def levels(indices) -> list[int]:
        return sorted(whole[i][0].convert("L").getpixel((0, 0)) for i in indices)

    def ours(split) -> list[int]:
        return sorted(int(v) for v in split.images[:][:, 0, 0, 0])

    assert ours(task.train) == levels(train.indices) and ours(task.test) == levels(test.indices)
    assert len(task.train.labels) == int(0.8 * n)
    assert ours(task.train) != ours(fixed.train)  # not the catalog's per-class split
    assert sorted(ours(task.train) + ours(task.test)) == sorted(ours(fixed.train) + ours(fixed.test))


def test_sun397_splits_at_random_in_sorted_file_order(tmp_path):
    base = tmp_path / "sun397" / "SUN397"
    classes = ["a/abbey", "b/bakery/shop"]
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("".join(f"/{c}\n" for c in classes))
    files = []
    for c, name in enumerate(classes):
        for i in range(6):
            files.append((f"{name}/sun_{'abcdef'[i]}{c}.jpg", 10 + 8 * (c * 6 + i)))
            grey(base / files[-1][0], files[-1][1])
    spec = DataSpec(name="t", dataset="sun397", split={"random": 0.75, "seed": 7})
    try:
        task = tasks.load_task(spec, image_size=8, data_root=tmp_path, seed=0)
    finally:
        tasks.clear_cache()
    order = sorted(files)  # by path: rglob's order is the file system's
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(7)).tolist()
    expected = sorted(order[i][1] for i in perm[:9])
    assert sorted(int(v) for v in task.train.images[:][:, 0, 0, 0]) == expected


def test_a_random_split_only_where_the_dataset_ships_none():
    doc = sequence()
    doc["tasks"][0]["split"] = {"random": 0.8, "seed": 42}
    [(where, message)] = problems(doc)
    assert where == "tasks[0].split" and "eurosat, caltech101, sun397" in message and "digits" in message
    doc["tasks"][0].update(dataset="eurosat", classes=None, split={"random": 0.8})
    assert problems(doc)[0] == ("tasks[0].split.seed", "required key is missing")


# ---- the shipped sequences ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mtil-order-1", "mtil-order-2"])
def test_mtil_sequences_are_zscl_s_recipe(name):
    seq = load_sequence(ROOT / "sequences" / f"{name}.yaml")
    assert seq.training.label_smoothing == 0.2
    lr = {t.dataset: seq.task_training(i).lr for i, t in enumerate(seq.tasks)}
    assert {d for d, v in lr.items() if v == 5e-5} == {"fgvc_aircraft", "mnist"}
    assert all(v == 1e-5 for d, v in lr.items() if d not in ("fgvc_aircraft", "mnist"))
    splits = {t.dataset: t.split for t in seq.tasks if t.split is not None}
    assert set(splits) == {"caltech101", "eurosat", "sun397"}
    assert all((s.random, s.seed) == (0.8, 42) for s in splits.values())
