"""Run a sequence: for each method, for each task, fit then evaluate everything, writing files each step."""

from __future__ import annotations

import contextlib
import copy
import json
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from continual import checkpoints, data, models
from continual.config import ConfigError, Sequence, dump_sequence
from continual.data import TaskData
from continual.evaluate import Evaluation, evaluate
from continual.methods import METHODS
from continual.models import Backbone, Head, TaskModel
from continual.report import write_report
from continual.results import RunLock, atomic_write, record_failure, write_step
from continual.train import Trainer, use_bf16


@dataclass
class Loaded:
    """Everything a run needs that can fail on bad input, loaded before any file is written."""

    backbone: Backbone
    tasks: list[TaskData]
    probes: list[TaskData]


def resolve_device(name: str, *, source: str = "<sequence>") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(source, [("training.device", f"{name} asked for, but this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s); use auto or cpu")])
    return device


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
                 source: str = "<sequence>", progress: bool = True, resume: bool = False,
                 overwrite: bool = False) -> Path:
    """Run every method of `seq` (or only `methods`) and return the run folder <out>/<seq.name>.

    A folder that already holds a run is refused unless `resume` (continue each method from its newest
    checkpoint; the sequence must be the same) or `overwrite` (discard it and start again)."""
    names = methods or [m.name for m in seq.methods]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError("--methods", [(n, f"unknown method (known: {', '.join(METHODS)})") for n in unknown])
    for name in names:  # methods named only on the command line get their default options, validated too
        seq.method(name).parsed()
    if resume and overwrite:
        raise ConfigError("--resume", [("", "--resume and --overwrite exclude each other")])
    folder = Path(out) / seq.name
    for path in (folder, *folder.parents):  # refuse before loading anything if a file is in the way
        if path.exists():
            if not path.is_dir():
                raise ConfigError("--out", [(str(out), f"{path} is a file; expected a folder for the results")])
            break
    device = resolve_device(seq.training.device, source=source)
    inputs = load_inputs(seq, source=source, device=device)

    folder.mkdir(parents=True, exist_ok=True)
    with RunLock(folder):
        _claim(folder, seq, resume=resume, overwrite=overwrite)
        atomic_write(folder / "config.yaml", dump_sequence(seq))
        start = Start.resume(folder, inputs, freeze_batchnorm=seq.training.batchnorm == "frozen") if resume else None
        if start is None:
            start = Start.measure(seq, inputs, device=device)
            start.save(folder, inputs)
        failed = {}
        report = Reporter(folder)
        for name in names:
            try:
                run_method(seq, name, inputs, start, folder=folder, device=device, progress=progress, resume=resume,
                           report=report)
            except FloatingPointError as err:  # this method diverged; the others still run
                failed[name] = str(err)
                record_failure(folder / name, str(err))
                warnings.warn(f"{name} failed: {err}", stacklevel=2)
        report.draw()
    if failed:
        raise MethodsFailed(folder, failed)
    return folder


class RunExists(Exception):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


def _claim(folder: Path, seq: Sequence, *, resume: bool, overwrite: bool) -> None:
    """Make `folder` ours for this run (called holding its lock): nothing computed is discarded unless
    asked, and a resume must be of the same sequence (except `keep_checkpoints`)."""
    config = folder / "config.yaml"
    if not config.exists():
        return  # a new run (or one killed before its first file): nothing to keep
    if overwrite:
        for entry in folder.iterdir():
            if entry.name != ".lock":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return
    if not resume:
        raise RunExists(f"{folder} already holds a run of '{seq.name}' ({_progress(folder)}); "
                        "add --resume to continue it, --overwrite to discard it, or choose another --out")
    try:
        on_disk = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(str(config), [("", f"cannot be read to check the resume ({err})")]) from None
    now = yaml.safe_load(dump_sequence(seq))
    differ = [(key, f"was {a!r} in this run, is {b!r} now") for key, a, b in _differences(on_disk, now)
              if key != "keep_checkpoints"]
    if differ:
        raise ConfigError(str(config), differ + [("", "resume needs the sequence the run was started with; "
                                                      "use --overwrite to start again with this one")])


