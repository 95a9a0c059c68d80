"""Pictures of a run, drawn from saved numbers only (no torch).

Each `*_figure` function draws a matplotlib Figure and `figure_bytes(fig, fmt)` saves it as PNG, PDF or
SVG: the drawing code is written once, for the report page and for a paper alike. `paper=True` draws
for a paper (`continual report --format`): a column (3.5 in) or the page width of a two-column paper
(7.0 in) wide, ~8 pt type, 300 dpi; otherwise at the report page's sizes.
"""

from __future__ import annotations

import io
import numbers
import textwrap
import zlib
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from continual.methods import BUILTIN

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale print.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
FORMATS = ("png", "pdf", "svg")
# Widths of a figure in a two-column paper (IEEE: 3.5 in a column, 7.16 in the text; CVPR/ICML ~3.3/6.9):
# drawn at these, it is placed at 100% and its 8 pt type stays 8 pt.
COLUMN, TWO_COLUMNS = 3.5, 7.0
# Publishers' checkers (IEEE PDF eXpress, ACM's) reject Type 3 fonts, matplotlib's default in PDF: embed
# TrueType (42) instead; SVG text as paths looks the same without the fonts installed. Set per savefig
# (figure_bytes), never globally: the caller's own matplotlib settings stay as they were.
EMBEDDED_FONTS = {"pdf.fonttype": 42, "svg.fonttype": "path", "svg.hashsalt": "continual"}  # hashsalt: stable ids


@dataclass(frozen=True)
class Look:
    """Sizes for one medium, in points (whatever the dpi)."""

    dpi: int
    text: float | None  # axis labels (ticks 1 pt smaller); None: matplotlib's default, as the page always had
    title: float  # a panel's title
    subtitle: float  # the scatter's hint
    legend: float
    note: float  # legend titles, small print
    annotate: float  # the scatter's method names, the heatmap's numbers
    line: float  # curves' line width
    marker: float  # markers on the curves
    star: float  # where a task is learned
    point: float  # a method's point in the scatter


PAGE = Look(dpi=110, text=None, title=10, subtitle=9, legend=9, note=8, annotate=9, line=1.5, marker=4, star=13,
            point=8)
PAPER = Look(dpi=300, text=8, title=8, subtitle=7, legend=7, note=6.5, annotate=7, line=1.0, marker=2.5, star=8,
             point=5)


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """The figure saved as `fmt` (png, pdf, svg) at its own size and dpi, fonts embedded (EMBEDDED_FONTS);
    PDF and SVG without a date, so that the same figure gives the same bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r} (known: {', '.join(FORMATS)})")
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
    buf = io.BytesIO()
    with matplotlib.rc_context(EMBEDDED_FONTS):
        fig.savefig(buf, format=fmt, metadata=metadata)
    return buf.getvalue()


def _png(fig: Figure) -> bytes:
    return figure_bytes(fig, "png")


def _size(points: float | None) -> dict:
    """fontsize=points, or nothing (matplotlib's default) for None."""
    return {} if points is None else {"fontsize": points}


def _text_sizes(ax, look: Look) -> None:
    if look.text is not None:
        ax.tick_params(labelsize=look.text - 1)


def curves_png(matrix: pd.DataFrame, *, title: str, n_steps: int) -> bytes:
    """A method's curves.png (continual/report/live.py): curves_figure as PNG."""
    return _png(curves_figure(matrix, title=title, n_steps=n_steps))


def curves_figure(matrix: pd.DataFrame, *, title: str, n_steps: int) -> Figure:
    """Accuracy of each task (solid, a dot where it was learned) and probe (dashed) against the step."""
    fig = Figure(figsize=(6.4, 4.0), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    columns = [c for c in matrix.columns if c != "step"]
    tasks = [c for c in columns if not c.startswith("probe:")]
    for i, col in enumerate(columns):
        color, marker, _ = STYLES[i % len(STYLES)]  # more than 8 columns: colour and marker still tell them apart
        probe = col.startswith("probe:")
        ax.plot(matrix["step"], matrix[col], color=color, linestyle="--" if probe else "-", marker=marker,
                markersize=3, label=col)
        if not probe:
            learned = tasks.index(col) + 1
            hit = matrix[matrix["step"] == learned]
            if len(hit):
                ax.plot(learned, hit[col].iloc[0], marker="*", markersize=12, color=color, linestyle="none")
    ax.set_xlim(-0.2, n_steps + 0.2)
    ax.set_xticks(range(n_steps + 1))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step (tasks trained so far; ★ = the step a task is learned)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncols=2)
    return fig


# Report figures. Accuracies are drawn in percent, as papers print them. A method's style (colour, marker, line
# style) follows from its name, so that it is the same in every figure, and while a run goes.
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]  # a second cue besides colour, for greyscale print (not "*":
# the curves' ★ marks where a task is learned)
LINESTYLES = ["-", "--", "-.", ":"]


