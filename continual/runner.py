"""Run a sequence: for each method, for each task, fit then evaluate everything, writing files each step."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from pydantic import ValidationError

from continual import checkpoints, distributed, export, methods, models, progress, seeds, trackers
from continual.config import ConfigError, DataSpec, Sequence, dump_sequence
from continual.datasets import DataError, prompts
from continual.datasets.tasks import TaskData, load_task
from continual.evaluate import Evaluation, auto_eval_batch, evaluate
from continual.methods import METHODS, NEEDS
from continual.methods.contract import Method
from continual.models import Backbone, Head, TaskModel, trainable
from continual.monitor import Events
from continual.out_folder import check_output
from continual.run_folder import METRICS, RunFolder
from continual.train import Trainer, use_bf16, use_compile

# What a resume may change besides keep_checkpoints and log_every: where the numbers are shown (trackers.KEYS).
LOGGING_KEYS = trackers.KEYS

# Called after each step's files are written: (method, step, number of steps). The CLI and
# `continual.run` draw the live report with it (continual/report/live.py); the runner draws nothing.
OnStep = Callable[[str, int, int], None]


@dataclass
class Loaded:
    """Everything a run needs that can fail on bad input, loaded before any file is written."""

    backbone: Backbone
    tasks: list[TaskData]
    probes: list[TaskData]
    references: list[TaskData]
    # training.eval_batch_size resolved once for the run (auto: evaluate.auto_eval_batch), by resolve_eval_batch
    eval_batch: int = 64
    # The heads of an exported model the sequence loads (model.pretrained naming its folder; docs/export.md), for
    # its tasks of the same names: they start from them, and are never probed before they are learned.
    heads: dict[str, Head] = field(default_factory=dict)


def resolve_eval_batch(seq: Sequence, inputs: Loaded, *, device: torch.device) -> int:
    """training.eval_batch_size as a number: the one given, else measured on the first task's test images."""
    size = seq.training.eval_batch_size
    if size != "auto":
        return size
    return auto_eval_batch(inputs.backbone, inputs.tasks[0].test.images[:16], device=device,
                           bf16=use_bf16(seq.training, device))


def resolve_device(name: str, *, source: str = "<sequence>") -> torch.device:
    if name == "auto":
        # Indexed (cuda:0, not cuda), so that a tensor's device compares equal to the run's.
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(source, [("training.device", f"{name} asked for, but this machine has "
                                   f"{torch.cuda.device_count()} CUDA device(s); use auto or cpu")])
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(source, [("training.device", "mps asked for, but this machine has no Apple GPU; "
                                                       "use auto or cpu")])
    return device


def load_inputs(seq: Sequence, *, source: str, device: torch.device, references: set[str] | None = None,
                show_progress: bool = False) -> Loaded:
    """Model and data, or a ConfigError naming the key at fault; of the `references:`, only those named in
    `references` (None: all of them), so a run without ZSCL needs no ImageNet on disk. `show_progress`: a
    bar over the model and the datasets (decoding a large one into the store shows its own)."""
    specs = [(group, i, spec) for group in ("tasks", "probes", "references") for i, spec in enumerate(getattr(seq, group))
             if not (group == "references" and references is not None and spec.name not in references)]
    with progress.bar(1 + len(specs), "loading", enabled=show_progress, unit="part") as shown:
        shown.set_postfix_str(f"model {seq.model.family}" + (f" {seq.model.arch}" if seq.model.arch else ""))
        try:
            backbone = models.build_backbone(seq.model)  # to the device after the data: decoding workers are
        except models.ModelError as err:                  # forked, and a fork is safest before CUDA starts
            raise ConfigError(source, [(f"model.{err.key}", err.message)]) from None
        loaded = {"tasks": [], "probes": [], "references": []}
        for group, i, spec in specs:
            shown.update(1)
            shown.set_postfix_str(f"{group[:-1]} {spec.name}: {spec.dataset}")
            try:
                loaded[group].append(load_task(spec, image_size=backbone.image_size, data_root=seq.root,
                                               seed=seq.seed, download=seq.download))
            except DataError as err:
                key = f"{group}[{i}].{err.key}" if err.key else f"{group}[{i}]"
                raise ConfigError(source, [(key, err.message)]) from None
        shown.update(1)
    heads = export.start_heads(seq, loaded["tasks"], feature_dim=backbone.feature_dim, source=source)
    return Loaded(backbone=backbone.to(device), tasks=loaded["tasks"], probes=loaded["probes"],
                  references=loaded["references"], heads={n: h.to(device) for n, h in heads.items()})


def prepare_data(seq: Sequence, *, source: str) -> None:
    """Decode and store every image the sequence's tasks and probes select (what `load_inputs` does at a
    run's start), so that runs start without decoding: `continual data prepare`."""
    began = time.perf_counter()
    inputs = load_inputs(seq, source=source, device=torch.device("cpu"), show_progress=True)  # the model: its input size
    for group, loaded in (("task", inputs.tasks), ("probe", inputs.probes), ("reference", inputs.references)):
        for task in loaded:
            images = task.train.images
            where = "in memory (an array, nothing to decode)" if images.home == "memory" else f"in {Path(images.home).parent}"
            print(f"{group} {task.name}: {task.dataset}, {len(task.train.labels):,} training and "
                  f"{len(task.test.labels):,} test images at {images.shape[-1]} px, {where}")
    print(f"ready in {time.perf_counter() - began:.1f} s; model input {inputs.backbone.image_size} px")


