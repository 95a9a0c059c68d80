"""continual: continual fine-tuning of pre-trained vision models, and how much each method forgets.

    import continual
    folder = continual.run("sequences/mnist-fashion-animals.yaml", methods=["finetune", "ldifs"])
    matrices = continual.load_run(folder)      # {method: accuracy matrix DataFrame, indexed by step}
    metrics = continual.load_metrics(folder)   # tidy: method, step, metric, value
    continual.report.write_report([folder], latex=True, formats=["pdf"])  # + tables.tex, figures/*.pdf
    table = continual.sweep("sweeps/lambda.yaml")  # every cell of a sweep file, mean ± std over seeds

`continual.report` (the report of run folders: write_report, load_tables, aggregate) and `continual.sweeps`
(a sweep's parts) are imported when first used: `import continual` alone stays light.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.2.0"
__all__ = ["run", "sweep", "load_run", "load_metrics", "load_sequence", "report", "sweeps", "ConfigError"]
SUBPACKAGES = ("report", "sweeps")  # reached as attributes of `continual`, imported on first use


def run(sequence: str | Path | dict, *, out: str | Path = "runs", methods: list[str] | None = None,
        overrides: list[str] = (), progress: bool = True, resume: bool = False, overwrite: bool = False,
        tensorboard: bool = True) -> Path:
    """Run a sequence (a YAML path or a dict of the same shape); returns the run folder. A folder that
    already holds a run needs `resume=True` (continue it) or `overwrite=True` (start again). `tensorboard`:
    each method writes TensorBoard scalars into its folder (`tensorboard --logdir <out>` shows them)."""
    from continual.config import load_sequence
    from continual.report import LiveReport
    from continual.runner import run_sequence

    seq = load_sequence(sequence, list(overrides))
    source = "<dict>" if isinstance(sequence, dict) else str(sequence)
    with LiveReport(Path(out) / seq.name) as live:
        return run_sequence(seq, out=out, methods=methods, source=source, progress=progress, resume=resume,
                            overwrite=overwrite, on_step=live.step, tensorboard=tensorboard)


def sweep(path: str | Path, *, out: str | Path | None = None, jobs: int | None = None, latex: bool = False,
          formats: list[str] = ()):
    """Run a sweep file's cells not yet done on its backend (local, slurm, ray), each one `continual run`,
    and return the tidy aggregate: one row per (sequence, grid point, method, metric) with mean, std and n
    over seeds (also written to <out>/<name>/sweep.csv; `latex`: sweep.tex, `formats`: its figures as
    figures/sweep-<key>.<format> for a paper). See continual.sweeps for status and the parts."""
    from continual.sweeps import sweep as _sweep

    return _sweep(path, out=out, jobs=jobs, latex=latex, formats=formats)


def load_run(folder: str | Path):
    """A finished (or running) run folder -> {method: accuracy-matrix DataFrame indexed by step}, in the
    sequence's method order (config.yaml's), methods that have results only. FileNotFoundError when the
    folder holds no results."""
    from continual.report.load import load_run as _load

    return _load(folder)


def load_metrics(folder: str | Path):
    """Per-step metrics of every method in a run folder, tidy as `continual.report.load_tables` gives them:
    one row per (method, step, metric) with its value, columns method, step, metric, value; metrics
    average_accuracy, forgetting, bwt and, per probe column of accuracy_matrix.csv, concept_delta:probe:<probe>
    (and concept_delta:probe:<probe>:zero_shot for CLIP); continual.metrics has the formulas.
    FileNotFoundError when the folder holds no results; continual.report.ReportError when its config.yaml
    is unreadable."""
    from continual.report.load import load_metrics as _load

    return _load(folder)


def load_sequence(source: str | Path | dict, overrides: list[str] = ()):
    from continual.config import load_sequence as _load

    return _load(source, list(overrides))


def __getattr__(name: str):
    if name in SUBPACKAGES:
        import importlib

        return importlib.import_module(f"continual.{name}")
    if name == "ConfigError":
        from continual.config import ConfigError

        return ConfigError
    raise AttributeError(name)
