"""Benchmark: the decoded-image store (continual/datasets/store.py) on a synthetic RESISC45-like image folder.

    python bench/data_store.py                     # 100k 256 px JPEGs, 45 classes, model input 224 px (~15 GB of store)
    python bench/data_store.py --images 20000      # smaller

Measures, on one folder of JPEGs written by the benchmark (not timed):
  1. building the store: decode + resize to 224 px with the store's worker processes, against a single-threaded
     PIL loop doing the same work (the same decode function) over the same files;
  2. a warm start: load_task on the folder in a fresh process (listing, the source's identity, the store opened);
  3. reading training batches (128 random rows) and evaluation batches (256 consecutive rows) from the store;
  4. the peak resident memory of a fresh process that loads the task and reads one epoch of training batches,
     against what holding the decoded split in memory (the code before the store) takes.
Prints markdown naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write(args) -> None:
    folder, start, stop, size, classes = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(start, stop):
        a, b, c = rng.uniform(0, 255, 3)
        img = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
        for _ in range(4):  # a few rectangles: edges for the JPEG coder and the resize
            y0, x0 = rng.integers(0, size - 32, 2)
            img[y0:y0 + rng.integers(8, 32), x0:x0 + rng.integers(8, 32)] = rng.uniform(0, 255, 3)
        path = folder / f"c{i % classes:02d}" / f"{i:06d}.jpg"
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)


def make_folder(folder: Path, n: int, *, size: int = 256, classes: int = 45) -> None:
    """n synthetic size x size JPEGs in folder/<class>/ (RESISC45's shape: 256 px, 45 classes)."""
    if (folder / "done").exists():
        return
    for c in range(classes):
        (folder / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    chunks = [(folder, s, min(s + 2000, n), size, classes) for s in range(0, n, 2000)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, chunks))
    (folder / "done").write_text(str(n))


def spec(folder: Path):
    return SimpleNamespace(name="synthetic", dataset="imagefolder", classes=None, train_per_class=None,
                           test_per_class=None, path=str(folder), templates=None)


def store_workers() -> int:
    from continual.datasets import store

    return store.default_workers()


def machine() -> str:
    cpu = "CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores"


def build(folder: Path, data_root: Path, size: int, sample: int) -> dict:
    import torch

    from continual.datasets import folders, store, tasks

    source = folders.folder_source(folder, key="path")
    pool = source.train
    rows = np.arange(min(sample, len(pool.labels)))
    torch.set_num_threads(1)
    began = time.perf_counter()
    for row in rows:  # the single-threaded loop: PIL decode + the store's resize, one image at a time
        pool.decode(int(row), size)
    single = len(rows) / (time.perf_counter() - began)
    torch.set_num_threads(os.cpu_count() or 1)
    key = store.key_for("imagefolder", "train", size, source=store.source_identity(folder), labels=pool.labels)
    opened = store.Store.open(data_root, key, len(pool.labels))
    began = time.perf_counter()
    opened.ensure(rows, pool.decode)
    parallel = len(rows) / (time.perf_counter() - began)
    began = time.perf_counter()  # the rest of the dataset, train and test, through load_task as a run does
    tasks.load_task(spec(folder), image_size=size, data_root=data_root, seed=0)
    rest_seconds = time.perf_counter() - began
    return {"single": single, "parallel": parallel, "workers": store.default_workers(), "sample": len(rows),
            "rest_seconds": rest_seconds, "rest_images": len(source.train.labels) + len(source.test.labels) - len(rows)}


def child(args) -> None:
    """In a fresh process: warm start-up, read rates, one epoch of training batches; JSON on stdout."""
    import torch

    from continual.datasets import tasks

    began = time.perf_counter()
    task = tasks.load_task(spec(Path(args.folder)), image_size=args.size, data_root=Path(args.data_root), seed=0)
    startup = time.perf_counter() - began
    images = task.train.images
    n = len(images)
    g = torch.Generator().manual_seed(0)
    began, seen = time.perf_counter(), 0
    while time.perf_counter() - began < 10:
        seen += len(images[torch.randint(0, n, (128,), generator=g)])
    random_rate = seen / (time.perf_counter() - began)
    began, seen = time.perf_counter(), 0
    for start in range(0, min(n, 256 * 200), 256):
        seen += len(images[start:start + 256])
    sequential_rate = seen / (time.perf_counter() - began)
    order = torch.randperm(n, generator=g)
    began = time.perf_counter()
    for b in range(0, n, 128):  # one epoch of what Trainer.fit reads on a CPU or a host-resident GPU split
        images[order[b:b + 128]]
    epoch = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"startup": startup, "random_rate": random_rate, "sequential_rate": sequential_rate,
                      "epoch_seconds": epoch, "train_images": n, "test_images": len(task.test.images),
                      "peak_rss": peak, "split_bytes": images.nbytes + task.test.images.nbytes}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=224, help="model input size (the store's)")
    parser.add_argument("--sample", type=int, default=2000, help="images in the single-thread vs parallel comparison")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "continual-store-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    folder, data_root = args.work / f"images-{args.images}", args.work / "data"
    began = time.perf_counter()
    make_folder(folder, args.images)
    print(f"(wrote {args.images:,} JPEGs in {time.perf_counter() - began:.0f} s)", file=sys.stderr)
    built = build(folder, data_root, args.size, args.sample)
    out = subprocess.run([sys.executable, __file__, "--child", "--folder", str(folder), "--data-root", str(data_root),
                          "--size", str(args.size)], check=True, capture_output=True, text=True).stdout
    warm = json.loads(out.strip().splitlines()[-1])
    print(f"\n### Image store: {args.images:,} synthetic 256 px JPEGs (45 classes, 80/20 split) -> {args.size} px\n\n"
          f"Machine: {machine()}\n")
    print("| measure | value |\n|---|---|")
    print(f"| single-threaded decode + resize (PIL, the store's function) | {built['single']:.0f} img/s |")
    print(f"| store build, {built['workers']} worker processes, same {built['sample']:,} images | "
          f"{built['parallel']:.0f} img/s (**{built['parallel'] / built['single']:.2f}x**) |")
    print(f"| store build, the other {built['rest_images']:,} images (through load_task) | "
          f"{built['rest_images'] / built['rest_seconds']:.0f} img/s |")
    print(f"| warm start-up: load_task in a fresh process ({warm['train_images']:,} + {warm['test_images']:,} images) | "
          f"{warm['startup']:.2f} s |")
    print(f"| training batches read (128 random rows) | {warm['random_rate']:,.0f} img/s |")
    print(f"| evaluation batches read (256 consecutive rows) | {warm['sequential_rate']:,.0f} img/s |")
    print(f"| one epoch of training batches read | {warm['epoch_seconds']:.1f} s |")
    print(f"| peak RSS of that process | {warm['peak_rss'] / 2**30:.2f} GiB |")
    print(f"| the same splits decoded into memory (before the store) | {warm['split_bytes'] / 2**30:.1f} GiB |")


if __name__ == "__main__":
    main()