def _style_slot(k: int) -> tuple[str, str, str]:
    """Style number k: (colour, marker, line style). The first 64 differ pairwise in colour or marker (k = 8a + b:
    colour b, marker b + a), each run of 8 in both, and from the 9th on in line style too; the 256 of
    8 colours × 8 markers × 4 line styles are all different (k = 64c + 8a + b: line style a + c)."""
    a, b, c = k // 8 % 8, k % 8, k // 64
    return PALETTE[b], MARKERS[(a + b) % 8], LINESTYLES[(a + c) % 4]


STYLES = [_style_slot(k) for k in range(len(PALETTE) * len(MARKERS) * len(LINESTYLES))]
# The built-in methods have a style of their own each, in the registry's order (methods.BUILTIN: taken before
# any plugin registers, so a plugin changes no style).
BUILT_IN = list(BUILTIN)


def method_style(methods: list[str], labels: dict[str, str] | None = None) -> dict[str, dict]:
    """method -> its matplotlib style (color, marker, linestyle) and legend entry (`labels`: e.g. `ldifs (λ = 10)`,
    report/tables.py method_labels; else the method's key). Fixed by the name, never by the position: a built-in
    method has its own of STYLES; any other key (a labelled variant, a plugin) one chosen by a hash of it among
    the first 64 (distinct colour × marker pairs). Two that would share one take the next free style, built-ins
    first, then the others in an order of their names only: every method of a figure differs from the others
    (up to 256), and a method keeps its style whatever else is drawn, but for such a clash between two others."""
    labels = labels or {}

    def wish(name: str) -> tuple[int, str]:
        if name in BUILT_IN:
            return BUILT_IN.index(name), ""
        return len(BUILT_IN) + zlib.crc32(name.encode()) % (64 - len(BUILT_IN)), name

    slot: dict[str, int] = {}
    for name in sorted(dict.fromkeys(methods), key=lambda n: (n not in BUILT_IN, *wish(n))):
        k = wish(name)[0]
        while k in slot.values() and len(slot) < len(STYLES):  # beyond 256 methods, styles repeat
            k = (k + 1) % len(STYLES)
        slot[name] = k
    return {m: dict(zip(("color", "marker", "linestyle"), STYLES[slot[m]]), label=labels.get(m, m)) for m in methods}


