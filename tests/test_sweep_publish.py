"""What a paper takes from a sweep (issue #15): sweep.tex and each swept number's figure as PDF / SVG, from cells
whose run folders the tests write by hand where the sweep file puts them (no cell is run). The numbers, and so
the bold cells, are worked out here; the LaTeX is compiled where pdflatex is installed."""

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml
from PIL import Image

from continual import plots, sweeps
from continual.cli import main
from continual.report import ReportError
from continual.run_folder import RunFolder

TASKS = [{"name": "t1", "dataset": "digits", "classes": [0, 1], "train_per_class": 8, "test_per_class": 4},
         {"name": "t2", "dataset": "digits", "classes": [2, 3], "train_per_class": 8, "test_per_class": 4}]
METHODS = ["finetune", {"ldifs": {"lambda": 10.0}}]
SWEEP = {"name": "wd_sweep", "sequences": ["tiny.yaml", "small.yaml"], "methods": ["finetune", "ldifs"],
         "seeds": [0, 1], "grid": {"training.weight_decay": [0.0, 0.1]}, "out": "runs"}
KEY = "training.weight_decay"

# The accuracy matrix's rows after steps 1 and 2 (t1, t2; step 0 is (.5, .4) everywhere) by sequence, weight
# decay, seed and method. With T = 2: A_T = Last = mean of the step-2 row, F_T = R[1, t1] - R[2, t1] = -BWT,
# ZSCL Transfer = R[1, t2]. small's cell (0.1, seed 1) is not run: its rows have n = 1.
ROWS = {
    ("tiny", 0.0): {0: {"finetune": [(.90, .50), (.60, .80)], "ldifs": [(.92, .45), (.88, .85)]},
                    1: {"finetune": [(.80, .40), (.70, .90)], "ldifs": [(.90, .42), (.86, .83)]}},
    ("tiny", 0.1): {0: {"finetune": [(.90, .55), (.70, .80)], "ldifs": [(.90, .44), (.89, .80)]},
                    1: {"finetune": [(.90, .55), (.70, .80)], "ldifs": [(.90, .44), (.87, .82)]}},
    ("small", 0.0): {0: {"finetune": [(.80, .30), (.50, .60)], "ldifs": [(.80, .35), (.75, .65)]},
                     1: {"finetune": [(.80, .30), (.50, .60)], "ldifs": [(.80, .35), (.75, .65)]}},
    ("small", 0.1): {0: {"finetune": [(.80, .40), (.60, .60)], "ldifs": [(.80, .30), (.77, .60)]}},
}
LDIFS = r"ldifs ($\lambda$ = 10)"  # its legend entry, escaped
PM = r" $\pm$ "
# sweep.tex's rows, worked out from ROWS (mean ± std over the seeds, in %; BWT signed as tables.tex signs it):
#   sequence  wd   method    A_T          F_T          BWT           Transfer     Last
TEX = [
    ["tiny", "0", "finetune", "75.0 ± 7.1", "20.0 ± 14.1", "-20.0 ± 14.1", "45.0 ± 7.1", "75.0 ± 7.1"],
    ["tiny", "0", LDIFS, "85.5 ± 1.4", "4.0 ± 0.0", "-4.0 ± 0.0", "43.5 ± 2.1", "85.5 ± 1.4"],
    ["tiny", "0.1", "finetune", "75.0 ± 0.0", "20.0 ± 0.0", "-20.0 ± 0.0", "55.0 ± 0.0", "75.0 ± 0.0"],
    ["tiny", "0.1", LDIFS, "84.5 ± 0.0", "2.0 ± 1.4", "-2.0 ± 1.4", "44.0 ± 0.0", "84.5 ± 0.0"],
    ["small", "0", "finetune", "55.0 ± 0.0", "30.0 ± 0.0", "-30.0 ± 0.0", "30.0 ± 0.0", "55.0 ± 0.0"],
    ["small", "0", LDIFS, "70.0 ± 0.0", "5.0 ± 0.0", "-5.0 ± 0.0", "35.0 ± 0.0", "70.0 ± 0.0"],
    ["small", "0.1", "finetune", "60.0 (n=1)", "20.0 (n=1)", "-20.0 (n=1)", "40.0 (n=1)", "60.0 (n=1)"],
    ["small", "0.1", LDIFS, "68.5 (n=1)", "3.0 (n=1)", "-3.0 (n=1)", "30.0 (n=1)", "68.5 (n=1)"],
]
# The best of each column within each sequence (higher A_T, BWT, Transfer, Last; lower F_T): (row, column).
# tiny: A_T and Last ldifs at 0, F_T and BWT ldifs at 0.1, Transfer finetune at 0.1; small: the same places,
# though small's best A_T (70.0) is below every one of tiny's.
BOLD = {(1, 3), (3, 4), (3, 5), (2, 6), (1, 7), (5, 3), (7, 4), (7, 5), (6, 6), (5, 7)}


