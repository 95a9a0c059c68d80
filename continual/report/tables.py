"""The numbers of a report: run folders read back as tidy pandas tables, and aggregated over runs.

    tables = load_tables("reports/mnist-fashion-animals")   # tidy frames of one run folder

Several folders of the same sequence with the same settings but the seed (repetitions) are aggregated as
mean ± std (sample std, n − 1) over the runs where a method is complete; one folder gives n = 1 and no
std. Folders whose config.yaml differ in anything that changes results are refused (`check_repetitions`).
A method that is missing, unreadable or incomplete in a run is shown as such and counts in no mean. The
metrics and their formulas are in `continual.metrics`. Reads numbers from files only: no torch, no models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from continual import metrics
from continual.config.schema import MISSING, schema_default
from continual.methods import METHODS
from continual.methods.options import method_items
from continual.run_folder import RunFolder
from continual.tree import flatten


class ReportError(Exception):
    """A folder that cannot be reported on (not there, not a run folder, another sequence or settings)."""


# Keys of config.yaml that say where and how a run ran, not what it computed: runs that differ only in
# these and the seed are repetitions of one experiment and are averaged. eval_batch_size only regroups
# inference (BatchNorm is in eval mode); the device changes kernels' summation order, as another CPU does
# (docs/results.md), which is exactly the spread a mean ± std over repetitions should show.
NOT_SETTINGS = ("seed", "keep_checkpoints", "data_root", "download", "training.device", "training.eval_batch_size")


@dataclass
class MethodRun:
    """One method in one run folder."""

    name: str
    status: str  # complete | incomplete | failed | missing | unreadable
    note: str = ""  # e.g. "2 of 3 steps", or the read error
    matrix: pd.DataFrame | None = None  # indexed by step
    doc: dict | None = None  # metrics.json


@dataclass
class Run:
    """One run folder, read back."""

    folder: Path
    name: str
    seed: object
    config_text: str
    tasks: list[str]
    probes: list[str]
    methods: dict[str, MethodRun] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # config.yaml as read ({} when there is none)

    @property
    def n_steps(self) -> int:
        return len(self.tasks)


def read_run(folder: str | Path) -> Run:
    """A run folder as written by `continual run`, or ReportError naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such run folder")
    run_folder = RunFolder(folder)
    config_path = run_folder.config
    config, config_text = {}, ""
    if config_path.is_file():
        config_text = config_path.read_text()
        try:
            config = yaml.safe_load(config_text) or {}
        except yaml.YAMLError as err:
            raise ReportError(f"{config_path}: unreadable YAML ({str(err).splitlines()[0]})") from None
    found = run_folder.methods_with_results()
    if not config_text and not found:
        raise ReportError(f"{folder}: not a run folder (no config.yaml and no <method>/accuracy_matrix.csv)")
    configured = [m.key for m in method_items(config.get("methods"))]
    names = configured + [m for m in found if m not in configured]

    methods = {}
    for name in names:
        methods[name] = _read_method(run_folder, name)
    tasks = [t["name"] for t in config.get("tasks") or []]
    if not tasks:  # no config: the matrix columns that are not probes
        tasks = next((_task_columns(m.matrix) for m in methods.values() if m.matrix is not None), [])
    probes = []
    for m in methods.values():
        if m.matrix is not None:
            probes += [c for c in m.matrix.columns if c.startswith("probe:") and c not in probes]
    run = Run(folder=folder, name=config.get("name") or folder.name, seed=config.get("seed"),
              config_text=config_text, tasks=tasks, probes=probes, methods=methods,
              config=config if isinstance(config, dict) else {})
    for m in methods.values():
        _set_status(m, run)
    return run


def _task_columns(matrix: pd.DataFrame) -> list[str]:
    return [c for c in matrix.columns if not c.startswith("probe:")]


def _read_method(run_folder: RunFolder, name: str) -> MethodRun:
    if name not in run_folder.methods_with_results():
        try:  # failed before its first step: metrics.json holds the error (RunFolder.record_failure)
            doc = run_folder.read_metrics(name)
        except (ValueError, OSError):
            doc = None
        if isinstance(doc, dict) and doc.get("error"):
            return MethodRun(name, "failed", f"before its first step: {doc['error']}", doc=doc)
        return MethodRun(name, "missing", "no results written")
    try:
        matrix = run_folder.read_matrix(name)
        doc = run_folder.read_metrics(name)
    except (ValueError, OSError, KeyError) as err:
        return MethodRun(name, "unreadable", f"{type(err).__name__}: {err}")
    return MethodRun(name, "", matrix=matrix, doc=doc)


