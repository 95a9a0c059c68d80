"""The cost columns of the report (issue #24): wall time, GPU-hours, peak GPU memory, trainable parameters, extra
storage and training images/s, worked out here by hand from run folders written by hand; an old run folder without
the fields the runner records now; and a tiny real run that records them."""

import contextlib
import io
import json
import math

import pandas as pd
import pytest
import yaml

from continual.cli import main
from continual.config import load_sequence
from continual.models import build_backbone
from continual.report import write_report
from continual.report.tables import COSTS, costs
from helpers import end_to_end_sequence, write_run

CONFIG = {"name": "toy", "seed": 0, "training": {"batch_size": 16},
          "tasks": [{"name": "t1", "dataset": "digits"}, {"name": "t2", "dataset": "digits"}],
          "methods": [{"finetune": {}}, {"ldifs": {"lambda": 10.0}}, {"ewc": {"lambda": 100.0}}, {"frozen": {}}]}
ROWS = [(0.5, 0.4), (0.9, 0.5), (0.6, 0.8)]
GiB, MiB = 2**30, 2**20


def step(k, *, fit, task, eval, train_steps, peak, trained, state=0, **more):
    """A step's timings as the runner writes them now: on 2 GPUs, batches of 16."""
    return {"step": k, "fit_seconds": fit, "task_seconds": task, "eval_seconds": eval, "train_steps": train_steps,
            "device": "cuda", "world_size": 2, "peak_gpu_bytes": peak, "trainable_parameters": trained,
            "batch_size": 16, "method_state_bytes": state, **more}


def timings(method, seed):
    """Each method's timings in run `seed` (0 or 1): finetune takes seed × 4 s longer on its first task."""
    first = {"step": 0, "fit_seconds": 0.0, "eval_seconds": 5.0}
    steps = {
        "finetune": [step(1, fit=8.0, task=10.0 + 4 * seed, eval=2.0, train_steps=4, peak=3 * GiB, trained=1_500_000),
                     step(2, fit=16.0, task=20.0, eval=4.0, train_steps=8, peak=2 * GiB, trained=1_600_000)],
        "ldifs": [step(k, fit=10.0, task=12.0, eval=3.0, train_steps=10, peak=(3 + k) * GiB, trained=1_500_000,
                       anchor_cache="memory", anchor_cache_mb=1.5 + k - 1) for k in (1, 2)],
        "ewc": [step(k, fit=4.8, task=5.0, eval=1.0, train_steps=5, peak=GiB, trained=1_500_000, state=8_000_000 * k)
                for k in (1, 2)],
        "frozen": [step(k, fit=0.0, task=0.5, eval=1.0, train_steps=0, peak=MiB, trained=0) for k in (1, 2)],
    }[method]
    return [first, *steps]


def write(folder, seed, timings_of=timings):
    rows = {m: ROWS for m in ("finetune", "ldifs", "ewc", "frozen")}
    write_run(folder, dict(CONFIG, seed=seed), rows, timings=None)
    # write_run gives every method the same timings; each method's own, here
    for method in rows:
        doc = json.loads((folder / method / "metrics.json").read_text())
        doc["timings"] = timings_of(method, seed)
        (folder / method / "metrics.json").write_text(json.dumps(doc))
    return folder


