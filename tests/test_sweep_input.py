"""Bad sweep files (issue #23): the whole file is checked before any cell runs. Each kind of problem is one line
naming the sweep file and its key (or the sequence file, for a problem of its own), exit status 2, nothing
created, never a traceback; one test per kind, its cases parametrised. Each goes through `continual sweep status`
(or `continual sweep` where only running can tell) in this process."""

import contextlib
import io
import sys
import types

import pytest
import yaml

from continual import sweeps
from continual.sweeps import spec
from continual.cli import main
from continual.config.schema import shown
from helpers import tiny_sequence

SEQ = tiny_sequence(methods=["finetune", "ldifs", "l2sp"])
SWEEP = {"name": "lam", "sequences": ["tiny.yaml"], "methods": ["ldifs"], "seeds": [0, 1],
         "grid": {"methods.ldifs.lambda": [10, 100]}, "out": "runs"}


def call(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def refused(tmp_path, sweep: dict | str, *lines: str, command: str = "status", seq: dict = SEQ, argv=(),
            logged=()) -> str:
    """Write the sweep (a dict, or YAML text) next to tiny.yaml; `continual sweep [status]` must exit 2 with
    exactly `lines` on stderr (`F:` standing for the sweep file's path, `S:` for the sequence's), after the
    lines `logged` (progress), creating nothing. Returns stderr."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(seq))
    path = tmp_path / "sweep.yaml"
    path.write_text(sweep if isinstance(sweep, str) else yaml.safe_dump(sweep))
    before = set(tmp_path.rglob("*"))
    status, _, err = call(["sweep", *([command] if command else []), str(path), *argv])
    assert status == 2, err
    expected = [line.replace("F:", f"{path}:").replace("S:", f"{tmp_path / 'tiny.yaml'}:") for line in lines]
    expected = [*logged, f"error: {expected[0]}", *expected[1:]]
    assert err.splitlines() == expected
    assert set(tmp_path.rglob("*")) == before  # nothing created
    return err


@pytest.mark.parametrize("change, lines", [
    ({"methods": []}, ["F: methods: names no method; leave `methods` out to run each sequence's own"]),
    ({"methods": ["ldifs", "finetune", "ldifs"]}, ["F: methods[2]: 'ldifs' is also methods[0]"]),
    ({"methods": ["ldifs", "ewc"]}, ["F: methods[1]: ewc is not one of tiny.yaml's methods (finetune, ldifs, l2sp)"]),
])
def test_the_methods_a_sweep_names(tmp_path, change, lines):
    refused(tmp_path, {**SWEEP, **change}, *lines)


@pytest.mark.parametrize("change, lines", [
    ({"grid": {"seed": [1, 2]}},
     ["F: grid.seed: each cell's seed is one of `seeds:`, which would override this; sweep seeds there"]),
    ({"grid": {"methods.l2sp.lambda": [1, 2]}},
     ["F: grid.methods.l2sp.lambda: l2sp is not one of the sweep's methods (ldifs), so every value would give the "
      "same cells; add it to `methods` or drop this key"]),
    ({"grid": {"methods.ldifs.lambda": [10, 10.0]}},
     ["F: grid.methods.ldifs.lambda[1]: gives the same runs as grid.methods.ldifs.lambda[0] in S: (10.0 and 10 are "
      "read alike)"]),
    ({"grid": {"methods.ldifs.lambda": [10, 100, 10]}}, ["F: grid.methods.ldifs.lambda[2]: 10 is also "
                                                         "grid.methods.ldifs.lambda[0]"]),
    ({"seeds": [0, 1, 1]}, ["F: seeds[2]: 1 is also seeds[1]"]),
    ({"grid": {"training": [{"lr": 0.1}], "training.lr": [0.2]}},
     ["F: grid.training.lr: is inside grid.training, which sets it too; sweep one of them"]),
    ({"sequences": ["tiny.yaml", "./tiny.yaml"]}, ["F: sequences[1]: ./tiny.yaml is also sequences[0]: its cells "
                                                   "would run twice"]),
])
def test_cells_that_would_be_the_same_run(tmp_path, change, lines):
    refused(tmp_path, {**SWEEP, **change}, *(line.replace("in S:", f"in {tmp_path / 'tiny.yaml'}") for line in lines))


@pytest.mark.parametrize("change, lines", [
    ({"grid": {"training.device": ["cpu", "gpu", "cuda:x"]}},
     ["F: grid.training.device[1]: expected auto, cpu, cuda, cuda:N or mps, got 'gpu' (in S)",
      "F: grid.training.device[2]: expected auto, cpu, cuda, cuda:N or mps, got 'cuda:x' (in S)"]),
    ({"backend": "slurm", "resources": {"gpus": 0}, "grid": {"training.device": ["cpu", "cuda"]}},
     ["F: grid.training.device[1]: cuda: a cell of backend slurm is given resources.gpus: 0 (no GPU)"]),
    ({"backend": "ray", "resources": {"gpus": 2}, "grid": {"training.device": ["cuda:1", "cuda:2"]}},
     ["F: grid.training.device[1]: cuda:2: a cell of backend ray is given resources.gpus: 2 (2 GPUs, cuda:0 to "
      "cuda:1)"]),
    ({"backend": "slurm", "grid": {"training.device": ["mps"]}},
     ["F: grid.training.device: mps is Apple's GPU, which Slurm's nodes (Linux) do not have"]),
])
def test_devices_are_checked_against_the_schema_and_the_resources(tmp_path, change, lines):
    refused(tmp_path, {**SWEEP, **change}, *(line.replace("(in S)", f"(in {tmp_path / 'tiny.yaml'})") for line in lines))


def test_a_sequence_device_the_backend_cannot_give_names_the_sweep_file(tmp_path):
    seq = {**SEQ, "training": {**SEQ["training"], "device": "cuda:1"}}
    refused(tmp_path, {**SWEEP, "backend": "slurm"}, "F: sequences[0]: tiny.yaml's training.device: cuda:1: a cell of "
                                                     "backend slurm is given resources.gpus: 1 (1 GPU, cuda:0)", seq=seq)


@pytest.mark.parametrize("visible, device, line", [
    ("", "cuda", "cuda: this machine has no GPU (CUDA_VISIBLE_DEVICES, nvidia-smi); use auto or cpu"),
    ("0,1", "cuda:1", "cuda:1: a local cell is given one GPU, which it sees as cuda:0; use cuda or auto"),
])
def test_a_local_cell_device_not_here_is_refused_before_it_runs(tmp_path, monkeypatch, visible, device, line):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    sweep = {**SWEEP, "grid": {"training.device": ["cpu", device]}}
    refused(tmp_path, sweep, f"F: grid.training.device[1]: {line}", command="")
    assert call(["sweep", "status", str(tmp_path / "sweep.yaml")])[0] == 0  # another machine may show it


@pytest.mark.parametrize("change, line", [
    ({"slurm": {"qos": "high"}}, "slurm: is read by backend slurm only, and this sweep's backend is local (the "
                                 "default); remove it or set backend: slurm"),
    ({"backend": "ray", "slurm": {}}, "slurm: is read by backend slurm only, and this sweep's backend is ray; remove "
                                      "it or set backend: slurm"),
    ({"backend": "slurm", "ray": {"address": "auto"}}, "ray: is read by backend ray only, and this sweep's backend "
                                                       "is slurm; remove it or set backend: ray"),
    ({"backend": "local", "resources": {"gpus": 0}}, "resources: is read by backend slurm and ray only, and this "
                                                     "sweep's backend is local; remove it or set backend: slurm"),
    ({"backend": "ray", "resources": {"partition": "gpu"}}, "resources.partition: is a Slurm partition: Ray has "
                                                            "none; remove it"),
])
def test_a_block_the_backend_does_not_read_is_refused(tmp_path, change, line):
    refused(tmp_path, {**SWEEP, **change}, f"F: {line}")


def test_what_ended_in_tracebacks_is_one_line(tmp_path, monkeypatch):
    # --out naming a file
    (tmp_path / "a-file").write_text("")
    refused(tmp_path, SWEEP, f"--out: {tmp_path / 'a-file'} is a file, so the sweep's folder "
                             f"{tmp_path / 'a-file' / 'lam'} cannot be made", argv=["--out", str(tmp_path / "a-file")])
    (tmp_path / "runs" / "lam" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "lam" / "tiny" / "ldifs.lambda=10").write_text("")  # where a cell's folder goes
    refused(tmp_path, SWEEP, f"F: out: {tmp_path / 'runs' / 'lam' / 'tiny' / 'ldifs.lambda=10'} is a file where a "
                             "cell's folder goes")
    refused(tmp_path, {**SWEEP, "out": "a-file/deeper"}, f"F: out: {tmp_path / 'a-file'} is a file, so the sweep's "
                                                         f"folder {tmp_path / 'a-file' / 'deeper' / 'lam'} cannot be made")
    # a path longer than a file name can be: the sequence's, and the sweep file's own
    long = "s" * 300 + ".yaml"
    refused(tmp_path, {**SWEEP, "sequences": [long]}, f"F: sequences[0]: {shown(long)} is longer than a file "
                                                       "system allows (255 bytes a name, 4096 in all)")
    status, _, err = call(["sweep", "status", str(tmp_path / long)])
    assert status == 2 and len(err.splitlines()) == 1 and "is longer than a file system allows" in err
    # YAML types a cell's --set cannot take: json.dumps raised in _overrides
    text = yaml.safe_dump({k: v for k, v in SWEEP.items() if k != "grid"})
    refused(tmp_path, text + "grid:\n  data_root: [x, 2024-01-01, !!binary aGVsbG8=, !!set {a}, [2024-02-02], {1: 2}, .nan]\n",
            "F: grid.data_root[1]: YAML reads 2024-01-01 as a date, which a cell's --set cannot take; quote it "
            "('2024-01-01') if you mean the text",
            "F: grid.data_root[2]: binary data (!!binary) cannot be passed to a cell's --set; use numbers, strings, "
            "true/false, null, and lists or mappings of them",
            "F: grid.data_root[3]: a set (!!set) cannot be passed to a cell's --set; use numbers, strings, true/false, "
            "null, and lists or mappings of them",
            "F: grid.data_root[4]: [0]: YAML reads 2024-02-02 as a date, which a cell's --set cannot take; quote it "
            "('2024-02-02') if you mean the text",
            "F: grid.data_root[5]: a mapping key 1 is not a string",
            "F: grid.data_root[6]: nan is not a finite number")


class _NoCluster(types.ModuleType):
    """What `import ray` gives when no cluster runs here: ray.init(address="auto") raises Ray's ConnectionError
    (its words, from ray 2.60)."""

    def is_initialized(self):
        return False

    def init(self, address=None, **_):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")


def test_ray_auto_with_no_cluster_is_one_line_naming_ray_address(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", _NoCluster("ray"))
    refused(tmp_path, {**SWEEP, "backend": "ray", "ray": {"address": "auto"}, "resources": {"gpus": 0}},
            "F: ray.address: auto: Could not find any running Ray instance; start one (`ray start --head`), or set "
            "address: null to start Ray here for the sweep", command="",
            logged=["4 cells: 0 done, 0 running elsewhere, 4 to run on ray"])


def test_the_cells_are_counted_before_any_is_built(tmp_path, monkeypatch):
    for copy in ("tiny2.yaml", "tiny3.yaml"):
        (tmp_path / copy).write_text(yaml.safe_dump(SEQ))
    counted = {**SWEEP, "sequences": ["tiny.yaml", "tiny2.yaml", "tiny3.yaml"], "seeds": [0, 1],
               "grid": {"training.lr": [i / 1e6 + 1e-6 for i in range(1000)], "methods.ldifs.lambda": list(range(1000))}}
    monkeypatch.setattr(spec, "load_sequence", lambda *a, **k: pytest.fail("a cell was validated"))
    refused(tmp_path, counted, "F: max_cells: 6,000,000 cells (3 sequences x 1,000 x 1,000 grid values x 2 seeds) is "
                               "more than max_cells 1,000; raise max_cells: in the sweep file if you mean it")
    monkeypatch.undo()
    refused(tmp_path, {**SWEEP, "max_cells": 3}, "F: max_cells: 4 cells (1 sequence x 2 grid values x 2 seeds) is more "
                                                 "than max_cells 3; raise max_cells: in the sweep file if you mean it")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "max_cells": 4}))
    assert len(sweeps.load_sweep(tmp_path / "sweep.yaml")[1]) == 4


def test_each_sequence_is_read_once_and_validated_once_per_grid_point(tmp_path, monkeypatch):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SEQ))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, "seeds": [0, 1, 2],
                                                         "grid": {"training.lr": [1e-3, 1e-4, 1e-5]}}))
    reads, loads = [], []
    monkeypatch.setattr(spec, "read_sequence", lambda path, real=spec.read_sequence: reads.append(path) or real(path))
    monkeypatch.setattr(spec, "load_sequence", lambda raw, items, real=spec.load_sequence: loads.append(items)
                        or real(raw, items))
    _, cells = sweeps.load_sweep(tmp_path / "sweep.yaml")
    assert len(cells) == 9 and len(reads) == 1
    assert loads == [[f"training.lr={lr}", "seed=0"] for lr in ("0.001", "0.0001", "1e-05")]
    assert [c.runs for c in cells] == [("ldifs",)] * 9 and {c.device for c in cells} == {"auto"}


@pytest.mark.parametrize("change, seq, lines", [
    ({"grid": {"methods.ldifs.lamda": [1, 2]}}, SEQ,
     ["F: grid.methods.ldifs.lamda: unknown key (did you mean `lambda`?) (methods[1].ldifs.lamda in S)"]),
    ({"grid": {"training.lr": [1e-3, 1e-4, -1.0]}}, SEQ,
     ["F: grid.training.lr[2]: must be greater than 0, got -1.0 (in S)"]),
    ({"grid": {"training.epochs": [1, 2], "training.steps_per_task": [5]}}, SEQ,
     ["F: grid: give `epochs` or `steps_per_task`, not both (steps_per_task replaces epochs) (training in S, with "
      "methods.ldifs.lambda=10, training.epochs=1, training.steps_per_task=5)",
      "F: grid: give `epochs` or `steps_per_task`, not both (steps_per_task replaces epochs) (training in S, with "
      "methods.ldifs.lambda=10, training.epochs=2, training.steps_per_task=5)"]),
    ({"methods": None, "grid": {"methods.zscl.reference": ["x"]}}, SEQ,
     ["F: grid.methods.zscl.reference: no method entry 'zscl' in the sequence (entries: finetune, ldifs, l2sp) (in S)"]),
    ({"grid": {"training.lr": [1e-3]}}, {**SEQ, "training": {"batch_size": -8}},  # the sequence's own: named so
     ["S: training.batch_size: must be greater than 0, got -8"]),
])
def test_problems_name_the_sweep_key_or_the_sequence_file(tmp_path, change, seq, lines):
    sweep = {**SWEEP, **change}
    if "methods.ldifs.lambda" not in sweep["grid"] and "training.epochs" in sweep["grid"]:
        sweep["grid"] = {"methods.ldifs.lambda": [10], **sweep["grid"]}
    refused(tmp_path, sweep, *(line.replace(" S)", f" {tmp_path / 'tiny.yaml'})").replace(" S,", f" {tmp_path / 'tiny.yaml'},")
                               for line in lines), seq=seq)