def heatmap_figure(matrix: pd.DataFrame, *, title: str, tasks: list[str], n_steps: int,
                   paper: bool = False) -> Figure:
    """The accuracy matrix as annotated cells: rows = steps 0..n_steps, columns = tasks then probes.
    Cells where a task is learned are boxed; steps not reached (an incomplete run) are left blank.
    For a paper: one column wide."""
    look = PAPER if paper else PAGE
    columns = list(matrix.columns)
    values = matrix.reindex(range(n_steps + 1)).to_numpy(dtype=float) * 100
    names = [c.removeprefix("probe:").replace(":", "\n") if c.startswith("probe:") else c for c in columns]
    if paper:
        fig = Figure(figsize=(COLUMN, 1.0 + 0.25 * (n_steps + 1)), dpi=look.dpi, layout="constrained")
        # "88.5" is ~2.4 em wide: shrink the numbers (to 4.5 pt at most) where many columns share 3 in.
        cell = max(4.5, min(look.annotate, 75 / len(columns)))
        tick = look.text - 1
        # Names wider than their column are slanted.
        rotate = max(len(n) for n in " ".join(names).split()) * 0.55 * tick / 72 > 3.0 / len(columns)
    else:
        fig = Figure(figsize=(1.0 + 0.95 * len(columns), 1.2 + 0.42 * (n_steps + 1)), dpi=look.dpi,
                     layout="constrained")
        cell, tick, rotate = look.annotate, 8, False
    ax = fig.add_subplot()
    # No colour bar: every cell is printed, and a colour bar doubles the drawing time (the report is
    # redrawn after every step).
    ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if v != v else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=cell,
                    color="white" if v != v or v < 60 else "black")
    for j, col in enumerate(columns):
        if col in tasks:  # box the cell where the task is learned: its plasticity
            step = tasks.index(col) + 1
            ax.add_patch(_box(j, step, linewidth=1.8 if not paper else 1.2))
    if len(tasks) < len(columns):
        ax.axvline(len(tasks) - 0.5, color="white", linewidth=3 if not paper else 2)
    ax.set_xticks(range(len(columns)), names, fontsize=tick,
                  **({"rotation": 35, "ha": "right", "rotation_mode": "anchor"} if rotate else {}))
    ax.set_yticks(range(n_steps + 1))
    _text_sizes(ax, look)
    ax.tick_params(axis="x", labelsize=tick)
    ax.set_xlabel("evaluated on (task, then probe)", **_size(look.text))
    ax.set_ylabel("step (tasks trained)", **_size(look.text))
    ax.set_title(title, fontsize=look.title)
    return fig


def _box(j: int, i: int, *, linewidth: float = 1.8):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=linewidth, clip_on=False)


def _std(std: dict[str, pd.DataFrame], method: str, column: str, index) -> np.ndarray | None:
    """The std column in percent, aligned with the mean's steps; None where there is none (one run)."""
    if method not in std or column not in std[method]:
        return None
    return std[method][column].reindex(index).to_numpy() * 100


def _band(ax, x, mean, std, style: dict, label: str, *, look: Look) -> None:
    ax.plot(x, mean, color=style["color"], marker=style["marker"], linestyle=style["linestyle"],
            markersize=look.marker, linewidth=look.line, label=label)
    if std is not None and np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)


def _method_bands(ax, mean: dict[str, pd.DataFrame], std: dict[str, pd.DataFrame], *, methods: list[str],
                  column: str, style: dict, look: Look) -> dict[str, pd.Series]:
    """One line (± std band) per method for `column`, in percent; returns the plotted series by method."""
    plotted = {}
    for method in methods:
        if method not in mean or column not in mean[method]:
            continue
        m = mean[method][column] * 100
        if len(m) > 2 and m.iloc[1:-1].isna().all() and np.isfinite(m.iloc[-1]):  # scored at the last step only
            ax.axhline(m.iloc[-1], color=style[method]["color"], linestyle="--", linewidth=look.line * 0.8,
                       label=style[method]["label"])  # joint: a reference line, not a curve
        else:
            _band(ax, m.index, m.to_numpy(), _std(std, method, column, m.index), style[method], style[method]["label"],
                  look=look)
        plotted[method] = m
    return plotted