def _set_status(m: MethodRun, run: Run) -> None:
    if m.matrix is None:
        return
    missing = [t for t in run.tasks if t not in m.matrix.columns]
    if missing:
        m.status, m.note, m.matrix = "unreadable", f"no column for task(s) {', '.join(missing)}", None
        return
    done = len(m.matrix) - 1
    says_complete = m.doc is None or bool(m.doc.get("complete", True))
    if m.doc is not None and m.doc.get("error"):
        m.status, m.note = "failed", f"after {max(done, 0)} of {run.n_steps} steps: {m.doc['error']}"
    elif done == run.n_steps and says_complete:
        m.status = "complete"
    else:
        m.status, m.note = "incomplete", f"{max(done, 0)} of {run.n_steps} steps"


def _method_tables(m: MethodRun, run: Run) -> dict[str, pd.DataFrame]:
    """Tidy rows of one method: matrix, per-step metrics, final metrics (NaN unless complete)."""
    out = {}
    if m.matrix is not None:
        mat = m.matrix.reset_index().melt(id_vars="step", var_name="column", value_name="accuracy")
        out["matrix"] = mat.assign(method=m.name)[["method", "step", "column", "accuracy"]]
        R = m.matrix[run.tasks].to_numpy(dtype=float)
        per_step = {"average_accuracy": metrics.average_accuracy(R), "forgetting": metrics.forgetting(R),
                    "bwt": metrics.backward_transfer(R)}
        probes = [p for p in run.probes if p in m.matrix.columns]
        if probes:
            delta = metrics.concept_forgetting(m.matrix[probes].to_numpy(dtype=float))
            per_step.update({f"concept_delta:{p}": delta[:, k] for k, p in enumerate(probes)})
        frame = pd.DataFrame(per_step, index=m.matrix.index).rename_axis("step").reset_index()
        out["metrics"] = frame.melt(id_vars="step", var_name="metric", value_name="value").assign(method=m.name)[
            ["method", "step", "metric", "value"]]
    R = m.matrix[run.tasks].to_numpy(dtype=float) if m.matrix is not None else np.full((0, len(run.tasks)), np.nan)
    # No matrix yet (a method not started): no rows, whatever the number of probe columns (CLIP has two per
    # probe; None here used to break the reshape in final_metrics, so no report until every method began).
    P = (m.matrix.reindex(columns=run.probes).to_numpy(dtype=float) if m.matrix is not None
         else np.full((0, len(run.probes)), np.nan))
    final = metrics.final_metrics(R, P, tasks=run.tasks, probes=run.probes)
    out["summary"] = pd.DataFrame({"method": m.name, "metric": list(final), "value": list(final.values())})
    return out


def _tables(run: Run) -> dict[str, pd.DataFrame]:
    parts = [_method_tables(m, run) for m in run.methods.values()]
    columns = {"matrix": ["method", "step", "column", "accuracy"], "metrics": ["method", "step", "metric", "value"],
               "summary": ["method", "metric", "value"]}
    out = {}
    for key, cols in columns.items():
        frames = [p[key] for p in parts if key in p]
        out[key] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    out["status"] = pd.DataFrame([{"method": m.name, "status": m.status, "note": m.note}
                                  for m in run.methods.values()], columns=["method", "status", "note"])
    out["timings"] = _timings(run)
    out["costs"] = _costs(run)
    return out


def load_tables(run_folder: str | Path) -> dict[str, pd.DataFrame]:
    """Tidy frames of one run folder:
        "matrix"   method, step, column, accuracy        (every cell of every accuracy matrix)
        "metrics"  method, step, metric, value           (average_accuracy, forgetting, bwt, concept_delta:probe:<probe>)
        "summary"  method, metric, value                 (continual.metrics.final_metrics; NaN unless complete)
        "status"   method, status, note                  (complete | incomplete | missing | unreadable)
        "timings"  method, fit_seconds, eval_seconds, step0_seconds, train_steps, ...   (one row per method)
        "costs"    method, metric, value                 (COSTS, from metrics.json's timings; NaN unless complete)
    """
    return _tables(read_run(run_folder))


