"""Pictures of a run, drawn from saved numbers only (no torch)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# Okabe-Ito: distinguishable with the common colour-vision deficiencies and in greyscale print.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def curves_png(matrix: pd.DataFrame, *, title: str, n_steps: int) -> bytes:
    """Accuracy of each task (solid, a dot where it was learned) and probe (dashed) against the step."""
    fig = Figure(figsize=(6.4, 4.0), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    columns = [c for c in matrix.columns if c != "step"]
    tasks = [c for c in columns if not c.startswith("probe:")]
    for i, col in enumerate(columns):
        color = PALETTE[i % len(PALETTE)]
        probe = col.startswith("probe:")
        ax.plot(matrix["step"], matrix[col], color=color, linestyle="--" if probe else "-", marker="o",
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# Report figures. Accuracies are drawn in percent, as papers print them; every function takes the
# method order so that a method keeps its colour and marker in every figure (and while a run goes).
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]  # a second cue besides colour, for greyscale print


def method_style(methods: list[str], labels: dict[str, str] | None = None) -> dict[str, dict]:
    """method -> matplotlib line style (colour and marker), fixed by the method's position, and its legend
    entry (`labels`: e.g. `ldifs-100 (lambda 100)` for variants of one method; else the method's key)."""
    labels = labels or {}
    return {m: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)], "label": labels.get(m, m)}
            for i, m in enumerate(methods)}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def heatmap_png(matrix: pd.DataFrame, *, title: str, tasks: list[str], n_steps: int) -> bytes:
    """The accuracy matrix as annotated cells: rows = steps 0..n_steps, columns = tasks then probes.
    Cells where a task is learned are boxed; steps not reached (an incomplete run) are left blank."""
    columns = list(matrix.columns)
    values = matrix.reindex(range(n_steps + 1)).to_numpy(dtype=float) * 100
    fig = Figure(figsize=(1.0 + 0.95 * len(columns), 1.2 + 0.42 * (n_steps + 1)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    # No colour bar: every cell is printed, and a colour bar doubles the drawing time (the report is
    # redrawn after every step).
    ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if v != v else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if v != v or v < 60 else "black")
    for j, col in enumerate(columns):
        if col in tasks:  # box the cell where the task is learned: its plasticity
            step = tasks.index(col) + 1
            ax.add_patch(_box(j, step))
    if len(tasks) < len(columns):
        ax.axvline(len(tasks) - 0.5, color="white", linewidth=3)
    ax.set_xticks(range(len(columns)), [c.removeprefix("probe:").replace(":", "\n") if c.startswith("probe:")
                                        else c for c in columns], fontsize=8)
    ax.set_yticks(range(n_steps + 1))
    ax.set_xlabel("evaluated on (task, then probe)")
    ax.set_ylabel("step (tasks trained)")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _box(j: int, i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.8, clip_on=False)


def _std(std: dict[str, pd.DataFrame], method: str, column: str, index) -> np.ndarray | None:
    """The std column in percent, aligned with the mean's steps; None where there is none (one run)."""
    if method not in std or column not in std[method]:
        return None
    return std[method][column].reindex(index).to_numpy() * 100


def _band(ax, x, mean, std, style: dict, label: str, *, markersize: float = 4) -> None:
    ax.plot(x, mean, color=style["color"], marker=style["marker"], markersize=markersize, label=label)
    if std is not None and np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.15, linewidth=0)


def _method_bands(ax, mean: dict[str, pd.DataFrame], std: dict[str, pd.DataFrame], *, methods: list[str],
                  column: str, style: dict) -> dict[str, pd.Series]:
    """One line (± std band) per method for `column`, in percent; returns the plotted series by method."""
    plotted = {}
    for method in methods:
        if method not in mean or column not in mean[method]:
            continue
        m = mean[method][column] * 100
        if len(m) > 2 and m.iloc[1:-1].isna().all() and np.isfinite(m.iloc[-1]):  # scored at the last step only
            ax.axhline(m.iloc[-1], color=style[method]["color"], linestyle="--", linewidth=1.2,
                       label=style[method]["label"])  # joint: a reference line, not a curve
        else:
            _band(ax, m.index, m.to_numpy(), _std(std, method, column, m.index), style[method], style[method]["label"])
        plotted[method] = m
    return plotted


