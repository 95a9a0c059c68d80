r"""How every table of the reports writes a number, and the table itself: the one place summary.md,
index.html, tables.tex, sweep.md and sweep.tex take their cells and their layout from.

    mean_std(0.755, 0.0707, 2)          -> "75.5 ± 7.1"   (a fraction as %, mean ± std over runs)
    mean_std(-0.2, nan, 1, sign=True)   -> "-20.0"        (a difference: signed; one run: no std)
    mean_std(nan, nan, 0)               -> "—"            (MISSING: no value)
    escape("wise_ft (α = 0.5)")         -> r"wise\_ft ($\alpha$ = 0.5)"   (a name in LaTeX)
    Table(["method", "A_T"], [["ldifs", "90.1"]], bold={(0, 1)}).markdown()   # also .html(), .latex(...)

A table is plain text cells (numbers as `mean_std` writes them, and names); each rendering turns them into its
markup: bold as `**x**`, `<b>x</b>` or `\bfseries \boldmath`, names escaped for HTML or LaTeX. pandas only (its
Styler writes the LaTeX): no torch, no matplotlib.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

MISSING = "—"  # a cell with no value: the method did not complete, or the runs did not record it

# How each summary metric is labelled in summary.md, index.html and sweep.md (a probe's Δ: `label`), in table order.
LABELS = {
    "final_average_accuracy": "A_T (final avg acc)",
    "average_incremental_accuracy": "avg incremental acc",
    "forgetting": "forgetting F_T",
    "bwt": "BWT",
    "plasticity": "plasticity",
    "forward_transfer": "FWT",
    "zscl_transfer": "Transfer",
    "zscl_avg": "Avg",
    "zscl_last": "Last",
}


def label(metric: str) -> str:
    """A metric's column header: LABELS, `Δ <probe>` for a probe's Δ (`concept_delta:probe:cifar` -> `Δ cifar`)."""
    return LABELS.get(metric) or "Δ " + metric.split(":", 1)[1].removeprefix("probe:")


def signed(metric: str) -> bool:
    """Whether a metric's cells carry their sign (`+1.5`): the differences (BWT, FWT, a probe's Δ), where the
    sign is the finding."""
    return metric in ("bwt", "forward_transfer") or metric.startswith("concept_delta:")


def mean_std(mean: float, std: float, n: int, *, scale: float = 100, digits: int = 1, sign: bool = False) -> str:
    """A value as the tables write it: `mean ± std` (the std only from n = 2 on, where it is a number), both
    × `scale` (fractions as %) to `digits` decimals, `+` on a positive mean where `sign`; MISSING where n = 0 or
    the mean is NaN. Rounding is Python's format of the scaled value: a tie goes to the even digit (0.0125 ->
    `1.2`), and -0.0004 is `-0.0` (signed `-0.0`, not `+0.0`: it was below zero)."""
    if n == 0 or mean != mean:
        return MISSING
    text = f"{mean * scale:+.{digits}f}" if sign else f"{mean * scale:.{digits}f}"
    return text if n < 2 or std != std else f"{text} ± {std * scale:.{digits}f}"


def grid_value(value) -> str:
    """A grid value as a cell: `0.1`, `100` for 100.0 (`:g` where it loses nothing: 0.0012345678 stays whole)."""
    return f"{value:g}" if isinstance(value, float) and float(f"{value:g}") == value else str(value)


def best(means: list[float], *, higher_better: bool) -> list[int]:
    """The positions of the best of `means` (all of them when tied), where more than one is a number: the
    cells a table sets in bold."""
    finite = [v for v in means if v == v]
    if len(finite) < 2:
        return []
    top = max(finite) if higher_better else min(finite)
    return [i for i, v in enumerate(means) if v == top]


# Text mode characters LaTeX reads as commands (OT1, pdflatex's default encoding, also prints < > | as other
# glyphs), and the Unicode the report writes that pdflatex cannot typeset as text.
_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}", "λ": r"$\lambda$", "α": r"$\alpha$", "Δ": r"$\Delta$",
            "±": r"$\pm$", "—": "--", "–": "--"}


def escape(text: str) -> str:
    r"""`text` as LaTeX typesets it literally: `wise_ft (α = 0.5)` -> `wise\_ft ($\alpha$ = 0.5)`; `--` in a
    name stays two hyphens (not an en dash)."""
    out = []
    for i, c in enumerate(text):
        out.append(_SPECIAL.get(c, c))
        if c == "-" and text[i + 1:i + 2] == "-":
            out.append("{}")
    return "".join(out)


def latex_cell(text: str) -> str:
    r"""A cell as `mean_std` writes it (`75.0 ± 7.1`, `-30.0`, `+1.5`, `—`, and `60.0 (n=1)`) in LaTeX: a math minus,
    $\pm$, `--` for no value."""
    if text == MISSING:
        return "--"
    return re.sub(r"^-", "$-$", text.replace(" ± ", r" $\pm$ "))


_NUMBER = re.compile(r"^[-+]?[0-9.]+( ± [0-9.]+)?$|^—$")  # a cell HTML aligns right, as numbers are


@dataclass
class Table:
    """Headers over rows of text cells; `bold` marks (row, column) cells (`best`). Written as Markdown, HTML or
    a booktabs LaTeX float."""

    headers: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)

    def markdown(self) -> str:
        def text(i, j, c):
            return f"**{c}**" if (i, j) in self.bold else c

        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(text(i, j, c) for j, c in enumerate(row)) + " |" for i, row in enumerate(self.rows)]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """A <table>; a column whose first cell is no number (a name) and every such cell aligned left."""
        text = [bool(self.rows) and not _NUMBER.match(self.rows[0][j]) for j in range(len(self.headers))]
        head = "".join(f"<th{' class=text' if t else ''}>{html.escape(h)}</th>" for h, t in zip(self.headers, text))
        body = "".join(
            "<tr>" + "".join(f"<td{'' if _NUMBER.match(c) else ' class=text'}>"
                             f"{'<b>' if (i, j) in self.bold else ''}{html.escape(c)}"
                             f"{'</b>' if (i, j) in self.bold else ''}</td>" for j, c in enumerate(row)) + "</tr>"
            for i, row in enumerate(self.rows))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def latex(self, headers: list[str], *, names: int = 1, align: str, caption: str, label: str,
              breaks: Iterable[int] = (), wide: bool = False) -> str:
        r"""A `table` float (`table*`, the page's width in two columns, where `wide`): `headers` (already LaTeX:
        they hold math, `$A_T$ $\uparrow$`) over the rows, the first `names` columns escaped (`escape`), the
        others cells as `mean_std` writes them (`latex_cell`); booktabs rules, the caption (LaTeX) above. `align`: the
        tabular's column format (`lrr`); `label`: its \label key; `breaks`: the rows a \midrule goes above (a new
        group of rows)."""
        rows = [[escape(c) for c in row[:names]] + [latex_cell(c) for c in row[names:]] for row in self.rows]
        frame = pd.DataFrame(rows, columns=headers)
        # The whole cell bold, its $\pm$ and minus too (\boldmath); a tabular cell is a group, so both end with it.
        props = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for i, j in self.bold:
            props.iloc[i, j] = "bfseries: ; boldmath: ;"
        styler = frame.style.hide(axis="index").apply(lambda _: props, axis=None)
        tex = styler.to_latex(hrules=True, column_format=align, position_float="centering", caption=caption,
                              label=label, environment="table*" if wide else None)
        # Compact, as papers set their tables: \small, and 4 pt between columns instead of 6 (both end with the float).
        tex = tex.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{4pt}\n", 1)
        if breaks := set(breaks) - {0}:  # a row is one line (no cell holds a line break): a rule above each group
            head, rest = tex.split("\\midrule\n", 1)
            body, tail = rest.split("\\bottomrule", 1)
            tex = (head + "\\midrule\n" + "".join(("\\midrule\n" if i in breaks else "") + line
                                                 for i, line in enumerate(body.splitlines(keepends=True)))
                   + "\\bottomrule" + tail)
        # A caption above a table: the standard classes leave no space under it (\belowcaptionskip 0 pt), so the
        # caption's last line touched the top rule.
        return tex.replace("\\begin{tabular}", "\\smallskip\n\\begin{tabular}", 1)

    def missing(self, *, after: int = 1) -> bool:
        """Whether a cell past the first `after` columns (the names) has no value (MISSING)."""
        return any(c == MISSING for row in self.rows for c in row[after:])
