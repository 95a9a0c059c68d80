"""The run folder, `<out>/<sequence name>/`: the one module that knows its layout.

    config.yaml                     the resolved sequence; its presence means "a run of ours is here"
    .lock                           flock(2)ed by the process writing here; holds its PID, host and start time
    <method>/accuracy_matrix.csv    step, one column per task (sequence order), one per probe (`probe:<name>`)
    <method>/accuracy_matrix.json   the same rows as a JSON list of records
    <method>/metrics.json           per step: average accuracy over seen tasks, forgetting, BWT; timings
    <method>/curves.png             accuracy of each task and probe against the step (drawn by the report)
    <method>/events.out.tfevents.*  TensorBoard's scalars (continual/monitor.py): `tensorboard --logdir <out>`
    <method>/model/                 the exported model (keep_models: last), docs/export.md
    <method>/models/step-K/         the model after each step K (keep_models: every_step)
    <method>/trackers.json          W&B's and MLflow's run ids and last points sent (continual/trackers.py), for a resume
    wandb/                          W&B's own files, where logging.wandb.dir is not set (kept by --overwrite)
    checkpoints/start.pt            step 0, shared by every method (continual/checkpoints.py says what is in it)
    checkpoints/<method>/step-K.pt  after step K
    cache/<method>/                 large recomputable files (LDIFS's anchor taps on disk), removed at the end
    index.html, summary.md, summary.csv, environment.json   the report (continual/report/)

The runner writes through it, the report reads through it, and a run that finds a folder taken says
how far the run in it got.
Every file is written atomically (continual/files.py: a temporary name, then rename): readers never see
half a file, and a full disk is a DiskFull naming the folder, never a half-written file under a final name.
Whether --out can hold the folder is continual/out_folder.py's; the lock is continual/run_lock.py's.
No torch here: the report and `continual report` use it too.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import yaml

from continual import metrics
from continual.config import ConfigError
from continual.files import BadFile, atomic_write, make_folder, open_regular, read_json
from continual.methods.options import MethodItem, method_items
from continual.run_lock import RunLock, lock_holder
from continual.tree import differences

CONFIG = "config.yaml"
MATRIX_CSV, MATRIX_JSON, METRICS, CURVES = "accuracy_matrix.csv", "accuracy_matrix.json", "metrics.json", "curves.png"
EVENTS = "events.out.tfevents.*"  # TensorBoard's event files, as its writer names them: one per process
MODEL = "model"  # <method>/model/: the exported model (keep_models: last; continual/export.py writes it)
MODELS = "models"  # <method>/models/step-K/: the model after each step (keep_models: every_step)
TRACKERS = "trackers.json"  # the experiment trackers' run ids, so that a resume continues their runs
INDEX, SUMMARY_MD, SUMMARY_CSV, ENVIRONMENT = "index.html", "summary.md", "summary.csv", "environment.json"
TABLES_TEX, FIGURES = "tables.tex", "figures"  # `continual report --latex`, `--format`: figures/<name>.<format>
REPORT_RECORD = "report.json"  # which of those the report was asked for, so that every rewrite redraws them
REPORT_FILES = (INDEX, SUMMARY_MD, SUMMARY_CSV, ENVIRONMENT, TABLES_TEX, REPORT_RECORD)


class RunExists(Exception):
    """The output folder already holds a run and neither --resume nor --overwrite was given."""


class RunFolder:
    """One run's folder. Paths, what is complete, and how to claim it for a new or resumed run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- where things are

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    def method(self, name: str) -> Path:
        return self.path / name

    def checkpoints(self, name: str | None = None) -> Path:
        """checkpoints/ (start.pt lives there), or one method's checkpoint folder."""
        return self.path / "checkpoints" if name is None else self.path / "checkpoints" / name

    @property
    def start_checkpoint(self) -> Path:
        return self.checkpoints() / "start.pt"

    def step_checkpoint(self, name: str, step: int) -> Path:
        return self.checkpoints(name) / f"step-{step}.pt"

    def checkpoint_steps(self, name: str) -> list[int]:
        """Steps of method `name` with a checkpoint, ascending (temporary files of an interrupted write ignored)."""
        folder = self.checkpoints(name)
        found = [re.fullmatch(r"step-(\d+)\.pt", p.name) for p in folder.glob("step-*.pt")] if folder.is_dir() else []
        return sorted(int(m.group(1)) for m in found if m)

    def prune_checkpoints(self, name: str, *, keep: int) -> None:
        """Keep the newest `keep` step checkpoints of one method (0: none) and no leftover temporary files."""
        steps = self.checkpoint_steps(name)
        for step in steps[: max(0, len(steps) - keep)]:
            self.step_checkpoint(name, step).unlink(missing_ok=True)
        for tmp in self.checkpoints(name).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def model(self, name: str, step: int | None = None) -> Path:
        """Where `keep_models` puts a method's exported model (continual/export.py): `<method>/model/` after its
        last step, or `<method>/models/step-K/` after each step K (every_step): apart, so that a resume changing
        one to the other replaces neither."""
        return self.method(name) / MODEL if step is None else self.method(name) / MODELS / f"step-{step}"

    def cache(self, name: str) -> Path:
        return self.path / "cache" / name

    def methods_with_results(self) -> list[str]:
        """Methods that have written at least their matrix, by folder name."""
        return sorted(p.parent.name for p in self.path.glob(f"*/{MATRIX_CSV}"))

    # ---- writing

    def create(self) -> None:
        """The folder itself (and --out above it); after check_output, so only a full disk can fail here."""
        make_folder(self.path)

    def write_config(self, text: str) -> None:
        atomic_write(self.config, text)

    def write_step(self, method: str, *, rows: list[dict[str, float]], tasks: list[str], n_steps: int,
                   timings: list[dict], classes: list[int] | None = None, setting: str = "task_incremental") -> None:
        """(Re)write the numbers of one method after a step; `rows` are the matrix rows so far, `classes`
        each task's number of classes (the report draws chance level from them)."""
        folder = self.method(method)
        make_folder(folder)
        matrix = pd.DataFrame(rows)
        matrix.insert(0, "step", range(len(rows)))
        atomic_write(folder / MATRIX_CSV, matrix.to_csv(index=False, float_format="%.6f"))
        atomic_write(folder / MATRIX_JSON, matrix.to_json(orient="records", indent=1))
        per_step = metrics.step_metrics(matrix[tasks].to_numpy())
        doc = {"method": method, "steps_done": len(rows) - 1, "steps_total": n_steps,
               "complete": len(rows) - 1 == n_steps, "steps": per_step, "final": per_step[-1], "timings": timings,
               "setting": setting}
        if classes is not None:
            doc["classes"] = dict(zip(tasks, classes, strict=True))
        atomic_write(folder / METRICS, json.dumps(doc, indent=1, allow_nan=False))

    def record_failure(self, method: str, error: str) -> None:
        """Mark a method's results as failed (its rows so far stay as they are), for the report and the user."""
        try:
            doc = self.read_metrics(method) or {"method": method, "steps": []}
        except (OSError, ValueError):  # damaged: the error is what matters now
            doc = {"method": method, "steps": []}
        doc.update(complete=False, error=error)
        path = self.method(method) / METRICS
        make_folder(path.parent)
        atomic_write(path, json.dumps(doc, indent=1, allow_nan=False))

    # ---- reading

    def read_matrix(self, method: str) -> pd.DataFrame:
        return pd.read_csv(self.method(method) / MATRIX_CSV, index_col="step")

    def read_metrics(self, method: str) -> dict | None:
        """A method's metrics.json, None when it has none; a BadFile (ValueError) when it is damaged (not
        JSON, nested too deeply, not an object), an OSError when it cannot be read."""
        path = self.method(method) / METRICS
        if not path.exists():
            return None
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise BadFile(f"{path} holds a JSON {type(doc).__name__}, not the object continual writes")
        return doc

    def progress(self) -> str:
        """How far each method got, e.g. "finetune 3/3 steps, ldifs 1/3 steps"."""
        done = []
        for path in sorted(self.path.glob(f"*/{METRICS}")):
            try:
                doc = read_json(path)
                done.append(f"{path.parent.name} {doc['steps_done']}/{doc['steps_total']} steps")
            except (OSError, ValueError, KeyError, TypeError):  # TypeError: a JSON list or number
                done.append(f"{path.parent.name} unreadable")
        return ", ".join(done) or "no step finished yet"

    # ---- claiming it for a run

    def claim(self, config_text: str, *, resume: bool, overwrite: bool, may_differ: tuple[str, ...] = ()) -> str:
        """Make the folder ours for a run of `config_text` (called holding its lock) and return the config
        to write: nothing computed is discarded unless asked, and a resume must be of the same sequence
        (except keys in `may_differ`). Methods may be added on resume (each method's options must be the
        same as before); the config then lists the run's methods, then the new ones."""
        new = yaml.safe_load(config_text)
        on_disk = self._run_here(new["name"], resume=resume, overwrite=overwrite)
        if on_disk is None or overwrite:
            self._discard()
            return config_text
        on_disk = _as_today(on_disk)
        old_methods = {m.key: m for m in method_items(on_disk["methods"])}  # by label, else by name
        new_methods = {m.key: m for m in method_items(new["methods"])}
        differ = differences({**on_disk, "methods": None}, {**new, "methods": None})
        differ += [(f"methods.{name}{'.' + key if key else ''}", a, b) for name in old_methods.keys() & new_methods.keys()
                   for key, a, b in differences(_entry(old_methods[name]), _entry(new_methods[name]))]
        differ = [(key, f"was {a!r} in this run, is {b!r} now") for key, a, b in differ if key not in may_differ]
        if differ:
            raise ConfigError(str(self.config), differ + [("", "resume needs the sequence the run was started "
                                                               "with; use --overwrite to start again with this one")])
        merged = {**{key: on_disk["methods"][m.index] for key, m in old_methods.items()},  # the run's order,
                  **{key: new["methods"][m.index] for key, m in new_methods.items()}}  # then methods new to it
        return yaml.safe_dump({**new, "methods": list(merged.values())}, sort_keys=False)

    def check_free(self, name: str, *, resume: bool, overwrite: bool) -> None:
        """The RunExists that `claim` would raise for a run of `name`, said before the model and data are
        loaded (seconds to minutes) rather than after; nothing is read but the folder's own files, nothing
        written. `claim` decides again under the lock. A folder another run holds is left to its lock,
        whose RunLocked says who holds it, rather than a RunExists that says to add --resume."""
        if self.lock_holder() is None:
            self._run_here(name, resume=resume, overwrite=overwrite)

    def _run_here(self, name: str, *, resume: bool, overwrite: bool) -> dict | None:
        """The config of our run of `name` in this folder (None: none), or RunExists where a new run may not
        start here: a run without --resume or --overwrite, results without a config, another's config."""
        on_disk = self._our_config(name)
        if on_disk is None and self._holds_results() and not overwrite:  # an --overwrite stopped after config.yaml went
            raise RunExists(f"{self.path} holds results of a run but no {CONFIG} (an interrupted --overwrite?), "
                            "so they cannot be checked against this sequence; add --overwrite to discard "
                            "them, or choose another --out")
        if on_disk is not None and not resume and not overwrite:
            raise RunExists(f"{self.path} already holds a run of '{name}' ({self.progress()}); "
                            "add --resume to continue it, --overwrite to discard it, or choose another --out")
        return on_disk

    def _our_config(self, name: str) -> dict | None:
        """The config.yaml of our run of `name` here, None when there is none; a config.yaml that is not
        one (another tool's, another sequence's, unreadable) is never resumed or overwritten: RunExists."""
        if not self.config.exists():
            return None
        try:
            with open_regular(self.config) as f:  # a FIFO there would block a plain read forever
                doc = yaml.safe_load(f.read().decode())
        except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:  # ValueError: BadFile, not UTF-8
            doc, why = None, f"cannot be read ({' '.join(str(err).split())[:120]})"  # RecursionError: nested deeply
        else:
            why = "was not written by continual"
        methods = doc.get("methods") if isinstance(doc, dict) else None
        ours = (isinstance(doc, dict) and {"name", "model", "tasks", "training", "methods"} <= doc.keys()
                and isinstance(methods, list) and all(isinstance(m, dict) and len(m) == 1 for m in methods))
        if ours and doc["name"] == name:
            return doc
        if ours:
            why = f"holds a run of '{doc['name']}', not of '{name}'"
        raise RunExists(f"{self.config} {why}, so nothing here is resumed or overwritten; choose another --out")

    def _holds_results(self) -> bool:
        return self.start_checkpoint.exists() or bool(self._method_folders())

    def _method_folders(self) -> list[Path]:
        return [p for p in self.path.iterdir() if p.is_dir() and not p.is_symlink()
                and any((p / f).exists() for f in (MATRIX_CSV, METRICS))] if self.path.is_dir() else []

    def _discard(self) -> None:
        """What --overwrite removes: the files a run writes, by name, and the folders they leave empty;
        nothing else that may be here. config.yaml goes last: until then the folder is still a run of ours
        (an interrupted --overwrite is finished by the next one)."""
        def remove(folder: Path, patterns: tuple[str, ...]) -> None:
            for pattern in patterns:
                for path in folder.glob(pattern):
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

        ours = (EVENTS, TRACKERS, MATRIX_CSV, MATRIX_JSON, METRICS, CURVES, ".*.tmp")  # what marks a method folder: last
        for folder in self._method_folders():
            # Exported models (keep_models): each a folder of our files, its card in it; and the temporary folders
            # a kill leaves beside them (export.write: .model.tmp, .model.old, models/.step-K.tmp).
            for models, pattern in ((folder, MODEL), (folder / MODELS, "step-*")):
                if not models.is_dir() or models.is_symlink():
                    continue
                for model in sorted(models.glob(pattern)):
                    if (model / "continual.json").is_file() and not model.is_symlink():
                        shutil.rmtree(model)
                for tmp in [*models.glob(f".{pattern}.tmp"), *models.glob(f".{pattern}.old")]:
                    if tmp.is_dir() and not tmp.is_symlink():
                        shutil.rmtree(tmp)
            with contextlib.suppress(OSError):
                (folder / MODELS).rmdir()
            remove(folder, ours)
        checkpoints = self.checkpoints()
        if checkpoints.is_dir():
            for folder in [p for p in checkpoints.iterdir() if p.is_dir() and not p.is_symlink()]:
                remove(folder, ("step-*.pt", ".*.tmp"))
            remove(checkpoints, ("start.pt", ".*.tmp"))
        cache = self.path / "cache"
        if cache.is_dir():
            for folder in [p for p in cache.iterdir() if p.is_dir() and not p.is_symlink()]:
                remove(folder, ("*-tap*.npy",))
            remove(cache, ())
        for name in REPORT_FILES:
            (self.path / name).unlink(missing_ok=True)
        if (self.path / FIGURES).is_dir():
            remove(self.path / FIGURES, ("*.png", "*.pdf", "*.svg", ".*.tmp"))
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        self.config.unlink(missing_ok=True)

    def lock(self) -> RunLock:
        return RunLock(self.path)

    def lock_holder(self) -> dict | None:
        """{pid, host, started} of the run holding this folder's lock, None when none does (run_lock.lock_holder)."""
        return lock_holder(self.path)


def _entry(item: MethodItem) -> dict:
    """A method item of config.yaml, `{ldifs: {lambda: 10}}`, as the options compared on resume (the method's
    name too, for an entry known by its label)."""
    return {"method": item.name, **item.options}


def _as_today(doc: dict) -> dict:
    """A run's config.yaml as this version writes it: keys added since it was written (`training.augment`,
    a task's `templates`) get their defaults, so a run started before an upgrade can still be resumed.
    A config that is not valid today is compared as written (the differences then name the keys)."""
    from continual.config import Sequence, dump_sequence

    try:
        return yaml.safe_load(dump_sequence(Sequence.model_validate(doc)))
    except Exception:  # pydantic's ValidationError, or anything else an old file holds
        return doc
