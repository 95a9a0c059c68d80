"""Benchmark: how long the commands that run nothing take, from a fresh interpreter each time.

    python bench/startup.py            # median of 5 runs each, a markdown table naming the machine

`continual --help`, `continual validate sequences/*.yaml` and `continual list` import no torch and no
avalanche (tests/test_layout.py checks), so they should answer in well under a second. `list
--pretrained` imports open_clip (and torch) to name the pretrained tags, and pays for it.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from continual.report import environment  # noqa: E402  (light: no torch)
COMMANDS = {
    "continual --help": ["--help"],
    "continual validate sequences/*.yaml": ["validate", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sequences").glob("*.yaml"))],
    "continual list": ["list"],
    "continual list --pretrained": ["list", "--pretrained"],
}


def main(rounds: int = 5) -> None:
    cpu = environment()["machine"]["processor"]
    print(f"### Start-up, median of {rounds} fresh processes\n\nMachine: {cpu}, Python {platform.python_version()}\n")
    print("| command | wall s (median) | min | max |\n|---|---|---|---|")
    for label, args in COMMANDS.items():
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "continual", *args], cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - began)
        print(f"| `{label}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