def check_needs(seq: Sequence, names: list[str], backbone: Backbone, *, source: str) -> None:
    """Refuse, before anything is written, a method whose needs this model cannot meet (methods.NEEDS)."""
    listed = [o.key for o in seq.methods]
    problems = []
    for name in names:
        key = f"methods[{listed.index(name)}]" if name in listed else "--methods"
        options = seq.method(name)
        method = options.name
        unmet = []
        for need in METHODS[method].NEEDS:
            try:
                MEETS[need](backbone)
            except models.ModelError as err:
                unmet.append((key, f"{method} needs {NEEDS[need]}: {err.message}"))
        problems += unmet
        if not unmet:  # options that name parts of the model (contract.Method.problems)
            problems += [(f"{key}.{method}" + (f".{option}" if option else ""), message)  # "": the entry itself
                         for option, message in methods.implementation(method).problems(options, backbone)]
    if problems:
        raise ConfigError(source, problems)


# How a backbone shows it meets each of methods.NEEDS: returns, or raises ModelError saying why not.
MEETS: dict[str, Callable[[Backbone], object]] = {
    "taps": lambda backbone: backbone.tap_names,
    "text": lambda backbone: models.text_tower(backbone),
}


def run_sequence(seq: Sequence, *, out: str | Path = "runs", methods: list[str] | None = None,
                 source: str = "<sequence>", progress: bool = True, resume: bool = False,
                 overwrite: bool = False, on_step: OnStep | None = None, tensorboard: bool = True) -> Path:
    """Run every method of `seq` (or only `methods`) and return the run folder <out>/<seq.name>.

    A folder that already holds a run is refused unless `resume` (continue each method from its newest
    checkpoint; the sequence must be the same) or `overwrite` (discard it and start again). `on_step`
    is called after every step's files are written. `tensorboard`: each method also writes TensorBoard
    scalars into its folder (continual/monitor.py); `seq.logging.trackers`: and logs to W&B, MLflow
    (continual/trackers.py)."""
    trackers.check_installed(seq.logging, source=source)  # a tracker asked for but not installed: before anything
    listed = [o.key for o in seq.methods]  # labels, else names
    names = methods or listed
    unknown = [n for n in names if n not in METHODS and n not in listed]
    if unknown:
        raise ConfigError("--methods", [(n, f"unknown method: neither an entry of the sequence ({', '.join(listed)}) "
                                            f"nor a known method ({', '.join(METHODS)})") for n in unknown])
    if resume and overwrite:
        raise ConfigError("--resume", [("", "--resume and --overwrite exclude each other")])
    try:  # a method named only by --methods runs with its defaults: it must have them
        added = [seq.method(n) for n in names if n not in listed]
    except ValidationError as err:
        raise ConfigError("--methods", [(str(e["loc"][0]) if e["loc"] else "", f"{e['msg']}: list the method in the "
                                         "sequence file with its options") for e in err.errors()]) from None
    run = RunFolder(Path(out) / seq.name)
    how = dict(source=source, progress=progress, resume=resume, overwrite=overwrite, on_step=on_step,
               tensorboard=tensorboard)
    if not distributed.launched():
        check_output(Path(out), seq.name)  # before loading anything: a folder we cannot write is said at once
        run.check_free(seq.name, resume=resume, overwrite=overwrite)  # and one that holds a run (claim checks again)
        return _run(seq, names, added, run=run, device=resolve_device(seq.training.device, source=source), **how)
    # torchrun: one run over several ranks (continual/distributed.py; docs/gpus.md, "Several GPUs in one run").
    with distributed.said_once():  # before anything is loaded or written
        refuse_single_process(seq, names, source=source)
        distributed.check_device(seq.training.device, source=source)
    device = distributed.start(seq.training.device, source=source)
    distributed.on_main(lambda: (check_output(Path(out), seq.name),
                                 run.check_free(seq.name, resume=resume, overwrite=overwrite)))
    try:
        folder = _run(seq, names, added, run=run, device=device, **how)
    except MethodsFailed:  # every rank got here alike: rank 0 says which failed
        distributed.stop()
        if not distributed.is_main():
            raise distributed.MainRankFailed(1) from None
        raise
    distributed.stop()
    return folder