def _panels(count: int, *, max_cols: int, width: float, height: float, pad_w: float, pad_h: float):
    """A figure with `count` panels sharing the y axis (unused grid cells hidden): (fig, axes, ncols)."""
    ncols = min(count, max_cols)
    nrows = -(-count // ncols)
    fig = Figure(figsize=(width * ncols + pad_w, height * nrows + pad_h), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes, ncols


def _step_axis(ax, *, n_steps: int) -> None:
    ax.set_xlim(-0.3, n_steps + 0.3)
    ax.set_xticks(range(n_steps + 1))
    ax.grid(alpha=0.3)
    ax.set_xlabel("step (tasks trained)")


def forgetting_curves_png(mean: dict[str, pd.DataFrame], std: dict[str, pd.DataFrame], *, methods: list[str],
                          tasks: list[str], n_steps: int, labels: dict[str, str] | None = None,
                          chance: pd.DataFrame | None = None) -> bytes:
    """One panel per task: its accuracy against the step, one line per method (shaded ± std over runs).
    The grey part of a panel is before the task is learned (transfer); the dotted line marks the step
    it is learned."""
    style = method_style(methods, labels)
    fig, axes, ncols = _panels(len(tasks), max_cols=4, width=3.0, height=2.6, pad_w=0.4, pad_h=0.7)
    for k, task in enumerate(tasks):
        ax = axes[k]
        learned = k + 1
        ax.axvspan(-0.3, learned - 0.5, color="0.92", linewidth=0)
        ax.axvline(learned, color="0.3", linestyle=":", linewidth=1)
        if chance is not None and task in chance:  # a uniform guess (class-incremental: falls as classes arrive)
            ax.plot(chance.index, chance[task] * 100, color="0.55", linestyle=(0, (1, 2)), linewidth=1.2,
                    drawstyle="steps-mid", label="chance")
        for method, m in _method_bands(ax, mean, std, methods=methods, column=task, style=style).items():
            if learned in m.index:
                ax.plot(learned, m[learned], marker="*", markersize=13, color=style[method]["color"],
                        markeredgecolor="black", markeredgewidth=0.5, linestyle="none")
        ax.set_title(f"task {learned}: {task}", fontsize=10)
        _step_axis(ax, n_steps=n_steps)
        ax.set_ylim(0, 102)
        if k % ncols == 0:
            ax.set_ylabel("accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    # As many columns as fit the figure's width: variants' labels (`l2sp-1000 (lambda 1000)`) are long.
    fits = int(fig.get_size_inches()[0] * 12 / (max(map(len, labels), default=1) + 6))
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(len(labels), 6, fits)), fontsize=9,
               title="★ learned here; grey: before it is learned", title_fontsize=8)
    return _png(fig)


def concept_curves_png(mean: dict[str, pd.DataFrame], std: dict[str, pd.DataFrame], *, methods: list[str],
                       probes: list[str], n_steps: int, labels: dict[str, str] | None = None) -> bytes:
    """One panel per probe column: accuracy minus the pre-trained model's (percentage points) against
    the step, one line per method. Below zero is concept forgetting."""
    style = method_style(methods, labels)
    fig, axes, ncols = _panels(len(probes), max_cols=3, width=3.6, height=2.8, pad_w=1.6, pad_h=0.3)
    for k, probe in enumerate(probes):
        ax = axes[k]
        ax.axhline(0, color="0.3", linewidth=1)
        _method_bands(ax, mean, std, methods=methods, column=probe, style=style)
        name = probe.removeprefix("probe:")
        kind = "zero-shot" if name.endswith(":zero_shot") else "linear probe"
        ax.set_title(f"{name.removesuffix(':zero_shot')} ({kind})", fontsize=10)
        _step_axis(ax, n_steps=n_steps)
        if k % ncols == 0:
            ax.set_ylabel("Δ accuracy vs pre-trained (pp)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=9)
    return _png(fig)


def summary_png(points: pd.DataFrame, *, methods: list[str], labels: dict[str, str] | None = None) -> bytes:
    """Final average accuracy against average forgetting, one labelled point per method (± std bars when
    there are several runs). `points`: index method; columns acc, acc_std, forgetting, forgetting_std
    (fractions). Methods with no value (incomplete) are left out and named under the axis."""
    style = method_style(methods, labels)
    fig = Figure(figsize=(5.2, 4.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    shown, missing, lines = [], [], []
    for method in methods:
        if method in points.index and np.isfinite(points.loc[method, "acc"]) and not np.isfinite(points.loc[method, "forgetting"]):
            lines.append(method)  # an accuracy without forgetting (joint, never sequential): a line across
            continue
        if method not in points.index or not np.isfinite(points.loc[method, ["acc", "forgetting"]]).all():
            missing.append(method)
            continue
        row = points.loc[method] * 100
        ax.errorbar(row["forgetting"], row["acc"], xerr=_nan0(row["forgetting_std"]), yerr=_nan0(row["acc_std"]),
                    color=style[method]["color"], marker=style[method]["marker"], markersize=8, capsize=3,
                    linestyle="none", markeredgecolor="black", markeredgewidth=0.5)
        # Methods that end up close together (a few points apart) would print their names on top of each
        # other: move each further label a line above, then below, then two lines above, ...
        near = sum(abs(r["forgetting"] - row["forgetting"]) < 8 and abs(r["acc"] - row["acc"]) < 4 for r in shown)
        ax.annotate(style[method]["label"], (row["forgetting"], row["acc"]), xytext=(6, (5, 16, -12, 27, -23)[near % 5]),
                    textcoords="offset points", fontsize=9)
        shown.append(row)
    if shown:  # limits that hold every point with its error bars and label
        xs = [r["forgetting"] + d * (_nan0(r["forgetting_std"]) or 0) for r in shown for d in (-1, 1)]
        ys = [r["acc"] + d * (_nan0(r["acc_std"]) or 0) for r in shown for d in (-1, 1)]
        padx = max(5.0, 0.15 * (max(xs) - min(xs)))
        pady = max(5.0, 0.15 * (max(ys) - min(ys)))
        ax.set_xlim(min(xs) - padx, max(xs) + 2 * padx)
        ax.set_ylim(max(0, min(ys) - pady), min(100, max(ys) + pady))
    for method in lines:
        acc = points.loc[method, "acc"] * 100
        ax.axhline(acc, color=style[method]["color"], linestyle="--", linewidth=1.2)
        ax.annotate(f"{style[method]['label']}: every task at once", (0.01, acc), xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color=style[method]["color"])
        if shown:
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, acc - 3), max(high, min(100, acc + 3)))
    ax.set_xlabel("average forgetting F_T (pp, lower is better)")
    ax.set_ylabel("final average accuracy A_T (%)")
    ax.set_title("better: towards the top left", fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    if missing:
        ax.text(0.0, -0.2, f"not shown (incomplete or missing): {', '.join(missing)}", transform=ax.transAxes,
                fontsize=8, va="top")
    return _png(fig)


def _nan0(v: float) -> float | None:
    return None if v != v else v


def sweep_png(table: pd.DataFrame, *, key: str, others: list[str]) -> bytes:
    """Final average accuracy and forgetting against the swept value of `key` (mean ± std over seeds), one
    line per sequence, method and value of the other grid keys. `table`: sweep.aggregate's rows."""
    fig = Figure(figsize=(8.4, 3.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    values = sorted(table[key].unique())
    log = all(isinstance(v, (int, float)) and v > 0 for v in values) and max(values) / min(values) >= 20
    lines = table.groupby(["sequence", "method", *others], sort=False, dropna=False)
    for i, (group, rows) in enumerate(lines):
        label = " ".join(map(str, group)) if len(lines) > 1 else str(group[1])
        for ax, metric in zip(axes, ("final_average_accuracy", "forgetting")):
            r = rows[rows["metric"] == metric].sort_values(key)
            ax.errorbar(r[key], r["mean"] * 100, yerr=r["std"].fillna(0) * 100, marker=MARKERS[i % len(MARKERS)],
                        color=PALETTE[i % len(PALETTE)], capsize=3, label=label)
    for ax, title in zip(axes, ("final average accuracy A_T (%)", "average forgetting F_T (pp)")):
        ax.set_xlabel(key)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if log:
            ax.set_xscale("log")
    axes[0].legend(fontsize=8)
    return _png(fig)
