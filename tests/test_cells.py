r"""The one cell and table layer of the reports (report/cells.py, issue #25): how summary.md, index.html,
tables.tex, sweep.md and sweep.tex write a number, a missing value, a name in LaTeX and a table. Every
expected text is worked out here by hand (the rounding from the float's binary value: 0.0015 × 100 is
0.1499…, so `+0.1`)."""

import math

import numpy as np
import pytest

from continual.report.cells import (LABELS, MISSING, Table, best, escape, grid_value, label, latex_cell, mean_std,
                                    signed)

NAN = math.nan


@pytest.mark.parametrize("args, kwargs, text", [
    ((0.755, 0.0707, 2), {}, "75.5 ± 7.1"),  # fractions as %, one decimal, mean ± std over runs
    ((0.755, 0.0707, 1), {}, "75.5"),  # one run: no std, whatever it holds
    ((0.755, NAN, 3), {}, "75.5"),  # no std to give (pandas' std of one finite value)
    ((0.9, 0.0, 2), {}, "90.0 ± 0.0"),  # two equal runs: the std is shown, as 0.0
    ((NAN, NAN, 0), {}, MISSING),  # nothing complete
    ((NAN, 0.1, 2), {}, MISSING),  # no mean, whatever n says
    ((0.5, 0.1, 0), {}, MISSING),  # n = 0: no value, whatever the mean holds
    ((-0.2, NAN, 1), {"sign": True}, "-20.0"),
    ((0.015, 0.004, 2), {"sign": True}, "+1.5 ± 0.4"),  # only the mean is signed
    ((0.0, NAN, 1), {"sign": True}, "+0.0"),
    ((-0.0004, NAN, 1), {"sign": True}, "-0.0"),  # below zero, rounded to zero: keeps its minus
    ((-0.0004, NAN, 1), {}, "-0.0"),
    ((0.0125, NAN, 1), {}, "1.2"),  # 1.25 is exact: a tie, to the even digit
    ((0.0135, NAN, 1), {}, "1.4"),  # 1.35000000000000008882 is above the tie
    ((0.0015, NAN, 1), {"sign": True}, "+0.1"),  # 0.0015 × 100 is 0.1499999999999999944
    ((3 * 2**30, 0.5 * 2**30, 3), {"scale": 2**-30, "digits": 2}, "3.00 ± 0.50"),  # bytes as GiB (a cost)
    ((1234.56, 10.04, 3), {"scale": 1, "digits": 1}, "1234.6 ± 10.0"),  # seconds
    ((12.5, NAN, 1), {"scale": 1, "digits": 0}, "12"),  # steps: no decimals, the tie to even
    ((13.5, 1.5, 2), {"scale": 1, "digits": 0}, "14 ± 2"),
    ((2_500_000, NAN, 1), {"scale": 1e-6, "digits": 2}, "2.50"),  # parameters in millions
])
def test_a_value_is_written_as_mean_plus_minus_std_rounded_or_as_missing(args, kwargs, text):
    assert mean_std(*args, **kwargs) == text


def test_the_differences_are_signed_and_each_metric_has_its_header():
    assert [m for m in ["final_average_accuracy", "forgetting", "bwt", "plasticity", "forward_transfer",
                        "zscl_transfer", "zscl_avg", "zscl_last", "concept_delta:probe:cifar"] if signed(m)] == \
        ["bwt", "forward_transfer", "concept_delta:probe:cifar"]
    assert label("final_average_accuracy") == "A_T (final avg acc)" and label("zscl_last") == "Last"
    assert label("concept_delta:probe:cifar") == "Δ cifar"
    assert label("concept_delta:probe:cars:zero_shot") == "Δ cars:zero_shot"  # only the probe: prefix goes
    assert all(label(m) == text for m, text in LABELS.items())


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (100.0, "100"), (0.0, "0"), (1e-05, "1e-05"), (3e-4, "0.0003"),
    (0.0012345678, "0.0012345678"),  # :g would write 0.00123457: the whole value instead
    (np.float64(0.5), "0.5"), (3, "3"), (np.int64(3), "3"), ("adam", "adam"), (True, "True"), (None, "None"),
])
def test_a_grid_value_is_written_short_where_that_loses_nothing(value, text):
    assert grid_value(value) == text


@pytest.mark.parametrize("means, higher, positions", [
    ([0.5, 0.7, 0.6], True, [1]),
    ([0.5, 0.7, 0.6], False, [0]),
    ([0.5, 0.7, 0.7], True, [1, 2]),  # ties: all bold
    ([NAN, 0.7, 0.6], False, [2]),  # no value is never the best
    ([NAN, 0.7, NAN], True, []),  # one value: nothing to compare, nothing bold
    ([NAN, NAN], True, []),
    ([], True, []),
])
def test_the_best_of_a_column_is_set_in_bold_where_two_values_compare(means, higher, positions):
    assert best(means, higher_better=higher) == positions