def _run(seq: Sequence, names: list[str], added: list, *, run: RunFolder, device: torch.device, source: str,
         progress: bool, resume: bool, overwrite: bool, on_step: OnStep | None, tensorboard: bool) -> Path:
    """`run_sequence` once the output and the device are known, in one process or in each rank (there rank 0
    alone writes, and the other ranks wait for it where they need what it wrote)."""
    shared = distributed.active()
    main = distributed.is_main()
    wanted = {reference for n in names for reference in seq.method(n).references()}

    def load() -> Loaded:
        if main:
            return load_inputs(seq, source=source, device=device, references=wanted, show_progress=progress)
        with warnings.catch_warnings():  # rank 0 says them
            warnings.simplefilter("ignore")
            return load_inputs(seq, source=source, device=device, references=wanted)

    # Under torchrun, rank 0 first when loading may download (torchvision's datasets with `download: true`,
    # open_clip's weights): the others then read what it fetched (and leave quietly if it failed, having said
    # why). Else every rank at once: all that loading may write then is the image store, which locks its own
    # writes (datasets/store.py: a rank waits for the one decoding, then reads its rows).
    if seq.download or seq.model.family == "open_clip":
        inputs = distributed.main_first(load)
    else:
        with distributed.said_once():  # the same files for every rank: rank 0 says what is wrong with them
            inputs = load()
    with distributed.said_once():
        # model.trainable on a copy, here to refuse what the model cannot do before anything is written; a method's
        # problems are asked of the model it will train (Start.measure and Start.resume adapt their own alike).
        trained = inputs.backbone if seq.model.trainable.kind == "full" else trained_backbone(seq, inputs.backbone,
                                                                                                   source=source)
        check_needs(seq, names, trained, source=source)
        if shared:
            check_distributed(seq, names, inputs, device=device, source=source)
    if main and trained is not inputs.backbone:
        print(trainable.describe(trained), file=sys.stderr)
    del trained
    if shared and device.type == "cuda" and seq.training.batchnorm == "train":
        # Batch statistics over the whole batch, as one process computes them: every rank's share.
        inputs.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(inputs.backbone)
    inputs.eval_batch = resolve_eval_batch(seq, inputs, device=device)
    if main:
        print(plan(seq, names, inputs), file=sys.stderr)  # also with --quiet (no progress bars): one line

    # config.yaml records what runs: a method named only by --methods joins the file's list, with its defaults.
    ran = seq.model_copy(update={"methods": [*seq.methods, *added]})
    with contextlib.ExitStack() as held:
        def claim() -> set[str]:
            run.create()
            held.enter_context(run.lock())
            run.write_config(run.claim(dump_sequence(ran), resume=resume, overwrite=overwrite,
                                       may_differ=("keep_checkpoints", "keep_models", "training.log_every",
                                                   *LOGGING_KEYS)))
            # Finished methods are kept as they are by a resume; with nothing else to train, step 0 is neither
            # measured again nor its checkpoint rewritten.
            return {name for name in names if resume and _complete(run, name, n_steps=len(inputs.tasks))}

        complete = distributed.on_main(claim, share=True)
        start = None
        if complete != set(names):
            with distributed.said_once(checkpoints.CheckpointError):  # every rank reads the same file
                start = Start.resume(run, inputs, freeze_batchnorm=seq.training.batchnorm == "frozen",
                                     class_incremental=seq.one_head, all_classes=seq.setting == "x_tail",
                                     seq=seq) if resume else None
            if start is None:
                start = Start.measure(seq, inputs, device=device, show_progress=progress and main)
                distributed.on_main(lambda: start.save(run, inputs))
        failed = {}
        # W&B, MLflow: one tracker run per method, given the config as written (rank 0 logs)
        session = None
        if seq.logging.trackers and main:
            session = trackers.Session(seq.logging, sequence=seq.name, seed=seq.seed,
                                       config=yaml.safe_load(run.config.read_text()))
        for name in names:
            try:
                run_method(seq, name, inputs, start, run=run, device=device, progress=progress, resume=resume,
                           complete=name in complete, on_step=on_step, tensorboard=tensorboard, session=session)
            except FloatingPointError as err:  # this method diverged (on every rank alike); the others still run
                failed[name] = str(err)
                distributed.on_main(lambda: run.record_failure(name, failed[name]))
                if main:
                    warnings.warn(TrainingWarning(f"{name} failed: {err}"), stacklevel=3)
    if failed:
        raise MethodsFailed(run.path, failed)
    return run.path


def refuse_single_process(seq: Sequence, names: list[str], *, source: str) -> None:
    """Under torchrun, refuse (naming each and why) the methods that cannot be one run over several ranks
    (their options' DISTRIBUTED), before anything is loaded."""
    listed = [o.key for o in seq.methods]
    problems = []
    for name in names:
        method = seq.method(name).name
        why = methods.single_process(method)
        if why:
            key = f"methods[{listed.index(name)}]" if name in listed else "--methods"
            problems.append((key, f"{method} cannot run under torchrun ({distributed.world()} ranks): {why}; run it "
                                  "in a single process (without torchrun), or leave it out with --methods"))
    if problems:
        raise ConfigError(source, problems)


