r"""tables.tex: the report's main numbers as booktabs tables, for a paper (`continual report --latex`).

    \usepackage{booktabs}   % in the paper's preamble
    \input{tables.tex}      % where the tables go

Two `table` floats: the final metrics (A_T, F_T, BWT, Δ per probe column) and ZSCL's Transfer / Avg / Last,
in % as summary.md gives them (mean $\pm$ std over runs, the std from two runs on), the best of each column
in bold by page.py's rule (metric_table), each method named by its legend entry (`ldifs ($\lambda$ = 10)`).
pandas' Styler writes the LaTeX; every text that comes from a run (method, probe and sequence names) is
escaped here first.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pandas as pd

from continual import metrics

if TYPE_CHECKING:
    from continual.report.page import _Report

FINAL = ["final_average_accuracy", "forgetting", "bwt"]
ZSCL = ["zscl_transfer", "zscl_avg", "zscl_last"]
HEADERS = {"final_average_accuracy": r"$A_T$", "forgetting": r"$F_T$", "bwt": "BWT", "zscl_transfer": "Transfer",
           "zscl_avg": "Avg", "zscl_last": "Last"}

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


def number(text: str) -> str:
    r"""A cell as page.py's _fmt writes it (`75.0 ± 7.1`, `-30.0`, `+1.5`, `—`) in LaTeX: a math minus, $\pm$,
    `--` for no value."""
    if text == "—":
        return "--"
    return re.sub(r"^-", "$-$", text.replace(" ± ", r" $\pm$ "))


def tables_tex(report: _Report) -> str:
    """The contents of tables.tex for a report (page.py's _Report)."""
    n = len(report.runs)
    over = rf"mean $\pm$ std over {n} runs" if n > 1 else "one run"
    probes = [f"concept_delta:{p}" for p in report.probes]
    better = {m: metrics.FINAL[m][1] for m in FINAL + ZSCL} | dict.fromkeys(probes, True)
    seeds = ", ".join(str(r.seed) for r in report.runs)
    parts = [f"% tables.tex of {report.first.name} ({n} run{'s' if n > 1 else ''}, seed {seeds}), written by "
             "`continual report --latex`.", r"% Needs \usepackage{booktabs}; then \input{tables.tex}. In a two-column "
             r"paper, a table wider than a column goes in \begin{table*} instead.", ""]
    final = report.metric_table(FINAL + probes, higher_better=better, label=str, sign={"bwt", *probes})
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
    return "\n".join(parts)


def _probe_header(column: str) -> str:
    name = column.removeprefix("probe:")
    return r"$\Delta$ " + (escape(name.removesuffix(":zero_shot")) + " (zero-shot)" if name.endswith(":zero_shot")
                           else escape(name))


def _booktabs(report: _Report, table, headers: list[str], *, caption: str, label: str) -> str:
    """A `table` float of `table` (page.py's _Table: method keys, cells as _fmt writes them, bold cells) with
    `headers` (LaTeX) for its metric columns, the better direction marked in each."""
    # metric_table's headers are the metric keys (label=str): concept_delta:<probe> is higher-better too.
    arrows = [r" $\uparrow$" if metrics.FINAL.get(key, (None, True))[1] else r" $\downarrow$"
              for key in table.headers[1:]]
    columns = ["Method"] + [h + a for h, a in zip(headers, arrows)]
    rows = [[escape(report.labels.get(row[0], row[0]))] + [number(c) for c in row[1:]] for row in table.rows]
    if any(c == "--" for row in rows for c in row[1:]):
        caption += " --: no value (the method did not complete)."
    caption += " Bold: the best of each column."
    frame = pd.DataFrame(rows, columns=columns)
    # The whole cell bold, its $\pm$ and minus too (\boldmath); a tabular cell is a group, so both end with it.
    props = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for i, j in table.bold:
        props.iloc[i, j] = "bfseries: ; boldmath: ;"
    styler = frame.style.hide(axis="index").apply(lambda _: props, axis=None)
    tex = styler.to_latex(hrules=True, column_format="l" + "r" * len(headers), position_float="centering",
                          caption=caption, label=f"tab:{_label(report.first.name)}-{label}")
    # Compact, as papers set their tables: \small, and 4 pt between columns instead of 6 (both end with the float).
    tex = tex.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{4pt}\n", 1)
    # A caption above a table: the standard classes leave no space under it (\belowcaptionskip 0 pt), so the
    # caption's last line touched the top rule.
    return tex.replace("\\begin{tabular}", "\\smallskip\n\\begin{tabular}", 1)


def _label(name: str) -> str:
    """A sequence name as a \\label key: letters, digits, `.`, `+` and `-` (names allow `_` too)."""
    return re.sub(r"[^A-Za-z0-9.+-]", "-", name)