def _latex(cell: str) -> str:
    return re.sub(r"^-", "$-$", cell.replace(" ± ", PM))


def _write_cells(path):
    """Every cell of the sweep file at `path` that ROWS has numbers for, as its `continual run` leaves it."""
    _, cells = sweeps.load_sweep(path)
    for cell in cells:
        point = dict(cell.point)
        rows = ROWS[(cell.name, point[KEY])].get(cell.seed)
        if rows is None:
            continue
        config = {"name": cell.name, "seed": cell.seed, "tasks": TASKS, "methods": METHODS,
                  "training": {"weight_decay": point[KEY]}}
        cell.run_folder.mkdir(parents=True)
        (cell.run_folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        for method, (after_1, after_2) in rows.items():
            matrix = [(.5, .4), after_1, after_2]
            RunFolder(cell.run_folder).write_step(method, rows=[dict(zip(["t1", "t2"], r)) for r in matrix],
                                                  tasks=["t1", "t2"], n_steps=2, timings=[])
    return cells


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    for name in ("tiny", "small"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": name, "model": {"family": "efficientnet_lite0", "image_size": 32}, "tasks": TASKS,
             "methods": METHODS, "download": False}))
    (folder / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    cells = _write_cells(folder / "sweep.yaml")
    assert [sweeps.state(c)[0] for c in cells].count("done") == 7
    return folder


def test_an_unknown_format_is_refused_before_anything_is_written(folder, capsys):
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert main(["sweep", "report", str(folder / "sweep.yaml"), "--latex", "--format", "pdf,gif"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format: ") and "'gif'" in err and "png, pdf, svg" in err, err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(ReportError, match="unknown figure format 'gif'"):
        sweeps.report(folder / "sweep.yaml", latex=True, formats=["gif"])
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


@pytest.fixture(scope="module")
def report(folder):
    code = main(["sweep", "report", str(folder / "sweep.yaml"), "--latex", "--format", "pdf,svg"])
    assert code == 0
    return folder / "runs" / "wd_sweep"


def test_the_report_writes_the_aggregate_sweep_tex_and_the_figures(report):
    written = {str(p.relative_to(report)) for p in report.rglob("*") if p.is_file() and p.name.startswith("sweep")}
    assert written == {"sweep.csv", "sweep.md", "sweep.tex", f"sweep-{KEY}.png", f"figures/sweep-{KEY}.pdf",
                       f"figures/sweep-{KEY}.svg"}
    assert not list(report.rglob(".*.tmp"))
    page = Image.open(report / f"sweep-{KEY}.png")  # the page's figure keeps its size
    assert page.size == (round(8.4 * plots.PAGE.dpi), round(3.4 * plots.PAGE.dpi))


def _rows(tex: str) -> tuple[list[str], list[list[str]]]:
    """The tabular's header and rows (cells split at `&`); a \\midrule between rows is left out."""
    body = re.search(r"\\toprule\n(.*?)\\bottomrule", tex, re.S).group(1)
    head, rows = body.split("\\midrule\n", 1)
    cells = [line.strip().removesuffix("\\\\").strip().split(" & ") for line in rows.splitlines()
             if line.strip() != "\\midrule"]
    return head.strip().removesuffix("\\\\").strip().split(" & "), cells


def test_sweep_tex_is_one_booktabs_table_with_the_best_of_each_column_per_sequence_in_bold(report):
    tex = (report / "sweep.tex").read_text()
    assert tex.startswith("%") and r"\usepackage{booktabs}" in tex.splitlines()[1] and r"\documentclass" not in tex
    assert tex.count(r"\begin{table*}") == tex.count(r"\end{table*}") == 1 and r"\label{tab:wd-sweep-sweep}" in tex
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 1
    assert tex.count(r"\midrule") == 2  # under the header, and between the two sequences
    assert r"\caption{wd\_sweep: final metrics" in tex and r"mean $\pm$ std over 2 seeds" in tex
    assert "(n=$k$): over $k$ seeds only" in tex and "within each sequence" in tex
    head, rows = _rows(tex)
    assert "% Columns: weight_decay = the grid's training.weight_decay." in tex.splitlines()  # the header's key
    assert head == ["Sequence", r"weight\_decay", "Method", r"$A_T$ $\uparrow$", r"$F_T$ $\downarrow$",
                    r"BWT $\uparrow$", r"Transfer $\uparrow$", r"Last $\uparrow$"]
    bold = {(i, j) for i, row in enumerate(rows) for j, cell in enumerate(row) if cell.startswith(r"\bfseries \boldmath ")}
    assert bold == BOLD
    plain = [[cell.removeprefix(r"\bfseries \boldmath ") for cell in row] for row in rows]
    assert plain == [[*row[:3], *map(_latex, row[3:])] for row in TEX]
    assert "±" not in tex and "λ" not in tex and "—" not in tex  # pdflatex reads none of these as text


def test_sweep_md_and_csv_keep_their_numbers(report):
    md = (report / "sweep.md").read_text()
    # Methods named as in sweep.tex and the legends; n once per row (a column), as the seeds differ between rows.
    assert "| sequence | training.weight_decay | method | n | A_T (final avg acc) |" in md
    assert "| tiny | 0 | ldifs (λ = 10) | 2 | 85.5 ± 1.4 | 4.0 ± 0.0 | -4.0 ± 0.0 |" in md
    assert "| small | 0.1 | ldifs (λ = 10) | 1 | 68.5 | 3.0 | -3.0 | 30.0 | 68.5 |" in md and "(n=" not in md.split("|", 1)[1]
    assert len((report / "sweep.csv").read_text().splitlines()) > 1


def test_sweep_tex_compiles_with_pdflatex(report, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt install texlive-latex-base texlive-latex-recommended)")
    shutil.copy(report / "sweep.tex", tmp_path / "sweep.tex")
    # A two-column paper's page: 7 in of text (IEEE 7.16, CVPR 6.875), which the table* spans.
    (tmp_path / "paper.tex").write_text("\\documentclass[twocolumn]{article}\n\\usepackage{booktabs}\n"
                                        "\\setlength{\\textwidth}{7in}\n\\setlength{\\oddsidemargin}{-0.25in}\n"
                                        "\\begin{document}\n\\input{sweep.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Missing character" not in log and "Overfull" not in log, log[-3000:]


def test_the_figures_embed_truetype_fonts_two_columns_wide(report):
    pdf = (report / "figures" / f"sweep-{KEY}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf
    assert b"/Type3" not in pdf and b"/FontFile3" not in pdf
    assert float(re.search(rb"/MediaBox \[\s*0 0 ([0-9.]+) ", pdf).group(1)) == pytest.approx(plots.TWO_COLUMNS * 72)
    svg = ET.fromstring((report / "figures" / f"sweep-{KEY}.svg").read_bytes())
    assert not [e for e in svg.iter() if e.tag.rsplit("}", 1)[-1] == "text"]  # glyphs as paths
    assert float(svg.get("width").removesuffix("pt")) == pytest.approx(plots.TWO_COLUMNS * 72)


def test_the_paper_figure_uses_8_point_type_and_names_each_line(report):
    import pandas as pd

    table = pd.read_csv(report / "sweep.csv")
    fig = plots.sweep_figure(table, key=KEY, others=[], paper=True)
    plots.figure_bytes(fig, "png")  # ticks are made when drawn
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
             if t.get_text().strip() and t.get_visible()]
    assert texts and all(6 <= t.get_fontsize() <= 8 for t in texts), {t.get_text(): t.get_fontsize() for t in texts}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["tiny, finetune", "tiny, ldifs", "small, finetune",
                                                                  "small, ldifs"]


def test_a_sweep_writes_the_same_at_its_end(folder, capsys):
    """`continual sweep SWEEP.yaml --latex --format svg` whose cells are all done: nothing runs, and the aggregate
    it writes at its end has sweep.tex and the figures too. One sequence: no rule between groups."""
    (folder / "tiny-only.yaml").write_text(yaml.safe_dump({**SWEEP, "name": "wd_tiny", "sequences": ["tiny.yaml"]}))
    _write_cells(folder / "tiny-only.yaml")
    assert main(["sweep", str(folder / "tiny-only.yaml"), "--latex", "--format", "svg"]) == 0
    assert "4 done" in capsys.readouterr().out
    root = folder / "runs" / "wd_tiny"
    assert (root / "figures" / f"sweep-{KEY}.svg").is_file() and not (root / "figures" / f"sweep-{KEY}.pdf").exists()
    tex = (root / "sweep.tex").read_text()
    _, rows = _rows(tex)
    assert tex.count(r"\midrule") == 1 and "Bold: the best of each column." in tex
    assert {(i, j) for i, row in enumerate(rows) for j, c in enumerate(row) if c.startswith(r"\bfseries")} == {
        b for b in BOLD if b[0] < 4}


def test_a_later_report_keeps_what_was_asked_until_told_no_more(tmp_path, folder, capsys):
    """Without flags a sweep's report redraws sweep.tex and the figures as last asked (never a stale one left);
    --no-latex and --format none stop them and remove what they wrote."""
    copy = shutil.copytree(folder, tmp_path / "copy")
    root, sweep_file = copy / "runs" / "wd_sweep", str(copy / "sweep.yaml")
    assert main(["sweep", "report", sweep_file, "--latex", "--format", "svg"]) == 0
    assert main(["sweep", "report", sweep_file]) == 0
    assert "sweep.tex" in capsys.readouterr().out
    assert (root / "sweep.tex").is_file() and (root / "figures" / f"sweep-{KEY}.svg").is_file()
    assert main(["sweep", "report", sweep_file, "--no-latex", "--format", "none"]) == 0
    assert "sweep.tex" not in capsys.readouterr().out
    assert not (root / "sweep.tex").exists() and not (root / "figures").exists()
    assert (root / "sweep.md").is_file()
