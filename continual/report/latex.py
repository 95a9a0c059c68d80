r"""tables.tex: the report's main numbers as booktabs tables, for a paper (`continual report --latex`).

    \usepackage{booktabs}   % in the paper's preamble
    \input{tables.tex}      % where the tables go

Three `table` floats: the final metrics (A_T, F_T, BWT, Δ per probe column) and ZSCL's Transfer / Avg / Last
in % as summary.md gives them, and each method's cost (COST: wall time, peak GPU memory, trainable parameters,
extra storage, in summary.md's units); mean $\pm$ std over runs (the std from two runs on), the best of each column
in bold by page.py's rule (metric_table), each method named by its legend entry (`ldifs ($\lambda$ = 10)`).
The cells, their escaping and the booktabs float are report/cells.py's (Table.latex), as summary.md's are.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pandas as pd

from continual import metrics
from continual.report.cells import Table, best, escape, grid_value, mean_std, signed
from continual.report.tables import COSTS

if TYPE_CHECKING:
    from continual.report.page import Report

FINAL = ["final_average_accuracy", "forgetting", "bwt"]
ZSCL = ["zscl_transfer", "zscl_avg", "zscl_last"]
# The cost table's columns (tables.COSTS; all six with mean ± std are ~120 pt wider than an article's text):
# GPU-hours (wall time × GPUs) and images/s (steps × batch / training time) follow from them and stay in summary.md.
COST = ["cost:wall_seconds", "cost:peak_gpu_memory_bytes", "cost:trainable_parameters", "cost:extra_storage_bytes"]
HEADERS = {"final_average_accuracy": r"$A_T$", "forgetting": r"$F_T$", "bwt": "BWT", "zscl_transfer": "Transfer",
           "zscl_avg": "Avg", "zscl_last": "Last", "cost:wall_seconds": "Time (s)",
           "cost:peak_gpu_memory_bytes": "Mem.\\ (GiB)", "cost:trainable_parameters": "Params (M)",
           "cost:extra_storage_bytes": "Extra (MiB)"}
SWEEP = ["final_average_accuracy", "forgetting", "bwt", "zscl_transfer", "zscl_last"]  # sweep.md's columns, then Δs


def sweep_metrics(table: pd.DataFrame) -> list[str]:
    """The metrics sweep.md and sweep.tex show of a sweep's aggregate: SWEEP, then each probe's Δ
    (concept_delta:<probe column>, the concept forgetting LDIFS is about) in the order the table has them."""
    probes = [m for m in dict.fromkeys(table["metric"]) if str(m).startswith("concept_delta:")] if len(table) else []
    return SWEEP + probes


def sweep_rows(table: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, dict[str, tuple[float, float, int]]]]:
    """The rows sweep.md and sweep.tex show of a sweep's aggregate (sweeps.aggregate), in the table's order:
    ((sequence, *values of the grid `keys`, method), {metric: (mean, std, n)}) for sweep_metrics' metrics."""
    main = table[table["metric"].isin(sweep_metrics(table))]
    return [(group, {r.metric: (r.mean, r.std, int(r.n)) for r in rows.itertuples(index=False)})
            for group, rows in main.groupby(["sequence", *keys, "method"], sort=False, dropna=False)]


def better(metric: str) -> bool:
    """Higher is better (continual.metrics.FINAL; a probe's Δ, concept_delta:<probe>, too)."""
    return metric.startswith("concept_delta:") or metrics.FINAL[metric][1]


