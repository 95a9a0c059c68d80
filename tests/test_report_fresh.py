"""Report files that never go stale (issue #23): tables.tex, figures/ and sweep.tex rewritten by every later write of
their report or removed; only the methods that ran (or those `--methods` names, in its order); one name per method
everywhere; a style per method; sweeps' integer grids drawn, and a figure not drawn says why. Run folders and sweep
cells are written by hand (test_report.write_run): nothing is trained."""

import json
import random
import re
import warnings

import pandas as pd
import pytest
import yaml

from continual import plots, sweeps
from continual.cli import main
from continual.report import LiveReport, write_report
from continual.report.page import Report
from continual.report.tables import read_run
from continual.run_folder import RunFolder
from helpers import write_run

TASKS = [{"name": "t1", "dataset": "digits"}, {"name": "t2", "dataset": "digits"}]
CONFIG = {"name": "fresh", "seed": 0, "tasks": TASKS, "probes": [{"name": "p", "dataset": "digits"}],
          "methods": [{"finetune": {}}, {"ldifs": {"lambda": 10.0}}, {"ewc": {"lambda": 100.0}}]}
# (t1, t2, probe:p) after steps 0, 1, 2. ewc is listed in config.yaml but never ran (`--methods finetune,ldifs`).
ROWS = {"finetune": [(.50, .40, .80), (.90, .50, .70), (.60, .80, .60)],
        "ldifs": [(.50, .40, .80), (.92, .45, .80), (.88, .85, .79)]}
FROZEN = [(.50, .40, .80), (.50, .40, .80), (.50, .40, .80)]


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _table_rows(tex: str) -> list[str]:
    """The first cell of each row of each tabular in a .tex file."""
    rows = []
    for body in re.findall(r"\\midrule\n(.*?)\\bottomrule", tex, re.S):
        rows += [line.split(" & ")[0].removeprefix(r"\bfseries \boldmath ") for line in body.strip().splitlines()]
    return rows


def _md_rows(md: str) -> list[str]:
    """The method cell of each row of summary.md's first table (Final metrics)."""
    table = md.split("## Final metrics\n", 1)[1].strip().split("\n\n")[0]
    return [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:]]


@pytest.fixture
def subset(tmp_path):
    """A finished `continual run seq.yaml --methods finetune,ldifs`: config.yaml lists ewc too."""
    return write_run(tmp_path / "runs" / "fresh", CONFIG, ROWS)


# --- 1. every write of a report rewrites tables.tex and the figures asked for, or removes them


def test_a_method_added_by_resume_reaches_tables_tex_and_figures_and_old_figures_go(subset, capsys):
    assert main(["report", str(subset), "--latex", "--format", "pdf"]) == 0
    (subset / "figures" / "my-notes.txt").write_text("mine")  # not the report's: never touched
    assert "frozen" not in (subset / "tables.tex").read_text()

    # `continual run --resume --methods frozen`: the runner writes frozen's rows and its live report draws.
    config = yaml.safe_load((subset / "config.yaml").read_text())
    (subset / "config.yaml").write_text(yaml.safe_dump({**config, "methods": config["methods"] + [{"frozen": {}}]}))
    write_run_method(subset, "frozen", FROZEN)
    with LiveReport(subset, every=0) as live:
        live.step("frozen", 2, 2)
    tex = (subset / "tables.tex").read_text()
    assert _table_rows(tex) == ["finetune", r"ldifs ($\lambda$ = 10)", "frozen"] * 3  # the final, ZSCL and cost tables
    assert _md_rows((subset / "summary.md").read_text()) == ["finetune", "ldifs (λ = 10)", "frozen"]
    assert (subset / "figures" / "accuracy_matrix_frozen.pdf").is_file()
    assert json.loads((subset / "report.json").read_text())["formats"] == ["pdf"]

    # A later `continual report` without --latex / --format writes them as asked before; with --methods the
    # heatmaps of the methods left out go, and another format replaces pdf.
    assert main(["report", str(subset), "--methods", "frozen,finetune", "--format", "png"]) == 0
    assert "tables.tex, figures/*.png" in capsys.readouterr().out
    assert _table_rows((subset / "tables.tex").read_text()) == ["frozen", "finetune"] * 3
    assert _files(subset / "figures") == {"my-notes.txt", "accuracy_vs_forgetting.png", "forgetting_curves.png",
                                          "concept_forgetting.png", "accuracy_matrix_frozen.png",
                                          "accuracy_matrix_finetune.png"}

    assert main(["report", str(subset), "--no-latex", "--format", "none"]) == 0
    assert not (subset / "tables.tex").exists() and not (subset / "report.json").exists()
    assert _files(subset / "figures") == {"my-notes.txt"}
    assert {"index.html", "summary.md", "summary.csv"} <= _files(subset)


