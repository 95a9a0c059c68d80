"""TensorBoard scalars (issue #15): per optimiser step from both training loops (Trainer.fit and Avalanche's),
per step from the accuracy matrix, in each method's folder, continued by a resume without duplicates; read back
as TensorBoard's two readers read them."""

import json
import shutil

import pandas as pd
import pytest
import torch

import continual
from continual import runner
from continual.config import load_sequence
from continual.monitor import Events, MonitorWarning
from continual.runner import run_sequence
from continual.train import Trainer
from helpers import digits, tiny_sequence

SEQ = tiny_sequence(
    seed=0,
    # 24 images in batches of 4: 6 optimiser steps a task, read at the 4th and 6th (LOG_EVERY below)
    tasks=[digits("a", [0, 1], 12, 6), digits("b", [2, 3], 12, 6)],
    probes=[digits("p", [8, 9], 6, 6)],
    training={"batch_size": 4, "warmup_steps": 3, "lr": 1.0e-4, "log_every": 4},
    methods=["frozen", {"ldifs": {"lambda": 10}}, {"ewc": {"lambda": 100}}],
)
LOG_EVERY = SEQ["training"]["log_every"]  # under an epoch (6 steps): an epoch's points are a window of 4 steps, then one of 2
STEPS = [4, 6, 10, 12]  # the points of each task, in optimiser steps over the sequence
TERMS = {"ldifs": ["ce", "ldifs"], "ewc": ["ce", "ewc"]}  # Trainer.fit's, Avalanche's


def python_reader(folder):
    """{tag: [(step, value)]} as TensorBoard's Python reader (EventAccumulator, `--load_fast=false`) keeps them."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: every point
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def raw_points(folder):
    """[(tag, step, value)] of every point ever written, the event files in name order (their start)."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    return [(value.tag, event.step, value.simple_value) for path in sorted(folder.glob("events.out.tfevents.*"))
            for event in LegacyEventFileLoader(str(path)).Load() for value in event.summary.value]


def rust_reader(folder):
    """{tag: [(step, value)]} as TensorBoard's Rust reader (its default) keeps them: a point at step s replaces
    the tag's points at steps >= s (tensorboard/data/server/reservoir.rs, StageReservoir::preempt)."""
    series = {}
    for tag, step, value in raw_points(folder):
        series[tag] = [p for p in series.get(tag, []) if p[0] < step] + [(step, value)]
    return series


