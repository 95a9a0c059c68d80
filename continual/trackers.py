"""Experiment trackers besides TensorBoard (issue #27): Weights & Biases and MLflow, off unless asked
(`logging.trackers` in the sequence, or `continual run --log wandb,mlflow`; docs/trackers.md).

They are fed by monitor.Events, at the points TensorBoard gets, so the training loops still read their device
sums once (monitor.Reporter): every `log_every` optimiser steps the loss terms, lr and images/s (x: the
method's optimiser steps over the sequence, `optimizer_step`), after every step the accuracy matrix's row, the
step's metrics and seconds (x: the step, 0 = pre-trained, `step`). Each method is one tracker run:

    W&B      group: the sweep's name in a sweep, else the sequence's; job_type: the method; name
             `<sequence>/<method> seed=<seed>` (and the sweep cell); tags sequence:, method:, seed:, cell: (each cut
             to W&B's 64 characters); config: the resolved sequence (config.yaml) with the method, sweep and
             cell in full
    MLflow   experiment: logging.mlflow.experiment, else the sweep's name, else the sequence's; tags
             continual.sequence, .method, .seed, .sweep, .cell; params: config.yaml flattened (`training.lr`)

A sweep's cells are told their sweep and cell by the sweep (CONTINUAL_SWEEP, CONTINUAL_SWEEP_CELL: see
continual/sweeps/backends.py, run_cell). When a method ends, its files (accuracy matrix, metrics.json, curves.png)
and the run's report as it stands then go to the tracker (W&B: the run's files; MLflow: artifacts under
`method/` and `report/`).

Resuming: the method folder's trackers.json (run_folder.TRACKERS) keeps each tracker's run id, where that run
lives (W&B: project, entity; MLflow: tracking URI, experiment) and the last optimiser step and step it was
handed, written before each point is handed over. A resumed method reattaches to that run (W&B `id=...,
resume="allow"`, MLflow the run id) and skips the points at steps it already has: no point twice, whatever a
killed process had sent (at most the one point being sent when it was killed is lost). A resume that logs
elsewhere (another project or experiment, another server) starts a new run there instead, handed every row of
the accuracy matrix so far, as a tracker first asked for on the resume is (monitor.Events.rows).

Failing: a tracker that raises (a server gone, a bad key, a full disk) warns once, is dropped for the rest of
the run, and the run goes on; nothing here writes the run's own files except trackers.json. A method's files
that cannot be uploaded (an artifact store it cannot write) warn once too, but the tracker stays on: its run
still ends with its status. MLflow retries a request 7 times over about 4 minutes by default; unless set,
MLFLOW_HTTP_REQUEST_MAX_RETRIES=2, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1 and MLFLOW_HTTP_REQUEST_TIMEOUT=60 bound
a server gone (it refuses connections at once) to seconds. MLflow retries a POST whose answer timed out too, so
a server slower than that to answer may store a point twice: delivery is at least once there. Under torchrun,
rank 0 logs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from continual.config import ConfigError
from continual.config.schema import LoggingConfig, MlflowConfig, WandbConfig
from continual.files import atomic_write
from continual.monitor import MonitorWarning
from continual.run_folder import CONFIG, CURVES, INDEX, MATRIX_CSV, MATRIX_JSON, METRICS, SUMMARY_CSV, SUMMARY_MD, \
    TRACKERS

# The x axes: Events hands each point with one. W&B plots each tag against its axis (define_metric); MLflow and
# TensorBoard take the value as the point's step.
ITERATION, STEP = "optimizer_step", "step"
AXES = {"loss/*": ITERATION, "lr": ITERATION, "images_per_second": ITERATION,
        "accuracy/*": STEP, "metrics/*": STEP, "time/*": STEP}
METHOD_FILES = (MATRIX_CSV, MATRIX_JSON, METRICS, CURVES)  # a method's own, in its folder
REPORT_FILES = (CONFIG, INDEX, SUMMARY_MD, SUMMARY_CSV)  # the run's, as they stand when a method ends
SWEEP, CELL = "CONTINUAL_SWEEP", "CONTINUAL_SWEEP_CELL"  # set by a sweep for each cell's `continual run`
# MLflow's retries, unless set: a server gone (connections refused at once) costs seconds, not its default 4
# minutes per request. The timeout stays long: MLflow retries a POST that timed out, so a slow but live server
# would store a log_batch twice, and a short one would drop it as if gone.
MLFLOW_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
WANDB_TAG = 64  # W&B refuses a longer tag (wandb_settings.py, validate_run_tags), and with it the whole run
SETUP_TRIES = 3  # MLflow's set-up before its run is made: parallel sweep cells race on a fresh sqlite:/// store


def _keys(model, prefix: str) -> list[str]:
    inner = [_keys(f.annotation, f"{prefix}.{name}") for name, f in model.model_fields.items()
             if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields")]
    leaves = [f"{prefix}.{name}" for name, f in model.model_fields.items()
              if not (isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields"))]
    return [prefix, *leaves, *(k for keys in inner for k in keys)]


# config.yaml's key paths of `logging` (run_folder.differences names them so): a resume may change any of them.
KEYS = tuple(_keys(LoggingConfig, "logging"))


class TrackerWarning(MonitorWarning):
    """A tracker stopped being logged to; training goes on, its files are untouched."""


def check_installed(logging: LoggingConfig, *, source: str = "<sequence>") -> None:
    """ConfigError naming `logging.trackers` for each tracker asked for whose package is not installed (looked
    up, not imported: nothing is loaded and nothing written before a run is refused)."""
    missing = [(f"logging.trackers[{i}]", f"{name} is asked for (logging.trackers or --log) but not installed: "
                f"pip install 'continual[{name}]'")
               for i, name in enumerate(logging.trackers) if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(source, missing)


@dataclass(frozen=True)
class Context:
    """What names and groups a method's tracker runs."""

    sequence: str
    method: str
    seed: int
    config: dict  # the resolved sequence, as config.yaml holds it
    sweep: str | None = None
    cell: str | None = None

    @property
    def group(self) -> str:
        return self.sweep or self.sequence

    @property
    def name(self) -> str:
        return f"{self.sequence}/{self.method} seed={self.seed}" + (f" {self.cell}" if self.cell else "")

    @property
    def tags(self) -> dict[str, str]:
        tags = {"sequence": self.sequence, "method": self.method, "seed": str(self.seed)}
        return {**tags, **({"sweep": self.sweep} if self.sweep else {}), **({"cell": self.cell} if self.cell else {})}