def write_run_method(folder, method, rows):
    RunFolder(folder).write_step(method, rows=[dict(zip(["t1", "t2", "probe:p"], r)) for r in rows],
                                 tasks=["t1", "t2"], n_steps=2, timings=[])


def test_a_report_written_before_report_json_is_kept_up_to_date_from_its_files(subset):
    """Folders written before report.json existed: their tables.tex and figures say what was asked."""
    (subset / "figures").mkdir()
    for name in ("tables.tex", "figures/forgetting_curves.svg", "figures/accuracy_matrix_gone.svg",
                 "figures/accuracy_matrix_gone.pdf", "figures/cover.svg"):
        (subset / name).write_text("old")
    write_report([subset])
    assert _table_rows((subset / "tables.tex").read_text())[:2] == ["finetune", r"ldifs ($\lambda$ = 10)"]
    svg = {"accuracy_vs_forgetting", "forgetting_curves", "concept_forgetting", "accuracy_matrix_finetune",
           "accuracy_matrix_ldifs"}
    # both formats found, the figure of a method no longer there removed, a file of another name kept
    assert _files(subset / "figures") == {f"{n}.{f}" for n in svg for f in ("pdf", "svg")} | {"cover.svg"}
    assert (subset / "figures" / "forgetting_curves.svg").read_bytes().startswith(b"<?xml")


# --- 4. only the methods that ran; --methods chooses and orders them


def test_a_subset_run_reports_only_the_methods_it_ran(subset):
    write_report([subset], latex=True)
    md, tex, page = [(subset / name).read_text() for name in ("summary.md", "tables.tex", "index.html")]
    assert "ewc" not in md and "ewc" not in tex and "ewc" not in page.split("<h2>Configuration</h2>")[0]
    assert set(pd.read_csv(subset / "summary.csv")["method"]) == {"finetune", "ldifs"}


def test_methods_choose_and_order_rows_legends_and_summary_csv(subset):
    write_report([subset], latex=True, methods=["ldifs", "finetune"])
    assert _md_rows((subset / "summary.md").read_text()) == ["ldifs (λ = 10)", "finetune"]
    assert _table_rows((subset / "tables.tex").read_text()) == [r"ldifs ($\lambda$ = 10)", "finetune"] * 3
    assert list(dict.fromkeys(pd.read_csv(subset / "summary.csv")["method"])) == ["ldifs", "finetune"]
    report = Report([read_run(subset)], methods=["ldifs", "finetune"])
    spec = next(f for f in report.figure_list if f.name == "forgetting_curves")
    fig = spec.fn(*spec.args, **spec.kwargs)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ldifs (λ = 10)", "finetune"]


