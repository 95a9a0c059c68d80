"""What a paper takes from a report (issue #15): tables.tex and the figures as PNG / PDF / SVG files, from
run folders the tests write by hand. The numbers, and so the bold cells, are worked out here; the LaTeX
is compiled where pdflatex is installed."""

import base64
import io
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from continual import plots
from continual.cli import main
from continual.report import ReportError, write_report
from continual.report.latex import escape
from continual.report.tables import method_labels
from helpers import write_run

METHODS = [{"finetune": {}}, {"ldifs": {"lambda": 10.0}}, {"ldifs": {"label": "ldifs-100", "lambda": 100.0}},
           {"wise_ft": {"alpha": 0.5}}, {"replay": {"memory_size": 300}}, {"ewc": {"lambda": 100.0}}]
CONFIG = {"name": "pub_seq", "seed": 0,
          "tasks": [{"name": "t1", "dataset": "digits"}, {"name": "t2", "dataset": "digits"}],
          "probes": [{"name": "my_probe", "dataset": "digits"}], "methods": METHODS}

# Rows (t1, t2, probe) after steps 0, 1, 2, per seed and method. With T = 2: A_T = mean of the last row,
# F_T = R[1, t1] - R[2, t1] = -BWT, Δ = P[2] - P[0], ZSCL Transfer = R[1, t2], Avg = mean of R[1:], Last = A_T.
ROWS = {
    0: {"finetune": [(.50, .40, .80), (.90, .50, .70), (.60, .80, .60)],
        "ldifs": [(.50, .40, .80), (.92, .45, .80), (.88, .85, .79)],
        "ldifs-100": [(.50, .40, .80), (.90, .44, .80), (.89, .80, .80)],
        "wise_ft": [(.50, .40, .80), (.85, .50, .78), (.80, .75, .76)],
        "replay": [(.50, .40, .80), (.90, .50, .75), (.85, .84, .70)],
        "ewc": [(.50, .40, .80), (.91, .44, .78)]},  # stopped after task 1
    1: {"finetune": [(.50, .40, .80), (.80, .40, .75), (.70, .90, .70)],
        "ldifs": [(.50, .40, .80), (.90, .42, .81), (.86, .83, .80)],
        "ldifs-100": [(.50, .40, .80), (.90, .44, .80), (.87, .82, .80)],
        "wise_ft": [(.50, .40, .80), (.85, .50, .78), (.80, .75, .76)],
        "replay": [(.50, .40, .80), (.88, .50, .75), (.85, .86, .72)]},  # ewc never started
}
# Means over the two seeds (in %):
#               A_T    F_T   BWT    Δ     Transfer  Avg     Last
#   finetune    75.0   20.0  -20.0  -15.0  45.0     70.0    75.0
#   ldifs       85.5    4.0   -4.0   -0.5  43.5     76.375  85.5   <- best A_T, Last
#   ldifs-100   84.5    2.0   -2.0    0.0  44.0     75.75   84.5   <- best F_T, BWT, Δ
#   wise_ft     77.5    5.0   -5.0   -4.0  50.0     72.5    77.5   <- Transfer (tied)
#   replay      85.0    4.0   -4.0   -9.0  50.0     77.25   85.0   <- Transfer (tied), Avg
#   ewc         --     (incomplete: never bold)
LABELS = {"finetune": "finetune", "ldifs": r"ldifs ($\lambda$ = 10)", "ldifs-100": r"ldifs-100 ($\lambda$ = 100)",
          "wise_ft": r"wise\_ft ($\alpha$ = 0.5)", "replay": "replay (memory 300)", "ewc": r"ewc ($\lambda$ = 100)"}
BOLD_FINAL = {("ldifs", 1), ("ldifs-100", 2), ("ldifs-100", 3), ("ldifs-100", 4)}  # (method, column)
BOLD_ZSCL = {("wise_ft", 1), ("replay", 1), ("replay", 2), ("ldifs", 3)}

# Each figure's width: one column, or two for several panels (the one probe's curves fit a column).
FIGURES = {"accuracy_vs_forgetting": plots.COLUMN, "forgetting_curves": plots.TWO_COLUMNS,
           "concept_forgetting": plots.COLUMN, **{f"accuracy_matrix_{m}": plots.COLUMN for m in ROWS[0]}}


def _write_run(root, seed):
    return write_run(root / "pub_seq", dict(CONFIG, seed=seed), ROWS[seed])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return _write_run(root / "s0", 0), _write_run(root / "s1", 1)