def _timings(run: Run) -> pd.DataFrame:
    rows = []
    for m in run.methods.values():
        steps = [t for t in (m.doc or {}).get("timings", []) if isinstance(t, dict)]
        if not steps:
            continue
        later = [t for t in steps if t.get("step", 0) > 0]
        row = {"method": m.name,
               "fit_seconds": sum(t.get("fit_seconds", 0.0) for t in later),
               "eval_seconds": sum(t.get("eval_seconds", 0.0) for t in later),
               "step0_seconds": sum(t.get("eval_seconds", 0.0) for t in steps if t.get("step", 0) == 0),
               "train_steps": sum(t.get("train_steps", 0) for t in later)}
        row["total_seconds"] = row["fit_seconds"] + row["eval_seconds"]
        if any("buffer_images" in t for t in later):
            row["buffer_images"] = max(t.get("buffer_images", 0) for t in later)
        if later and later[-1].get("losses"):
            row["last_losses"] = ", ".join(f"{k} {v:.3g}" for k, v in later[-1]["losses"].items())
        rows.append(row)
    return pd.DataFrame(rows, columns=["method", "fit_seconds", "eval_seconds", "step0_seconds", "train_steps",
                                       "total_seconds", *({"buffer_images", "last_losses"} & {
                                           k for r in rows for k in r})])


# What a method cost, as multi-domain task-incremental (MTIL) papers report it beside accuracy (issue #24): the
# metric in summary.csv -> (its label in the tables, lower is better). Worked out by `costs` from each method's
# metrics.json timings over steps 1..T (step 0, the pre-trained model's evaluation, is shared by every method).
COSTS = {
    "cost:wall_seconds": ("wall time (s)", True),
    "cost:gpu_hours": ("GPU-hours", True),
    "cost:peak_gpu_memory_bytes": ("peak GPU memory (GiB)", True),
    "cost:trainable_parameters": ("trainable parameters (M)", True),
    "cost:extra_storage_bytes": ("extra storage (MiB)", True),
    "cost:train_images_per_second": ("training images/s", False),
}


def costs(timings: list[dict], *, batch_size: int | None = None) -> dict[str, float]:
    """A method's COSTS from its metrics.json `timings` (one dict a step; `batch_size`: the run's, for steps
    that do not record their own), NaN where the timings do not say (runs written before they recorded it):

        wall_seconds            sum over steps 1..T of the step's training (`task_seconds`, the whole of the
                                method's fit_task; `fit_seconds` where not recorded) and evaluation seconds
        gpu_hours               each step's wall seconds x `world_size` GPUs on `device` cuda, 0 on CPU, / 3600
        peak_gpu_memory_bytes   the most `peak_gpu_bytes` of any step (torch.cuda.max_memory_allocated while it
                                trained); NaN on CPU
        trainable_parameters    the most `trainable_parameters` (elements trained) of any step
        extra_storage_bytes     the most any step kept besides the model: `method_state_bytes` (its state as
                                its checkpoint saves it) plus LDIFS's anchor cache (`anchor_cache_mb`)
        train_images_per_second sum of train_steps x batch size over sum of fit_seconds (NaN: nothing trained)
    """
    steps = [t for t in timings if isinstance(t, dict) and t.get("step", 0) > 0 and not t.get("skipped")]
    nan = float("nan")
    out = dict.fromkeys(COSTS, nan)
    if not steps:
        return out
    wall = [t.get("task_seconds", t.get("fit_seconds", 0.0)) + t.get("eval_seconds", 0.0) for t in steps]
    out["cost:wall_seconds"] = float(sum(wall))
    if all("device" in t and "world_size" in t for t in steps):
        out["cost:gpu_hours"] = sum(w * t["world_size"] for w, t in zip(wall, steps) if t["device"] == "cuda") / 3600
        peaks = [t["peak_gpu_bytes"] for t in steps if t["device"] == "cuda" and "peak_gpu_bytes" in t]
        out["cost:peak_gpu_memory_bytes"] = float(max(peaks)) if peaks else nan
    counts = [t["trainable_parameters"] for t in steps if "trainable_parameters" in t]
    out["cost:trainable_parameters"] = float(max(counts)) if counts else nan
    if any("method_state_bytes" in t for t in steps):
        out["cost:extra_storage_bytes"] = float(max(t.get("method_state_bytes", 0) + _anchor_cache_bytes(t)
                                                    for t in steps))
    trained = [(t.get("train_steps", 0) * t.get("batch_size", batch_size or 0), t.get("fit_seconds", 0.0))
               for t in steps if t.get("train_steps", 0) > 0]
    seconds = sum(s for _, s in trained)
    if trained and seconds > 0 and all(n > 0 for n, _ in trained):
        out["cost:train_images_per_second"] = sum(n for n, _ in trained) / seconds
    return out