@pytest.mark.parametrize("words, said", [
    ("finetune,ewc", ["'ewc' did not run in", "(the methods there: finetune, ldifs)"]),  # listed, never ran
    ("finetune,nope", ["'nope' did not run in", "finetune, ldifs"]),
    ("finetune,finetune", ["finetune: listed twice"]),
    (",", ["no method named"]),
])
def test_an_unknown_method_is_refused_naming_the_flag_and_nothing_is_written(subset, tmp_path, capsys, words, said):
    out = tmp_path / "out"
    assert main(["report", str(subset), "--methods", words, "--latex", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --methods: ") and len(err.strip().splitlines()) == 1, err
    assert all(s in err for s in said), err
    assert not out.exists()


# --- 5. one name per method: the page's and summary.md's rows, tables.tex, the legends


def test_every_table_and_legend_names_a_method_alike(subset):
    write_report([subset], latex=True)
    md = (subset / "summary.md").read_text()
    assert _md_rows(md) == ["finetune", "ldifs (λ = 10)"] and "### ldifs (λ = 10)" in md
    assert "| ldifs (λ = 10) | " in md.split("## Wall time")[1]
    page = (subset / "index.html").read_text()
    assert "<td class=text>ldifs (λ = 10)</td>" in page and "<h3>ldifs (λ = 10)</h3>" in page
    report = Report([read_run(subset)])
    spec = next(f for f in report.figure_list if f.name == "concept_forgetting")
    legend = [t.get_text() for t in spec.fn(*spec.args, **spec.kwargs).legends[0].get_texts()]
    assert legend == _md_rows(md)


# --- 3. a style of its own for each method, fixed by its name


VARIANTS = [f"ldifs-{k}" for k in range(20)] + [f"l2sp-{k}" for k in range(7)]


def test_every_built_in_and_27_variants_get_a_style_each_fixed_by_its_name():
    from continual.methods import METHODS

    assert list(METHODS)[:len(plots.BUILT_IN)] == plots.BUILT_IN  # a new built-in method gets its own style too
    assert len(set(plots.STYLES)) == len(plots.STYLES) == 256
    names = plots.BUILT_IN + VARIANTS
    style = plots.method_style(names)
    assert len({(s["color"], s["marker"]) for s in style.values()}) == len(names)  # also in the scatter (no lines)
    assert (style["finetune"]["color"], style["finetune"]["marker"]) == ("#0072B2", "o")  # the 9th no longer repeats
    assert (style["zscl"]["color"], style["zscl"]["marker"], style["zscl"]["linestyle"]) == ("#0072B2", "s", "--")
    shuffled = random.Random(0).sample(names, len(names))
    assert plots.method_style(shuffled) == style  # not by position
    for name in plots.BUILT_IN:  # a built-in method's style, whatever else is drawn
        assert plots.method_style([name, "ldifs-3"])[name] == style[name]
    # A variant's style is its own wish unless another variant wished it first: the first of them in the order of
    # the others (lowest wished style, then name) keeps its wish among all 47, and so alone beside a built-in.
    slot = {v: plots.STYLES.index(tuple(plots.method_style([v])[v][k] for k in ("color", "marker", "linestyle")))
            for v in VARIANTS}
    assert all(len(plots.BUILT_IN) <= k < 64 for k in slot.values())  # among the 64 distinct pairs, after built-ins
    first = min(VARIANTS, key=lambda v: (slot[v], v))
    assert plots.method_style([first, "finetune"])[first] == style[first]


# --- 6. no "constrained_layout not applied" warning while a run's methods have not finished


def test_many_unfinished_methods_or_many_methods_draw_without_a_layout_warning(tmp_path):
    methods = [{m: {}} for m in plots.BUILT_IN] + [{"ldifs": {"label": v, "lambda": float(k)}}
                                                    for k, v in enumerate(VARIANTS) if v.startswith("ldifs")]
    keys = plots.BUILT_IN + [v for v in VARIANTS if v.startswith("ldifs")]
    done = [(.5, .4, .8), (.9, .5, .7), (.6, .8, .6)]
    # One method finished and 12 after their first step (the scatter names them under the axes), and 33 methods
    # finished (their legend under the panels).
    for name, rows in (("unfinished", {k: done if i == 0 else done[:2] for i, k in enumerate(keys[:13])}),
                       ("many", dict.fromkeys(keys, done))):
        folder = write_run(tmp_path / name, {**CONFIG, "name": name, "methods": methods}, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # matplotlib's UserWarning would fail here
            write_report([folder], formats=["png"])


# --- 2 and 5. sweeps: integer grids drawn, figures not drawn say why, probe Δ and n once in sweep.md, sweep.tex
# rewritten when the grid grows


SEQUENCE = {"model": {"family": "efficientnet_lite0", "image_size": 32}, "download": False,
            "tasks": [{**t, "classes": [0, 1], "train_per_class": 8, "test_per_class": 4} for t in TASKS],
            "methods": ["finetune", {"ldifs": {"lambda": 10.0}}]}


def _sweep(folder, grid, seeds=(0, 1)):
    """A sweep file of `grid`, and every cell written by hand: A_T rises with the cell's first grid value."""
    (folder / "seq.yaml").write_text(yaml.safe_dump({"name": "toy", **SEQUENCE}))
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"name": "grid", "sequences": ["seq.yaml"], "seeds": list(seeds),
                                                       "grid": grid, "out": "runs"}))
    _, cells = sweeps.load_sweep(folder / "sweep.yaml")
    for cell in cells:
        if (cell.run_folder / "config.yaml").exists():
            continue
        bump = 0.004 * cell.seed
        write_run(cell.run_folder, {"name": "toy", "seed": cell.seed, "tasks": TASKS, "probes": CONFIG["probes"],
                                    "methods": SEQUENCE["methods"], **_nested(dict(cell.point))},
                  {m: [(.5, .4, .8), (.9, .5, .7), (.6 + bump, .8, .6 + bump)] for m in ("finetune", "ldifs")})
    return folder / "runs" / "grid"