class Session:
    """A run's trackers: started per method (`start`), and a tracker that failed stays off for the methods after
    it (one warning a run, not one a method)."""

    def __init__(self, logging: LoggingConfig, *, sequence: str, seed: int, config: dict):
        self.logging, self.sequence, self.seed, self.config = logging, sequence, seed, config
        self.sweep, self.cell = os.environ.get(SWEEP) or None, os.environ.get(CELL) or None
        self.failed: set[str] = set()
        self.said_files: set[str] = set()  # the trackers that warned of files not kept: once a run

    def start(self, method: str, *, folder: Path, resume: bool) -> list[Tracker]:
        """The method's trackers, each with its run started (or continued, on a resume, from trackers.json)."""
        context = Context(sequence=self.sequence, method=method, seed=self.seed, config=self.config,
                          sweep=self.sweep, cell=self.cell)
        ledger = Ledger(Path(folder) / TRACKERS, resume=resume)
        made = []
        for name in self.logging.trackers:
            if name in self.failed:
                continue
            kind = {"wandb": Wandb, "mlflow": Mlflow}[name]
            tracker = kind(getattr(self.logging, name), context=context, ledger=ledger, session=self)
            tracker.begin()
            if not tracker.failed:
                made.append(tracker)
        return made


class Ledger:
    """The method folder's trackers.json: {tracker: {"id": its run, "where": where it lives, "optimizer_step":
    last, "step": last}}."""

    def __init__(self, path: Path, *, resume: bool):
        self.path = path
        self.entries: dict[str, dict] = {}
        if resume and path.is_file():  # a fresh start (or --overwrite) begins new tracker runs
            with contextlib.suppress(OSError, ValueError):
                self.entries = json.loads(path.read_text())

    def get(self, tracker: str) -> dict:
        return self.entries.setdefault(tracker, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # before the method's first files
        atomic_write(self.path, json.dumps(self.entries, indent=1))


class Tracker:
    """One tracker's run for one method. `log` skips what the run already holds (Ledger), writes the ledger,
    then hands the point over; any error warns once and turns the tracker off (TrackerWarning)."""

    name = ""

    def __init__(self, options, *, context: Context, ledger: Ledger, session: Session | None = None):
        self.options, self.context, self.ledger, self.session = options, context, ledger, session
        self.entry = ledger.get(self.name)
        self.failed = False

    def begin(self) -> None:
        try:
            where = self._where()
            # Logging elsewhere on a resume: the old run and its marks are not there, so a new run, every point
            # again. An entry with no `where` was written before it was recorded: the same place, as then.
            if self.entry.get("where", where) != where:
                self.entry.clear()
            self.entry["where"] = where
            self.entry["id"] = self._begin(self.entry.get("id"))
            self.ledger.save()
        except Exception as err:  # noqa: BLE001 - whatever the package or the network raised
            self._fail(err)

    def log(self, values: dict[str, float], *, step: int, axis: str) -> None:
        """`values` (finite numbers) at `step` of `axis` (ITERATION or STEP), unless the run already has it."""
        if self.failed or step <= self.entry.get(axis, -1):
            return
        try:
            self.entry[axis] = step
            self.ledger.save()  # first: a point sent is never sent again by a resume
            self._log(values, step=step, axis=axis)
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def files(self, paths: dict[str, list[Path]]) -> None:
        """Files that exist, under a folder name each (`method`, `report`), as the tracker keeps files."""
        if self.failed:
            return
        try:
            self._files({under: [p for p in found if p.is_file()] for under, found in paths.items()})
        except Exception as err:  # noqa: BLE001 - an artifact store it cannot write: the points are in, keep on
            said = self.session.said_files if self.session is not None else set()
            if self.name not in said:
                said.add(self.name)
                warnings.warn(TrackerWarning(f"{self.context.sequence}/{self.context.method}: {self.name} did not "
                                             f"keep the method's files ({type(err).__name__}: {_said(err)}); its "
                                             "runs go on, the run's files are unaffected"), stacklevel=3)

    def close(self, *, status: str = "FINISHED") -> None:
        """The tracker's run ended (FINISHED, FAILED or KILLED); also after an error or Ctrl-C."""
        if self.failed:
            return
        try:
            self._end(status)
        except Exception as err:  # noqa: BLE001
            self._fail(err)
        self.failed = True  # nothing more goes to it

    def _fail(self, err: Exception) -> None:
        if not self.failed:
            warnings.warn(TrackerWarning(f"{self.context.sequence}/{self.context.method}: {self.name} not logged to "
                                         f"from here on ({type(err).__name__}: {_said(err)}); training goes on, the "
                                         "run's files are unaffected"), stacklevel=4)
            if self.session is not None:
                self.session.failed.add(self.name)
        self.failed = True
        with contextlib.suppress(Exception):
            self._abandon()

    # What each tracker does.
    def _where(self) -> dict:
        """Where its run lives, as configured: a resume told another place starts a new run there."""
        raise NotImplementedError

    def _begin(self, run_id: str | None) -> str:
        raise NotImplementedError

    def _log(self, values: dict[str, float], *, step: int, axis: str) -> None:
        raise NotImplementedError

    def _files(self, paths: dict[str, list[Path]]) -> None:
        raise NotImplementedError

    def _end(self, status: str) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        """Let go of what a failed tracker holds, quietly."""


class Wandb(Tracker):
    name = "wandb"
    options: WandbConfig

    def _where(self) -> dict:
        return {"project": self.options.project, "entity": self.options.entity or os.environ.get("WANDB_ENTITY")}

    def _begin(self, run_id: str | None) -> str:
        import wandb  # here: only when asked for

        c = self.context
        folder = self.options.dir or os.environ.get("WANDB_DIR") or str(self.ledger.path.parent.parent)
        self.run = wandb.init(
            project=self.options.project, entity=self.options.entity, mode=self.options.mode, dir=folder,
            id=run_id, resume="allow" if run_id else None, group=c.group, job_type=c.method, name=c.name,
            tags=[f"{k}:{v}"[:WANDB_TAG] for k, v in c.tags.items()],  # in full in the config's `continual`
            config={**c.config, "continual": c.tags},
            # console off: the progress bars are not W&B's logs; create_new: a run of its own whatever else the
            # process has open (continual.run from a script that logs to W&B itself)
            settings=wandb.Settings(console="off", silent=True), reinit="create_new")
        for pattern, axis in AXES.items():
            self.run.define_metric(pattern, step_metric=axis)
        return self.run.id

    def _log(self, values: dict[str, float], *, step: int, axis: str) -> None:
        self.run.log({axis: step, **values})

    def _files(self, paths: dict[str, list[Path]]) -> None:
        # Copied into the run's own folder (W&B uploads what is there; an offline run's files stay with it).
        for under, found in paths.items():
            for path in found:
                target = Path(self.run.dir) / under / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                self.run.save(str(target), base_path=self.run.dir, policy="now")

    def _end(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def _abandon(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.finish(exit_code=1)


class Mlflow(Tracker):
    name = "mlflow"
    options: MlflowConfig

    def _where(self) -> dict:
        return {"tracking_uri": self.options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
                "experiment": self.options.experiment or self.context.group}

    def _begin(self, run_id: str | None) -> str:
        for key, value in MLFLOW_RETRIES.items():
            os.environ.setdefault(key, value)
        c = self.context
        # Parallel sweep cells opening one fresh sqlite:/// store race on MLflow's schema set-up ("table experiments
        # already exists", "duplicate column name: step"); the loser's next try finds the tables made. Only what
        # may run twice is tried again: the run is created once, below.
        for attempt in range(SETUP_TRIES):
            try:
                found = self._setup(run_id)
                break
            except Exception:  # noqa: BLE001 - whatever the store raised; the last try's error is the tracker's
                if attempt == SETUP_TRIES - 1:
                    raise
                time.sleep(1 + attempt)
        if run_id is not None:  # a resume: the same run, running again
            self.run_id = found
            self.client.update_run(self.run_id, status="RUNNING")
            return self.run_id
        run = self.client.create_run(found, run_name=c.name,
                                     tags={f"continual.{k}": v for k, v in c.tags.items()})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in flatten(c.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a request
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return self.run_id

    def _setup(self, run_id: str | None) -> str:
        """The client, and the run's id on a resume, else the experiment's (created when missing)."""
        from mlflow import MlflowClient  # here: only when asked for

        self.client = MlflowClient(self.options.tracking_uri)
        if run_id is not None:
            return self.client.get_run(run_id).info.run_id
        name = self._where()["experiment"]
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name)
            except Exception:  # noqa: BLE001 - another cell of the sweep created it first
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        return experiment.experiment_id

    def _log(self, values: dict[str, float], *, step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def _files(self, paths: dict[str, list[Path]]) -> None:
        for under, found in paths.items():
            for path in found:
                self.client.log_artifact(self.run_id, str(path), artifact_path=under)

    def _end(self, status: str) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # its "View run at" lines: stdout is the run's result
            self.client.set_terminated(self.run_id, status=status)

    def _abandon(self) -> None:
        # Not left RUNNING for ever; a server gone fails this too, quietly (Tracker._fail)
        if getattr(self, "run_id", None) is not None:
            self._end("FAILED")


def _said(err: Exception) -> str:
    return " ".join(str(err).split())[:300]


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """config.yaml as MLflow params: `training.lr`, `tasks.0.name`, `methods.1.ldifs.lambda` (MLflow's keys take
    no brackets), each value as YAML would write it in JSON (null, true, 0.0005, "a")."""
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list) and tree and any(isinstance(x, (dict, list)) for x in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}.{i}"))
        return out
    text = tree if isinstance(tree, str) else json.dumps(tree)
    return {prefix: text[:6000]}  # MLflow's longest param value