def _differences(a, b, prefix: str = "") -> list[tuple[str, object, object]]:
    """Key paths (`training.lr`, `tasks[1].classes`) where two YAML trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a + b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [(prefix, a, b)]


def _progress(folder: Path) -> str:
    done = []
    for path in sorted(folder.glob("*/metrics.json")):
        try:
            doc = json.loads(path.read_text())
            done.append(f"{path.parent.name} {doc['steps_done']}/{doc['steps_total']} steps")
        except (OSError, ValueError, KeyError):
            done.append(f"{path.parent.name} unreadable")
    return ", ".join(done) or "no step finished yet"


class MethodsFailed(Exception):
    """Some methods stopped with an error; the others finished and every file is written."""

    def __init__(self, folder: Path, errors: dict[str, str]):
        self.folder, self.errors = folder, errors
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in errors.items()))


@dataclass
class Reporter:
    """index.html, summary.md and summary.csv of the run folder, redrawn while the run goes: after a step
    when `every` seconds have passed since the last drawing, and always at the end. A drawing takes
    ~1.4 s; after every step it cost 20 of the default sequence's 430 s. Each method's own files (matrix,
    metrics, curves) are still rewritten after every step. A report that fails warns instead of stopping
    the run: the results are on disk and `continual report` can draw it again."""

    folder: Path
    every: float = 120.0
    _last: float = float("-inf")

    def step(self) -> None:
        if time.perf_counter() - self._last >= self.every:
            self.draw()

    def draw(self) -> None:
        try:
            write_report([self.folder], record_environment=True)
        except Exception as err:  # noqa: BLE001 - hours of training outweigh a figure
            warnings.warn(f"{self.folder}: report not written: {type(err).__name__}: {err}", stacklevel=2)
        self._last = time.perf_counter()


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
                              device=device, bf16=use_bf16(seq.training, device))
        return cls(model, evaluation, zero_shot_probes, time.perf_counter() - began)

    def save(self, folder: Path, inputs: Loaded) -> None:
        """checkpoints/start.pt: the heads and scores (the backbone is the pre-trained one, rebuilt from
        the sequence on resume and checked against this fingerprint)."""
        checkpoints.save(folder / "checkpoints" / "start.pt", {
            "format": checkpoints.FORMAT, "step": 0, "backbone": checkpoints.fingerprint(inputs.backbone),
            "heads": checkpoints.heads_state(self.model.heads), "row": self.evaluation.row,
            "future_heads": checkpoints.heads_state(self.evaluation.future_heads),
            "zero_shot_probes": None if self.zero_shot_probes is None else checkpoints.heads_state(self.zero_shot_probes),
            "seconds": self.seconds})

    @classmethod
    def resume(cls, folder: Path, inputs: Loaded, *, freeze_batchnorm: bool) -> Start | None:
        path = folder / "checkpoints" / "start.pt"
        if not path.exists():
            return None  # killed before step 0 was saved: measure it again
        state = checkpoints.load(path, expect={"step": 0, "backbone": checkpoints.fingerprint(inputs.backbone)})
        device = next(inputs.backbone.parameters()).device
        model = TaskModel(copy.deepcopy(inputs.backbone), freeze_batchnorm=freeze_batchnorm)
        model.heads.update(checkpoints.build_heads(state["heads"], device=device))
        zero_shot = state["zero_shot_probes"]
        return cls(model, Evaluation(state["row"], checkpoints.build_heads(state["future_heads"], device=device)),
                   None if zero_shot is None else checkpoints.build_heads(zero_shot, device=device), state["seconds"])


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


def seed_step(seed: int, step: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random for one step. Per step, not once per method: a step's
    randomness (shuffling, dropout, replay sampling) then depends only on (seed, step), whichever methods
    ran before it and whether the run was resumed in between."""
    value = seed * 1009 + step
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def run_method(seq: Sequence, name: str, inputs: Loaded, start: Start, *, folder: Path, device: torch.device,
               progress: bool = True, resume: bool = False, report: Reporter | None = None) -> None:
    """Train `name` on every task in turn, evaluating everything after each step. `folder` is the run's:
    results go to <folder>/<name>/, checkpoints to <folder>/checkpoints/<name>/."""
    tasks, probes = inputs.tasks, inputs.probes
    results, saved = folder / name, folder / "checkpoints" / name
    model = copy.deepcopy(start.model)
    method = METHODS[name](seq.method(name).parsed(), pretrained=inputs.backbone)
    scratch = folder / "cache" / name  # large recomputable files (LDIFS's anchor taps on disk), removed at the end
    trainer = Trainer(seq.training, device=device, progress=progress, scratch=scratch)
    task_names = [t.name for t in tasks]

    def write(rows, timings):
        write_step(results, method=name, rows=rows, tasks=task_names, n_steps=len(tasks), timings=timings)
        if report is not None:
            report.step()

    result = start.evaluation
    rows = [result.row]
    timings = [{"step": 0, "fit_seconds": 0.0, "eval_seconds": start.seconds}]
    done = 0
    if resume:
        resumed = _resume_method(saved, name=name, model=model, method=method, trainer=trainer, n_steps=len(tasks))
        if resumed is not None:
            done, rows, timings, result = resumed
            if progress:
                print(f"{name}: resuming after step {done}/{len(tasks)}", file=sys.stderr)
    write(rows, timings)  # rewritten from the checkpoint: a kill may have come before the files
    try:
        for step, task in enumerate(tasks[done:], start=done + 1):
            if task.name in result.future_heads:  # linear_probe: the head fit on the features as they are now
                model.heads[task.name] = copy.deepcopy(result.future_heads[task.name])
            seed_step(seq.seed, step)
            stats = method.fit_task(model, task, step=step, trainer=trainer)
            began = time.perf_counter()
            result = evaluate(model, tasks, probes, learned=step, head_init=seq.model.head_init,
                              zero_shot_probes=start.zero_shot_probes, batch_size=seq.training.eval_batch_size,
                              device=device, bf16=use_bf16(seq.training, device))
            rows.append(result.row)
            timings.append({"step": step, "fit_seconds": stats.seconds, "eval_seconds": time.perf_counter() - began,
                            "train_steps": stats.steps, "losses": stats.losses, **stats.extra})
            if seq.keep_checkpoints > 0:
                checkpoints.save(checkpoints.step_path(saved, step), {
                    "format": checkpoints.FORMAT, "method": name, "step": step, **checkpoints.model_state(model),
                    "method_state": method.state_dict() if hasattr(method, "state_dict") else {},
                    "future_heads": checkpoints.heads_state(result.future_heads), "rows": rows, "timings": timings})
            write(rows, timings)
            checkpoints.prune(saved, keep=seq.keep_checkpoints)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            scratch.parent.rmdir()  # `cache/`, once no method uses it


def _resume_method(saved: Path, *, name: str, model: TaskModel, method, trainer: Trainer, n_steps: int):
    """Load the newest checkpoint of one method into `model` and `method`; (step, rows, timings, evaluation)
    or None when there is none. A checkpoint that cannot be used is an error, never silently skipped."""
    steps = checkpoints.steps_on_disk(saved)
    if not steps:
        return None
    step = steps[-1]
    path = checkpoints.step_path(saved, step)
    state = checkpoints.load(path, expect={"method": name, "step": step})
    if step > n_steps:
        raise checkpoints.CheckpointError(path, f"is after step {step}, but the sequence has {n_steps} tasks")
    try:
        checkpoints.load_model(model, state)
        if hasattr(method, "load_state_dict"):
            method.load_state_dict(state["method_state"], model=model, trainer=trainer)
        future_heads = checkpoints.build_heads(state["future_heads"], device=next(model.parameters()).device)
    except (KeyError, RuntimeError, ValueError) as err:
        raise checkpoints.CheckpointError(path, f"does not fit this run's model or method "
                                                f"({type(err).__name__}: {checkpoints.first_line(err)})") from None
    return step, state["rows"], state["timings"], Evaluation(state["rows"][-1], future_heads)