def _anchor_cache_bytes(step: dict) -> float:
    """LDIFS's anchor cache of a step (ldifs.py's CachePlan.extra): its size as built, else the plan's estimate
    where it was kept (memory or disk); 0 where there is none (off: the anchor runs on every batch)."""
    if "anchor_cache_mb" in step:
        return step["anchor_cache_mb"] * 2**20
    if step.get("anchor_cache") in ("memory", "disk"):
        return float(step.get("anchor_cache_estimate_bytes", 0))
    return 0.0


def _costs(run: Run) -> pd.DataFrame:
    """method, metric, value: each method's COSTS in `run`; NaN unless complete, as the final metrics."""
    batch_size = (run.config.get("training") or {}).get("batch_size")
    rows = []
    for m in run.methods.values():
        found = costs((m.doc or {}).get("timings", []), batch_size=batch_size) if m.status == "complete" else \
            dict.fromkeys(COSTS, float("nan"))
        rows += [{"method": m.name, "metric": k, "value": v} for k, v in found.items()]
    return pd.DataFrame(rows, columns=["method", "metric", "value"])


def aggregate(frames: list[pd.DataFrame], *, by: list[str], value: str = "value") -> pd.DataFrame:
    """Stack one tidy frame per run and reduce `value` to mean, std (n − 1; NaN for n < 2) and n, the number
    of runs with a finite value, per `by` group in first-seen order."""
    stacked = pd.concat(frames, ignore_index=True)
    grouped = stacked.groupby(by, sort=False)[value]
    out = grouped.agg(mean="mean", std=lambda v: v.dropna().std(ddof=1) if v.notna().sum() > 1 else np.nan,
                      n="count").reset_index()
    out["n"] = out["n"].astype(int)
    return out


def settings(config: dict) -> dict[str, object]:
    """config.yaml as key paths -> values (`training.lr`, `tasks[0].classes[1]`, `methods.ldifs.lambda`),
    without NOT_SETTINGS. Methods are keyed by name (their order in the file changes nothing)."""
    def leaves(value, prefix: str) -> dict[str, object]:  # an empty mapping or list is a setting too
        return {k: v for k, v in flatten(value, prefix, empty_leaves=True).items() if k not in NOT_SETTINGS}

    flat = leaves({k: v for k, v in config.items() if k != "methods"}, "")
    for m in method_items(config.get("methods")):
        flat[f"methods.{m.key}"] = "listed"
        if m.key != m.name:
            flat[f"methods.{m.key}.method"] = m.name
        for key, value in m.options.items():
            if key != "label":
                flat |= leaves(value, f"methods.{m.key}.{key}")
    return flat


def chance(run: Run) -> pd.DataFrame | None:
    """The accuracy of a uniform guess, by step (rows) and task (columns), from the classes each task has
    (metrics.json); None for runs written before it recorded them."""
    doc = next((m.doc for m in run.methods.values() if m.doc and "classes" in m.doc), None)
    if doc is None or list(doc["classes"]) != run.tasks:
        return None
    values = metrics.chance_accuracy(list(doc["classes"].values()),
                                     class_incremental=doc.get("setting") == "class_incremental",
                                     all_classes=doc.get("setting") == "x_tail")
    return pd.DataFrame(values, columns=run.tasks).rename_axis("step")