def check_distributed(seq: Sequence, names: list[str], inputs: Loaded, *, device: torch.device, source: str) -> None:
    """Refuse, before anything is written, what this model and data cannot do over several ranks."""
    t, ranks = seq.training, distributed.world()
    problems = []
    batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in inputs.backbone.modules())
    if t.batchnorm == "train" and batchnorm and device.type != "cuda":
        # torch's SyncBatchNorm refuses CPU tensors (torch/nn/modules/batchnorm.py, SyncBatchNorm.forward).
        problems.append(("training.batchnorm", f"train takes BatchNorm statistics from each batch, which the {ranks} "
                         "ranks would have to share (SyncBatchNorm), and torch shares them only between GPUs: set "
                         "training.batchnorm: frozen, or run on GPUs"))
    # Each rank trains on a share of every batch, so every batch needs an image per rank: the last one of an
    # epoch, shorter when the task's images are not a multiple of batch_size, too.
    sizes = [(f"task {task.name}", len(task.train.labels), seq.task_training(i)) for i, task in enumerate(inputs.tasks)]
    once = [n for n in names if seq.method(n).ONCE]  # joint: trains once, on every task together
    if once:
        sizes.append((f"{once[0]} (every task at once)", sum(n for _, n, _ in sizes), t))
    for what, n, training in sizes:  # each task's own steps (tasks[i].training); batch_size is the run's
        trainer = Trainer(training, device=torch.device("cpu"))
        smallest = min(t.batch_size, n)
        if trainer.total_steps(n) >= trainer.steps_per_epoch(n) and n % t.batch_size:  # the short batch is used
            smallest = n % t.batch_size
        if smallest < ranks:
            problems.append(("training.batch_size", f"{what}: {n} training images in batches of {t.batch_size} "
                             f"make a batch of {smallest}, fewer than the {ranks} ranks (each trains on its share of "
                             f"every batch): choose a batch_size of at least {ranks} that leaves a last batch of none "
                             f"or at least {ranks} images"))
    if problems:
        raise ConfigError(source, problems)


def plan(seq: Sequence, names: list[str], inputs: Loaded) -> str:
    """What the run will do, said before it starts: a setting that asks for years of training shows here."""
    t = seq.training
    steps = [Trainer(seq.task_training(i), device=torch.device("cpu")).total_steps(len(task.train.labels))
             for i, task in enumerate(inputs.tasks)]
    per_task = ", ".join(f"{task.name} {n:,}" for task, n in zip(inputs.tasks, steps))
    how = (f"{t.steps_per_task:,} steps" if t.steps_per_task is not None else f"{t.epochs} epoch{'s' * (t.epochs > 1)}")
    own = [task.name for task in seq.tasks if task.training is not None]
    own = f"; {', '.join(own)} with training settings of {'its' if len(own) == 1 else 'their'} own" if own else ""
    return (f"{seq.name}: {len(names)} method{'s' * (len(names) > 1)} x {len(steps)} tasks; {sum(steps):,} optimiser "
            f"steps per method ({per_task}; {how} of batch {t.batch_size}{own})")


class MethodsFailed(Exception):
    """Some methods stopped with an error; the others finished and every file is written."""

    def __init__(self, folder: Path, errors: dict[str, str]):
        self.folder, self.errors = folder, errors
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in errors.items()))


@dataclass
class Start:
    """Step 0, the same for every method: the pre-trained model with its initial heads, and its scores."""

    model: TaskModel
    evaluation: Evaluation
    zero_shot_probes: dict[str, Head] | None
    seconds: float

    @classmethod
    def measure(cls, seq: Sequence, inputs: Loaded, *, device: torch.device, show_progress: bool = False) -> Start:
        began = time.perf_counter()
        model = TaskModel(trained_backbone(seq, inputs.backbone), freeze_batchnorm=seq.training.batchnorm == "frozen",
                          class_incremental=seq.one_head, all_classes=seq.setting == "x_tail").to(device)
        for task_name, head in _initial_heads(seq, model.backbone, inputs.tasks).items():
            model.heads[task_name] = head.to(device)
        for task_name, head in inputs.heads.items():  # an exported model's, over zero-shot or random ones
            model.heads[task_name] = copy.deepcopy(head)
        model.heads.order([t.name for t in inputs.tasks])
        zero_shot_probes = None
        # Text heads of the shared text tower, which no method trains (FLYP trains a copy, and scores probes
        # with its own heads).
        if seq.model.family == "open_clip":
            zero_shot_probes = {p.name: _zero_shot_head(model.backbone, p, spec).to(device)
                                for p, spec in zip(inputs.probes, seq.probes, strict=True)}
        evaluation = evaluate(model, inputs.tasks, inputs.probes, learned=0, head_init=seq.model.head_init,
                              zero_shot_probes=zero_shot_probes, batch_size=inputs.eval_batch,
                              device=device, bf16=use_bf16(seq.training, device),
                              class_incremental=model.class_incremental, all_classes=model.all_classes,
                              show_progress=show_progress, given=set(inputs.heads),
                              compile=use_compile(seq.training, device))
        return cls(model, evaluation, zero_shot_probes, time.perf_counter() - began)

    def save(self, run: RunFolder, inputs: Loaded) -> None:
        """checkpoints/start.pt: the heads and scores (the backbone is the pre-trained one, rebuilt from
        the sequence on resume and checked against this fingerprint)."""
        checkpoints.save(run.start_checkpoint, {
            "format": checkpoints.FORMAT, "step": 0, "backbone": checkpoints.fingerprint(inputs.backbone),
            "heads": checkpoints.heads_state(self.model.heads), "row": self.evaluation.row,
            "future_heads": checkpoints.heads_state(self.evaluation.future_heads),
            "zero_shot_probes": None if self.zero_shot_probes is None else checkpoints.heads_state(self.zero_shot_probes),
            "seconds": self.seconds})

    @classmethod
    def resume(cls, run: RunFolder, inputs: Loaded, *, freeze_batchnorm: bool, class_incremental: bool,
               all_classes: bool = False, seq: Sequence | None = None) -> Start | None:
        """Step 0 from checkpoints/start.pt, None where there is none; `seq`: the sequence whose model.trainable and
        seed adapt the model as Start.measure did (None: the backbone as loaded, as `full`)."""
        path = run.start_checkpoint
        if not path.exists():
            return None  # killed before step 0 was saved: measure it again
        state = checkpoints.load(path, expect={"step": 0, "backbone": checkpoints.fingerprint(inputs.backbone)})
        device = next(inputs.backbone.parameters()).device
        backbone = copy.deepcopy(inputs.backbone) if seq is None else trained_backbone(seq, inputs.backbone)
        model = TaskModel(backbone, freeze_batchnorm=freeze_batchnorm,
                          class_incremental=class_incremental, all_classes=all_classes)
        model.heads.update(checkpoints.build_heads(state["heads"], device=device))
        zero_shot = state["zero_shot_probes"]
        return cls(model, Evaluation(state["row"], checkpoints.build_heads(state["future_heads"], device=device)),
                   None if zero_shot is None else checkpoints.build_heads(zero_shot, device=device), state["seconds"])


