"""Pictures of a run, drawn from saved numbers only (no torch)."""

from __future__ import annotations

import io

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
