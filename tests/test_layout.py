"""The shape of the code (issue #10): what answers instantly stays light, imports go one way, one owner
per concern, and a method's needs are checked before anything is written."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from continual.cli import main
from continual.config import Sequence
from continual.methods import METHODS, NEEDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "continual"
HEAVY = ("torch", "torchvision", "avalanche", "open_clip", "timm", "sklearn")  # seconds to import


def modules_loaded_by(code: str) -> set[str]:
    """Top-level names in sys.modules after running `code` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()[-1]
    return {name.split(".")[0] for name in json.loads(out)}


def test_help_validate_and_list_load_neither_torch_nor_avalanche():
    loaded = modules_loaded_by(
        "import contextlib, io\n"
        "from continual.cli import _parser, main\n"
        "import continual.config\n"
        "_parser().format_help()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['validate', 'sequences/mnist-fashion-animals.yaml', 'sequences/clip-eight-datasets.yaml']) == 0\n"
        "    assert main(['list']) == 0")
    assert "continual" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_metrics_plots_and_the_report_load_no_torch():
    loaded = modules_loaded_by("import continual.report, continual.metrics, continual.plots, continual.run_folder")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


# Layers, highest first: a module imports its own layer or lower ones, never higher (checked on the source,
# function-level imports included), so README's "imports go one way" (cli -> runner -> methods, train,
# evaluate -> models and data; the report reads files and imports no model or training code) is checked. Light
# layers also import none of HEAVY. A name matches that module and those under it; `name.*` matches only
# those under it (a new method's file is in the training layer by being under continual.methods); the
# longest matching name wins. Two imports by name are not seen here: methods.implementation (a method's
# module, when it runs) and datasets.tasks.load_source (a dataset's source module); both go downwards by
# construction.
LAYERS = [
    ("entry", ["continual", "continual.__main__", "continual.cli"]),
    ("runner", ["continual.runner", "continual.sweeps", "continual.export"]),
    ("training", ["continual.methods.*", "continual.train", "continual.evaluate", "continual.checkpoints",
                  "continual.distributed", "continual.monitor", "continual.trackers"]),
    ("models and data", ["continual.models", "continual.datasets.*", "continual.augment"]),
    # reads a run's files and draws them: below training and models, so it can import neither
    ("report", ["continual.report", "continual.plots"]),
    ("run folder", ["continual.run_folder", "continual.out_folder", "continual.run_lock"]),
    # what a sequence file may say, checked without torch: the schema, the method registry and options,
    # the dataset and model catalogs
    ("config", ["continual.config", "continual.methods", "continual.methods.options", "continual.datasets",
                "continual.datasets.catalog", "continual.datasets.prompts", "continual.model_catalog"]),
    ("base", ["continual.files", "continual.tree", "continual.seeds", "continual.metrics", "continual.network",
              "continual.progress"]),
]
LIGHT = {"report", "run folder", "config", "base"}


def layer_of(module: str) -> int:
    """The layer of a module: the longest listed name that matches it (`continual` itself stands for its
    __init__ only, so a new top-level module must be placed here explicitly)."""
    best = None
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if name.endswith(".*"):
                inside = module.startswith(name[:-1])
            else:
                inside = module == name or (name != "continual" and module.startswith(name + "."))
            if inside and (best is None or len(name) > len(best[1])):
                best = (rank, name)
    assert best is not None, f"{module} is in no layer of test_layout.LAYERS: add it where it belongs"
    return best[0]


