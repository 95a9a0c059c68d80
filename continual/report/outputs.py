"""What a report was asked to write besides its page, remembered so that no file of it goes stale (issue #23).

    report.json   {"latex": true, "formats": ["pdf"], "files": ["tables.tex", "figures/forgetting_curves.pdf", ...]}

A report's folder (a run folder, `continual report --out`, a sweep's folder) holds report.json once tables.tex,
sweep.tex or figures were asked for. Every later write of that report (the live report after a step of
`continual run --resume --methods frozen`, `continual report` without `--latex`, a sweep whose grid grew)
rewrites them with the options recorded, and removes the files it wrote before that it no longer writes (a
figure of a method no longer shown, a format no longer asked for, a grid key no longer swept). A folder written
before report.json existed is read from its files: a tables.tex there means `--latex` was asked for, and the
report's figures there the formats they are in. Only files a report writes, by name, are ever removed.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from continual.files import atomic_write
from continual.run_folder import FIGURES, REPORT_RECORD

RECORD = REPORT_RECORD
FORMATS = ("png", "pdf", "svg")  # plots.FORMATS (not imported: matplotlib is loaded only when figures are drawn)


def figure_file(name: str) -> bool:
    """figures/<name>.<format>: a figure a report writes for a paper."""
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == FIGURES and parts[1].rpartition(".")[2] in FORMATS \
        and not parts[1].startswith(".")


def asked(out: Path, *, latex: bool | None, formats: tuple[str, ...] | None,
          legacy: Callable[[Path], list[str]], tex: str) -> tuple[bool, tuple[str, ...], list[str]]:
    """(latex, formats, files written before) for the report in `out`: `latex` and `formats` as given, or where
    None as report.json records them (a folder without it: as `legacy(out)`, the files found there of the
    report's own names, show them; `tex` the LaTeX file's name)."""
    record = _read(out / RECORD)
    if record is None:
        files = [f for f in legacy(out) if (out / f).is_file()]
        before_latex = tex in files
        before_formats = tuple(f for f in FORMATS if any(figure_file(n) and n.endswith(f".{f}") for n in files))
    else:
        files = [f for f in record.get("files", []) if isinstance(f, str)]
        before_latex = bool(record.get("latex"))
        before_formats = tuple(f for f in record.get("formats", []) if f in FORMATS)
    return (before_latex if latex is None else latex, before_formats if formats is None else tuple(formats), files)


def write(out: Path, files: dict[str, str | bytes], *, latex: bool, formats: tuple[str, ...], before: list[str],
          tracked: Callable[[str], bool]) -> None:
    """Write `files` (name relative to `out` -> content) each atomically, remove the `before` files (of the
    report's own names, `tracked`) not among them, and record the options and the tracked files now written."""
    out.mkdir(parents=True, exist_ok=True)
    if any(n.startswith(f"{FIGURES}/") for n in files):
        (out / FIGURES).mkdir(exist_ok=True)
    for name, content in files.items():
        atomic_write(out / name, content)
    for name in before:
        if name not in files and tracked(name) and ".." not in name.split("/"):
            (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / FIGURES).rmdir()  # only when empty: figures no longer asked for
    now = [n for n in files if tracked(n)]
    if latex or formats or now:
        atomic_write(out / RECORD, json.dumps({"latex": latex, "formats": list(formats), "files": now}, indent=1))
    else:
        (out / RECORD).unlink(missing_ok=True)


def recorded(out: Path) -> tuple[bool, tuple[str, ...]]:
    """(latex, formats) as the report in `out` was last written (report.json); (False, ()) where none is."""
    record = _read(out / RECORD) or {}
    return bool(record.get("latex")), tuple(f for f in record.get("formats", []) if f in FORMATS)


def _read(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none, or unreadable: the files there say what was asked
    return doc if isinstance(doc, dict) else None