@pytest.fixture(scope="module")
def published(runs, tmp_path_factory):
    """The report of both seeds with everything a paper takes, through the CLI: every figure drawn once."""
    out = tmp_path_factory.mktemp("publish") / "report"
    code = main(["report", str(runs[0]), str(runs[1]), "--latex", "--format", "png,pdf,svg", "--out", str(out)])
    assert code == 0
    return out


def test_the_cli_writes_exactly_the_files_asked_for(published):
    written = {str(p.relative_to(published)) for p in published.rglob("*") if p.is_file()}
    figures = {f"figures/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf", "svg")}
    assert written == {"index.html", "summary.md", "summary.csv", "tables.tex", "report.json"} | figures


def test_no_figures_folder_and_no_latex_unless_asked(runs, tmp_path):
    out = write_report(list(runs), tmp_path / "plain")  # the page's PNGs come from _draw's cache
    assert {p.name for p in out.iterdir()} == {"index.html", "summary.md", "summary.csv"}


def test_an_unknown_format_is_refused_before_anything_is_written(runs, tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["report", str(runs[0]), "--latex", "--format", "pdf,gif", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format: ") and "'gif'" in err and "png, pdf, svg" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(ReportError, match="unknown figure format 'gif'"):
        write_report([runs[0]], out, formats=["gif"])
    assert not out.exists()


# --- labels


def test_legend_entries_name_the_options_that_define_a_method():
    config = {"methods": ["finetune", {"ldifs": {"lambda": 10.0}}, {"ldifs": {"label": "ldifs-paper", "lambda": 100.0,
                                                                              "distance": "paper"}},
                          "wise_ft", {"lwf": {"alpha": 1.0, "temperature": 2.0}}, {"replay": {"memory_size": 500}},
                          {"l2sp": {}}, {"ewc": {"lambda": 1.0e5, "mode": "online", "decay": 0.9}},
                          {"lwf": {"label": "lwf-t4", "temperature": 4.0}}]}
    assert method_labels(config) == {
        "finetune": "finetune", "ldifs": "ldifs (λ = 10)",
        "ldifs-paper": "ldifs-paper (λ = 100, distance paper)",  # the option in which the variants differ
        "wise_ft": "wise_ft (α = 0.5)",  # not listed: the default of WiseFTOptions
        "lwf": "lwf (α = 1)", "lwf-t4": "lwf-t4 (α = 1, T = 4)",  # the temperature only where not the default
        "replay": "replay (memory 500)", "l2sp": "l2sp (λ = 0.1)", "ewc": "ewc (λ = 100000, online)"}
    assert escape("wise_ft (α = 0.5)") == r"wise\_ft ($\alpha$ = 0.5)"
    assert escape("a--b & 50%") == r"a-{}-b \& 50\%"


def test_the_page_keeps_its_figure_sizes_and_names_methods_as_the_legends_do(published):
    page = (published / "index.html").read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]*)"', page)
    first = Image.open(io.BytesIO(base64.b64decode(pngs[0])))  # the summary scatter, as the page always drew it
    assert first.size[0] == round(5.2 * plots.PAGE.dpi)
    assert "| ldifs-100 (λ = 100) |" in (published / "summary.md").read_text()  # named as in the legends
    assert "<td class=text>ldifs-100 (λ = 100)</td>" in page and "<h3>ldifs-100 (λ = 100)</h3>" in page


# --- tables.tex


def _tabulars(tex: str) -> list[dict[str, list[str]]]:
    """Each tabular's rows as {method cell: [cells]}, header row under "header"."""
    out = []
    for body in re.findall(r"\\toprule\n(.*?)\\bottomrule", tex, re.S):
        head, rows = body.split("\\midrule\n")
        table = {"header": head.strip().removesuffix("\\\\").strip().split(" & ")}
        for line in rows.strip().splitlines():
            cells = line.strip().removesuffix("\\\\").strip().split(" & ")
            table[cells[0]] = cells
        out.append(table)
    return out