def imports_of(path: Path) -> list[str]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "continual":  # `from continual import seeds`
            found += [f"continual.{a.name}" for a in node.names  # modules, not names (`__version__`)
                      if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            if node.module.startswith("continual."):  # `from continual.methods import finetune`: a submodule
                package = ROOT.joinpath(*node.module.split("."))
                found += [f"{node.module}.{a.name}" for a in node.names
                          if (package / a.name).is_dir() or (package / f"{a.name}.py").is_file()]
    return [module, *found]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_one_way(path):
    module, *imported = imports_of(path)
    rank = layer_of(module)
    for name in imported:
        if name.startswith("continual"):
            assert layer_of(name) >= rank, (f"{module} ({LAYERS[rank][0]}) imports {name} "
                                            f"({LAYERS[layer_of(name)][0]}): imports go one way, downwards")
        elif LAYERS[rank][0] in LIGHT:
            assert name.split(".")[0] not in HEAVY, f"{module} must stay light but imports {name}"


def test_every_module_is_in_a_layer_and_the_runner_draws_nothing():
    for path in PACKAGE.rglob("*.py"):
        layer_of(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    imported = imports_of(PACKAGE / "runner.py")[1:]
    assert not [m for m in imported if m.startswith(("continual.report", "continual.plots", "matplotlib"))]


def test_method_registry_and_schema_agree():
    for name, options in METHODS.items():
        assert options.model_fields["name"].default == name  # the YAML key is the tag the schema reads
        assert set(options.NEEDS) <= set(NEEDS)
        module, cls = options.IMPLEMENTATION.split(":")  # built-ins are imported only when they run
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file()
        given = {"reference": "r"} if name == "zscl" else {}  # its one required option
        seq = Sequence.model_validate({"name": "s", "tasks": [{"name": "t", "dataset": "digits"}],
                                       "references": [{"name": "r", "dataset": "digits"}],
                                       "methods": [{name: given}]})
        assert type(seq.methods[0]) is options


# ---- behaviour that moved with the restructuring -----------------------------------------------------

SEQ = {
    "name": "tiny",
    "model": {"family": "efficientnet_lite0", "image_size": 32},
    "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1], "train_per_class": 4, "test_per_class": 3}],
    "methods": ["finetune"],
    "download": False,
}


def test_a_method_whose_needs_the_model_cannot_meet_is_refused_before_anything_is_written(tmp_path, capsys):
    """LDIFS reads intermediate features; open_clip towers built by timm expose none we can tap. Before,
    this raised mid-run with config.yaml and step 0 on disk."""
    import open_clip

    config = tmp_path / "tiny-timm-clip.json"
    config.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "resnet18", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(config)
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump({**SEQ, "model": {"family": "open_clip", "arch": "tiny-timm-clip"},
                                   "methods": ["finetune", "ldifs"]}))
    out = tmp_path / "out"
    assert main(["run", str(seq), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{seq}: methods[1]: ldifs needs intermediate feature taps" in err and "TimmModel" in err
    assert not out.exists()
    # named on the command line only: the flag is the key
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--methods", "ldifs"]) == 2
    assert f"{seq}: methods[1]: ldifs needs" in capsys.readouterr().err
    seq.write_text(yaml.safe_dump({**SEQ, "model": {"family": "open_clip", "arch": "tiny-timm-clip"}}))
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--methods", "ldifs"]) == 2
    assert f"{seq}: --methods: ldifs needs" in capsys.readouterr().err
    assert not out.exists()


def test_a_figure_that_fails_to_draw_warns_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    from continual.report import live

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(live, "curves_png", broken)
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(SEQ))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert any(line.endswith("curves.png: not drawn: RuntimeError: no fonts") for line in warned), warned
    folder = tmp_path / "out" / "tiny"
    assert json.loads((folder / "finetune" / "metrics.json").read_text())["complete"]
    assert not (folder / "finetune" / "curves.png").exists() and (folder / "index.html").exists()


def test_overwrite_removes_what_a_run_wrote_and_nothing_else(tmp_path):
    from continual.config import dump_sequence, load_sequence
    from continual.run_folder import RunFolder

    folder = tmp_path / "tiny"
    (folder / "finetune").mkdir(parents=True)
    (folder / "figures").mkdir()
    for name in ("summary.md", "tables.tex", "figures/forgetting_curves.pdf", "finetune/metrics.json", "notes.txt"):
        (folder / name).write_text("x")
    config = dump_sequence(load_sequence(SEQ))
    (folder / "config.yaml").write_text(config)  # a run of ours: only then is anything removed
    (folder / "checkpoints").mkdir()
    (folder / "my-data").mkdir()
    (folder / "my-data" / "keep.txt").write_text("x")
    RunFolder(folder).claim(config, resume=False, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["my-data", "notes.txt"]