def every_file(folder):
    return {p.name: p.read_bytes() for p in folder.glob("events.out.tfevents.*")}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """frozen, then ldifs stopped by Ctrl-C at the 5th step of its second task (after its point at step 10
    is written), then resumed from step 1's checkpoint: (run folder, frozen's event files before the resume,
    ldifs's points before the resume)."""
    out = tmp_path_factory.mktemp("resumed")
    seq = load_sequence({**SEQ, "methods": ["frozen", "ldifs"]})
    adamw_step, calls = torch.optim.AdamW.step, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return adamw_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as stop:
        stop.setattr(torch.optim.AdamW, "step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_sequence(seq, out=out, progress=True)  # bars on here, off below: read alike
    folder = out / "tiny"
    before = every_file(folder / "frozen"), raw_points(folder / "ldifs")
    run_sequence(seq, out=out, progress=False, resume=True)
    return folder, *before


@pytest.fixture(scope="module")
def folders(resumed, tmp_path_factory):
    """Each method's folder: ldifs (Trainer.fit) resumed, ewc (Avalanche's loop) in one go."""
    ewc = run_sequence(load_sequence({**SEQ, "methods": ["ewc"]}), out=tmp_path_factory.mktemp("ewc"),
                       progress=False)
    return {"ldifs": resumed[0] / "ldifs", "ewc": ewc / "ewc"}


def test_every_scalar_of_both_loops_is_written(folders):
    for method, terms in TERMS.items():
        points = python_reader(folders[method])
        assert points == rust_reader(folders[method])  # each point once, for both readers
        assert set(points) == ({f"loss/{t}" for t in terms} | {"lr", "images_per_second"}
                               | {"accuracy/a", "accuracy/b", "accuracy/probe:p", "metrics/average_accuracy",
                                  "metrics/forgetting", "metrics/bwt", "time/fit_seconds", "time/eval_seconds"})
        timings = json.loads((folders[method] / "metrics.json").read_text())["timings"]
        for tag in [f"loss/{t}" for t in terms] + ["lr", "images_per_second"]:
            # the second task's optimiser steps continue the first's, up to every step the method took
            assert [step for step, _ in points[tag]] == STEPS == sorted(set(STEPS)), (method, tag)
            assert STEPS[-1] == sum(t["train_steps"] for t in timings[1:]) == 12
        assert all(value > 0 for _, value in points["images_per_second"])


def test_loss_points_are_means_over_their_window(folders):
    """A point is its term's mean over the steps since the one before: weighted by those steps, a task's points
    average to the mean over its epoch that metrics.json records (to float32, TensorBoard's precision)."""
    for method, terms in TERMS.items():
        points = python_reader(folders[method])
        timings = json.loads((folders[method] / "metrics.json").read_text())["timings"]
        for term in terms:
            value = dict(points[f"loss/{term}"])
            for task, (four, six) in enumerate([(4, 6), (10, 12)], start=1):
                assert (4 * value[four] + 2 * value[six]) / 6 == pytest.approx(timings[task]["losses"][term],
                                                                                rel=1e-6, abs=1e-9), (method, term)
        ce = dict(points["loss/ce"])
        assert ce[4] != ce[6]  # two windows, not the epoch's running mean twice


def test_lr_is_the_schedule_of_the_step_taken(folders):
    trainer = Trainer(load_sequence(SEQ).training, device=torch.device("cpu"))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=SEQ["training"]["lr"])
    schedule = trainer.make_schedule(optimizer, 6)
    used = []  # the lr of each of a task's 6 steps
    for _ in range(6):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert used[3] != used[5]  # the 4th and 6th differ: the schedule moves
    for method in TERMS:
        assert [v for _, v in python_reader(folders[method])["lr"]] == pytest.approx([used[3], used[5]] * 2, rel=1e-6)


def test_each_step_writes_its_accuracy_matrix_row(folders):
    for method in TERMS:
        points = python_reader(folders[method])
        matrix = pd.read_csv(folders[method] / "accuracy_matrix.csv", index_col="step")
        assert list(matrix.columns) == ["a", "b", "probe:p"]
        for column in matrix.columns:
            assert [step for step, _ in points[f"accuracy/{column}"]] == [0, 1, 2]  # 0: the pre-trained model
            assert [v for _, v in points[f"accuracy/{column}"]] == pytest.approx(matrix[column].tolist(), abs=1e-6)
        steps = json.loads((folders[method] / "metrics.json").read_text())["steps"]
        assert dict(points["metrics/average_accuracy"]) == pytest.approx({s["step"]: s["average_accuracy"]
                                                                          for s in steps[1:]}, abs=1e-6)
        assert [step for step, _ in points["metrics/bwt"]] == [2]  # undefined before a second task: not written


def test_a_resumed_method_goes_on_from_its_checkpoint_without_duplicates(resumed):
    folder, frozen, killed = resumed
    # Ctrl-C came at the 11th step: the points before it are on disk (loss at 10 included), rows 0 and 1 too
    assert [step for tag, step, _ in killed if tag == "loss/ce"] == [4, 6, 10]
    assert [step for tag, step, _ in killed if tag == "accuracy/a"] == [0, 1]
    raw = [(tag, step) for tag, step, _ in raw_points(folder / "ldifs")]
    assert raw.count(("loss/ce", 10)) == 2 and raw.count(("loss/ce", 6)) == 1  # the killed run's point, then ours
    assert raw.count(("accuracy/a", 1)) == 1 and raw.count(("accuracy/a", 2)) == 1  # rows: each written once
    points = python_reader(folder / "ldifs")
    assert points == rust_reader(folder / "ldifs")  # both keep one point at 10, the resumed run's
    assert [step for step, _ in points["loss/ce"]] == STEPS
    # frozen was complete, so the resume kept it as it was: not one byte more; it trains nothing, so rows only
    assert every_file(folder / "frozen") == frozen and len(frozen) == 1
    frozen_points = python_reader(folder / "frozen")
    assert {tag.split("/")[0] for tag in frozen_points} == {"accuracy", "metrics", "time"}
    assert [step for step, _ in frozen_points["accuracy/a"]] == [0, 1, 2]


