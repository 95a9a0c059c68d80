"""Every built-in method in one sequence on the tiny CLIP (the only model here every method can run on: RAIL,
FLYP, ZSCL, InfLoRA, MoE-Adapters and DIKI need a CLIP), side by side in one report with their cost columns:
issue #26's "a sequence with every method at once", at the smallest scale that trains."""

import math

import pandas as pd
import pytest
from helpers import digits, tiny_clip_sequence

import continual
from continual.methods import BUILTIN

# A task of 12 images after a few updates at lr 1e-4 may score below its starting head: the warning is tested
# elsewhere (test_as_documented.py), here it is noise.
pytestmark = pytest.mark.filterwarnings("ignore::continual.runner.TrainingWarning")

# Options that keep the run small: RAIL's primal R is width² float64s (1.8 GB at its default 15000); MoE-Adapters'
# autoencoders train 300 updates a task by default; ZSCL reads a reference set.
SMALL = {"rail": {"width": 64}, "moe_adapters": {"experts": 4, "ddas_steps": 20}, "zscl": {"reference": "ref"},
         "inflora": {"rank": 4}, "diki": {"depth": 2, "length": 2}}


@pytest.fixture(scope="module")
def run(tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    sequence = tiny_clip_sequence(
        tiny_clip, name="every", tasks=[digits("a", [0, 1], 6, 4), digits("b", [2, 3], 6, 4)],
        probes=[digits("p", [8, 9], 6, 4)], references=[digits("ref", [5, 6], 4, 1)],
        methods=[{name: SMALL[name]} if name in SMALL else name for name in BUILTIN])
    folder = continual.run(sequence, out=out, progress=False, tensorboard=False)
    continual.report.write_report([folder])
    return folder


def test_every_builtin_method_trains_and_is_scored_after_every_step(run):
    matrices = continual.load_run(run)
    assert list(matrices) == list(BUILTIN)
    for name, matrix in matrices.items():
        assert list(matrix.index) == [0, 1, 2], name
        rows = matrix.loc[[2] if name == "joint" else [0, 1, 2], ["a", "b", "probe:p"]]
        assert rows.notna().all().all(), name  # joint trains once, at the last step: its step 1 is empty
        assert ((rows >= 0) & (rows <= 1)).all().all(), name


def test_the_report_shows_them_side_by_side_with_their_cost_columns(run):
    summary = pd.read_csv(run / "summary.csv")
    assert set(summary["method"]) == set(BUILTIN)
    costs = summary[summary["metric"].str.startswith("cost:")].pivot(index="method", columns="metric", values="mean")
    assert costs["cost:wall_seconds"].gt(0).all()
    trainable = costs["cost:trainable_parameters"]
    assert trainable["frozen"] < trainable["finetune"]
    # the parameter-efficient methods train less of the model than full fine-tuning does
    for name in ("inflora", "diki", "rail"):
        assert trainable[name] < trainable["finetune"], name
    assert not math.isnan(costs.loc["replay", "cost:extra_storage_bytes"])
    page = (run / "summary.md").read_text()
    for name in BUILTIN:
        assert f"| {name}" in page, name
