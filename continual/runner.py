"""Run a sequence: for each method, for each task, fit then evaluate everything, writing files each step."""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from continual import data, models
from continual.config import ConfigError, Sequence, dump_sequence
from continual.data import TaskData
from continual.evaluate import Evaluation, evaluate
from continual.methods import METHODS
from continual.models import Backbone, Head, TaskModel
from continual.report import write_report
from continual.results import RunLock, atomic_write, record_failure, write_step
from continual.train import Trainer


@dataclass
class Loaded:
    """Everything a run needs that can fail on bad input, loaded before any file is written."""

    backbone: Backbone
    tasks: list[TaskData]
    probes: list[TaskData]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_inputs(seq: Sequence, *, source: str, device: torch.device) -> Loaded:
    """Model and data, or a ConfigError naming the key at fault."""
    try:
        backbone = models.build_backbone(seq.model).to(device)
    except models.ModelError as err:
        raise ConfigError(source, [(f"model.{err.key}", err.message)]) from None
    loaded = {}
    for group in ("tasks", "probes"):
        loaded[group] = []
        for i, spec in enumerate(getattr(seq, group)):
            try:
                loaded[group].append(data.load_task(spec, image_size=backbone.image_size, data_root=seq.root,
                                                    seed=seq.seed, download=seq.download))
            except data.DataError as err:
                key = f"{group}[{i}].{err.key}" if err.key else f"{group}[{i}]"
                raise ConfigError(source, [(key, err.message)]) from None
    return Loaded(backbone=backbone, tasks=loaded["tasks"], probes=loaded["probes"])


def run_sequence(seq: Sequence, *, out: str | Path = "reports", methods: list[str] | None = None,
                 source: str = "<sequence>", progress: bool = True) -> Path:
    """Run every method of `seq` (or only `methods`) and return the run folder <out>/<seq.name>."""
    names = methods or [m.name for m in seq.methods]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError("--methods", [(n, f"unknown method (known: {', '.join(METHODS)})") for n in unknown])
    for name in names:  # methods named only on the command line get their default options, validated too
        seq.method(name).parsed()
    device = resolve_device(seq.training.device)
    inputs = load_inputs(seq, source=source, device=device)

    folder = Path(out) / seq.name
    folder.mkdir(parents=True, exist_ok=True)
    with RunLock(folder):
        atomic_write(folder / "config.yaml", dump_sequence(seq))
        start = Start.measure(seq, inputs, device=device)
        failed = {}
        for name in names:
            try:
                run_method(seq, name, inputs, start, folder=folder / name, device=device, progress=progress)
            except FloatingPointError as err:  # this method diverged; the others still run
                failed[name] = str(err)
                record_failure(folder / name, str(err))
                warnings.warn(f"{name} failed: {err}", stacklevel=2)
        _report(folder)
    if failed:
        raise MethodsFailed(folder, failed)
    return folder


class MethodsFailed(Exception):
    """Some methods stopped with an error; the others finished and every file is written."""

    def __init__(self, folder: Path, errors: dict[str, str]):
        self.folder, self.errors = folder, errors
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in errors.items()))


def _report(folder: Path) -> None:
    """index.html, summary.md, summary.csv of the run folder, redrawn after every step (~1 s: only the
    figures whose numbers changed are drawn again). A report that fails warns instead of stopping the
    run: the results are on disk and `continual report` can draw it again."""
    try:
        write_report([folder], record_environment=True)
    except Exception as err:  # noqa: BLE001 - hours of training outweigh a figure
        warnings.warn(f"{folder}: report not written: {type(err).__name__}: {err}", stacklevel=2)


@dataclass
class Start:
    """Step 0, the same for every method: the pre-trained model with its initial heads, and its scores."""

    model: TaskModel
    evaluation: Evaluation
    zero_shot_probes: dict[str, Head] | None
    seconds: float

    @classmethod
    def measure(cls, seq: Sequence, inputs: Loaded, *, device: torch.device) -> Start:
        began = time.perf_counter()
        model = TaskModel(copy.deepcopy(inputs.backbone), freeze_batchnorm=seq.training.batchnorm == "frozen").to(device)
        for task_name, head in _initial_heads(seq, model.backbone, inputs.tasks).items():
            model.heads[task_name] = head.to(device)
        zero_shot_probes = None
        if seq.model.family == "open_clip":  # text heads: fixed, since the text tower is never trained
            zero_shot_probes = {p.name: models.zero_shot_head(model.backbone, p.class_names).to(device)
                                for p in inputs.probes}
        evaluation = evaluate(model, inputs.tasks, inputs.probes, learned=0, head_init=seq.model.head_init,
                              zero_shot_probes=zero_shot_probes, batch_size=seq.training.eval_batch_size,
                              device=device)
        return cls(model, evaluation, zero_shot_probes, time.perf_counter() - began)


def _initial_heads(seq: Sequence, backbone: Backbone, tasks: list[TaskData]) -> dict[str, Head]:
    """Heads that exist from step 0: zero-shot text heads, or seeded random ones. Linear-probe heads are
    fit by the evaluation of the step before their task starts instead (see `evaluate`)."""
    heads = {}
    for i, task in enumerate(tasks):
        if seq.model.head_init == "zero_shot":
            heads[task.name] = models.zero_shot_head(backbone, task.class_names)
        elif seq.model.head_init == "random":
            torch.manual_seed(seq.seed * 1009 + i)
            heads[task.name] = Head(backbone.feature_dim, len(task.class_names), normalize=backbone.normalize_features)
    return heads


def run_method(seq: Sequence, name: str, inputs: Loaded, start: Start, *, folder: Path, device: torch.device,
               progress: bool = True) -> None:
    tasks, probes = inputs.tasks, inputs.probes
    model = copy.deepcopy(start.model)
    method = METHODS[name](seq.method(name).parsed(), pretrained=inputs.backbone)
    trainer = Trainer(seq.training, device=device, progress=progress)
    task_names = [t.name for t in tasks]

    result = start.evaluation
    rows = [result.row]
    timings = [{"step": 0, "fit_seconds": 0.0, "eval_seconds": start.seconds}]
    write_step(folder, method=name, rows=rows, tasks=task_names, n_steps=len(tasks), timings=timings)
    _report(folder.parent)
    for step, task in enumerate(tasks, start=1):
        if task.name in result.future_heads:  # linear_probe: the head fit on the features as they are now
            model.heads[task.name] = copy.deepcopy(result.future_heads[task.name])
        # Seed per step, not once per method: each step's randomness (shuffling, dropout) then depends
        # only on (seed, step), whichever methods ran before.
        torch.manual_seed(seq.seed * 1009 + step)
        stats = method.fit_task(model, task, step=step, trainer=trainer)
        began = time.perf_counter()
        result = evaluate(model, tasks, probes, learned=step, head_init=seq.model.head_init,
                          zero_shot_probes=start.zero_shot_probes, batch_size=seq.training.eval_batch_size,
                          device=device)
        rows.append(result.row)
        timings.append({"step": step, "fit_seconds": stats.seconds, "eval_seconds": time.perf_counter() - began,
                        "train_steps": stats.steps, "losses": stats.losses, **stats.extra})
        write_step(folder, method=name, rows=rows, tasks=task_names, n_steps=len(tasks), timings=timings)
        _report(folder.parent)
