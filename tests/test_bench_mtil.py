"""bench/mtil.py at a tiny scale on CPU: the MTIL sequence's every method runs through `continual run` on
synthetic image folders and gets a row with every column (no timings asserted: they are the machine's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "wall s", "training s", "evaluation s", "text heads s", "anchor cache s", "other s",
           "train img/s", "eval img/s", "peak GPU memory", "run folder"]
KEYS = {"wall_s", "train_s", "eval_s", "text_heads_s", "anchor_cache_s", "anchor_cache", "other_s", "train_images",
        "train_img_s", "eval_img_s", "peak_gpu_bytes", "run_disk_bytes"}


def mtil_methods() -> list[str]:
    items = yaml.safe_load((ROOT / "sequences" / "mtil-order-1.yaml").read_text())["methods"]
    return [item if isinstance(item, str) else next(iter(item)) for item in items]


def test_every_mtil_method_gets_a_row(tmp_path):
    out = tmp_path / "numbers.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "mtil.py"), "--arch", "tiny", "--scale", "0.0005",
                           "--device", "cpu", "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        c if c != "peak GPU memory" else "peak GPU memory (no GPU)" for c in COLUMNS]
    table = [line.split("|")[1].strip() for line in lines[lines.index(header) + 2:] if line.startswith("| ")]
    methods = mtil_methods()
    assert sorted(table) == sorted(methods) and len(methods) == 5
    result = json.loads(out.read_text())
    assert sorted(result["rows"]) == sorted(methods)
    for name, row in result["rows"].items():
        assert set(row) == KEYS, name
        assert row["train_images"] > 0 and row["peak_gpu_bytes"] is None and row["run_disk_bytes"] > 0
    # ldifs builds or skips its anchor cache and says which; the others have none
    assert result["rows"]["ldifs"]["anchor_cache"] != "-"
    assert all(result["rows"][m]["anchor_cache"] == "-" for m in methods if m != "ldifs")
    # zscl's ImageNet reference head (1000 classes x 80 templates) is a text head of its own
    assert result["rows"]["zscl"]["text_heads_s"] > 0
    # the generated sequence keeps the file's class counts: 11 tasks, SUN397's 397 classes among them
    seq = yaml.safe_load(next((tmp_path / "work").glob("mtil-bench.yaml")).read_text())
    assert [t["name"] for t in seq["tasks"]] == [t["name"] for t in yaml.safe_load(
        (ROOT / "sequences" / "mtil-order-1.yaml").read_text())["tasks"]]
    sun = Path(seq["tasks"][-1]["path"])
    assert len(list((sun / "train").iterdir())) == 397 and len(list((sun / "test").iterdir())) == 397
    assert "Machine:" in done.stdout and result["shared"]["store_bytes"] > 0