def test_tables_tex_is_booktabs_with_the_best_of_each_column_in_bold(published):
    tex = (published / "tables.tex").read_text()
    assert tex.startswith("%") and r"\usepackage{booktabs}" in tex.splitlines()[1]
    assert r"\documentclass" not in tex
    assert tex.count(r"\begin{table}") == 3 and tex.count(r"\centering") == 3  # final, ZSCL, cost
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 3
    assert r"\caption{pub\_seq: final metrics" in tex and r"\label{tab:pub-seq-final}" in tex
    assert r"\label{tab:pub-seq-zscl}" in tex
    final, zscl, cost = _tabulars(tex)
    assert cost["header"] == ["Method", r"Time (s) $\downarrow$", r"Mem.\ (GiB) $\downarrow$", r"Params (M) $\downarrow$",
                              r"Extra (MiB) $\downarrow$"]
    assert final["header"] == ["Method", r"$A_T$ $\uparrow$", r"$F_T$ $\downarrow$", r"BWT $\uparrow$",
                               r"$\Delta$ my\_probe $\uparrow$"]
    assert zscl["header"] == ["Method", r"Transfer $\uparrow$", r"Avg $\uparrow$", r"Last $\uparrow$"]
    for table, bold in ((final, BOLD_FINAL), (zscl, BOLD_ZSCL)):
        assert list(table)[1:] == [LABELS[m] for m in ROWS[0]]  # one row per method, labelled, in order
        found = {(m, j) for m in ROWS[0] for j, cell in enumerate(table[LABELS[m]]) if r"\bfseries" in cell}
        assert found == bold
        assert table[LABELS["ewc"]][1:] == ["--"] * (len(table["header"]) - 1)  # incomplete: no value, not bold
    assert final[LABELS["ldifs"]][1] == r"\bfseries \boldmath 85.5 $\pm$ 1.4"
    assert final[LABELS["finetune"]][1:] == [r"75.0 $\pm$ 7.1", r"20.0 $\pm$ 14.1", r"$-$20.0 $\pm$ 14.1",
                                             r"$-$15.0 $\pm$ 7.1"]
    assert final[LABELS["ldifs-100"]][4] == r"\bfseries \boldmath +0.0 $\pm$ 0.0"
    assert "±" not in tex and "—" not in tex and "λ" not in tex  # pdflatex reads none of these as text


def test_one_run_has_no_std_in_tables_tex(runs):
    from continual.report.latex import tables_tex
    from continual.report.page import Report
    from continual.report.tables import read_run

    tex = tables_tex(Report([read_run(runs[0])]))
    final, *_ = _tabulars(tex)
    assert r"\pm" not in "".join(c for row in list(final.values())[1:] for c in row)  # n = 1: no std, as summary.md
    assert final[LABELS["finetune"]][1:] == ["70.0", "30.0", "$-$30.0", "$-$20.0"]
    assert "(one run)" in tex


def test_tables_tex_compiles_with_pdflatex(published, tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (apt install texlive-latex-base texlive-latex-recommended)")
    shutil.copy(published / "tables.tex", tmp_path / "tables.tex")
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                        "\\input{tables.tex}\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 0
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Missing character" not in log and "Overfull" not in log, log[-3000:]


# --- figures


@pytest.mark.parametrize("name", FIGURES)
def test_pdf_figures_embed_truetype_fonts_at_a_papers_width(published, name):
    pdf = (published / "figures" / f"{name}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert b"/FontFile2" in pdf  # TrueType embedded (pdf.fonttype 42)
    assert b"/Type3" not in pdf and b"/FontFile3" not in pdf  # no Type 3 fonts, which publishers refuse
    width = float(re.search(rb"/MediaBox \[\s*0 0 ([0-9.]+) ", pdf).group(1))
    assert width == pytest.approx(FIGURES[name] * 72)


@pytest.mark.parametrize("name", FIGURES)
def test_svg_figures_have_text_as_paths(published, name):
    root = ET.fromstring((published / "figures" / f"{name}.svg").read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert not [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "text"]
    assert [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "path"]
    assert float(root.get("width").removesuffix("pt")) == pytest.approx(FIGURES[name] * 72)


@pytest.mark.parametrize("name", FIGURES)
def test_png_figures_are_300_dpi_at_a_papers_width(published, name):
    image = Image.open(published / "figures" / f"{name}.png")
    assert image.size[0] == round(FIGURES[name] * 300)
    assert image.info["dpi"] == pytest.approx((300, 300), abs=0.1)


def test_paper_figures_use_8_point_type_and_show_the_labels(runs):
    """The type of a drawn paper figure (7-8 pt; the heatmap's numbers may shrink) and its legend entries."""
    from continual.report.page import Report
    from continual.report.tables import read_run

    report = Report([read_run(r) for r in runs])
    spec = next(f for f in report.figure_list if f.name == "forgetting_curves")
    fig = spec.fn(*spec.args, **spec.kwargs, paper=True)
    plots.figure_bytes(fig, "png")  # ticks are made when drawn
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
             if t.get_text().strip() and t.get_visible()]
    assert texts and all(6 <= t.get_fontsize() <= 8 for t in texts), {t.get_text(): t.get_fontsize() for t in texts}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["finetune", "ldifs (λ = 10)", "ldifs-100 (λ = 100)", "wise_ft (α = 0.5)",
                      "replay (memory 300)", "ewc (λ = 100)"]