def _panels(count: int, *, max_cols: int, width: float, height: float, pad_w: float, pad_h: float,
            paper: bool):
    """A figure with `count` panels sharing the y axis (unused grid cells hidden): (fig, axes, ncols).
    On the page each panel is `width` x `height` inches; for a paper the figure is two columns wide, or one
    for a single panel."""
    ncols = min(count, max_cols)
    nrows = -(-count // ncols)
    size = ((TWO_COLUMNS if count > 1 else COLUMN, height * nrows + pad_h) if paper
            else (width * ncols + pad_w, height * nrows + pad_h))
    fig = Figure(figsize=size, dpi=PAPER.dpi if paper else PAGE.dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes, ncols


def _step_axis(ax, *, n_steps: int, look: Look) -> None:
    ax.set_xlim(-0.3, n_steps + 0.3)
    ax.set_xticks(range(n_steps + 1))
    ax.grid(alpha=0.3)
    ax.set_xlabel("step (tasks trained)", **_size(look.text))
    _text_sizes(ax, look)


def _legend_columns(fig: Figure, labels: list[str], *, fontsize: float, most: int = 6) -> int:
    """As many legend columns as fit the figure's width: variants' labels (`ldifs-100 (λ = 100)`) are long.
    About 108 / fontsize characters fit an inch (12 at 9 pt), and an entry's line and gap take ~6 more."""
    fits = int(fig.get_size_inches()[0] * 108 / fontsize / (max(map(len, labels), default=1) + 6))
    return max(1, min(len(labels), most, fits))


def _legend_below(fig: Figure, handles, names: list[str], *, look: Look, **kwargs) -> None:
    """The legend under the panels, in as many columns as fit, the figure made taller by its rows beyond the
    first (the height it was given holds one): with many methods (9 or more variants) the rows took the panels'
    height, and constrained layout gave up on the figure (a UserWarning, "axes sizes collapsed to zero")."""
    ncols = _legend_columns(fig, names, fontsize=look.legend)
    rows = -(-len(names) // ncols)
    if rows > 1:
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + (rows - 1) * look.legend * 1.35 / 72)
    fig.legend(handles, names, loc="outside lower center", fontsize=look.legend, ncols=ncols, **kwargs)


def forgetting_curves_figure(mean: dict[str, pd.DataFrame], std: dict[str, pd.DataFrame], *, methods: list[str],
                             tasks: list[str], n_steps: int, labels: dict[str, str] | None = None,
                             chance: pd.DataFrame | None = None, paper: bool = False) -> Figure:
    """One panel per task: its accuracy against the step, one line per method (shaded ± std over runs).
    The grey part of a panel is before the task is learned (transfer); the dotted line marks the step
    it is learned. For a paper: two columns wide (one for a single task)."""
    look = PAPER if paper else PAGE
    style = method_style(methods, labels)
    fig, axes, ncols = _panels(len(tasks), max_cols=4, width=3.0, height=1.6 if paper else 2.6, pad_w=0.4,
                               pad_h=0.6 if paper else 0.7, paper=paper)
    for k, task in enumerate(tasks):
        ax = axes[k]
        learned = k + 1
        ax.axvspan(-0.3, learned - 0.5, color="0.92", linewidth=0)
        ax.axvline(learned, color="0.3", linestyle=":", linewidth=look.line * 2 / 3)
        if chance is not None and task in chance:  # a uniform guess (class-incremental: falls as classes arrive)
            ax.plot(chance.index, chance[task] * 100, color="0.55", linestyle=(0, (1, 2)), linewidth=look.line * 0.8,
                    drawstyle="steps-mid", label="chance")
        for method, m in _method_bands(ax, mean, std, methods=methods, column=task, style=style, look=look).items():
            if learned in m.index:
                ax.plot(learned, m[learned], marker="*", markersize=look.star, color=style[method]["color"],
                        markeredgecolor="black", markeredgewidth=0.5 if not paper else 0.3, linestyle="none")
        ax.set_title(f"task {learned}: {task}", fontsize=look.title)
        _step_axis(ax, n_steps=n_steps, look=look)
        ax.set_ylim(0, 102)
        if k % ncols == 0:
            ax.set_ylabel("accuracy (%)", **_size(look.text))
    handles, names = axes[0].get_legend_handles_labels()
    _legend_below(fig, handles, names, look=look, title="★ learned here; grey: before it is learned",
                  title_fontsize=look.note)
    return fig


def concept_curves_figure(mean: dict[str, pd.DataFrame], std: dict[str, pd.DataFrame], *, methods: list[str],
                          probes: list[str], n_steps: int, labels: dict[str, str] | None = None,
                          paper: bool = False) -> Figure:
    """One panel per probe column: accuracy minus the pre-trained model's (percentage points) against
    the step, one line per method. Below zero is concept forgetting. For a paper: two columns wide (one for
    one probe column), the legend below the panels (beside them, it would take a third of the width)."""
    look = PAPER if paper else PAGE
    style = method_style(methods, labels)
    fig, axes, ncols = _panels(len(probes), max_cols=3, width=3.6, height=1.7 if paper else 2.8, pad_w=1.6,
                               pad_h=0.5 if paper else 0.3, paper=paper)
    for k, probe in enumerate(probes):
        ax = axes[k]
        ax.axhline(0, color="0.3", linewidth=look.line * 2 / 3)
        _method_bands(ax, mean, std, methods=methods, column=probe, style=style, look=look)
        name = probe.removeprefix("probe:")
        kind = "zero-shot" if name.endswith(":zero_shot") else "linear probe"
        ax.set_title(f"{name.removesuffix(':zero_shot')} ({kind})", fontsize=look.title)
        _step_axis(ax, n_steps=n_steps, look=look)
        if k % ncols == 0:
            ax.set_ylabel("Δ accuracy (pp)" if paper else "Δ accuracy vs pre-trained (pp)", **_size(look.text))
    handles, names = axes[0].get_legend_handles_labels()
    # On the page, beside the panels while the entries fit their height; else (and for a paper) under them.
    if paper or len(names) * look.legend * 1.35 / 72 > fig.get_size_inches()[1] - 0.2:
        _legend_below(fig, handles, names, look=look)
    else:
        fig.legend(handles, names, loc="outside right upper", fontsize=look.legend)
    return fig


def summary_figure(points: pd.DataFrame, *, methods: list[str], labels: dict[str, str] | None = None,
                   paper: bool = False) -> Figure:
    """Final average accuracy against average forgetting, one labelled point per method (± std bars when
    there are several runs). `points`: index method; columns acc, acc_std, forgetting, forgetting_std
    (fractions). Methods with no value (incomplete) are left out and named under the axis. For a paper:
    one column wide."""
    look = PAPER if paper else PAGE
    style = method_style(methods, labels)
    fig = Figure(figsize=(COLUMN, 2.7) if paper else (5.2, 4.0), dpi=look.dpi, layout="constrained")
    ax = fig.add_subplot()
    shown, names, missing, lines = [], [], [], []  # names: the methods of `shown`
    scale = look.annotate / PAGE.annotate  # label offsets are in points: smaller type, smaller steps
    for method in methods:
        if method in points.index and np.isfinite(points.loc[method, "acc"]) and not np.isfinite(points.loc[method, "forgetting"]):
            lines.append(method)  # an accuracy without forgetting (joint, never sequential): a line across
            continue
        if method not in points.index or not np.isfinite(points.loc[method, ["acc", "forgetting"]]).all():
            missing.append(method)
            continue
        row = points.loc[method] * 100
        ax.errorbar(row["forgetting"], row["acc"], xerr=_nan0(row["forgetting_std"]), yerr=_nan0(row["acc_std"]),
                    color=style[method]["color"], marker=style[method]["marker"], markersize=look.point,
                    capsize=3 * scale, elinewidth=0.7 if paper else None, linestyle="none", markeredgecolor="black",
                    markeredgewidth=0.5 * scale)
        shown.append(row)
        names.append(method)
    if shown:  # limits that hold every point with its error bars and label
        xs = [r["forgetting"] + d * (_nan0(r["forgetting_std"]) or 0) for r in shown for d in (-1, 1)]
        ys = [r["acc"] + d * (_nan0(r["acc_std"]) or 0) for r in shown for d in (-1, 1)]
        padx = max(5.0, 0.15 * (max(xs) - min(xs)))
        pady = max(5.0, 0.15 * (max(ys) - min(ys)))
        low, high = min(xs) - padx, max(xs) + 2 * padx
        # Room on the right for each name, written from its point: a fraction f of the axes' width (~0.55 em
        # a character, the axes ~1 in narrower than the figure) needs high >= (x - f·low) / (1 - f).
        axes_width = fig.get_size_inches()[0] - 1.0
        for r, method in zip(shown, names):
            f = min(0.6, (len(style[method]["label"]) * 0.55 * look.annotate + 8 * scale) / 72 / axes_width)
            high = max(high, (r["forgetting"] - f * low) / (1 - f))
        ax.set_xlim(low, high)
        ax.set_ylim(max(0, min(ys) - pady), min(100, max(ys) + pady))
    for method in lines:
        acc = points.loc[method, "acc"] * 100
        ax.axhline(acc, color=style[method]["color"], linestyle="--", linewidth=look.line * 0.8)
        ax.annotate(f"{style[method]['label']}: every task at once", (0.01, acc), xycoords=("axes fraction", "data"),
                    xytext=(0, 3 * scale), textcoords="offset points", fontsize=look.note,
                    color=style[method]["color"])
        if shown:
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, acc - 3), max(high, min(100, acc + 3)))
    ax.set_xlabel("average forgetting F_T (pp, lower is better)", **_size(look.text))
    ax.set_ylabel("final average accuracy A_T (%)", **_size(look.text))
    ax.set_title("better: towards the top left", fontsize=look.subtitle, loc="left")
    ax.grid(alpha=0.3)
    _text_sizes(ax, look)
    if missing:
        # Wrapped to the figure's width (~0.55 em a character, from the axes' left edge ~0.7 in in): one line
        # naming many methods was wider than the figure, and constrained layout then gave up on it with a
        # UserWarning ("axes sizes collapsed to zero") on every redraw while a run's methods had not finished.
        chars = max(20, int((fig.get_size_inches()[0] - 0.8) * 72 / (0.55 * look.note)))
        ax.text(0.0, -0.2, textwrap.fill(f"not shown (incomplete or missing): "
                                         f"{', '.join(style[m]['label'] for m in missing)}", chars),
                transform=ax.transAxes, fontsize=look.note, va="top")
    if shown:
        _name_points(fig, ax, [(style[m]["label"], r["forgetting"], r["acc"]) for m, r in zip(names, shown)],
                     fontsize=look.annotate, marker=look.point, scale=scale)
    return fig


