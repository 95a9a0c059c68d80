"""No traceback on any input (issue #23), one test per kind of input rather than per case: JSON a user can
reach (nested too deeply, not JSON, not an object, a folder or a FIFO in its place), a timm model given an
image size it cannot take, a plugin that calls sys.exit() at import, a reader that closes the pipe early,
and a folder that already holds a run (refused before the model and data are loaded). The image store's
damaged files are test_store.py's (`test_a_damaged_store_is_rebuilt_not_reused`)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from continual.cli import READER_LEFT, main
from continual.config import dump_sequence, load_sequence
from continual.files import BadFile, read_json
from helpers import TINY_CLIP_CONFIG, digits, tiny_sequence

ROOT = Path(__file__).resolve().parents[1]
CONTINUAL = [sys.executable, "-m", "continual"]


def write_sequence(tmp_path: Path, **changes) -> Path:
    doc = {"name": "t", "model": {"family": "efficientnet_lite0", "pretrained": None, "image_size": 32},
           "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1], "train_per_class": 4, "test_per_class": 2}],
           "methods": ["finetune"], "download": False, **changes}
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def refused(args: list[str], capsys, *, status: int = 2) -> str:
    """Run the CLI in-process; it must exit with `status` and say one thing on stderr, not a traceback."""
    assert main(args) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


# ---- JSON a user can reach --------------------------------------------------------------------------

def _deep_object(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


JSON_DAMAGE = {  # what is written where a JSON file belongs -> what the message says
    "nested too deeply for json": (lambda p: p.write_text("[" * 100_000), "nested too deeply"),
    "valid, but nested 70 deep": (lambda p: p.write_text(_deep_object(70)), "nested too deeply"),
    "not JSON": (lambda p: p.write_text('{"embed_dim": 16,'), "not valid JSON"),
    "not UTF-8": (lambda p: p.write_bytes(b'{"a": "\xff"}'), "not UTF-8"),
    "an integer of 5,000 digits": (lambda p: p.write_text("1" * 5000), "not valid JSON"),
    "a folder": (lambda p: p.mkdir(), "is a folder"),
    "a FIFO": (lambda p: os.mkfifo(p), "is a FIFO"),  # a plain read would wait for a writer forever
}


@pytest.mark.parametrize("damage", list(JSON_DAMAGE))
def test_json_that_cannot_be_read_is_one_line_naming_the_file(tmp_path, damage):
    write, says = JSON_DAMAGE[damage]
    write(tmp_path / "x.json")
    with pytest.raises(BadFile, match=says) as caught:
        read_json(tmp_path / "x.json")
    assert str(tmp_path / "x.json") in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("form", ["model config file", "local-dir"])
@pytest.mark.parametrize("damage", [d for d in JSON_DAMAGE if d not in ("a folder", "a FIFO")]
                         + ["a JSON list", "no vision_cfg", "vision_cfg a list"])
def test_a_damaged_open_clip_config_is_refused_by_validate_and_run(tmp_path, capsys, damage, form):
    if form == "local-dir":
        (tmp_path / "saved").mkdir()
        (tmp_path / "saved" / "open_clip_model.safetensors").write_bytes(b"")  # weights are read by run only
        config, arch = tmp_path / "saved" / "open_clip_config.json", "local-dir:saved"
    else:
        config, arch = tmp_path / "my-clip.json", "my-clip.json"
    if damage == "a JSON list":
        config.write_text("[1, 2]")
        says = "is not an open_clip model config: no embed_dim, vision_cfg, text_cfg"
    elif damage == "no vision_cfg":
        cfg = {k: v for k, v in TINY_CLIP_CONFIG.items() if k != "vision_cfg"}
        config.write_text(json.dumps({"model_cfg": cfg} if form == "local-dir" else cfg))
        says = "is not an open_clip model config: no vision_cfg"
    elif damage == "vision_cfg a list":
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": []}
        config.write_text(json.dumps({"model_cfg": cfg} if form == "local-dir" else cfg))
        says = "is not an open_clip model config: vision_cfg and text_cfg must be objects"
    else:
        JSON_DAMAGE[damage][0](config)
        says = f"cannot read the model config: {config} (is )?{JSON_DAMAGE[damage][1]}"
    seq = write_sequence(tmp_path, model={"family": "open_clip", "arch": arch})
    for command in (["validate", str(seq)], ["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]):
        err = refused(command, capsys)
        assert re.search(f"{re.escape(str(seq))}: model.arch: .*{says}", err)
    assert not (tmp_path / "out").exists()


def test_a_model_config_open_clip_cannot_build_is_refused_by_run(tmp_path, capsys):
    """JSON of the right shape that open_clip still cannot build: said by run (when the model is built,
    before anything is written), not a traceback from inside open_clip."""
    (tmp_path / "my-clip.json").write_text(json.dumps({**TINY_CLIP_CONFIG, "vision_cfg": {"layers": "four"}}))
    seq = write_sequence(tmp_path, model={"family": "open_clip", "arch": "my-clip.json"})
    err = refused(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert f"{seq}: model.arch: cannot build open_clip my-clip: " in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["nested too deeply for json", "not UTF-8", "a folder", "a FIFO"])
def test_a_damaged_config_read_when_building_the_model_is_a_model_error(tmp_path, damage):
    from continual.models import ModelError, clip

    JSON_DAMAGE[damage][0](tmp_path / "x.json")
    with pytest.raises(ModelError, match=f"cannot read the model config: {tmp_path / 'x.json'} (is )?"
                                         f"{JSON_DAMAGE[damage][1]}"):
        clip._model_config(tmp_path / "x.json", nested=False)


@pytest.mark.parametrize("damage", ["nested too deeply for json", "not JSON", "a JSON list", "a folder", "a FIFO"])
def test_a_damaged_metrics_json_of_a_run_is_unreadable_not_a_traceback(tmp_path, damage):
    from continual.run_folder import RunFolder
    from continual.runner import _complete

    run = RunFolder(tmp_path / "t")
    (run.path / "finetune").mkdir(parents=True)
    path = run.path / "finetune" / "metrics.json"
    if damage == "a JSON list":
        path.write_text("[]")
    else:
        JSON_DAMAGE[damage][0](path)
    with pytest.raises(BadFile):
        run.read_metrics("finetune")
    assert run.progress() == "finetune unreadable"
    assert not _complete(run, "finetune", n_steps=1)  # a resume computes it again
    if damage != "a folder":  # (a folder where a result file belongs is not replaced)
        run.record_failure("finetune", "diverged")
        assert run.read_metrics("finetune") == {"method": "finetune", "steps": [], "complete": False,
                                                "error": "diverged"}


# ---- a timm model given an image size it cannot take -------------------------------------------------

@pytest.mark.parametrize("arch, size, says", [
    ("test_vit", 8, "8 is not a multiple of timm test_vit's patch size 16"),  # below the patch (the case)
    ("test_vit", 40, "40 is not a multiple of timm test_vit's patch size 16"),  # would drop border pixels
    ("test_convnext", 16, "timm test_convnext cannot take 16 px images (RuntimeError: Calculated padded input"),
    ("test_maxvit", 33, "timm test_maxvit cannot take 33 px images (RuntimeError: The size of tensor a"),
    ("test_vit_relpos", 8, "timm test_vit_relpos cannot be built for 8 px images (RuntimeError:"),
])
def test_a_timm_image_size_the_model_cannot_take_is_refused_before_anything_is_written(tmp_path, capsys, arch,
                                                                                       size, says):
    seq = write_sequence(tmp_path, model={"family": "timm", "arch": arch, "image_size": size})
    err = refused(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert f"{seq}: model.image_size: {says}" in err
    assert not (tmp_path / "out").exists()


def test_a_timm_image_size_it_can_take_is_built(tmp_path):
    from continual.models import build_backbone

    backbone = build_backbone(load_sequence(write_sequence(tmp_path, model={
        "family": "timm", "arch": "test_convnext", "image_size": 33})).model)
    assert backbone.image_size == 33 and backbone.training  # the probe's eval() undone


# ---- a plugin that calls sys.exit() at import ---------------------------------------------------------

@pytest.mark.parametrize("body, says", [
    ("import sys\nsys.exit(0)\n", "it called sys.exit(0)"),
    ("import sys\nsys.exit(3)\n", "it called sys.exit(3)"),
    ("import sys\nsys.exit('bye')\n", "it called sys.exit('bye')"),
    ("raise SystemExit\n", "it called sys.exit()"),
    ("exit()\n", "it called sys.exit()"),
    ("class Stop(BaseException):\n    pass\nraise Stop('not an Exception')\n", "Stop: not an Exception"),
    ("raise RuntimeError('line one\\nline two')\n", "RuntimeError: line one line two"),
])
def test_a_plugin_that_exits_at_import_is_named_by_validate_and_run(tmp_path, capsys, body, says):
    (tmp_path / "mine.py").write_text(body)
    seq = write_sequence(tmp_path, plugins=["mine.py"])
    for command in (["validate", str(seq)], ["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]):
        err = refused(command, capsys)
        assert f"{seq}: plugins[0]: importing {tmp_path / 'mine.py'} failed: {says}" in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_importing_a_plugin_still_stops(tmp_path):
    (tmp_path / "mine.py").write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_sequence(write_sequence(tmp_path, plugins=["mine.py"]))


# ---- a reader that closes the pipe early ------------------------------------------------------------

SEQUENCES = sorted(str(p) for p in (ROOT / "sequences").glob("*.yaml"))


@pytest.mark.parametrize("args", [["list"], ["list", "cifar10"], ["validate", *SEQUENCES[:3]], ["data", "list", "DATA"],
                                  ["validate", "BAD"]], ids=["list", "list cifar10", "validate", "data list",
                                                             "validate a bad file (stderr too)"])
def test_a_closed_pipe_ends_quietly(tmp_path, args):
    (tmp_path / "bad.yaml").write_text("name: [\n")
    args = [str(tmp_path / "data") if a == "DATA" else str(tmp_path / "bad.yaml") if a == "BAD" else a for a in args]
    both = args[-1].endswith("bad.yaml")  # what it says goes to stderr: that pipe is closed too
    read, write = os.pipe()
    os.close(read)  # the reader left before a byte was written: every write fails with EPIPE
    try:
        done = subprocess.run(CONTINUAL + args, stdout=write, stderr=write if both else subprocess.PIPE,
                              cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == READER_LEFT
    assert both or done.stderr == b""  # no traceback, no "Exception ignored ... BrokenPipeError"


def test_head_reading_one_line_of_validate(tmp_path):
    """As the issue has it: `continual validate a.yaml b.yaml ... | head -1`, under pipefail."""
    files = " ".join(SEQUENCES * 20)  # more than a pipe's buffer holds, so the writer outlives head
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m continual validate {files} | head -1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ": ok (" in done.stdout
    assert len(done.stdout.splitlines()) == 1 and done.stderr == ""
    assert done.returncode == READER_LEFT


# ---- a folder that already holds a run: refused before the model and data are loaded -----------------

@pytest.fixture
def nothing_loads(monkeypatch):
    """The model builder and the data loader, replaced by ones that fail the test if called."""
    from continual import models, runner

    calls = []

    def build(*args, **kwargs):
        calls.append("model")
        raise AssertionError("the model was built")

    monkeypatch.setattr(models, "build_backbone", build)
    monkeypatch.setattr(runner, "load_task", lambda *a, **k: pytest.fail("data was loaded"))
    return calls


@pytest.mark.parametrize("held", ["a run", "results without config.yaml", "another tool's config.yaml",
                                  "another sequence's run", "a FIFO as config.yaml", "config.yaml nested deeply"])
@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_a_folder_that_holds_a_run_is_refused_before_loading(tmp_path, capsys, nothing_loads, held, flag):
    seq = write_sequence(tmp_path)
    folder = tmp_path / "out" / "t"
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    if held == "a run":
        config.write_text(dump_sequence(load_sequence(seq)))
        (folder / "finetune").mkdir()
        (folder / "finetune" / "metrics.json").write_text(json.dumps({"steps_done": 1, "steps_total": 1}))
        says = f"{folder} already holds a run of 't' (finetune 1/1 steps); add --resume"
    elif held == "results without config.yaml":
        (folder / "finetune").mkdir()
        (folder / "finetune" / "accuracy_matrix.csv").write_text("step,a\n0,0.5\n")
        says = f"{folder} holds results of a run but no config.yaml"
    elif held == "another tool's config.yaml":
        config.write_text("lr: 0.1\n")
        says = f"{config} was not written by continual"
    elif held == "another sequence's run":
        config.write_text(dump_sequence(load_sequence(seq)).replace("name: t\n", "name: other\n", 1))
        says = f"{config} holds a run of 'other', not of 't'"
    elif held == "a FIFO as config.yaml":
        os.mkfifo(config)
        says = f"{config} cannot be read ({config} is a FIFO, not a file)"
    else:
        config.write_text("[" * 10_000)
        says = f"{config} cannot be read"
    before = sorted(p.name for p in folder.rglob("*"))
    command = ["run", str(seq), "--out", str(tmp_path / "out"), "--quiet", *flag]
    if (held == "a run" and flag) or (held == "results without config.yaml" and flag == ["--overwrite"]):
        # Allowed here: loading starts, and is where this test's stand-in builder stops it.
        with pytest.raises(AssertionError, match="the model was built"):
            main(command)
        assert nothing_loads == ["model"]
    else:
        err = refused(command, capsys)
        assert says in err and nothing_loads == []
    assert sorted(p.name for p in folder.rglob("*")) == before  # nothing written, nothing discarded


DAMAGE = {"deep": "[" * 5000, "a list": "[1, 2]", "no keys": "{}"}


@pytest.mark.parametrize("kind", [*DAMAGE, "a folder"])
def test_a_damaged_cell_file_is_a_state_not_a_traceback(tmp_path, kind):
    """`continual sweep status` reads each cell's metrics.json, cell.json and queued.json: damaged, the cell is
    pending (its run redoes the step), never a traceback."""
    from continual.sweeps import Cell, state

    cell = Cell(sequence=tmp_path / "s.yaml", name="s", point=(), seed=0, folder=tmp_path / "cell",
                methods=("finetune",), runs=("finetune",))
    for path in (cell.run_folder / "finetune" / "metrics.json", cell.folder / "cell.json", cell.folder / "queued.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if kind == "a folder" else path.write_text(DAMAGE[kind])
    assert state(cell)[0] == "pending"


@pytest.mark.parametrize("kind", ["deep", "a list", "a folder"])
def test_a_damaged_environment_json_is_left_out_of_the_report(tmp_path, capsys, kind):
    from helpers import write_run

    config = {"name": "toy", "tasks": [{"name": "a", "dataset": "digits"}], "methods": ["finetune"]}
    folder = write_run(tmp_path / "toy", config, {"finetune": [(0.5,), (0.9,)]})
    path = folder / "environment.json"
    path.mkdir() if kind == "a folder" else path.write_text(DAMAGE[kind])
    assert main(["report", str(folder)]) == 0, capsys.readouterr().err
    assert "recorded none; this is the process that wrote the report" in (folder / "index.html").read_text()


def test_a_folder_where_the_run_writes_a_file_is_one_line(tmp_path, capsys):
    """A folder standing where a run or a report writes a file (accuracy_matrix.csv, index.html): one line
    naming it, exit 2, the folder left as it was."""
    doc = tiny_sequence(tasks=[digits("a", [0, 1], 4, 4)], training={"batch_size": 4})
    seq = tmp_path / "s.yaml"
    seq.write_text(yaml.safe_dump(doc))
    (tmp_path / "out" / "tiny" / "finetune" / "accuracy_matrix.csv" / "mine").mkdir(parents=True)
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet", "--no-tensorboard", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().endswith("accuracy_matrix.csv is a folder where continual writes a file; move it away, then "
                                "run the command again (a run: with --resume)"), err
    assert (tmp_path / "out" / "tiny" / "finetune" / "accuracy_matrix.csv" / "mine").is_dir()

    from helpers import write_run

    config = {"name": "toy", "tasks": [{"name": "a", "dataset": "digits"}], "methods": ["finetune"]}
    folder = write_run(tmp_path / "toy", config, {"finetune": [(0.5,), (0.9,)]})
    (folder / "index.html").mkdir()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "index.html is a folder where continual writes a file" in err and \
        "Traceback" not in err, err
