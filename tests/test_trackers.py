"""Experiment trackers (issue #27): W&B in offline mode, its run files read back with W&B's own protobuf records, and
MLflow against a real `mlflow server` (SQLite backend) read back with MlflowClient. A sweep of two seeds lands as one
group whose scalars are metrics.json's; a resume continues the same tracker runs without a point twice, and a
tracker added or moved elsewhere on a resume gets a run of its own with every row; a long sweep cell keeps W&B;
files an artifact store refuses warn once and the runs still end; two processes on one fresh SQLite store both
get their run; a server killed mid-run warns once and the run ends with its files whole; bad `logging:` keys and
trackers are refused."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.request
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import continual
from continual import runner, trackers
from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.runner import run_sequence
from continual.trackers import TrackerWarning
from helpers import digits, tiny_sequence

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

# As test_tensorboard's: 24 images in batches of 4, 6 optimiser steps a task, points at the 4th and 6th.
SEQ = tiny_sequence(
    seed=0,
    tasks=[digits("a", [0, 1], 12, 6), digits("b", [2, 3], 12, 6)],
    probes=[digits("p", [8, 9], 6, 6)],
    training={"batch_size": 4, "warmup_steps": 3, "lr": 1.0e-4, "log_every": 4},
    methods=["finetune"],
)
STEPS = [4, 6, 10, 12]  # each task's points, in optimiser steps over the sequence
ROWS = [0, 1, 2]  # the accuracy matrix's rows: 0 = pre-trained


# ---- the real things ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """Neither package phones home or writes outside the test's folders (here and in a sweep's cells)."""
    home = tmp_path_factory.mktemp("tracker-home")
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "WANDB_SILENT": "true",
                           "WANDB_CONFIG_DIR": home / "config", "WANDB_CACHE_DIR": home / "cache",
                           "WANDB_DATA_DIR": home / "data", "WANDB_MODE": "offline"}.items():
            env.setenv(key, str(value))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv("WANDB_ENTITY", raising=False)  # trackers.json records it: the tests pin None
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory, quiet):
    """`mlflow server` on a free port with a SQLite backend and its artifacts in the test's folder: (uri, process).
    The last test kills it (test_a_server_gone_mid_run_warns_once_and_the_run_ends_whole)."""
    folder = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(folder / "server.log", "wb")
    # Job execution off: its workers (half a dozen processes) serve MLflow's GenAI jobs, nothing of tracking.
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.25)
        yield uri, proc
    finally:
        if proc.poll() is None:  # the server and the workers it started
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def mlflow_points(uri, run_id, key):
    return [(m.step, m.value) for m in sorted(client(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def wandb_records(run_dir: Path):
    """Every record of an offline W&B run's `run-<id>.wandb`, parsed by W&B's own protobuf `Record`. The file is
    W&B's LevelDB-style log (wandb 0.31 ships no Python reader of it; its Go core writes it): a 7-byte header
    (`:W&B`, magic, version), then 32 KiB blocks of chunks, each a 7-byte header (crc32c, length, type: 1 whole,
    2 first, 3 middle, 4 last) and its bytes; a block's tail too short for a header is zeros."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zeros: the end of what was written
            break
        partial += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(partial)
            records.append(record)
            partial = b""
    return records


def wandb_runs(folder: Path) -> dict[str, list]:
    """{run id: [its offline run folders, oldest first]} under a W&B dir (a resumed run has one per process)."""
    found = {}
    for run_dir in sorted((folder / "wandb").glob("offline-run-*")):
        found.setdefault(run_dir.name.rsplit("-", 1)[1], []).append(run_dir)
    return found


def wandb_run(run_dirs):
    """(the run record, {key: [(x, value)]}, W&B's run files) of one W&B run over its offline folders, each point
    against the axis continual logged it with (`optimizer_step` or `step`)."""
    run, points, files = None, {}, set()
    for run_dir in run_dirs:
        for record in wandb_records(run_dir):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                axis = "optimizer_step" if "optimizer_step" in row else "step"
                for key, value in row.items():
                    if not key.startswith("_") and key != axis:
                        points.setdefault(key, []).append((row[axis], value))
            elif kind == "files":
                files |= {f.path for f in record.files.files}
    return run, points, files