def trained_backbone(seq: Sequence, backbone: Backbone, *, source: str = "<sequence>") -> Backbone:
    """The backbone the run trains: a copy of the pre-trained `backbone` with `model.trainable` applied (continual/
    models/trainable.py; `full` leaves the copy as it is), or ConfigError naming the option the model cannot take.
    Methods are built with the pre-trained one, never this, so the anchors they copy of it stay un-adapted."""
    try:
        return trainable.apply(copy.deepcopy(backbone), seq.model.trainable, seed=seq.seed)
    except models.ModelError as err:
        raise ConfigError(source, [(f"model.{err.key}", err.message)]) from None


def _initial_heads(seq: Sequence, backbone: Backbone, tasks: list[TaskData]) -> dict[str, Head]:
    """Heads that exist from step 0: zero-shot text heads, or seeded random ones. Linear-probe heads are
    fit by the evaluation of the step before their task starts instead (see `evaluate`)."""
    heads = {}
    for i, task in enumerate(tasks):
        if seq.model.head_init == "zero_shot":
            heads[task.name] = _zero_shot_head(backbone, task, seq.tasks[i])
        elif seq.model.head_init == "random":
            torch.manual_seed(seeds.derive(seq.seed, "head", i))
            heads[task.name] = Head(backbone.feature_dim, len(task.class_names), normalize=backbone.normalize_features)
    return heads


def _zero_shot_head(backbone: Backbone, data: TaskData, spec: DataSpec) -> Head:
    """CLIP's text head for a task or probe: the literature's names of its classes, and the spec's
    templates, else its dataset's (continual/datasets/prompts.py)."""
    return models.zero_shot_head(backbone, prompts.readable_names(data.dataset, data.class_names),
                                 templates=spec.templates or prompts.templates(data.dataset))


def _context(seq: Sequence, inputs: Loaded) -> methods.Context:
    """The sequence's data, for the methods that see more than the task they train on."""
    specs = {(group, spec.name): spec for group in ("tasks", "probes", "references") for spec in getattr(seq, group)}
    templates = {(group, data.name): specs[group, data.name].templates or prompts.templates(data.dataset)
                 for group in ("tasks", "probes", "references") for data in getattr(inputs, group)}
    return methods.Context(tasks=inputs.tasks, probes=inputs.probes,
                           references={r.name: r for r in inputs.references}, templates=templates)