def method_labels(config: dict) -> dict[str, str]:
    """Every method key of config.yaml -> its legend entry: the key with the options that define it
    (its options' LEGEND) and, for a method listed more than once, any other option in which its entries differ:
    `ldifs (λ = 10)`, `ldifs-paper (λ = 100, distance paper)`, `wise_ft (α = 0.5)`, `replay (memory 300)`.
    A method with no such option keeps its bare key (`finetune`)."""
    entries = {}  # key -> (method name, options as listed)
    for m in method_items(config.get("methods")):
        entries[m.key] = (m.name, {k: v for k, v in m.options.items() if k != "label"})
    labels = {}
    for key, (name, options) in entries.items():
        # The options its class names for legends (Options.LEGEND), with the symbols papers use; an option an
        # entry does not set shows its class's default. A method no longer registered (a plugin) has none.
        cls = METHODS.get(name)
        defining = cls.LEGEND if cls is not None else ()
        shown = []
        for option, text, unless_default in defining:
            default = _default(cls, option)
            value = options.get(option, default)
            if value is not None and not (unless_default and value == default):
                shown.append(text.format(_shown(value)))
        others = [o for k, (n, o) in entries.items() if n == name and k != key]
        shown += [f"{k} {_shown(v)}" for k, v in options.items()
                  if k not in {d[0] for d in defining} and any(o.get(k) != v for o in others)]
        labels[key] = f"{key} ({', '.join(shown)})" if shown else key
    return labels


def _default(cls, option: str):
    """The default of an option (by its YAML name, `lambda` for `lambda_`) of a pydantic options class."""
    return next((f.default for name, f in cls.model_fields.items() if (f.alias or name) == option), None)


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_repetitions(runs: list[Run]) -> None:
    """ReportError unless every run repeats the first one's settings: the same config.yaml but for the
    seed and NOT_SETTINGS. A method run in only some of the folders is fine (its n says so); its options
    must agree where it ran. Averaging runs of another lr or λ as if they were seeds hid the difference."""
    first = runs[0]
    if len(runs) > 1 and not first.config:
        raise ReportError(f"{first.folder}: no config.yaml, so whether the runs repeat one setting cannot be checked")
    base = settings(first.config)
    for run in runs[1:]:
        if not run.config:
            raise ReportError(f"{run.folder}: no config.yaml, so whether it repeats the settings of {first.folder} "
                              "cannot be checked")
        other = settings(run.config)
        in_both = {k for k in base if k.startswith("methods.") and k.count(".") == 1} & set(other)

        def compared(key: str) -> bool:  # a method's options, where both ran it; not whether it is listed
            return not key.startswith("methods.") or ".".join(key.split(".")[:2]) in in_both and key.count(".") > 1

        def value(flat: dict, key: str) -> str:  # a key a later version added reads as its default (schema)
            default = MISSING if key in flat else schema_default(key)
            return repr(flat[key]) if key in flat else "(absent)" if default is MISSING else repr(default)

        differ = [k for k in dict.fromkeys([*base, *other]) if compared(k) and value(base, k) != value(other, k)]
        if differ:
            shown = "; ".join(f"{k}: {value(base, k)} → {value(other, k)}" for k in differ[:6])
            more = f"; and {len(differ) - 6} more" if len(differ) > 6 else ""
            raise ReportError(f"{run.folder}: not a repetition of {first.folder}, the settings differ ({shown}{more}); "
                              f"only runs that differ in {', '.join(NOT_SETTINGS)} are averaged")


class UnknownMethods(ReportError):
    """`methods` asked of a report that names a method no run folder ran (`continual report --methods`)."""


def ran(runs: list[Run]) -> list[str]:
    """The methods that ran in at least one of `runs` (results, or an error recorded), in config.yaml's order:
    config.yaml lists every method of the sequence, also those a `--methods` subset never asked for."""
    return list(dict.fromkeys(m for r in runs for m, state in r.methods.items() if state.status != "missing"))