def expected(folder: Path) -> dict[str, list]:
    """{tag: [(x, value)]} the run's files say each tracker must hold: each accuracy-matrix cell and each step's
    metrics from metrics.json, against the step."""
    rows = json.loads((folder / "accuracy_matrix.json").read_text())  # 10 decimals (the CSV: 6)
    want = {f"accuracy/{column}": [(row["step"], row[column]) for row in rows] for column in rows[0] if column != "step"}
    for name in ("average_accuracy", "forgetting", "bwt"):
        steps = json.loads((folder / "metrics.json").read_text())["steps"]
        want[f"metrics/{name}"] = [(s["step"], s[name]) for s in steps if s.get(name) is not None]
    return want


def check_rows(points: dict, folder: Path) -> None:
    """Every row of the method's accuracy matrix and metrics.json's per step, each once."""
    for tag, want in expected(folder).items():
        assert [x for x, _ in points[tag]] == [x for x, _ in want], tag
        # to the files' 10 decimals (the trackers keep float64 as given)
        assert [v for _, v in points[tag]] == pytest.approx([v for _, v in want], rel=0, abs=1e-10), tag
    assert sorted(x for x, _ in points["time/fit_seconds"]) == ROWS


def check_points(points: dict, folder: Path) -> None:
    """Every scalar a tracker holds for a method is the run's own: the matrix and metrics.json's per step,
    each loss term's points averaging (weighted by their window) to metrics.json's epoch mean, lr and images/s
    at the same optimiser steps; each point once."""
    check_rows(points, folder)
    timings = json.loads((folder / "metrics.json").read_text())["timings"]
    for tag in ("loss/ce", "lr", "images_per_second"):
        assert [x for x, _ in points[tag]] == STEPS, tag
    ce = dict(points["loss/ce"])
    for task, (four, six) in enumerate([(4, 6), (10, 12)], start=1):
        assert (4 * ce[four] + 2 * ce[six]) / 6 == pytest.approx(timings[task]["losses"]["ce"], rel=1e-9)


def logging_block(uri, wandb_dir, experiment=None, **wandb):
    return {"trackers": ["wandb", "mlflow"], "wandb": {"mode": "offline", "dir": str(wandb_dir), **wandb},
            "mlflow": {"tracking_uri": uri, **({"experiment": experiment} if experiment else {})}}


def interrupted(seq, out: Path, *, at: int = 11, **how) -> None:
    """`seq` run into `out` and stopped by Ctrl-C at its `at`-th optimiser step (the 11th: task 2's 5th, after
    the point at 10 went out; a resume starts again from step 1's checkpoint, at optimiser step 6)."""
    adamw_step, calls = torch.optim.AdamW.step, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return adamw_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as stop:
        stop.setattr(torch.optim.AdamW, "step", stopping)
        with pytest.raises(KeyboardInterrupt):
            run_sequence(seq, out=out, progress=False, **how)


# ---- a sweep of two seeds: one group in each -----------------------------------------------------------------

@pytest.fixture(scope="module")
def swept(tmp_path_factory, server):
    """`continual.sweep` of SEQ over seeds 0 and 1, each cell its own `continual run` logging to both trackers."""
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "tiny.yaml").write_text(yaml.safe_dump({**SEQ, "logging": logging_block(server[0], folder)}))
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"name": "two-seeds", "sequences": ["tiny.yaml"],
                                                      "seeds": [0, 1], "out": "runs"}))
    continual.sweep(folder / "sweep.yaml", jobs=2)
    spec, cells = continual.sweeps.load_sweep(folder / "sweep.yaml")
    assert all(continual.sweeps.state(c)[0] == "done" for c in cells), [c.folder for c in cells]
    return folder, {c.seed: c.run_folder / "finetune" for c in cells}