def _nested(point: dict) -> dict:
    out: dict = {}
    for key, value in point.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def test_an_integer_grid_is_drawn_and_a_figure_not_drawn_says_why(tmp_path, capsys):
    root = _sweep(tmp_path, {"training.batch_size": [8, 16], "training.optimizer": ["adamw", "sgd"]})
    assert main(["sweep", "report", str(tmp_path / "sweep.yaml")]) == 0
    err = capsys.readouterr().err
    assert (root / "sweep-training.batch_size.png").is_file()  # numpy.int64 values: drawn
    assert not (root / "sweep-training.optimizer.png").exists()
    assert "no figure for training.optimizer: its values are not all numbers ('adamw', 'sgd')" in err
    md = (root / "sweep.md").read_text()
    assert "No figure for `training.optimizer`: its values are not all numbers ('adamw', 'sgd')." in md
    # probe Δ columns; every cell over both seeds: n once, in the heading, never in a cell
    assert "Mean ± std over 2 seeds, in %; Δ: probe accuracy minus the pre-trained model's (pp)." in md
    head = next(line for line in md.splitlines() if line.startswith("| sequence"))
    assert head.split(" | ")[-1] == "Δ p |" and "| n |" not in head and "(n=" not in md
    assert "| toy | 8 | adamw | ldifs (λ = 10) | 70.1 ± 0.1 |" in md


def test_sweep_tex_and_figures_follow_the_grid(tmp_path, capsys):
    root = _sweep(tmp_path, {"training.batch_size": [8]}, seeds=(0,))
    assert main(["sweep", "report", str(tmp_path / "sweep.yaml"), "--latex", "--format", "svg"]) == 0
    assert "no figure for training.batch_size: it takes one value in the cells done" in capsys.readouterr().err
    assert r"\Delta$ p" in (root / "sweep.tex").read_text()  # the probe's Δ column

    _sweep(tmp_path, {"training.batch_size": [8, 16]}, seeds=(0,))  # the grid grows
    assert main(["sweep", "report", str(tmp_path / "sweep.yaml")]) == 0  # no --latex, no --format: as before
    tex = (root / "sweep.tex").read_text()
    assert re.search(r"\ntoy & 8 & ", tex) and re.search(r"\ntoy & 16 & ", tex)
    assert (root / "figures" / "sweep-training.batch_size.svg").is_file()

    _sweep(tmp_path, {"training.lr": [0.001, 0.01]}, seeds=(0,))  # another key: the old one's figures go
    assert main(["sweep", "report", str(tmp_path / "sweep.yaml")]) == 0
    assert {p for p in _files(root) if "sweep-" in p} == {"sweep-training.lr.png", "figures/sweep-training.lr.svg"}
    assert "& 0.01 &" in (root / "sweep.tex").read_text() and "& 16 &" not in (root / "sweep.tex").read_text()