# Where a point's name may go, tried in order (offset in points at 9 pt type, alignment): right of the point
# a line above, a line below, further up and down, then left of it.
_NAME_SPOTS = [(6, 5, "left"), (6, -12, "left"), (6, 16, "left"), (6, -23, "left"), (6, 27, "left"),
               (-6, 5, "right"), (-6, -12, "right"), (6, -34, "left"), (6, 38, "left")]


def _name_points(fig: Figure, ax, points: list[tuple[str, float, float]], *, fontsize: float, marker: float,
                 scale: float) -> None:
    """Write each (name, x, y) next to its point where it covers no name already written, no other point and
    stays inside the axes (estimated in points: ~0.55 em a character); where no spot is free, the spot that
    covers least. Methods that end up a few points apart used to print their names on top of each other."""
    fig.draw_without_rendering()  # the axes' final place (constrained layout), so that data maps to points
    to_pt = 72 / fig.dpi
    box = ax.get_window_extent()
    frame = (box.x0 * to_pt, box.y0 * to_pt, box.x1 * to_pt, box.y1 * to_pt)
    where = [ax.transData.transform((x, y)) * to_pt for _, x, y in points]
    taken = [(px - marker / 2, py - marker / 2, px + marker / 2, py + marker / 2) for px, py in where]

    def covered(b) -> float:
        inside = max(0.0, min(b[2], frame[2]) - max(b[0], frame[0])) * max(0.0, min(b[3], frame[3]) - max(b[1], frame[1]))
        return (b[2] - b[0]) * (b[3] - b[1]) - inside + sum(
            max(0.0, min(b[2], t[2]) - max(b[0], t[0])) * max(0.0, min(b[3], t[3]) - max(b[1], t[1])) for t in taken)

    for (name, x, y), (px, py) in zip(points, where):
        width = len(name) * 0.55 * fontsize
        spots = []
        for dx, dy, ha in _NAME_SPOTS:
            dx, dy = dx * scale, dy * scale
            left = px + dx if ha == "left" else px + dx - width
            spots.append(((left, py + dy - 0.25 * fontsize, left + width, py + dy + 0.8 * fontsize), dx, dy, ha))
        spot = next((s for s in spots if covered(s[0]) == 0), min(spots, key=lambda s: covered(s[0])))
        b, dx, dy, ha = spot
        taken.append(b)
        far = spots.index(spot) >= 2  # a name away from its point: a thin line says whose it is
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, fontsize=fontsize,
                    arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5, "shrinkA": 1,
                                "shrinkB": marker / 2} if far else None)