def test_a_sweep_is_one_wandb_group_whose_scalars_are_metrics_json(swept):
    folder, methods = swept
    runs = wandb_runs(folder)
    assert len(runs) == 2  # one W&B run per method and seed, each written by one process
    seen = {}
    for run_dirs in runs.values():
        assert len(run_dirs) == 1
        run, points, files = wandb_run(run_dirs)
        assert (run.run_group, run.job_type, run.project) == ("two-seeds", "finetune", "continual")
        tags = set(run.tags)
        seed = int(next(t for t in tags if t.startswith("seed:")).split(":")[1])
        assert {"sequence:tiny", "method:finetune", "sweep:two-seeds", f"cell:default/seed-{seed}"} <= tags
        assert run.display_name == f"tiny/finetune seed={seed} default/seed-{seed}"
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        assert (config["seed"], config["training"]["lr"], config["name"]) == (seed, 1.0e-4, "tiny")
        check_points(points, methods[seed])
        assert {"method/metrics.json", "method/accuracy_matrix.csv", "report/config.yaml"} <= files
        stored = run_dirs[0] / "files" / "method" / "metrics.json"
        assert stored.read_bytes() == (methods[seed] / "metrics.json").read_bytes()
        assert json.loads((methods[seed] / "trackers.json").read_text())["wandb"]["id"] == run.run_id
        seen[seed] = points
    assert set(seen) == {0, 1} and seen[0]["loss/ce"] != seen[1]["loss/ce"]  # two seeds, two runs of numbers


def test_a_sweep_is_one_mlflow_experiment_whose_scalars_are_metrics_json(swept, server):
    uri = server[0]
    folder, methods = swept
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name("two-seeds")
    found = mlflow.search_runs([experiment.experiment_id])
    assert len(found) == 2
    for run in found:
        tags = run.data.tags
        seed = int(tags["continual.seed"])
        assert (tags["continual.sequence"], tags["continual.method"], tags["continual.sweep"],
                tags["continual.cell"]) == ("tiny", "finetune", "two-seeds", f"default/seed-{seed}")
        assert run.info.status == "FINISHED" and run.info.run_name == f"tiny/finetune seed={seed} default/seed-{seed}"
        assert run.data.params["seed"] == str(seed) and run.data.params["training.lr"] == "0.0001"
        assert run.data.params["tasks.1.classes"] == "[2, 3]"
        points = {key: mlflow_points(uri, run.info.run_id, key) for key in run.data.metrics}
        check_points(points, methods[seed])
        assert json.loads((methods[seed] / "trackers.json").read_text())["mlflow"]["id"] == run.info.run_id
        artifacts = {a.path for a in mlflow.list_artifacts(run.info.run_id, "method")}
        assert {"method/metrics.json", "method/accuracy_matrix.csv", "method/curves.png"} <= artifacts
        local = mlflow.download_artifacts(run.info.run_id, "method/metrics.json", str(folder / f"down-{seed}"))
        assert Path(local).read_bytes() == (methods[seed] / "metrics.json").read_bytes()


# ---- a resume: the same runs, no point twice; a tracker added or moved: a new run, every row -----------------

@pytest.fixture(scope="module")
def resumed(tmp_path_factory, server):
    """finetune stopped by Ctrl-C at the 11th optimiser step (after its point at 10 went out), then resumed from
    step 1's checkpoint: (run folder, the MLflow run's status in between)."""
    out = tmp_path_factory.mktemp("resumed")
    seq = load_sequence({**SEQ, "name": "resumed", "logging": logging_block(server[0], out, project="resumes")})
    interrupted(seq, out)
    folder = out / "resumed"
    ledger = json.loads((folder / "finetune" / "trackers.json").read_text())
    assert ledger["mlflow"]["optimizer_step"] == ledger["wandb"]["optimizer_step"] == 10
    between = client(server[0]).get_run(ledger["mlflow"]["id"]).info.status
    run_sequence(seq, out=out, progress=False, resume=True)
    return folder, between


def test_a_resume_continues_the_same_wandb_run_without_duplicates(resumed):
    folder, _ = resumed
    runs = wandb_runs(folder.parent)
    assert len(runs) == 1  # the resumed process went on with the killed one's run
    (run_id, run_dirs), = runs.items()
    assert len(run_dirs) == 2 and json.loads((folder / "finetune" / "trackers.json").read_text())["wandb"]["id"] == run_id
    first = wandb_run(run_dirs[:1])[1]
    assert [x for x, _ in first["loss/ce"]] == [4, 6, 10] and [x for x, _ in first["accuracy/a"]] == [0, 1]
    run, points, _ = wandb_run(run_dirs)
    assert run.project == "resumes" and run.run_group == "resumed"
    check_points(points, folder / "finetune")  # each point once over both processes