def test_overwrite_removes_the_event_files_and_no_tensorboard_writes_none(resumed, tmp_path):
    shutil.copytree(resumed[0], tmp_path / "tiny")
    assert every_file(tmp_path / "tiny" / "ldifs")
    run_sequence(load_sequence({**SEQ, "methods": ["frozen"]}), out=tmp_path, progress=False, overwrite=True,
                 tensorboard=False)
    assert (tmp_path / "tiny" / "frozen" / "accuracy_matrix.csv").exists()
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_a_resume_writes_the_rows_the_events_do_not_hold(tmp_path):
    """Which accuracy rows a resumed method writes again: a step's row goes to the events before its
    accuracy_matrix.csv, so the events hold the rows that file held before the resume (a kill between a checkpoint
    and its files leaves both without that step's row); none when there is no event file."""
    timings = [{"step": 0}, {"step": 1, "train_steps": 6}]
    assert Events.for_method(tmp_path, timings=timings, resume=True, rows_on_disk=2).next_row == 0  # no events yet
    (tmp_path / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    assert Events.for_method(tmp_path, timings=timings, resume=True, rows_on_disk=1).next_row == 1  # row 1 missing
    resumed = Events.for_method(tmp_path, timings=timings, resume=True, rows_on_disk=2)
    assert (resumed.next_row, resumed.purge_step, resumed.step) == (2, 7, 6)
    fresh = Events.for_method(tmp_path, timings=timings[:1], resume=False)  # purges what an --overwrite left
    assert (fresh.next_row, fresh.purge_step, fresh.step) == (0, 0, 0)


def test_a_writer_that_fails_warns_once_and_the_run_goes_on(tmp_path):
    (tmp_path / "file").write_text("a file where the method's folder would be")
    events = Events(tmp_path / "file" / "method")
    with pytest.warns(MonitorWarning) as caught:
        events.scalars({"lr": 1e-4}, step=1)
        events.rows([{"a": 0.5}, {"a": 1.0}], [{"step": 0}, {"step": 1, "fit_seconds": 1.0}], tasks=["a"])
        events.close()
    assert len(caught) == 1 and "TensorBoard events not written from here on" in str(caught[0].message)


def test_continual_run_and_the_cli_pass_tensorboard_on(tmp_path, monkeypatch):
    import yaml

    from continual.cli import main

    given = []
    monkeypatch.setattr(runner, "run_sequence", lambda seq, **how: given.append(how["tensorboard"]) or tmp_path)
    continual.run({**SEQ, "methods": ["frozen"]}, out=tmp_path)
    continual.run({**SEQ, "methods": ["frozen"]}, out=tmp_path, tensorboard=False)
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(SEQ))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet", "--no-tensorboard"]) == 0
    assert given == [True, False, True, False]


def test_a_resume_may_change_the_cadence(resumed, tmp_path):
    """training.log_every changes what is shown, not what is computed: a resume with another is not refused."""
    folder = shutil.copytree(resumed[0], tmp_path / "tiny")
    seq = load_sequence({**SEQ, "methods": ["frozen", "ldifs"], "training": {**SEQ["training"], "log_every": 1}})
    assert run_sequence(seq, out=tmp_path, progress=False, resume=True) == folder
    assert "log_every: 1" in (folder / "config.yaml").read_text()