def tables_tex(report: Report) -> str:
    """The contents of tables.tex for a report (page.py's Report)."""
    n = len(report.runs)
    over = rf"mean $\pm$ std over {n} runs" if n > 1 else "one run"
    probes = [f"concept_delta:{p}" for p in report.probes]
    better = {m: metrics.FINAL[m][1] for m in FINAL + ZSCL} | dict.fromkeys(probes, True)
    seeds = ", ".join(str(r.seed) for r in report.runs)
    parts = [f"% tables.tex of {report.first.name} ({n} run{'s' if n > 1 else ''}, seed {seeds}), written by "
             "`continual report --latex`.", r"% Needs \usepackage{booktabs}; then \input{tables.tex}. In a two-column "
             r"paper, a table wider than a column goes in \begin{table*} instead.", ""]
    final = report.metric_table(FINAL + probes, higher_better=better, label=str)
    parts.append(_booktabs(report, final, [HEADERS[m] for m in FINAL] + [_probe_header(p) for p in report.probes],
                           caption=f"{escape(report.first.name)}: final metrics in \\% ({over}). $A_T$: final average "
                           "accuracy; $F_T$: average forgetting; BWT: backward transfer"
                           + ("; $\\Delta$: probe accuracy minus the pre-trained model's (concept forgetting)"
                              if probes else "") + ".",
                           label="final"))
    zscl = report.metric_table(ZSCL, higher_better=better, label=str)
    parts.append(_booktabs(report, zscl, [HEADERS[m] for m in ZSCL],
                           caption=f"{escape(report.first.name)}: ZSCL's metrics (Zheng et al.\\ 2023) in \\% ({over}) "
                           "on the accuracy matrix after each task: Transfer, accuracy on tasks not yet learned; "
                           "Avg, on every task after every step; Last, after the last task.",
                           label="zscl"))
    cost = report.cost_table(COST)
    cost.headers[1:] = COST  # _booktabs reads each column's metric from its header
    parts.append(_booktabs(report, cost, [HEADERS[m] for m in COST],
                           caption=f"{escape(report.first.name)}: cost of each method over the tasks ({over}). Time: "
                           "wall time of training plus evaluation; Mem.: peak GPU memory allocated while training; "
                           "Params: parameters trained, in millions; Extra: storage a method keeps besides the model "
                           "(its state between tasks, LDIFS's anchor cache). GPU-hours and training images/s: "
                           "summary.md.",
                           label="cost", missing="not complete, not recorded by a run written before it was, or GPU "
                           "memory on CPU"))
    return "\n".join(parts)