def test_a_resume_continues_the_same_mlflow_run_without_duplicates(resumed, server):
    folder, between = resumed
    uri = server[0]
    run_id = json.loads((folder / "finetune" / "trackers.json").read_text())["mlflow"]["id"]
    assert between == "KILLED"
    mlflow = client(uri)
    assert len(mlflow.search_runs([mlflow.get_experiment_by_name("resumed").experiment_id])) == 1
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    check_points({key: mlflow_points(uri, run_id, key) for key in run.data.metrics}, folder / "finetune")


def test_a_resume_may_add_a_tracker_which_gets_every_row_of_the_methods_not_complete(tmp_path, quiet):
    """`logging` is what is shown, not what is computed: a resume that adds W&B is not refused; the method cut
    short gets a W&B run holding every row of its matrix (and the loss points from the resume on), the method
    complete before the resume is kept as it is, with no tracker run."""
    seq = load_sequence({**SEQ, "methods": ["frozen", "finetune"]})
    interrupted(seq, tmp_path, tensorboard=False)
    folder = tmp_path / "tiny"
    again = load_sequence({**SEQ, "methods": ["frozen", "finetune"], "logging": {
        "trackers": ["wandb"], "wandb": {"project": "p", "mode": "offline", "dir": str(tmp_path)}}})
    assert run_sequence(again, out=tmp_path, progress=False, resume=True, tensorboard=False) == folder
    assert "project: p" in (folder / "config.yaml").read_text()
    runs = wandb_runs(tmp_path)
    assert len(runs) == 1 and not (folder / "frozen" / "trackers.json").exists()
    (run_id, run_dirs), = runs.items()
    run, points, _ = wandb_run(run_dirs)
    assert (run.job_type, run.project) == ("finetune", "p")
    assert json.loads((folder / "finetune" / "trackers.json").read_text())["wandb"]["id"] == run_id
    check_rows(points, folder / "finetune")  # rows 0 and 1 were on disk before the resume
    assert [x for x, _ in points["loss/ce"]] == [10, 12]  # task 2 again, from step 1's checkpoint


def test_a_resume_logging_elsewhere_starts_new_runs_with_every_row(tmp_path, server):
    """A resume to another W&B project and another MLflow experiment: each tracker starts a run there, holding every
    row (the old runs and their marks are elsewhere); the old runs are left as the Ctrl-C left them."""
    uri = server[0]
    before = {**SEQ, "name": "moved",
              "logging": logging_block(uri, tmp_path, experiment="moved-before", project="before")}
    interrupted(load_sequence(before), tmp_path)
    folder = tmp_path / "moved" / "finetune"
    old = json.loads((folder / "trackers.json").read_text())
    after = {**before, "logging": logging_block(uri, tmp_path, experiment="moved-after", project="after")}
    run_sequence(load_sequence(after), out=tmp_path, progress=False, resume=True)
    new = json.loads((folder / "trackers.json").read_text())
    assert new["wandb"]["id"] != old["wandb"]["id"] and new["mlflow"]["id"] != old["mlflow"]["id"]
    assert old["wandb"]["where"] == {"project": "before", "entity": None}
    assert new["mlflow"]["where"] == {"tracking_uri": uri, "experiment": "moved-after"}

    runs = wandb_runs(tmp_path)
    assert set(runs) == {old["wandb"]["id"], new["wandb"]["id"]} and len(runs[new["wandb"]["id"]]) == 1
    run, points, _ = wandb_run(runs[new["wandb"]["id"]])
    assert run.project == "after"
    check_rows(points, folder)
    assert [x for x, _ in points["loss/ce"]] == [10, 12]

    mlflow = client(uri)
    (found,) = mlflow.search_runs([mlflow.get_experiment_by_name("moved-after").experiment_id])
    assert found.info.run_id == new["mlflow"]["id"] and found.info.status == "FINISHED"
    check_rows({key: mlflow_points(uri, found.info.run_id, key) for key in found.data.metrics}, folder)
    assert [x for x, _ in mlflow_points(uri, found.info.run_id, "loss/ce")] == [10, 12]
    assert mlflow.get_run(old["mlflow"]["id"]).info.status == "KILLED"


# ---- refused before anything is written ----------------------------------------------------------------------

