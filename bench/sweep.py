"""Benchmark: what running a cell through a sweep costs over the same `continual run` alone.

    python bench/sweep.py                      # the default sequence's finetune, alone, then as a local and a ray sweep
    python bench/sweep.py --methods finetune,ldifs --set training.epochs=2 --backends local

Each variant runs the same cell (same sequence, overrides and methods) in a fresh folder, `--rounds` times,
interleaved. "cell" is the cell's own wall time (its `continual run` process, from cell.json), the number
the issue bounds at 1.05x the run alone; "sweep" is the whole command (validating the sweep file, for ray
also starting a local Ray instance, and the aggregate), a fixed cost that does not grow with the cell.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def timed(words: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    subprocess.run(words, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequence", default=str(ROOT / "sequences" / "mnist-fashion-animals.yaml"))
    parser.add_argument("--methods", default="finetune")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sequence = Path(args.sequence).resolve()
    backends = args.backends.split(",")
    python = sys.executable
    times: dict[str, list[float]] = {"alone": [], **{f"{b} cell": [] for b in backends}, **{f"{b} sweep": [] for b in backends}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            words = [python, "-m", "continual", "run", str(sequence), "--out", str(work / f"alone-{r}"), "--quiet",
                     "--methods", args.methods]
            for item in args.overrides:
                words += ["--set", item]
            times["alone"].append(timed(words, ROOT))
            for backend in backends:
                spec = {"name": f"{backend}-{r}", "sequences": [str(sequence)], "methods": args.methods.split(","),
                        "seeds": [0], "backend": backend, "out": str(work / "sweeps"),
                        "resources": {"gpus": 0, "cpus": os.cpu_count(), "mem_gb": 1}}  # the machine, as alone
                seed = [o.split("=", 1)[1] for o in args.overrides if o.startswith("seed=")]
                spec["seeds"] = [int(seed[-1])] if seed else [0]
                spec["grid"] = {k: [yaml.safe_load(v)] for k, v in (o.split("=", 1) for o in args.overrides)
                                if k != "seed"}
                (work / f"{backend}-{r}.yaml").write_text(yaml.safe_dump(spec))
                times[f"{backend} sweep"].append(timed([python, "-m", "continual", "sweep", f"{backend}-{r}.yaml"], work))
                cell = next((work / "sweeps" / f"{backend}-{r}").rglob("cell.json"))
                times[f"{backend} cell"].append(json.loads(cell.read_text())["seconds"])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"\n{sequence.name}, --methods {args.methods} {' '.join('--set ' + o for o in args.overrides)}; "
          f"{cpu}, median of {args.rounds}\n")
    alone = statistics.median(times["alone"])
    print("| what | wall s | vs alone |\n|---|---|---|")
    for what, values in times.items():
        print(f"| {what} | {statistics.median(values):.1f} | {statistics.median(values) / alone:.3f}x |")


if __name__ == "__main__":
    main()