def sweep_tex(table: pd.DataFrame, *, name: str, keys: list[str], labels: dict[tuple, str] | None = None) -> str:
    r"""The contents of sweep.tex (`continual sweep report --latex`): `table`, a sweep's aggregate (sweeps.aggregate:
    sequence, the grid `keys`, method, metric, mean, std, n), as one booktabs table of sweep.md's metrics
    (sweep_metrics: A_T, F_T, BWT, Transfer, Last, each probe's Δ), a row
    per (sequence, grid point, method) in the table's order (sweep_rows): mean $\pm$ std over seeds in %, `(n=k)`
    where fewer seeds than the most any row has gave a value, the best of each column within each sequence in bold
    (page.py's rule, cells.best: ties all bold, where more than one row has a value). `labels`: (sequence, *grid
    values, method) -> the method's legend entry (report/tables.py method_labels), else its key. Five metric columns
    or more besides the grid's do not fit a column of a two-column paper: the float is a `table*`, the page's width."""
    shown = sweep_metrics(table)
    groups = sweep_rows(table, keys)
    full = int(table[table["metric"].isin(shown)]["n"].max())
    rows, bold, breaks, fewer = [], set(), [], False
    for i, ((sequence, *point, method), values) in enumerate(groups):
        if i and sequence != groups[i - 1][0][0]:
            breaks.append(i)
        texts = []
        for metric in shown:
            mean, std, n = values.get(metric, (float("nan"), float("nan"), 0))
            text = mean_std(mean, std, n, sign=signed(metric))  # as tables.tex
            if 0 < n < full and mean == mean:
                text, fewer = f"{text} (n={n})", True
            texts.append(text)
        rows.append([sequence, *map(grid_value, point), (labels or {}).get((sequence, *point, method), method), *texts])
    names = 2 + len(keys)  # sequence, the grid's values, method
    for start, end in zip([0, *breaks], [*breaks, len(rows)]):  # the best of each column, per sequence
        for j, metric in enumerate(shown):
            means = [groups[i][1].get(metric, (float("nan"),))[0] for i in range(start, end)]
            bold |= {(start + i, names + j) for i in best(means, higher_better=better(metric))}
    sweep = Table(["sequence", *keys, "method", *shown], rows, bold)
    over = rf"mean $\pm$ std over {full} seeds" if full > 1 else "one seed"
    caption = (f"{escape(name)}: final metrics in \\% for each sequence, grid point and method ({over}). $A_T$: final "
               "average accuracy; $F_T$: average forgetting; BWT: backward transfer; Transfer and Last: ZSCL's "
               "(Zheng et al.\\ 2023)" + ("; $\\Delta$: probe accuracy minus the pre-trained model's (concept "
                                           "forgetting)" if len(shown) > len(SWEEP) else "") + ".")
    if fewer:
        caption += " (n=$k$): over $k$ seeds only."
    if sweep.missing(after=names):
        caption += " --: no value."
    caption += " Bold: the best of each column" + (" within each sequence." if breaks else ".")
    short = _short_keys(keys)
    columns = ["Sequence", *(escape(short[k]) for k in keys), "Method"] + [
        (HEADERS.get(m) or _probe_header(m.removeprefix("concept_delta:"))) + _arrow(m) for m in shown]
    head = [f"% sweep.tex of the sweep {name}, written by `continual sweep report --latex`.",
            r"% Needs \usepackage{booktabs}; then \input{sweep.tex}. A table* (the page's width in a two-column paper)."]
    head += [f"% Columns: {short[k]} = the grid's {k}." for k in keys if short[k] != k]
    return "\n".join(head + ["", sweep.latex(columns, names=names, align="l" + "r" * len(keys) + "l" + "r" * len(shown),
                                             caption=caption, label=f"tab:{_label(name)}-sweep", breaks=breaks,
                                             wide=True)])


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each grid key as a column header, named as the cells' folders name it (`lr`, `ldifs.lambda`): the full key
    (`training.lr`) is ~2 em wider than its values, and the table already fills a page's width. The full keys
    where two would read alike."""
    short = {k: ".".join(k.split(".")[-2:]) if k.startswith("methods.") else k.split(".")[-1] for k in keys}
    return short if len(set(short.values())) == len(keys) else {k: k for k in keys}


def _probe_header(column: str) -> str:
    name = column.removeprefix("probe:")
    return r"$\Delta$ " + (escape(name.removesuffix(":zero_shot")) + " (zero-shot)" if name.endswith(":zero_shot")
                           else escape(name))


def _booktabs(report: Report, table: Table, headers: list[str], *, caption: str, label: str,
              missing: str = "the method did not complete") -> str:
    """A `table` float of `table` (page.py's metric_table or cost_table: the legend entry, then cells) with
    `headers` (LaTeX) for its metric columns, the better direction marked in each; `missing`: what `--` means."""
    # metric_table's headers are the metric keys (label=str): concept_delta:<probe> is higher-better too.
    columns = ["Method"] + [h + _arrow(key) for h, key in zip(headers, table.headers[1:])]
    if table.missing(after=1):
        caption += f" --: no value ({missing})."
    caption += " Bold: the best of each column."
    return table.latex(columns, align="l" + "r" * len(headers), caption=caption,
                       label=f"tab:{_label(report.first.name)}-{label}")


def _arrow(metric: str) -> str:
    """The better direction of a metric (continual.metrics.FINAL, tables.COSTS; concept_delta:<probe> is
    higher-better)."""
    higher = not COSTS[metric][1] if metric in COSTS else metrics.FINAL.get(metric, (None, True))[1]
    return r" $\uparrow$" if higher else r" $\downarrow$"


def _label(name: str) -> str:
    """A sequence name as a \\label key: letters, digits, `.`, `+` and `-` (names allow `_` too)."""
    return re.sub(r"[^A-Za-z0-9.+-]", "-", name)