def test_bad_logging_keys_and_trackers_are_refused_naming_the_key(tmp_path, capsys):
    for logging, key in [({"wandb": {"projct": "x"}}, "logging.wandb.projct: unknown key (did you mean `project`?)"),
                         ({"trackers": ["neptune"]}, "logging.trackers[0]: must be 'wandb' or 'mlflow'"),
                         ({"trackers": ["wandb", "wandb"]}, "logging.trackers: a tracker listed twice"),
                         ({"mlflow": {"experiment": ""}}, "logging.mlflow.experiment"),
                         ({"tensorboard": True}, "logging.tensorboard: unknown key")]:
        with pytest.raises(ConfigError) as caught:
            load_sequence({**SEQ, "logging": logging})
        assert key in str(caught.value), (logging, str(caught.value))
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(SEQ))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--log", "wandb,neptune"]) == 2
    assert "--log: neptune: unknown tracker (known: wandb, mlflow, or none)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_tracker_not_installed_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    find = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find(name, *a))
    seq = load_sequence({**SEQ, "logging": {"trackers": ["wandb", "mlflow"]}})
    with pytest.raises(ConfigError) as caught:
        run_sequence(seq, out=tmp_path / "out", progress=False)
    assert "logging.trackers[1]: mlflow is asked for (logging.trackers or --log) but not installed: " \
           "pip install 'continual[mlflow]'" in str(caught.value)
    assert "wandb" not in str(caught.value).split("logging.trackers[1]")[0].split(":", 1)[1]
    assert not (tmp_path / "out").exists()


def test_the_cli_log_flag_sets_the_trackers_and_resumes_with_them(tmp_path, monkeypatch):
    from continual.cli import _parser, _resume_command

    given = []
    monkeypatch.setattr(runner, "run_sequence", lambda seq, **how: given.append(seq.logging.trackers) or tmp_path)
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({**SEQ, "logging": {"trackers": ["wandb"]}}))
    for flags in ([], ["--log", "mlflow,wandb"], ["--log", "none"]):
        assert main(["run", str(path), "--out", str(tmp_path), "--quiet", *flags]) == 0
    assert given == [["wandb"], ["mlflow", "wandb"], []]
    args = _parser().parse_args(["run", str(path), "--log", "mlflow"])
    assert _resume_command(args).endswith("--log mlflow --resume")


# ---- what used to drop a tracker -----------------------------------------------------------------------------

