"""The report page: index.html (figures embedded), summary.md and summary.csv for one or more run folders,
and on request what a paper takes: tables.tex (report/latex.py) and the figures as files.

    write_report([Path("reports/mnist-fashion-animals")])   # -> index.html, summary.md, summary.csv there
    write_report([...], latex=True, formats=["pdf"])        # and tables.tex, figures/*.pdf, from now on
    write_report([...], methods=["ldifs", "finetune"])      # those methods only, in this order

Numbers come from `report/tables.py`, figures from `continual/plots.py`. Reads files only: no torch, no
models (torch is consulted for the GPU name only when the calling process has already imported it,
i.e. inside `continual run`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import importlib.metadata
import json
import os
import pickle
import platform
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from continual import metrics, plots
from continual.files import atomic_write, read_json
from continual.report import outputs
from continual.report.cells import MISSING, Table, best, label, mean_std, signed
from continual.report.latex import tables_tex
from continual.report.tables import COSTS, ReportError, Summary, read_run
from continual.run_folder import ENVIRONMENT, FIGURES, INDEX, SUMMARY_CSV, SUMMARY_MD, TABLES_TEX
from continual.tree import flatten

# The tables' metrics, in table order (their headers: cells.LABELS).
MAIN = ["final_average_accuracy", "average_incremental_accuracy", "forgetting", "bwt", "plasticity"]
TRANSFER = ["zscl_transfer", "zscl_avg", "zscl_last", "forward_transfer"]
# Each cost (tables.COSTS) as the tables show it: (scale from summary.csv's unit, digits).
COST_UNITS = {
    "cost:wall_seconds": (1, 1),
    "cost:gpu_hours": (1, 3),
    "cost:peak_gpu_memory_bytes": (2**-30, 2),  # GiB
    "cost:trainable_parameters": (1e-6, 2),  # millions
    "cost:extra_storage_bytes": (2**-20, 1),  # MiB
    "cost:train_images_per_second": (1, 1),
}
COST_LEGEND = ("Per method, over steps 1..T, mean ± std over the runs where it is complete (summary.csv: "
               "`cost:*`, in seconds, bytes and parameters). Wall time: training (the method's whole fit_task) "
               "plus evaluation, summed. GPU-hours: wall time × the GPUs the run used; 0 on CPU. Peak GPU memory: "
               "the most torch.cuda.max_memory_allocated while a task trained; — on CPU. Trainable parameters: "
               "the most elements any step trained (those given a gradient). Extra storage: the most a method "
               "kept besides the model (its state between tasks as its checkpoint saves it: EWC's parameters and "
               "importances, LwF's previous model, replay's buffer, FLYP's text tower; LDIFS's anchor cache); "
               "frozen copies of the pre-trained model it rebuilds on resume (LDIFS's, ZSCL's) are not counted. "
               "Training images/s: optimiser steps × batch size / training seconds (replayed images not counted). "
               "—: not recorded (runs written before these were), or nothing trained.")
PACKAGES = ["torch", "torchvision", "open_clip_torch", "avalanche-lib", "numpy", "pandas", "matplotlib", "continual"]


def write_report(run_folders: list[Path], out: Path | None = None, *, record_environment: bool = False,
                 latex: bool | None = None, formats: Iterable[str] | None = None,
                 methods: list[str] | None = None) -> Path:
    """Write index.html, summary.md and summary.csv for one or more run folders of one sequence into `out`
    (default: the first run folder) and return `out`. ReportError, with nothing written, when a folder
    is not a run folder, the folders hold different sequences, a format is unknown or `methods` names a method
    that ran in none of them (UnknownMethods). `record_environment` (set by a run's live report) saves the
    software and machine of the running process as environment.json in each run folder, so that a report
    written later, elsewhere, still names the machine that ran.
    `methods`: the methods shown, in this order (rows, legends, heatmaps); default: every method that ran.
    For a paper: `latex` also writes tables.tex (booktabs tables, report/latex.py), and `formats` (any of
    png, pdf, svg) the figures as figures/<name>.<format>, at a paper's sizes (plots.py). Either left None is
    as the report in `out` was last asked (its report.json, report/outputs.py): so every write of a report
    (the live report's too) rewrites its tables.tex and figures, and removes those it no longer draws."""
    if not run_folders:
        raise ReportError("no run folder given")
    formats = None if formats is None else figure_formats(formats)
    runs = [read_run(f) for f in run_folders]
    first = runs[0]
    for run in runs[1:]:
        if run.name != first.name or run.tasks != first.tasks:
            raise ReportError(f"{run.folder}: sequence {run.name!r} (tasks {', '.join(run.tasks)}) is not the "
                              f"sequence of {first.folder} ({first.name!r}, tasks {', '.join(first.tasks)})")
    out = Path(out) if out is not None else first.folder
    report = Report(runs, methods=methods)
    latex, formats, before = outputs.asked(out, latex=latex, formats=formats, legacy=_legacy_files, tex=TABLES_TEX)
    if record_environment:
        for run in runs:
            atomic_write(run.folder / ENVIRONMENT, json.dumps(environment(), indent=1))
    # Everything is drawn before the first file is written: a drawing that fails leaves no half report.
    files = {SUMMARY_CSV: report.summary.to_csv(index=False, float_format="%.6f"), SUMMARY_MD: report.markdown(),
             INDEX: report.html()}
    if latex:
        files[TABLES_TEX] = tables_tex(report)
    for fig in report.figure_list if formats else []:
        for fmt, content in _draw(fig.fn, *fig.args, formats=formats, paper=True, **fig.kwargs).items():
            files[f"{FIGURES}/{fig.name}.{fmt}"] = content
    outputs.write(out, files, latex=latex, formats=formats, before=before, tracked=_ours)
    return out


# The names of the report's figures (figures/<name>.<format>): Report.figure_list.
_FIGURE_NAME = re.compile(r"^(accuracy_vs_forgetting|forgetting_curves|concept_forgetting|accuracy_matrix_.+)$")


def _ours(name: str) -> bool:
    """A file of the report's own names besides the page: tables.tex, figures/<one of its figures>.<format>."""
    return name == TABLES_TEX or outputs.figure_file(name) and bool(_FIGURE_NAME.match(name[len(FIGURES) + 1:]
                                                                                        .rpartition(".")[0]))


def _legacy_files(out: Path) -> list[str]:
    """The report's optional files in `out`, written before report.json recorded them."""
    found = [TABLES_TEX] if (out / TABLES_TEX).is_file() else []
    if (out / FIGURES).is_dir():
        found += sorted(n for p in (out / FIGURES).iterdir() if _ours(n := f"{FIGURES}/{p.name}") and p.is_file())
    return found


def figure_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """Figure formats as given (a list, or a comma list `png,pdf`), checked and without repeats; ReportError
    naming the unknown ones."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    unknown = [f for f in items if f not in plots.FORMATS]
    if unknown:
        raise ReportError(f"unknown figure format {', '.join(map(repr, unknown))} (known: {', '.join(plots.FORMATS)})")
    return tuple(dict.fromkeys(items))


def environment() -> dict:
    """Software versions (from package metadata, nothing imported) and the machine of this process."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": _processor()}
    torch = sys.modules.get("torch")  # importing torch costs seconds; only ask a process that has it loaded
    if torch is not None and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    return {"versions": versions, "machine": machine}


def _processor() -> str:
    try:  # platform.processor() is often empty on Linux; /proc/cpuinfo names the model
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Report(Summary):
    """What the three files show, drawn from the numbers (report/tables.py): the tables (report/cells.py's Table,
    tables.tex's too: report/latex.py) and the figures."""

    # --- tables

    def metric_table(self, names: list[str], *, higher_better: dict[str, bool], label=label) -> Table:
        """One row per method (its legend entry, `ldifs (λ = 10)`, as in the figures and tables.tex), a column
        per metric (headed `label(metric)`): mean ± std in % (cells.mean_std; the differences signed,
        cells.signed); bold: the best mean of each column (ties all bold), where more than one method has a value."""
        headers = ["method", *(label(n) for n in names)]
        rows, bold = [], set()
        for method in self.methods:
            rows.append([self.labels[method]] + [mean_std(*self.value(method, n), sign=signed(n)) for n in names])
        for j, name in enumerate(names, start=1):
            means = [self.value(m, name)[0] for m in self.methods]
            bold |= {(i, j) for i in best(means, higher_better=higher_better[name])}
        return Table(headers, rows, bold)

    def main_table(self) -> Table:
        names = MAIN + [f"concept_delta:{p}" for p in self.probes]
        better = {n: metrics.FINAL[n][1] for n in MAIN} | {n: True for n in names if n.startswith("concept")}
        table = self.metric_table(names, higher_better=better)
        table.headers.insert(1, "status")
        for row, method in zip(table.rows, self.methods):
            worse = self.learned_worse(method)
            row.insert(1, self.status(method) + (f"; ⚠ worse after learning: {', '.join(worse)}" if worse else ""))
        table.bold = {(i, j + 1) for i, j in table.bold}
        return table

    def learned_worse(self, method: str) -> list[str]:
        """Tasks that scored clearly below their starting head right after being learned (the runner's
        rule, docs/learned-worse.md): `mnist (0.930 -> 0.510)` for one run, else
        `mnist (2 of 3 runs)`."""
        found: dict[str, list[str]] = {}
        for run in self.runs:
            doc = run.methods[method].doc if method in run.methods else None
            for t in (doc or {}).get("timings", []):
                if isinstance(t, dict) and isinstance(t.get("learned_worse"), dict) and 1 <= t.get("step", 0) <= len(self.tasks):
                    w = t["learned_worse"]
                    found.setdefault(self.tasks[t["step"] - 1], []).append(f"{w['before']:.3f} -> {w['after']:.3f}")
        if len(self.runs) == 1:
            return [f"{task} ({changes[0]})" for task, changes in found.items()]
        return [f"{task} ({len(changes)} of {len(self.runs)} runs)" for task, changes in found.items()]

    def transfer_table(self) -> Table:
        return self.metric_table(TRANSFER, higher_better={n: metrics.FINAL[n][1] for n in TRANSFER})

    def per_task_table(self) -> Table:
        names = [f"plasticity:{t}" for t in self.tasks] + [f"forgetting:{t}" for t in self.tasks[:-1]]
        better = {n: n.startswith("plasticity") for n in names}
        return self.metric_table(names, higher_better=better,
                                 label=lambda n: f"{n.split(':')[0]} {self.tasks.index(n.split(':', 1)[1]) + 1}: "
                                                 f"{n.split(':', 1)[1]}")

    def matrix_table(self, mean: pd.DataFrame, std: pd.DataFrame) -> Table:
        n = len(self.runs)
        headers = ["step", *mean.columns]
        rows, bold = [], set()
        for i, step in enumerate(mean.index):
            rows.append([str(step)] + [mean_std(mean.loc[step, c], std.loc[step, c], n if n > 1 else 1)
                                       for c in mean.columns])
            if 1 <= step <= len(self.tasks):
                bold.add((i, step))  # the diagonal: the task just learned
        return Table(headers, rows, bold)

    def cost_table(self, names: list[str] | None = None) -> Table:
        """One row per method, a column per COSTS metric (`names`, default all) as summary.md shows it (mean ± std
        over the runs where it is complete; — where the runs did not record it); bold: the best of each column
        (fewest seconds, bytes, parameters; most images/s)."""
        names = list(COSTS) if names is None else names
        rows, bold = [], set()
        for method in self.methods:
            rows.append([self.labels[method]] + [mean_std(*self.value(method, n), scale=COST_UNITS[n][0],
                                                          digits=COST_UNITS[n][1]) for n in names])
        for j, name in enumerate(names, start=1):
            means = [self.value(m, name)[0] for m in self.methods]
            bold |= {(i, j) for i in best(means, higher_better=not COSTS[name][1])}
        return Table(["method", *(COSTS[n][0] for n in names)], rows, bold)

    def timing_table(self) -> Table:
        cols = [("fit_seconds", "fit (s)"), ("eval_seconds", "evaluation (s)"), ("total_seconds", "total (s)"),
                ("step0_seconds", "step 0, shared (s)"), ("train_steps", "optimiser steps")]
        if len(self.timings) and (self.timings["metric"] == "buffer_images").any():
            cols.append(("buffer_images", "replay buffer (images)"))
        found = {(m, k): (a, b, n) for m, k, a, b, n in
                 self.timings[["method", "metric", "mean", "std", "n"]].itertuples(index=False)} \
            if len(self.timings) else {}
        rows = []
        for method in self.methods:
            row = [self.labels[method]]
            for key, _ in cols:
                digits = 0 if key in ("train_steps", "buffer_images") else 1
                row.append(mean_std(*found[method, key], scale=1, digits=digits) if (method, key) in found
                           else MISSING)
            row.append(self.losses.get(method, MISSING))
            rows.append(row)
        losses = "loss terms, last step" + (" (first run)" if len(self.runs) > 1 else "")
        return Table(["method", *(c[1] for c in cols), losses], rows)

    # --- figures

    @functools.cached_property
    def figure_list(self) -> list[_Figure]:
        """Every figure of the report, in page order: the summary, the curves, a heatmap per method."""
        mean, std = self.mean, self.std
        runs = (f"mean over the {len(self.runs)} runs that reached each step, shaded ± std" if len(self.runs) > 1
                else "one run")
        out = []
        points = pd.DataFrame({m: {"acc": self.value(m, "final_average_accuracy")[0],
                                   "acc_std": self.value(m, "final_average_accuracy")[1],
                                   "forgetting": self.value(m, "forgetting")[0],
                                   "forgetting_std": self.value(m, "forgetting")[1]} for m in self.methods}).T
        out.append(_Figure("accuracy_vs_forgetting", "Accuracy against forgetting",
                           "Final average accuracy A_T against average forgetting F_T after the last task, one point "
                           "per method" + (" (bars: ± std over runs)" if len(self.runs) > 1 else "") + ".",
                           plots.summary_figure, (points,), {"methods": self.methods, "labels": self.labels}))
        out.append(_Figure("forgetting_curves", "Forgetting curves",
                           f"Accuracy on each task after every step ({runs}). Grey: before the task is learned "
                           "(transfer); ★ and the dotted line: the step it is learned; the grey dotted line below: "
                           "chance (a uniform guess among the classes it is scored on).",
                           plots.forgetting_curves_figure, (mean, std),
                           {"methods": self.methods, "tasks": self.tasks, "n_steps": self.n_steps,
                            "labels": self.labels, "chance": self.chance}))
        if self.probes:
            deltas = {m: (f[[p for p in self.probes if p in f]] - f[[p for p in self.probes if p in f]].loc[0])
                      for m, f in mean.items() if 0 in f.index}
            # The std of Δ over runs: Δ is computed per run first (step 0 differs across seeds).
            d_std = self._delta_std()
            out.append(_Figure("concept_forgetting", "Concept forgetting",
                               "Probe accuracy minus the pre-trained model's (step 0), in percentage points, after "
                               f"every step ({runs}); below zero: forgotten.",
                               plots.concept_curves_figure, (deltas, d_std),
                               {"methods": self.methods, "probes": self.probes, "n_steps": self.n_steps,
                                "labels": self.labels}))
        for method in self.methods:
            if method not in mean:
                continue
            title = self.labels.get(method, method) + (f" (mean of {len(self.runs)} runs)" if len(self.runs) > 1
                                                        else "")
            out.append(_Figure(f"accuracy_matrix_{method}", f"accuracy matrix of {self.labels[method]}",
                               "Accuracy on each task, then probe (columns), after each step (rows); boxed: the step "
                               "a task is learned.", plots.heatmap_figure, (mean[method],),
                               {"title": title, "tasks": self.tasks, "n_steps": self.n_steps}, method=method))
        return out

    def figures(self) -> list[tuple[str, str, bytes]]:
        """(title, caption, png) of the page's figures but the heatmaps, in page order."""
        return [(f.title, f.caption, f.png()) for f in self.figure_list if f.method is None]

    def heatmaps(self) -> list[tuple[str, bytes, Table]]:
        """(method, png, its matrix as a table) per method with a matrix."""
        return [(f.method, f.png(), self.matrix_table(self.mean[f.method], self.std[f.method]))
                for f in self.figure_list if f.method is not None]

    # --- files

    def _runs_line(self) -> str:
        return ", ".join(f"{r.folder} (seed {r.seed})" for r in self.runs)

    def _legend(self) -> str:
        n = len(self.runs)
        agg = (f"mean ± std (sample std) over the {n} runs in which a method is complete"
               if n > 1 else "one run, no std")
        return (f"Accuracies and their differences in % (percentage points); {agg}. Bold: best per column. "
                "⚠ in the status: a task scored clearly lower right after it was learned than with the head it started "
                "from (see docs/outputs.md). Formulas: `continual/metrics.py` module docstring. A_T: average accuracy over all tasks after "
                "the last; forgetting F_T: best accuracy since learned minus final, averaged over all tasks but "
                "the last; BWT: final minus right after learning; plasticity: right after learning; Δ <probe>: "
                "final probe accuracy minus the pre-trained model's (concept forgetting, < 0 = forgotten). "
                "ZSCL (Zheng et al. 2023) on the T × T matrix after steps 1..T: Transfer = accuracy on each task "
                "before it is learned (upper triangle, per column then averaged), Avg = all entries, Last = the "
                "last row; FWT = accuracy on task j just before learning it minus at step 0.")

    def markdown(self) -> str:
        parts = [f"# {self.first.name}\n", f"Runs: {self._runs_line()}.\n", self._legend() + "\n",
                 "## Final metrics\n", self.main_table().markdown(),
                 "## Transfer (ZSCL) and forward transfer\n", self.transfer_table().markdown(),
                 "## Per task\n", "Plasticity j: accuracy right after learning task j; forgetting j: its best "
                 "accuracy since then minus its final accuracy.\n", self.per_task_table().markdown(),
                 "## Accuracy matrices\n", "Rows: step (0 = pre-trained); bold: the step a task is learned.\n"]
        mean, std = self.mean, self.std
        for method in self.methods:
            if method in mean:
                parts += [f"### {self.labels[method]}\n", self.matrix_table(mean[method], std[method]).markdown()]
        parts += ["## Cost\n", COST_LEGEND + "\n", self.cost_table().markdown()]
        parts += ["## Wall time\n", "Seconds per method, summed over steps 1..T (step 0, the pre-trained model's "
                  "evaluation, is shared by all methods and counted separately).\n", self.timing_table().markdown()]
        return "\n".join(parts)

    def html(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        body = [f"<h1>{html.escape(self.first.name)}</h1>",
                f"<p class=meta>Runs: {html.escape(self._runs_line())}. Report written {started}.</p>",
                f"<p class=legend>{_code(html.escape(self._legend()))}</p>",
                "<h2>Final metrics</h2>", self.main_table().html(),
                "<h2>Transfer (ZSCL) and forward transfer</h2>", self.transfer_table().html()]
        figures = self.figures()
        body += [f"<h2>{html.escape(figures[0][0])}</h2>", _figure(*figures[0])]
        body += ["<h2>Per task</h2>", "<p>Plasticity j: accuracy right after learning task j; forgetting j: its "
                 "best accuracy since then minus its final accuracy.</p>", self.per_task_table().html()]
        for title, caption, png in figures[1:]:
            body += [f"<h2>{html.escape(title)}</h2>", _figure(title, caption, png)]
        body += ["<h2>Accuracy matrices</h2>", "<p>Rows: step (0 = the pre-trained model with each task's initial "
                 "head); columns: tasks in sequence order, then probes. Boxed / bold: the step a task is learned."
                 "</p>"]
        for method, png, table in self.heatmaps():
            name = self.labels[method]
            body += [f"<section class=method><h3>{html.escape(name)}</h3>"
                     f"<div class=pair>{_img(png, f'accuracy matrix of {name}')}{table.html()}</div></section>"]
        body += ["<h2>Cost</h2>", f"<p>{_code(html.escape(COST_LEGEND))}</p>", self.cost_table().html()]
        body += ["<h2>Wall time</h2>", "<p>Seconds per method, summed over steps 1..T; step 0 (evaluating the "
                 "pre-trained model) is shared by all methods and shown apart.</p>", self.timing_table().html()]
        body += ["<h2>Configuration</h2>", self._config_html()]
        body += ["<h2>Software and machine</h2>", self._environment_html()]
        return _PAGE.format(title=html.escape(f"{self.first.name}: continual report"), body="\n".join(body))

    def _config_html(self) -> str:
        parts = [f"<p>config.yaml of {html.escape(str(self.first.folder))}:</p>",
                 f"<pre>{html.escape(self.first.config_text or '(no config.yaml)')}</pre>"]
        base = flatten(yaml.safe_load(self.first.config_text or "{}") or {})
        for run in self.runs[1:]:
            other = flatten(yaml.safe_load(run.config_text or "{}") or {})
            diff = [f"{k}: {base.get(k)!r} → {other.get(k)!r}" for k in dict.fromkeys([*base, *other])
                    if base.get(k) != other.get(k)]
            parts.append(f"<p>{html.escape(str(run.folder))} differs in: "
                         f"{html.escape('; '.join(diff) or 'nothing')}</p>")
        return "\n".join(parts)

    def _environment_html(self) -> str:
        parts = []
        for run in self.runs:
            path = run.folder / ENVIRONMENT
            try:
                env, source = read_json(path), f"recorded by the run in {path}"
            except (OSError, ValueError):  # none, or damaged (BadFile): what the report's process runs on, said so
                env = None
            if not isinstance(env, dict) or not all(isinstance(env.get(k, {}), dict) for k in ("versions", "machine")):
                env, source = environment(), (f"{run.folder} recorded none; this is the process that wrote the "
                                              "report, not necessarily the one that ran")
            items = {**env.get("versions", {}), **env.get("machine", {})}
            rows = [[k, str(v)] for k, v in items.items()]
            parts += [f"<p>{html.escape(source)}:</p>", Table(["software / machine", "version / value"], rows).html()]
        return "\n".join(parts)




@dataclass
class _Figure:
    """A figure of the report: its file name (figures/<name>.<format>), title and caption on the page, and
    the drawing (`fn(*args, **kwargs)`, a plots.py function that returns a matplotlib Figure)."""

    name: str
    title: str
    caption: str
    fn: object
    args: tuple
    kwargs: dict
    method: str | None = None  # a method's heatmap

    def png(self) -> bytes:
        """As the page shows it: the page's sizes, PNG."""
        return _draw(self.fn, *self.args, **self.kwargs)["png"]


# Drawings by a hash of their inputs. While a run goes the report is redrawn after every step, and only the
# figures of the method that is training change: the others come from here (a drawing is ~0.1-0.5 s).
_DRAWN: dict[str, dict[str, bytes]] = {}


def _draw(fn, *args, formats: tuple[str, ...] = ("png",), **kwargs) -> dict[str, bytes]:
    """{format: bytes} of the figure `fn(*args, **kwargs)`, drawn once and saved in each format."""
    key = hashlib.sha256(pickle.dumps((fn.__name__, args, sorted(kwargs.items()), formats))).hexdigest()
    if key not in _DRAWN:
        while len(_DRAWN) >= 64:  # the oldest drawings go first (dicts keep insertion order)
            del _DRAWN[next(iter(_DRAWN))]
        fig = fn(*args, **kwargs)
        _DRAWN[key] = {fmt: plots.figure_bytes(fig, fmt) for fmt in formats}
    return _DRAWN[key]


def _code(text: str) -> str:
    """`x` (Markdown code) as <code>x</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(title: str, caption: str, png: bytes) -> str:
    return f"<figure>{_img(png, title)}<figcaption>{html.escape(caption)}</figcaption></figure>"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #111; line-height: 1.4; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.8em; }}
.meta, .legend, figcaption {{ color: #444; font-size: 0.9em; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }} td {{ white-space: nowrap; }}
td.text, th.text, td:first-child, th:first-child {{ text-align: left; white-space: normal; }}
code {{ font-size: 0.95em; }}
img {{ max-width: 100%; height: auto; }}
figure {{ margin: 1em 0; }}
.pair {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }}
.pair img {{ max-width: 520px; }}
pre {{ background: #f6f6f6; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }}
@media print {{ body {{ max-width: none; }} h2 {{ break-after: avoid; }} figure, table {{ break-inside: avoid; }} }}
</style></head>
<body>
{body}
</body></html>
"""
