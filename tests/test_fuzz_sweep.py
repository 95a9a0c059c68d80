"""Mutated sweep files against the bad-input contract (issue #23), with hypothesis, as test_fuzz.py does for
sequences.

Each example is one of three valid sweep files (local, slurm, ray), written next to copies of two shipped
sequences, with one to three mutations: a value replaced (wrong types, odd names, odd numbers, huge lists,
dates, other keys' values), an entry listed twice, a key deleted or added. The contract: `continual sweep
status` answers 0 or 2 and never raises; every line it prints to stderr names the sweep file (or a sequence
file, for a problem of that file); nothing is created in the sweep's folder, or anywhere next to it.
Seeded (derandomize), so a CI run sees the same files each time.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import shutil
import tempfile
import warnings
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from continual.cli import main
from helpers import ODD_NAMES, ODD_NUMBERS, everything_under, inside, leaves, paths

ROOT = Path(__file__).resolve().parents[1]
SEQUENCES = ["small-user-sequence.yaml", "mnist-fashion-animals.yaml"]
SWEEPS = {
    "local.yaml": {"name": "lam", "sequences": ["small-user-sequence.yaml"], "methods": ["finetune", "ldifs"],
                   "seeds": [0, 1], "grid": {"methods.ldifs.lambda": [10, 100], "training.lr": [1.0e-5, 1.0e-4]},
                   "out": "runs"},
    "slurm.yaml": {"name": "wd", "sequences": SEQUENCES, "seeds": [0], "grid": {"training.weight_decay": [0.0, 0.1]},
                   "backend": "slurm", "resources": {"gpus": 1, "cpus": 4, "partition": "gpu"},
                   "slurm": {"max_requeues": 2, "setup": ["source venv/bin/activate"]}, "out": "runs"},
    "ray.yaml": {"name": "dev", "sequences": ["mnist-fashion-animals.yaml"], "methods": ["ldifs"], "seeds": [3],
                 "grid": {"training.device": ["auto", "cuda"], "methods.ldifs.lambda": [30]}, "backend": "ray",
                 "resources": {"gpus": 1, "mem_gb": 8}, "ray": {"address": None, "max_retries": 1}, "max_cells": 10},
}
DATES = [datetime.date(2024, 1, 1), [datetime.date(2024, 1, 1), 1], datetime.datetime(2024, 1, 1, 10, 0)]
HUGE = [list(range(5000)), list(range(40)), ["x"] * 3, [[1, 2]] * 2, "x" * 10_000]
ODD_VALUES = [None, [], {}, [None], {"a": 1}, "3", [3], [3, 3], [-1, 2], "local", "slurm", "ray", "auto",
              ["finetune", "finetune"], ["ewc"], ["nope.yaml"], ["../small-user-sequence.yaml"], ["cuda:1", "cpu"],
              ["gpu"], ["mps"], {"address": "auto"}, {"gpus": 0}, {"partition": "gpu", "time_min": 5},
              {"seed": [1, 2]}, {"methods.ldifs.lambda": [1, 1.0]}, {"training.lr": [1e-3, -1]},
              {"training.device": ["cuda", "cuda:3"]}, {"methods.ldifs.lamda": [1]}, {"methods.zscl.alpha": [1]},
              {"training": [{"lr": 1}], "training.lr": [2]}, {"a=b": [1]}, {"": [1]}]
KEYS = ["seed", "max_cells", "methods.ldifs.lambda", "methods.ldifs.lamda", "training.device", "training.epochs",
        "training.steps_per_task", "slurm", "ray", "resources", "grid", "sequences", "methods", "seeds", "out"]


@st.composite
def mutants(draw) -> tuple[str, dict]:
    """(file name, document): one of SWEEPS mutated one to three times."""
    name = draw(st.sampled_from(sorted(SWEEPS)))
    doc = copy.deepcopy(SWEEPS[name])
    pool = ODD_NAMES + ODD_NUMBERS + ODD_VALUES + DATES + HUGE + leaves(SWEEPS[name])
    values = st.sampled_from(pool).map(copy.deepcopy)  # copied: a value edited later must not edit the pool
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc) or [()]))
        *parents, last = where or (None,)
        node = doc
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(["set", "set", "delete", "add", "twice"]))
        if action == "delete" and last is not None:
            del node[last]
        elif action == "add":
            target = node[last] if last is not None and isinstance(node[last], dict) else doc
            target[draw(st.sampled_from(ODD_NAMES + KEYS))] = draw(values)
        elif action == "twice" and last is not None and isinstance(node[last], list) and node[last]:
            node[last].append(copy.deepcopy(draw(st.sampled_from(node[last]))))  # an entry listed twice
        elif last is not None:
            node[last] = draw(values)
    return name, doc


def call(argv: list[str]) -> tuple[int, str, list[warnings.WarningMessage]]:
    """main(argv) in this process: (status, stderr, warnings given); stdout (the table) is not checked."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as given_warnings:
        warnings.simplefilter("always")
        status = main(argv)
    return status, err.getvalue(), given_warnings


@settings(max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutants())
def test_sweep_status_answers_every_mutant_naming_the_file(mutant):
    name, doc = mutant
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)):
        tmp = Path(tmp)
        for sequence in SEQUENCES:
            shutil.copy(ROOT / "sequences" / sequence, tmp / sequence)
        path = tmp / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        before = everything_under(tmp)
        status, said, given_warnings = call(["sweep", "status", str(path)])  # raises nothing, or the test fails
        assert status in (0, 2), said
        assert "Traceback" not in said, said
        files = (str(path), *(str(tmp / s) for s in SEQUENCES))
        for line in said.splitlines():  # errors (one per problem), warnings
            assert line.removeprefix("error: ").removeprefix("warning: ").startswith(tuple(f"{f}: " for f in files)), \
                f"a line that names no file: {line!r}\n{said}"
        assert status == 0 or said.startswith("error: "), said
        for w in given_warnings:
            assert str(w.message).startswith(tuple(f"{f}: " for f in files)), str(w.message)
        assert everything_under(tmp) == before, "something was created"
        event(f"status {'answered' if status == 0 else 'refused'}")