def _nan0(v: float) -> float | None:
    return None if v != v else v


def sweep_png(table: pd.DataFrame, *, key: str, others: list[str]) -> bytes:
    """sweep_figure as PNG (continual/sweeps)."""
    return _png(sweep_figure(table, key=key, others=others))


def sweep_figure(table: pd.DataFrame, *, key: str, others: list[str], paper: bool = False) -> Figure:
    """Final average accuracy and forgetting against the swept value of `key` (mean ± std over seeds), one
    line per sequence, method and value of the other grid keys. `table`: sweep.aggregate's rows. For a paper:
    two columns wide, the legend under the panels, each line named `method, key = value` (its sequence first
    where there are several)."""
    look = PAPER if paper else PAGE
    fig = Figure(figsize=(TWO_COLUMNS, 2.5) if paper else (8.4, 3.4), dpi=look.dpi, layout="constrained")
    axes = fig.subplots(1, 2)
    values = sorted(table[key].unique())
    log = all(is_number(v) and v > 0 for v in values) and max(values) / min(values) >= 20
    lines = table.groupby(["sequence", "method", *others], sort=False, dropna=False)
    several = table["sequence"].nunique() > 1
    for i, (group, rows) in enumerate(lines):
        if paper:  # the other keys by their last part (`lr = 0.001`), as the legend entries write options
            label = ", ".join([*([str(group[0])] if several else []), str(group[1]),
                               *(f"{k.rsplit('.', 1)[-1]} = {_shown(v)}" for k, v in zip(others, group[2:]))])
        else:
            label = " ".join(map(str, group)) if len(lines) > 1 else str(group[1])
        for ax, metric in zip(axes, ("final_average_accuracy", "forgetting")):
            r = rows[rows["metric"] == metric].sort_values(key)
            color, marker, linestyle = STYLES[i % len(STYLES)]
            ax.errorbar(r[key], r["mean"] * 100, yerr=r["std"].fillna(0) * 100, marker=marker, color=color,
                        linestyle=linestyle, label=label,
                        **({"capsize": 2, "markersize": look.marker, "linewidth": look.line, "elinewidth": 0.7}
                           if paper else {"capsize": 3}))
    for ax, title in zip(axes, ("final average accuracy A_T (%)", "average forgetting F_T (pp)")):
        ax.set_xlabel(key, **_size(look.text))
        ax.set_ylabel(title, **_size(look.text))
        ax.grid(alpha=0.3)
        _text_sizes(ax, look)
        if log:
            ax.set_xscale("log")
    if paper:
        handles, names = axes[0].get_legend_handles_labels()
        _legend_below(fig, handles, names, look=look)
    else:
        axes[0].legend(fontsize=8)
    return fig


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def is_number(value) -> bool:
    """A real number, Python's or numpy's (a grid of integers reads back from pandas as numpy.int64, which is no
    `int`), and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