@pytest.mark.parametrize("text, tex", [
    ("wise_ft (α = 0.5)", r"wise\_ft ($\alpha$ = 0.5)"),
    ("ldifs (λ = 10)", r"ldifs ($\lambda$ = 10)"),
    ("50% & $5 #1", r"50\% \& \$5 \#1"),
    ("{a} ~b ^c", r"\{a\} \textasciitilde{}b \textasciicircum{}c"),
    ("a<b>c|d\\e", r"a\textless{}b\textgreater{}c\textbar{}d\textbackslash{}e"),
    ("Δ cifar ± 1 — 2 – 3", r"$\Delta$ cifar $\pm$ 1 -- 2 -- 3"),
    ("a--b---c", "a-{}-b-{}-{}-c"),  # hyphens stay hyphens, not an en or em dash
    ("plain-name.v2", "plain-name.v2"),
])
def test_a_name_is_escaped_for_latex(text, tex):
    assert escape(text) == tex


@pytest.mark.parametrize("text, tex", [
    ("75.0 ± 7.1", r"75.0 $\pm$ 7.1"),
    ("-30.0", "$-$30.0"),  # a math minus, not a hyphen
    ("-2.0 ± 1.4", r"$-$2.0 $\pm$ 1.4"),
    ("+1.5", "+1.5"),
    (MISSING, "--"),
    ("-20.0 (n=1)", "$-$20.0 (n=1)"),  # sweep.tex's cell over fewer seeds
])
def test_a_cell_in_latex_has_a_math_minus_and_pm_and_dashes_for_no_value(text, tex):
    assert latex_cell(text) == tex


TABLE = Table(["method", "A_T", "BWT"],
              [["wise_ft (α = 0.5)", "75.0 ± 7.1", "-2.0 ± 1.4"], ["<ft>", MISSING, "+0.5"]], bold={(0, 1), (1, 2)})


def test_a_table_in_markdown():
    assert TABLE.markdown() == ("| method | A_T | BWT |\n"
                                "|---|---|---|\n"
                                "| wise_ft (α = 0.5) | **75.0 ± 7.1** | -2.0 ± 1.4 |\n"
                                "| <ft> | — | **+0.5** |\n")
    assert Table(["a"], []).markdown() == "| a |\n|---|\n"


def test_a_table_in_html_aligns_names_left_and_escapes_them():
    assert TABLE.html() == (
        "<table><thead><tr><th class=text>method</th><th>A_T</th><th>BWT</th></tr></thead><tbody>"
        "<tr><td class=text>wise_ft (α = 0.5)</td><td><b>75.0 ± 7.1</b></td><td>-2.0 ± 1.4</td></tr>"
        "<tr><td class=text>&lt;ft&gt;</td><td>—</td><td><b>+0.5</b></td></tr></tbody></table>")
    # a text column is told by its first row; a text cell below a number is still aligned left
    assert Table(["k", "v"], [["1", "x"], ["y", "2"]]).html() == (
        "<table><thead><tr><th>k</th><th class=text>v</th></tr></thead><tbody>"
        "<tr><td>1</td><td class=text>x</td></tr><tr><td class=text>y</td><td>2</td></tr></tbody></table>")


def test_a_table_in_latex_is_a_booktabs_float_with_names_escaped_and_bold_cells():
    tex = TABLE.latex(["Method", r"$A_T$ $\uparrow$", r"BWT $\uparrow$"], align="lrr", caption="Toy: a caption.",
                      label="tab:toy")
    assert tex == (
        "\\begin{table}\n"
        "\\centering\n"
        "\\small\n"
        "\\setlength{\\tabcolsep}{4pt}\n"
        "\\caption{Toy: a caption.}\n"
        "\\label{tab:toy}\n"
        "\\smallskip\n"
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "Method & $A_T$ $\\uparrow$ & BWT $\\uparrow$ \\\\\n"
        "\\midrule\n"
        "wise\\_ft ($\\alpha$ = 0.5) & \\bfseries \\boldmath 75.0 $\\pm$ 7.1 & $-$2.0 $\\pm$ 1.4 \\\\\n"
        "\\textless{}ft\\textgreater{} & -- & \\bfseries \\boldmath +0.5 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n")


def test_a_wide_latex_table_with_several_name_columns_and_a_rule_above_each_group():
    table = Table(["sequence", "lr", "method", "A_T"],
                  [["a", "0.1", "ft", "1.0"], ["a", "1", "ft", "2.0"], ["b_c", "0.1", "ft", MISSING]], bold={(1, 3)})
    tex = table.latex(["Sequence", "lr", "Method", "A"], names=3, align="lrlr", caption="C.", label="tab:x",
                      breaks=[0, 2], wide=True)  # a rule above row 0 is the header's: not doubled
    assert tex == (
        "\\begin{table*}\n"
        "\\centering\n"
        "\\small\n"
        "\\setlength{\\tabcolsep}{4pt}\n"
        "\\caption{C.}\n"
        "\\label{tab:x}\n"
        "\\smallskip\n"
        "\\begin{tabular}{lrlr}\n"
        "\\toprule\n"
        "Sequence & lr & Method & A \\\\\n"
        "\\midrule\n"
        "a & 0.1 & ft & 1.0 \\\\\n"
        "a & 1 & ft & \\bfseries \\boldmath 2.0 \\\\\n"
        "\\midrule\n"
        "b\\_c & 0.1 & ft & -- \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table*}\n")


def test_a_missing_value_is_found_past_the_name_columns_only():
    assert TABLE.missing(after=1)
    assert not Table(["m", "v"], [["—", "1.0"]]).missing(after=1)  # a name that is a dash is no missing value
    assert Table(["s", "m", "v"], [["a", "b", "1.0"], ["a", "c", MISSING]]).missing(after=2)