def cost_rows(md: str) -> dict[str, list[str]]:
    """summary.md's Cost table: method -> its cells."""
    table = md.split("## Cost\n", 1)[1].split("## ", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")][1:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("| ").split(" | ")] for line in lines)}


def test_costs_of_timings_worked_out_by_hand():
    got = costs(timings("finetune", 0))
    # wall: (10 + 2) + (20 + 4); GPU-hours: 36 s × 2 GPUs; images/s: (4 + 8) × 16 / (8 + 16)
    assert got == {"cost:wall_seconds": 36.0, "cost:gpu_hours": pytest.approx(72 / 3600), "cost:peak_gpu_memory_bytes":
                   3 * GiB, "cost:trainable_parameters": 1_600_000, "cost:extra_storage_bytes": 0.0,
                   "cost:train_images_per_second": 8.0}
    assert costs(timings("ldifs", 0))["cost:extra_storage_bytes"] == 2.5 * MiB  # the larger of the two caches
    assert costs(timings("ewc", 0))["cost:extra_storage_bytes"] == 16_000_000
    frozen = costs(timings("frozen", 0))
    assert frozen["cost:trainable_parameters"] == 0 and frozen["cost:wall_seconds"] == 3.0
    assert math.isnan(frozen["cost:train_images_per_second"])  # nothing trained
    # On CPU: no GPU-hours, and no GPU memory to speak of
    cpu = costs([dict(t, device="cpu", world_size=1) for t in timings("finetune", 0)])
    assert cpu["cost:gpu_hours"] == 0.0 and math.isnan(cpu["cost:peak_gpu_memory_bytes"])
    # joint's skipped steps count nothing; a cache planned to be kept counts its estimate, one that is off nothing
    joint = [{"step": 1, "fit_seconds": 0.0, "eval_seconds": 0.0, "train_steps": 0, "skipped": "joint"},
             step(2, fit=4.0, task=6.0, eval=1.0, train_steps=2, peak=GiB, trained=7, anchor_cache="disk",
                  anchor_cache_estimate_bytes=1000),
             step(3, fit=4.0, task=6.0, eval=1.0, train_steps=2, peak=GiB, trained=7, anchor_cache="off",
                  anchor_cache_estimate_bytes=10**9)]
    assert costs(joint)["cost:wall_seconds"] == 14.0 and costs(joint)["cost:extra_storage_bytes"] == 1000
    assert all(math.isnan(v) for v in costs([{"step": 0, "eval_seconds": 5.0}]).values())


def test_cost_columns_in_summary_csv_and_tables(tmp_path):
    runs = [write(tmp_path / f"s{seed}" / "toy", seed) for seed in (0, 1)]
    out = write_report(runs, tmp_path / "report", latex=True)
    summary = pd.read_csv(out / "summary.csv").set_index(["method", "metric"])
    assert set(COSTS) <= set(summary.loc["finetune"].index)
    # finetune's wall time: 36 and 40 s over the two runs
    assert summary.loc[("finetune", "cost:wall_seconds"), "mean"] == pytest.approx(38.0)
    assert summary.loc[("finetune", "cost:wall_seconds"), "std"] == pytest.approx(2 * math.sqrt(2), abs=1e-6)
    assert summary.loc[("finetune", "cost:wall_seconds"), "n"] == 2
    assert summary.loc[("ldifs", "cost:gpu_hours"), "mean"] == pytest.approx(60 / 3600, abs=1e-6)
    assert summary.loc[("ldifs", "cost:peak_gpu_memory_bytes"), "mean"] == 5 * GiB
    assert summary.loc[("ldifs", "cost:extra_storage_bytes"), "mean"] == 2.5 * MiB
    assert summary.loc[("ldifs", "cost:train_images_per_second"), "mean"] == 16.0
    assert summary.loc[("frozen", "cost:trainable_parameters"), "mean"] == 0
    assert summary.loc[("frozen", "cost:train_images_per_second"), "n"] == 0
    # each method's rows together: its final metrics, then its costs
    methods = list(pd.read_csv(out / "summary.csv")["method"])
    assert methods == sorted(methods, key=["finetune", "ldifs", "ewc", "frozen"].index)

    md = (out / "summary.md").read_text()
    rows = cost_rows(md)
    # two runs: a std for every method (0 where both runs took the same); bold: the best of each column
    assert rows["finetune"] == ["38.0 ± 2.8", "0.021 ± 0.002", "3.00 ± 0.00", "1.60 ± 0.00", "**0.0 ± 0.0**", "8.0 ± 0.0"]
    assert rows["ldifs (λ = 10)"] == ["30.0 ± 0.0", "0.017 ± 0.000", "5.00 ± 0.00", "1.50 ± 0.00", "2.5 ± 0.0",
                                      "16.0 ± 0.0"]
    assert rows["ewc (λ = 100)"] == ["12.0 ± 0.0", "0.007 ± 0.000", "1.00 ± 0.00", "1.50 ± 0.00", "15.3 ± 0.0",
                                     "**16.7 ± 0.0**"]  # 16 MB in MiB; (5 + 5) × 16 / (4.8 + 4.8)
    assert rows["frozen"] == ["**3.0 ± 0.0**", "**0.002 ± 0.000**", "**0.00 ± 0.00**", "**0.00 ± 0.00**",
                              "**0.0 ± 0.0**", "—"]
    assert "<h2>Cost</h2>" in (out / "index.html").read_text()
    tex = (out / "tables.tex").read_text()
    cost = tex.split(r"\label{tab:toy-cost}", 1)[1].split(r"\end{table}", 1)[0]
    assert r"Method & Time (s) $\downarrow$ & Mem.\ (GiB) $\downarrow$ & Params (M) $\downarrow$ & Extra (MiB)" in cost
    assert r"ewc ($\lambda$ = 100) & 12.0 $\pm$ 0.0 & 1.00 $\pm$ 0.00 & 1.50 $\pm$ 0.00 & 15.3 $\pm$ 0.0 \\" in cost
    assert r"frozen & \bfseries \boldmath 3.0 $\pm$ 0.0 &" in cost


def test_a_run_written_before_the_costs_shows_what_it_can(tmp_path):
    def old(method, seed):  # metrics.json as the runner wrote it before: no device, memory, parameters, state
        keep = ("step", "fit_seconds", "eval_seconds", "train_steps", "anchor_cache", "anchor_cache_mb")
        return [{k: v for k, v in t.items() if k in keep} for t in timings(method, seed)]

    out = write_report([write(tmp_path / "toy", 0, old)])
    summary = pd.read_csv(out / "summary.csv").set_index(["method", "metric"])
    # wall time from fit + evaluation: (8 + 2) + (16 + 4); images/s with config.yaml's batch size
    assert summary.loc[("finetune", "cost:wall_seconds"), "mean"] == 30.0
    assert summary.loc[("finetune", "cost:train_images_per_second"), "mean"] == 8.0
    for metric in ("cost:gpu_hours", "cost:peak_gpu_memory_bytes", "cost:trainable_parameters",
                   "cost:extra_storage_bytes"):
        assert summary.loc[("finetune", metric), "n"] == 0 and math.isnan(summary.loc[("finetune", metric), "mean"])
    assert cost_rows((out / "summary.md").read_text())["finetune"] == ["30.0", "—", "—", "—", "—", "8.0"]


def test_an_incomplete_method_has_no_cost(tmp_path):
    folder = write(tmp_path / "toy", 0)
    doc = json.loads((folder / "ewc" / "metrics.json").read_text())
    (folder / "ewc" / "metrics.json").write_text(json.dumps({**doc, "complete": False}))
    summary = pd.read_csv(write_report([folder]) / "summary.csv").set_index(["method", "metric"])
    assert summary.loc[("ewc", "cost:wall_seconds"), "n"] == 0
    assert summary.loc[("finetune", "cost:wall_seconds"), "n"] == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    seq = tmp / "tiny.yaml"
    seq.write_text(yaml.safe_dump(end_to_end_sequence(methods=["finetune", "frozen"])))
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["run", str(seq), "--out", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out" / "tiny"


def test_a_real_run_records_what_the_costs_need(tiny_run):
    backbone = build_backbone(load_sequence(end_to_end_sequence()).model)
    in_backbone = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    head = backbone.feature_dim * 3 + 3  # each task has 3 classes: Linear(feature_dim, 3)
    for method, trained in (("finetune", in_backbone + head), ("frozen", 0)):
        steps = json.loads((tiny_run / method / "metrics.json").read_text())["timings"][1:]
        assert [t["trainable_parameters"] for t in steps] == [trained, trained], method
        for t in steps:
            assert t["device"] == "cpu" and t["world_size"] == 1 and "peak_gpu_bytes" not in t
            assert t["batch_size"] == 16 and t["eval_batch_size"] == 64 and t["method_state_bytes"] == 0 and t["task_seconds"] >= t["fit_seconds"]
    summary = pd.read_csv(tiny_run / "summary.csv").set_index(["method", "metric"])
    assert summary.loc[("finetune", "cost:gpu_hours"), "mean"] == 0.0
    assert summary.loc[("finetune", "cost:train_images_per_second"), "mean"] > 0
    assert summary.loc[("frozen", "cost:trainable_parameters"), "mean"] == 0