def test_a_long_sweep_cell_is_cut_in_the_wandb_tags_and_whole_in_its_config(tmp_path, quiet, monkeypatch):
    """W&B refuses a tag over 64 characters, and with it the run: the cell's tag is cut, the config keeps it whole."""
    cell = "model.family=efficientnet_lite0,training.lr=0.0001,methods.ldifs.lambda=10/seed-0"
    assert len(f"cell:{cell}") > trackers.WANDB_TAG
    monkeypatch.setenv(trackers.SWEEP, "a-sweep")
    monkeypatch.setenv(trackers.CELL, cell)
    seq = load_sequence({**SEQ, "methods": ["frozen"], "logging": {
        "trackers": ["wandb"], "wandb": {"mode": "offline", "dir": str(tmp_path)}}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackerWarning)
        folder = run_sequence(seq, out=tmp_path, progress=False, tensorboard=False)
    (run_dirs,) = wandb_runs(tmp_path).values()
    run, points, _ = wandb_run(run_dirs)
    assert f"cell:{cell}"[:64] in run.tags and all(len(tag) <= 64 for tag in run.tags)
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["continual"]["cell"] == cell
    check_rows(points, folder / "frozen")


def test_files_an_artifact_store_refuses_warn_once_and_each_method_ends_its_run(tmp_path, server):
    """The experiment's artifacts go under a regular file: each method's files fail to upload, which warns once;
    MLflow stays on, each method has its run, FINISHED with its points."""
    uri = server[0]
    (tmp_path / "a-file").write_text("not a folder")
    client(uri).create_experiment("no-artifacts", artifact_location=str(tmp_path / "a-file" / "artifacts"))
    seq = load_sequence({**SEQ, "name": "unkept", "methods": ["frozen", "finetune"],
                         "logging": {"trackers": ["mlflow"],
                                     "mlflow": {"tracking_uri": uri, "experiment": "no-artifacts"}}})
    with pytest.warns(TrackerWarning) as caught:
        folder = run_sequence(seq, out=tmp_path / "out", progress=False, tensorboard=False)
    said = [w for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(said) == 1 and "unkept/frozen: mlflow did not keep the method's files" in str(said[0].message)
    mlflow = client(uri)
    found = mlflow.search_runs([mlflow.get_experiment_by_name("no-artifacts").experiment_id])
    assert sorted(run.data.tags["continual.method"] for run in found) == ["finetune", "frozen"]
    for run in found:
        method = run.data.tags["continual.method"]
        assert run.info.status == "FINISHED"
        assert json.loads((folder / method / "trackers.json").read_text())["mlflow"]["id"] == run.info.run_id
        points = {key: mlflow_points(uri, run.info.run_id, key) for key in run.data.metrics}
        (check_points if method == "finetune" else check_rows)(points, folder / method)


# Each process imports MLflow, then waits for the other, so both open the fresh store at once.
RACER = textwrap.dedent("""
    import json, sys, time, warnings
    from pathlib import Path
    import mlflow
    from continual import trackers
    from continual.config.schema import MlflowConfig
    uri, me, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    me.with_suffix(".ready").touch()
    while not other.with_suffix(".ready").exists():
        time.sleep(0.01)
    warnings.simplefilter("error", trackers.TrackerWarning)
    context = trackers.Context(sequence="race", method=me.name, seed=0, config={"seed": 0})
    tracker = trackers.Mlflow(MlflowConfig(tracking_uri=uri), context=context,
                              ledger=trackers.Ledger(me / "trackers.json", resume=False))
    tracker.begin()
    tracker.close()
""")


def test_two_processes_on_one_fresh_sqlite_store_both_get_their_mlflow_run(tmp_path, quiet, monkeypatch):
    """Parallel sweep cells on a fresh sqlite:/// store race on MLflow's schema set-up: each still gets its run
    (without the retries in Mlflow._begin, one of two lost MLflow every time here)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, uri, str(tmp_path / me), str(tmp_path / other)],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for me, other in (("a", "b"), ("b", "a"))]
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err[-3000:]
    ids = {json.loads((tmp_path / me / "trackers.json").read_text())["mlflow"]["id"] for me in "ab"}
    monkeypatch.chdir(tmp_path)  # MLflow's local store may write ./mlruns where it is opened
    found = client(uri).search_runs([client(uri).get_experiment_by_name("race").experiment_id])
    assert len(ids) == 2 and {run.info.run_id for run in found} == ids
    assert {run.info.status for run in found} == {"FINISHED"}


# ---- last: the server dies ----------------------------------------------------------------------------------

def test_a_server_gone_mid_run_warns_once_and_the_run_ends_whole(tmp_path, server):
    """The MLflow server is killed at the 8th optimiser step: one TrackerWarning, the run goes on to its end, its
    files whole; W&B goes on; MLflow kept the points before."""
    uri, proc = server
    seq = load_sequence({**SEQ, "name": "orphan", "methods": ["finetune", "frozen"],
                         "logging": logging_block(uri, tmp_path)})
    adamw_step, calls = torch.optim.AdamW.step, []

    def killing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        return adamw_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as kill, pytest.warns(TrackerWarning) as caught:
        kill.setattr(torch.optim.AdamW, "step", killing)
        folder = run_sequence(seq, out=tmp_path, progress=False)
    said = [w for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(said) == 1 and "orphan/finetune: mlflow not logged to from here on" in str(said[0].message)
    for method in ("finetune", "frozen"):
        steps = json.loads((folder / method / "metrics.json").read_text())
        assert steps["complete"] and len(pd.read_csv(folder / method / "accuracy_matrix.csv")) == 3
    ledger = json.loads((folder / "finetune" / "trackers.json").read_text())
    assert ledger["mlflow"]["optimizer_step"] == 10 and "mlflow" not in json.loads(
        (folder / "frozen" / "trackers.json").read_text())  # off for the rest of the run: said once
    (run_dirs,) = [d for d in wandb_runs(tmp_path).values() if wandb_run(d)[0].job_type == "finetune"]
    check_points(wandb_run(run_dirs)[1], folder / "finetune")  # W&B unaffected
