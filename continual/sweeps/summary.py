"""A sweep's aggregate: the report's final metrics of each cell done, mean ± std over seeds per (sequence,
grid point, method), written as sweep.csv, sweep.md, a figure per swept number and, for a paper, sweep.tex
and figures/ (which, once asked, every later write rewrites: report/outputs.py)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import yaml

from continual.run_folder import CONFIG, FIGURES
from continual.sweeps.cells import cell_methods, state
from continual.sweeps.spec import Cell, SweepFile


def aggregate(cells: list[Cell]) -> pd.DataFrame:
    """One row per (sequence, grid point, method, metric): mean, std and n over the seeds of the cells done
    (the report's final metrics of each cell, reduced as the report reduces seeds)."""
    from continual.report import aggregate as over_seeds, load_tables  # pandas only; the cells' numbers

    frames = []
    for cell in cells:
        if state(cell)[0] == "done":
            summary = load_tables(cell.run_folder)["summary"]  # every method of its config; the cell ran these:
            frames.append(summary[summary["method"].isin(cell_methods(cell))].assign(sequence=cell.name, **dict(cell.point)))
    if not frames:
        return pd.DataFrame()
    return over_seeds(frames, by=["sequence", *[k for k, _ in cells[0].point], "method", "metric"])


def write_summary(spec: SweepFile, cells: list[Cell], table: pd.DataFrame, root: Path, *, latex: bool | None = None,
                  formats: Iterable[str] | None = None) -> Path | None:
    """<root>/sweep.csv (`table`, the aggregate), sweep.md (its main metrics and each probe's Δ, methods named by
    their legend entries) and a figure per swept number (sweep-<key>.png); None when no cell is done yet. A key
    that gets no figure (one value, or values that are not all numbers) says why, on stderr and in sweep.md.
    For a paper: `latex` also writes sweep.tex (one booktabs table of sweep.md's metrics, report/latex.py), and
    `formats` (any of png, pdf, svg) each figure as figures/sweep-<key>.<format>, two columns wide (plots.py).
    Once asked, they stay asked: False, None or no formats write them as the sweep's report.json recorded
    (report/outputs.py; `continual sweep` and `sweep report` without --latex pass False), so sweep.tex never keeps
    the cells of a smaller grid; a file written before and no longer drawn (a key no longer swept, a format no
    longer asked for) is removed. Everything is made before the first file is written, and each file is written
    whole (atomic_write); a figure that fails is left out with a warning."""
    from continual.report import outputs
    from continual.report.cells import Table, grid_value, label, mean_std, signed
    from continual.report.latex import SWEEP, sweep_metrics, sweep_rows, sweep_tex

    formats = None if formats is None else _formats(formats)  # ReportError naming an unknown one, before writing
    if table.empty:
        return None
    latex, formats, before = outputs.asked(root, latex=latex, formats=formats, legacy=_legacy_files,
                                           tex="sweep.tex")
    keys = [k for k, _ in cells[0].point]
    labels = _labels(cells)
    shown = sweep_metrics(table)
    rows = sweep_rows(table, keys)  # ((sequence, *grid values, method), {metric: (mean, std, n)})
    counts = {n for _, c in rows for mean, _, n in c.values() if n and mean == mean}
    one_n = len(counts) <= 1  # every cell over the same seeds: n once, in the heading
    md = Table(["sequence", *keys, "method", *([] if one_n else ["n"]), *map(label, shown)], [])
    for (sequence, *point, method), values in rows:
        n_row = max((n for mean, _, n in values.values() if n and mean == mean), default=0)
        texts = []
        for metric in shown:
            mean, std, n = values.get(metric, (float("nan"), float("nan"), 0))
            text = mean_std(mean, std, n, sign=signed(metric))
            texts.append(f"{text} (n={n})" if 0 < n != n_row and mean == mean else text)
        name = labels.get((sequence, *point, method), method)
        md.rows.append([str(sequence), *map(grid_value, point), name, *([] if one_n else [str(n_row)]), *texts])
    n = next(iter(counts), 0)
    over = (f"Mean ± std over {n} seeds" if n > 1 else "One seed") if one_n else \
        "Mean ± std over the row's n seeds ((n=k): a cell over k seeds)"
    notes = [f"{over}, in %" + ("; Δ: probe accuracy minus the pre-trained model's (pp)." if len(shown) > len(SWEEP)
                                else ".")]
    files: dict[str, str | bytes] = {"sweep.csv": table.to_csv(index=False)}
    if latex:
        files["sweep.tex"] = sweep_tex(table, name=spec.name, keys=keys, labels=labels)
    for key in keys:  # a figure per swept number: metric against its value
        swept = table[key].dropna().unique()
        stem, others = f"sweep-{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}", [k for k in keys if k != key]
        # numpy's numbers too: a grid of integers reads back as numpy.int64, which is no `int` (no figure was drawn)
        why = ("it takes one value in the cells done" if len(swept) < 2 else
               f"its values are not all numbers ({', '.join(map(repr, map(_plain, swept)))})"
               if not all(pd.api.types.is_number(v) and not pd.api.types.is_bool(v) for v in swept) else None)
        if why is None:
            from continual import plots  # matplotlib: only when there is something to draw

            try:
                drawn = {f"{stem}.png": plots.sweep_png(table, key=key, others=others)}
                if formats:  # for a paper: two columns wide, 8 pt, fonts embedded
                    fig = plots.sweep_figure(table, key=key, others=others, paper=True)
                    drawn |= {f"{FIGURES}/{stem}.{fmt}": plots.figure_bytes(fig, fmt) for fmt in formats}
            except Exception as err:  # a figure never stops a sweep
                why = f"{type(err).__name__}: {err}"
            else:
                files |= drawn
        if why is not None:
            print(f"warning: {root}: no figure for {key}: {why}", file=sys.stderr)
            notes.append(f"No figure for `{key}`: {why}.")
    files["sweep.md"] = f"# {spec.name}\n\n" + "\n\n".join(notes) + "\n\n" + md.markdown()
    outputs.write(root, files, latex=latex, formats=formats, before=before, tracked=_ours)
    return root / "sweep.csv"


_SWEEP_FIGURE = re.compile(r"^sweep-[A-Za-z0-9_.-]+$")


def _ours(name: str) -> bool:
    """A file of a sweep's report that may go stale: sweep.tex, sweep-<key>.png, figures/sweep-<key>.<format>."""
    from continual.report.outputs import figure_file

    stem, _, ext = name.rpartition("/")[2].rpartition(".")
    return name == "sweep.tex" or bool(_SWEEP_FIGURE.match(stem)) and (
        "/" not in name and ext == "png" or figure_file(name))


def _legacy_files(root: Path) -> list[str]:
    """The files of a sweep's report in `root`, written before its report.json recorded them."""
    found = [p.name for p in root.glob("sweep*") if p.is_file() and _ours(p.name)]
    return found + [f"{FIGURES}/{p.name}" for p in root.glob(f"{FIGURES}/sweep-*") if _ours(f"{FIGURES}/{p.name}")]


def _plain(value):
    """A numpy scalar as the Python value it holds (repr `0.1`, not `np.float64(0.1)`)."""
    return value.item() if hasattr(value, "item") else value


def _labels(cells: list[Cell]) -> dict[tuple, str]:
    """(sequence, *grid values, method) -> the method's legend entry (`ldifs (λ = 10)`, report/tables.py
    method_labels) from the config.yaml of a cell of that grid point."""
    from continual.report.tables import method_labels

    labels: dict[tuple, str] = {}
    read = set()  # (sequence, *grid values) whose labels are known: one cell of a point is enough
    for cell in cells:
        point = (cell.name, *(v for _, v in cell.point))
        if point in read or not (cell.run_folder / CONFIG).is_file():
            continue
        try:
            config = yaml.safe_load((cell.run_folder / CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(config, dict):
            read.add(point)
            labels |= {(*point, method): text for method, text in method_labels(config).items()}
    return labels


def _formats(formats: Iterable[str]) -> tuple[str, ...]:
    """The figure formats checked (ReportError naming an unknown one); matplotlib is imported only when asked."""
    if not formats:
        return ()
    from continual.report.page import figure_formats

    return figure_formats(formats)