def seed_step(seed: int, step: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random for one step. Per step, not once per method: a step's
    randomness (shuffling, dropout, replay sampling) then depends only on (seed, step), whichever methods
    ran before it and whether the run was resumed in between."""
    value = seeds.derive(seed, "step", step)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def run_method(seq: Sequence, name: str, inputs: Loaded, start: Start | None, *, run: RunFolder, device: torch.device,
               progress: bool = True, resume: bool = False, complete: bool = False,
               on_step: OnStep | None = None, tensorboard: bool = True,
               session: trackers.Session | None = None) -> None:
    """Train `name` on every task in turn, evaluating everything after each step, writing into `run`.
    `complete`: it finished in `run` before (a resume), so it is kept as it is and `start` may be None.
    `tensorboard`: TensorBoard scalars too, in the method's folder (continual/monitor.py); `session`: the
    run's W&B and MLflow, given the same points (continual/trackers.py)."""
    tasks, probes = inputs.tasks, inputs.probes
    main = distributed.is_main()  # under torchrun, rank 0 alone prints and writes (`write`, `keep`)
    if complete:  # never retrained, whether or not checkpoints are kept
        if main:
            print(f"{name}: complete ({len(tasks)}/{len(tasks)} steps), kept as it is", file=sys.stderr)
            if on_step is not None:
                on_step(name, len(tasks), len(tasks))
        return
    model = copy.deepcopy(start.model)
    method = methods.build(seq.method(name), pretrained=inputs.backbone, context=_context(seq, inputs))
    scratch = run.cache(name)  # large recomputable files (LDIFS's anchor taps on disk), removed at the end
    trainer = Trainer(seq.training, device=device, progress=progress and main, scratch=scratch,
                      eval_batch_size=inputs.eval_batch,
                      log_every=seq.training.log_every)
    task_names = [t.name for t in tasks]

    def write(rows, timings):
        # TensorBoard's first (the rows not there yet, flushed): a row in the files is then in the events too
        if trainer.events is not None:
            trainer.events.rows(rows, timings, tasks=task_names)
        run.write_step(name, rows=rows, tasks=task_names, n_steps=len(tasks), timings=timings,
                       classes=[len(t.class_names) for t in tasks], setting=seq.setting)
        if on_step is not None:
            on_step(name, len(rows) - 1, len(tasks))

    def keep(step: int, rows, timings, result: Evaluation, state: dict) -> None:
        """A step's checkpoint (`state`: the method's state_dict), then its files (continual/checkpoints.py
        says why in this order)."""
        if seq.keep_checkpoints > 0:
            checkpoints.save(run.step_checkpoint(name, step), {
                "format": checkpoints.FORMAT, "method": name, "step": step, **checkpoints.model_state(model),
                "method_state": state,
                "future_heads": checkpoints.heads_state(result.future_heads), "rows": rows, "timings": timings})
        keep_model(step, rows)  # before the files: a method complete on disk has its model
        write(rows, timings)
        run.prune_checkpoints(name, keep=seq.keep_checkpoints)

    def keep_model(step: int, rows, *, missing_only: bool = False) -> None:
        """keep_models: the model after `step` in its family's format, with its heads and card (continual/export.py)
        into <method>/model/ (last: after the last step) or <method>/models/step-K/ (every_step)."""
        if seq.keep_models == "none" or (seq.keep_models == "last" and step < len(tasks)):
            return
        folder = run.model(name, step if seq.keep_models == "every_step" else None)
        if missing_only and folder.is_dir():
            return
        export.write(model, folder, replace=True,
                     card=export.card(seq, name, step=step, rows=rows, tasks=tasks, model=model))

    result = start.evaluation
    rows = [result.row]
    timings = [{"step": 0, "fit_seconds": 0.0, "eval_seconds": start.seconds}]
    done = 0
    if resume:
        with distributed.said_once(checkpoints.CheckpointError):  # every rank reads the same checkpoint
            resumed = _resume_method(run, name=name, model=model, method=method, trainer=trainer, n_steps=len(tasks))
        if resumed is not None:
            done, rows, timings, result = resumed
            if main:
                print(f"{name}: resuming after step {done}/{len(tasks)}", file=sys.stderr)
            # A kill between the step's checkpoint and its model: written now, from the checkpoint.
            distributed.on_main(lambda: keep_model(done, rows, missing_only=True))
    sinks = session.start(name, folder=run.method(name), resume=resume) if session is not None else []
    if (tensorboard or sinks) and main:  # its optimiser steps and rows go on from the checkpoint's
        try:
            trainer.events = Events.for_method(run.method(name), timings=timings, resume=resume,
                                               rows_on_disk=_rows_on_disk(run, name), tensorboard=tensorboard,
                                               trackers=sinks)
        except BaseException:  # the trackers' runs started above end, not left running
            for sink in sinks:
                sink.close(status="FAILED")
            raise
    options = seq.method(name)
    once = options.ONCE  # joint: trains at the last step only
    status = "FAILED"  # what the trackers' runs end as, unless the loop ends
    try:
        # Rewritten from the checkpoint: a kill may have come before the files.
        distributed.on_main(lambda: write(rows, timings))
        for step, task in enumerate(tasks[done:], start=done + 1):
            if task.name in result.future_heads:  # linear_probe: the head fit on the features as they are now
                model.heads[task.name] = copy.deepcopy(result.future_heads[task.name])
            model.heads.order([t.name for t in tasks])  # after an exported model's heads, held from step 0
            if once and step < len(tasks):  # nothing trained, nothing to score: an empty row, no checkpoint
                rows.append({column: math.nan for column in rows[0]})
                timings.append({"step": step, "fit_seconds": 0.0, "eval_seconds": 0.0, "train_steps": 0,
                                "skipped": f"{name} trains once, on every task together, at the last step"})
                distributed.on_main(lambda: write(rows, timings))
                continue
            seed_step(seq.seed, step)
            if trainer.events is not None:  # where this task's training points start: the steps trained so far
                trainer.events.step = sum(t.get("train_steps", 0) for t in timings)
            # The task's own settings over the sequence's (tasks[i].training); a method that trains once on every
            # task together (joint) trains with the sequence's.
            training = seq.training if once else seq.task_training(step - 1)
            _clear_gradients(model, method)  # what holds a gradient after fit_task is what it trained
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
            stats = method.fit_task(model, task, step=step, trainer=replace(
                trainer, training=training, label=f"{options.key} {step}:{task.name}"))
            # The report's costs (report/tables.py COSTS): the whole of fit_task (LDIFS's anchor cache, LP-FT's
            # probe too), where and on how many GPUs, the memory it took, what it trained, with which batch.
            cost = {"task_seconds": time.perf_counter() - began, "device": device.type,
                    "world_size": distributed.world() if distributed.active() else 1,
                    **({"peak_gpu_bytes": torch.cuda.max_memory_allocated(device)} if device.type == "cuda" else {}),
                    "trainable_parameters": trained_parameters(model, method), "batch_size": training.batch_size,
                    "eval_batch_size": inputs.eval_batch}
            began = time.perf_counter()
            # A method that trains the text tower (FLYP) scores probes zero-shot with its own text heads.
            zero_shot_probes = method.zero_shot_probes or start.zero_shot_probes
            result = evaluate(model, tasks, probes, learned=step, head_init=seq.model.head_init,
                              zero_shot_probes=zero_shot_probes, batch_size=inputs.eval_batch,
                              device=device, bf16=use_bf16(seq.training, device),
                              class_incremental=model.class_incremental, all_classes=model.all_classes,
                              show_progress=progress and main, given=set(inputs.heads),
                              compile=use_compile(seq.training, device))
            rows.append(result.row)
            timings.append({"step": step, "fit_seconds": stats.seconds, "eval_seconds": time.perf_counter() - began,
                            "train_steps": stats.steps, "losses": stats.losses,
                            "first_losses": stats.first_losses, **cost, **stats.extra})
            worse = learned_worse(before=rows[-2][task.name], after=rows[-1][task.name], n_test=len(task.test.labels))
            if worse:
                classes = sum(model.heads[t].linear.out_features for t in model.heads_up_to(task.name))
                cause = worse_cause(stats.first_ce, classes=classes)
                # The whole story in metrics.json; the console gets one line pointing there.
                timings[-1]["learned_worse"] = {"before": rows[-2][task.name], "after": rows[-1][task.name],
                                                **({"first_batch_ce": stats.first_ce, "cause": cause} if cause else {}),
                                                "message": _worse_message(name, task.name, rows, stats, training,
                                                                          classes=classes)}
                if main:
                    warnings.warn(TrainingWarning(_worse_line(name, task.name, rows, cause, step=step,
                                                              where=run.method(name) / METRICS)), stacklevel=2)
            state = method.state_dict()
            timings[-1]["method_state_bytes"] = tensor_bytes(state)  # what it carries to the next task
            distributed.on_main(lambda: keep(step, rows, timings, result, state))
        if trainer.events is not None:  # the trackers keep the method's files and the report as it stands
            trainer.events.files({"method": [run.method(name) / f for f in trackers.METHOD_FILES],
                                  "report": [run.path / f for f in trackers.REPORT_FILES]})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if trainer.events is not None:  # on disk, also when stopped by an error or Ctrl-C
            trainer.events.close(status=status)
        if main:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                scratch.parent.rmdir()  # `cache/`, once no method uses it


def _modules(model: TaskModel, method: Method) -> list[torch.nn.Module]:
    """The model and the modules a method holds of its own (FLYP's text tower, LDIFS's frozen anchor)."""
    return [model, *method.modules()]


def _clear_gradients(model: TaskModel, method: Method) -> None:
    for module in _modules(model, method):
        module.zero_grad(set_to_none=True)


def trained_parameters(model: TaskModel, method: Method) -> int:
    """Elements of the parameters that hold a gradient, in the model and the method's own modules, each once:
    after `_clear_gradients` and fit_task, what the step trained (the backbone and the task's head for
    fine-tuning, LDIFS, EWC; FLYP's text tower too; nothing for frozen), whichever loop trained it."""
    seen = {id(p): p for module in _modules(model, method) for p in module.parameters() if p.grad is not None}
    return sum(p.numel() for p in seen.values())


def tensor_bytes(state) -> int:
    """Bytes of the tensors in a method's state_dict (nested dicts, lists and tuples): what it keeps besides
    the model (EWC's parameters and importances, LwF's previous model, replay's buffer, FLYP's text tower)."""
    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


class TrainingWarning(UserWarning):
    """A run that goes on but whose numbers the user should not trust without a look."""


# The rule for "training made the task it just learned worse" (docs/learned-worse.md):
# after step k, task k scores more than WORSE_BY below the accuracy its head had when step k began (the
# linear probe on the features of step k-1, or the zero-shot or random head), and more than two standard
# errors of a test-set accuracy, so that a few test images flipping is not called a regression.
WORSE_BY = 0.05


def learned_worse(*, before: float, after: float, n_test: int) -> bool:
    noise = 2 * math.sqrt(max(before * (1 - before), 1e-12) / max(n_test, 1))
    return before - after > max(WORSE_BY, noise)


def worse_cause(first_ce: dict[str, float], *, classes: int) -> str | None:
    """What a task made worse by training most likely started from, read off its first batch before any
    update (FitStats.first_ce): "training_mode" when the model in training mode classified it worse than a
    uniform guess over `classes` (cross-entropy above ln C) while in eval mode it was well inside it (below
    ln C / 2): the loss the updates follow is then the noise of training mode (drop-connect, dropout,
    BatchNorm's batch statistics through the head), not the task (issue #23); "updates" when both modes
    agree the start was sound; None when not measured (a method with its own loop)."""
    if "train" not in first_ce or "eval" not in first_ce:
        return None
    chance = math.log(max(classes, 2))
    return "training_mode" if first_ce["train"] > chance and first_ce["eval"] < chance / 2 else "updates"


def _worse_line(method: str, task: str, rows: list[dict], cause: str | None, *, step: int, where: Path) -> str:
    """The console's one line for a task made worse by training: the numbers, the cause measured, and where
    `_worse_message`'s whole account is (metrics.json, the step's `learned_worse`)."""
    why = {"training_mode": "its first batch did worse than a guess in training mode, not in eval mode",
           "updates": "the updates did it: try a lower training.lr",
           None: "likely a learning rate too high for this few updates"}[cause]
    return (f"{method}: task '{task}' scored {rows[-1][task]:.3f} right after training on it, below the "
            f"{rows[-2][task]:.3f} of the head it started from; {why} (details: {where}, timings[{step}].learned_worse)")


def _worse_message(method: str, task: str, rows: list[dict], stats, training, *, classes: int) -> str:
    term = "ce" if "ce" in stats.losses else next(iter(stats.losses), None)  # FLYP's is its contrastive loss
    first, last = stats.first_losses.get(term), stats.losses.get(term)
    what = "its cross-entropy" if term == "ce" else f"its loss term '{term}'"
    updates = (f"{stats.steps} optimiser steps at lr {training.lr:g}, "
               f"{min(training.warmup_steps, max(stats.steps - 1, 0))} of them warm-up")
    said = (f"{method}: task '{task}' scored {rows[-1][task]:.3f} right after training on it, below the "
            f"{rows[-2][task]:.3f} of the head it started from")
    cause, ce = worse_cause(stats.first_ce, classes=classes), stats.first_ce
    if cause is not None:
        said += (f". Before any update its first batch had cross-entropy {ce['train']:.3g} in training mode and "
                 f"{ce['eval']:.3g} in eval mode (a uniform guess: {math.log(max(classes, 2)):.3g})")
        if last is not None:
            said += f"; {what} over the last epoch: {last:.3g}"
    elif first is not None and last is not None:
        said += f"; {what} went from {first:.3g} on the first batch to {last:.3g} over the last epoch"
    if cause == "training_mode":
        return (f"{said}. Training started from noise, not from the task: in training mode (drop-connect, dropout, "
                "BatchNorm's batch statistics) the head it started from does worse than a guess, and its "
                f"{updates} followed that loss. Look at what training mode adds to this model at this image size "
                "(training.batchnorm, model.image_size) and at the size of the head's weights; the report marks "
                "this step.")
    if cause == "updates":
        return (f"{said}. The model it started from was sound in both modes, so the updates made it worse "
                f"({updates}). Try a lower training.lr, more epochs or more images per class; the report marks "
                "this step.")
    return (f"{said}. Training made it worse: likely a learning rate too high for this few updates ({updates}). "
            "Try a lower training.lr, more epochs or more images per class; the report marks this step.")


def _rows_on_disk(run: RunFolder, name: str) -> int:
    """The rows of `name`'s accuracy_matrix.csv (0: none, or unreadable)."""
    try:
        return len(run.read_matrix(name))
    except (OSError, ValueError, KeyError):
        return 0


def _complete(run: RunFolder, name: str, *, n_steps: int) -> bool:
    """Whether `name` finished every step in this folder (its metrics say so, and its matrix has every row)."""
    try:
        doc = run.read_metrics(name)
    except (OSError, ValueError):  # damaged: compute it again
        return False
    if not doc or not doc.get("complete") or doc.get("error") or doc.get("steps_total") != n_steps:
        return False
    try:
        return len(run.read_matrix(name)) == n_steps + 1
    except (OSError, ValueError):  # damaged: compute it again
        return False


def _resume_method(run: RunFolder, *, name: str, model: TaskModel, method: Method, trainer: Trainer, n_steps: int):
    """Load the newest checkpoint of one method into `model` and `method`; (step, rows, timings, evaluation)
    or None when there is none. A checkpoint that cannot be used is an error, never silently skipped."""
    steps = run.checkpoint_steps(name)
    if not steps:
        return None
    step = steps[-1]
    path = run.step_checkpoint(name, step)
    state = checkpoints.load(path, expect={"method": name, "step": step})
    if step > n_steps:
        raise checkpoints.CheckpointError(path, f"is after step {step}, but the sequence has {n_steps} tasks")
    try:
        checkpoints.load_model(model, state)
        method.load_state_dict(state["method_state"], model=model, trainer=trainer)
        future_heads = checkpoints.build_heads(state["future_heads"], device=next(model.parameters()).device)
    except (KeyError, RuntimeError, ValueError) as err:
        raise checkpoints.CheckpointError(path, f"does not fit this run's model or method "
                                                f"({type(err).__name__}: {checkpoints.first_line(err)})") from None
    return step, state["rows"], state["timings"], Evaluation(state["rows"][-1], future_heads)