class Summary:
    """The numbers of one or more runs of one sequence, computed once: summary metrics aggregated over
    runs (mean, std, n), mean and std accuracy matrices, timings, each method's status. ReportError
    when the runs are not repetitions of one setting (check_repetitions). The methods shown: `methods`, in
    that order (UnknownMethods naming any that no run ran), else every method that ran (`ran`)."""

    def __init__(self, runs: list[Run], *, methods: list[str] | None = None):
        check_repetitions(runs)
        self.runs = runs
        self.first = runs[0]
        self.tasks = self.first.tasks
        self.n_steps = self.first.n_steps
        known = ran(runs)
        if methods is not None:
            unknown = [m for m in methods if m not in known]
            if unknown or not methods or len(set(methods)) < len(methods):
                why = (f"{', '.join(map(repr, unknown))} did not run in {', '.join(str(r.folder) for r in runs)}"
                       if unknown else "a method is named twice" if methods else "no method named")
                raise UnknownMethods(f"{why} (the methods there: {', '.join(known) or 'none yet'})")
        self.methods = list(methods) if methods is not None else known
        # How every table row, legend entry, heatmap title and LaTeX row names a method: `ldifs (λ = 10)`
        # (summary.csv, data, keeps the key).
        self.labels = {m: m for m in self.methods} | method_labels(self.first.config)
        self.chance = chance(self.first)  # task -> chance accuracy by step, or None (older runs)
        self.probes = list(dict.fromkeys(p for r in runs for p in r.probes))
        tables = [_tables(r) for r in runs]
        for k, t in enumerate(tables):
            for key in ("matrix", "summary"):
                t[key]["run"] = k
        # summary.csv: the final metrics, then the costs (COSTS), each method's rows together
        self.summary = aggregate([pd.concat([t["summary"], t["costs"]], ignore_index=True) for t in tables],
                                 by=["method", "metric"])
        order = {m: i for i, m in enumerate(self.methods)}  # summary.csv's rows in the report's order
        self.summary = self.summary[self.summary["method"].isin(self.methods)].sort_values(
            "method", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
        self._values = {(m, k): (float(a), float(b), int(n)) for m, k, a, b, n in
                        self.summary[["method", "metric", "mean", "std", "n"]].itertuples(index=False)}
        self.matrix = pd.concat([t["matrix"] for t in tables], ignore_index=True)
        timing_frames = [t["timings"].melt(id_vars="method", var_name="metric", value_name="value")
                         for t in tables if len(t["timings"])]
        self.timings = pd.DataFrame()
        self.losses = {}
        if timing_frames:
            stacked = pd.concat(timing_frames, ignore_index=True)
            numeric = stacked[stacked["metric"] != "last_losses"].astype({"value": float})
            self.timings = aggregate([numeric], by=["method", "metric"])
            losses = stacked[(stacked["metric"] == "last_losses") & stacked["value"].notna()]
            # the first run's, as the table's column says (runs were stacked in order)
            first = losses.drop_duplicates("method", keep="first")
            self.losses = dict(zip(first["method"], first["value"].astype(str)))
        self.mean, self.std = self._mean_matrices()

    def value(self, method: str, metric: str) -> tuple[float, float, int]:
        """(mean, std, n) of a summary metric; (NaN, NaN, 0) where there is none."""
        return self._values.get((method, metric), (np.nan, np.nan, 0))

    def status(self, method: str) -> str:
        states = [r.methods[method] if method in r.methods else MethodRun(method, "missing", "not in this run")
                  for r in self.runs]
        done = sum(s.status == "complete" for s in states)
        if done == len(states):
            return "complete" if len(states) == 1 else f"complete ({done} runs)"
        bad = [(k, f"{s.status}{f' ({s.note})' if s.note else ''}") for k, s in enumerate(states, start=1)
               if s.status != "complete"]
        if len(states) == 1:
            return bad[0][1]
        return f"{done} of {len(states)} runs complete; " + "; ".join(f"run {k}: {text}" for k, text in bad)

    def _mean_matrices(self) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
        """method -> matrix (index step, columns tasks then probes) of the mean over runs, and of the std."""
        cells = self.matrix.groupby(["method", "step", "column"], sort=False)["accuracy"].agg(["mean", "std"])
        mean, std = {}, {}
        for method in self.methods:
            if method not in cells.index.get_level_values(0):
                continue
            one = cells.loc[method]
            cols = [c for c in self.tasks + self.probes if c in one.index.get_level_values("column")]
            mean[method] = one["mean"].unstack("column")[cols]
            std[method] = one["std"].unstack("column")[cols]
        return mean, std

    def _delta_std(self) -> dict[str, pd.DataFrame]:
        if len(self.runs) < 2:
            return {}
        probes = self.matrix[self.matrix["column"].isin(self.probes)]
        base = probes[probes["step"] == 0].set_index(["method", "run", "column"])["accuracy"]
        delta = probes.assign(delta=probes["accuracy"].to_numpy()
                              - base.reindex(pd.MultiIndex.from_frame(probes[["method", "run", "column"]])).to_numpy())
        out = {}
        for method, frame in delta.groupby("method", sort=False):
            out[method] = frame.pivot_table(index="step", columns="column", values="delta",
                                            aggfunc=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan)
        return out
