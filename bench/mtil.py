"""Benchmark: the MTIL run's shape (sequences/mtil-order-1.yaml) on synthetic images, through `continual run`.

    python bench/mtil.py                                   # full scale: ViT-B-16, 224 px, 1000 steps of 64 a task,
                                                           # ~400k images written and stored (GPU; hours, ~60 GB of disk)
    python bench/mtil.py --pretrained ~/ViT-B-16-openai.pt # the same from real weights (else random init, said)
    python bench/mtil.py --scale 0.02                      # image counts and steps x 0.02 (bench/gpu.sh's run)
    python bench/mtil.py --arch tiny --scale 0.001         # CPU: a tiny CLIP at 32 px, well under a minute

Eleven tasks with MTIL's class counts and train/test sizes (the torchvision splits ZSCL reads; ZSCL's 80/20
random split for Caltech101, EuroSAT, SUN397) and ImageNet's 1000 classes for zscl's reference set are written
as image folders of synthetic JPEGs (not timed); a sequence file generated from mtil-order-1.yaml (its methods,
training recipe and per-task settings, each task an `imagefolder` with its real dataset's prompt templates) is
run by `continual.cli.main(["run", ...])` in this process: the store, the runner, every method, evaluation and
checkpoints as a user's run has them. Timers wrap the runner's own functions (data loading, step 0, each method,
CLIP text heads); the rest is read from each method's metrics.json. Prints markdown naming the machine.
`--scale` multiplies image counts (each class keeps one train and one test image at least), steps and warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SEQUENCE = ROOT / "sequences" / "mtil-order-1.yaml"

# dataset of mtil-order-1.yaml -> (classes, train images, test images, source image px). The splits the
# project's torchvision readers take, as ZSCL does (catalog.TORCHVISION): FGVC-Aircraft train/test, DTD split 1
# train/test, Flowers102 train/test, Oxford Pets trainval/test; Caltech101 (8,677 images without
# BACKGROUND_Google), EuroSAT (27,000) and SUN397 (108,754) split 80/20 at random (floor of 0.8 to train).
# Source sizes: MNIST, CIFAR and EuroSAT at their own; the photo datasets (larger and varied) at 256 px.
SIZES = {
    "fgvc_aircraft": (100, 3_334, 3_333, 256),
    "caltech101": (101, 6_941, 1_736, 256),
    "cifar100": (100, 50_000, 10_000, 32),
    "dtd": (47, 1_880, 1_880, 256),
    "eurosat": (10, 21_600, 5_400, 64),
    "flowers102": (102, 1_020, 6_149, 256),
    "food101": (101, 75_750, 25_250, 256),
    "mnist": (10, 60_000, 10_000, 28),
    "oxford_pets": (37, 3_680, 3_669, 256),
    "stanford_cars": (196, 8_144, 8_041, 256),
    "sun397": (397, 87_003, 21_751, 256),
    "imagenet": (1_000, None, None, 256),  # zscl's reference: the file's train_per_class / test_per_class
}
TINY = "tiny"
# A CLIP small enough for a CPU (tests/helpers.py's TINY_CLIP_CONFIG): width 32, 4 blocks, 32 px; the text
# tower keeps the real BPE vocabulary so the tokenizer's ids are valid embeddings.
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "head_width": 16, "patch_size": 8},
}


def scaled(n: int, scale: float, *, least: int) -> int:
    return max(least, round(n * scale))


def seen_images(steps: int, n: int, batch: int) -> int:
    """Images a task of `steps` batches visits: shuffled passes of ceil(n / batch) batches, the last cut short."""
    per_epoch = -(-n // batch)
    return steps // per_epoch * n + min(steps % per_epoch * batch, n)


def _write(job) -> int:
    """Synthetic JPEGs (gradients and rectangles: edges for the coder and the resize), one per (path, seed)."""
    paths, size = job
    yy, xx = np.mgrid[0:size, 0:size] / size
    for path, seed in paths:
        rng = np.random.default_rng(seed)
        a, b, c = rng.uniform(0, 255, 3)
        img = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
        for _ in range(4):
            h, w = rng.integers(max(1, size // 8), max(2, size // 2), 2)
            y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
        Image.fromarray(img.astype(np.uint8)).save(path, quality=90)
    return len(paths)


def write_split(folder: Path, *, classes: int, n: int, size: int, seed: int) -> list[tuple[Path, int]]:
    """n images over `classes` class folders c0000.. (round robin: every class gets n // classes or one more)."""
    names = [f"c{c:04d}" for c in range(classes)]
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    return [(folder / names[i % classes] / f"{i:07d}.jpg", seed + i) for i in range(n)]


def done(folder: Path) -> Path:
    """The mark that a folder was written whole (beside it: a file inside would be read as data)."""
    return folder.parent / f"{folder.name}.done"


def make_data(work: Path, seq: dict, *, scale: float, image_size: int) -> dict:
    """Image folders for every task and ImageNet for the reference set (skipped where `done` says they are
    there); returns {task name: (folder, classes, train, test)}."""
    plan, jobs, made = {}, [], []
    for i, task in enumerate(seq["tasks"]):
        classes, train, test, px = SIZES[task["dataset"]]
        train, test = scaled(train, scale, least=classes), scaled(test, scale, least=classes)
        source_px = px if image_size >= 224 else min(px, image_size)
        folder = work / "images" / f"{task['name']}-{train}-{test}-{source_px}px"
        plan[task["name"]] = (folder, classes, train, test)
        if not done(folder).exists():
            made.append(folder)
            jobs += [(p, source_px) for p in write_split(folder / "train", classes=classes, n=train, size=source_px,
                                                          seed=i << 40)]
            jobs += [(p, source_px) for p in write_split(folder / "test", classes=classes, n=test, size=source_px,
                                                          seed=(i << 40) + (1 << 39))]
    for ref in seq.get("references", []):
        classes, _, _, px = SIZES[ref["dataset"]]
        root = Path(seq["data_root"]) / "imagenet"
        if not done(root).exists():
            made.append(root)
            source_px = px if image_size >= 224 else min(px, image_size)
            # WordNet-id-like class folders; the file's per-class caps select from them, as from the real set
            for split, per_class, seed in [("train", ref["train_per_class"], 1 << 50),
                                           ("val", ref.get("test_per_class", 1), 1 << 51)]:
                names = [f"n{c:08d}" for c in range(classes)]
                for name in names:
                    (root / split / name).mkdir(parents=True, exist_ok=True)
                jobs += [((root / split / names[i % classes] / f"{i:07d}.jpg", seed + i), source_px)
                         for i in range(per_class * classes)]
    if jobs:
        began = time.perf_counter()
        by_size = {}
        for path, px in jobs:
            by_size.setdefault(px, []).append(path)
        chunks = [(paths[s:s + 500], px) for px, paths in by_size.items() for s in range(0, len(paths), 500)]
        workers = min(len(chunks), len(os.sched_getaffinity(0)))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write, chunks))
        else:
            for chunk in chunks:
                _write(chunk)
        for folder in made:
            done(folder).write_text("")
        print(f"(wrote {len(jobs):,} synthetic JPEGs in {time.perf_counter() - began:.0f} s)", file=sys.stderr)
    return plan


def make_sequence(work: Path, *, scale: float, arch: str, pretrained: str | None, image_size: int | None,
                  batch: int) -> tuple[Path, dict, dict]:
    """mtil-order-1.yaml with each task an image folder of its shape, the steps scaled, the model as asked."""
    from continual.datasets import prompts

    seq = yaml.safe_load(SEQUENCE.read_text())
    t = seq["training"]
    t["steps_per_task"] = scaled(t["steps_per_task"], scale, least=1)
    t["warmup_steps"] = round(t["warmup_steps"] * scale)
    t["batch_size"] = batch
    for ref in seq.get("references", []):  # ImageNet under data_root, as the real file reads it: its caps scaled
        ref["train_per_class"] = scaled(ref.get("train_per_class", 10), scale, least=1)
        ref["test_per_class"] = ref.get("test_per_class", 1)
    caps = "-".join(f"{r['train_per_class']}-{r['test_per_class']}" for r in seq.get("references", []))
    size = image_size or (TINY_CLIP_CONFIG["vision_cfg"]["image_size"] if arch == TINY else 224)
    # data_root: ImageNet (its size in the name: another scale writes another) and the store
    seq["data_root"] = str(work / f"data-{caps}-{min(size, 224)}px")
    plan = make_data(work, seq, scale=scale, image_size=size)
    tasks = []
    for task in seq["tasks"]:
        folder = plan[task["name"]][0]
        # the real dataset's prompt templates: a text head costs what the real one does (classes x templates)
        tasks.append({"name": task["name"], "dataset": "imagefolder", "path": str(folder),
                      "templates": prompts.templates(task["dataset"]),
                      **({"training": task["training"]} if "training" in task else {})})
    seq["tasks"] = tasks
    seq["name"] = "mtil-bench"
    seq["download"] = False
    if arch == TINY:
        config = work / "continual-tiny-mtil.json"  # registered by the runner under the file's name
        config.write_text(json.dumps(TINY_CLIP_CONFIG))
        arch = str(config)
    seq["model"] = {"family": "open_clip", "arch": arch, "pretrained": pretrained, "head_init": "zero_shot",
                    **({"image_size": image_size} if image_size else {})}
    path = work / "mtil-bench.yaml"
    path.write_text(yaml.safe_dump(seq, sort_keys=False))
    return path, seq, plan


class Timers:
    """Seconds spent in the runner's own functions, wrapped while the run goes: by method (`current`)."""

    def __init__(self, cuda: bool):
        self.cuda, self.current = cuda, "step 0"
        self.seconds: dict[tuple[str, str], float] = {}
        self.peak: dict[str, int] = {}

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def timed(self, what: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.sync()
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                key = (self.current, what)
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - began
        return wrapper

    def per_method(self, fn):
        @functools.wraps(fn)
        def wrapper(seq, name, *args, **kwargs):
            import torch

            self.current = name
            if self.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                return self.timed("wall", fn)(seq, name, *args, **kwargs)
            finally:
                if self.cuda:
                    self.peak[name] = torch.cuda.max_memory_allocated()
        return wrapper

    def get(self, who: str, what: str) -> float:
        return self.seconds.get((who, what), 0.0)


@contextlib.contextmanager
def instrumented(timers: Timers):
    """The runner's functions wrapped by `timers` for the duration; put back after."""
    from continual import runner
    from continual.models import clip

    patches = [(runner, "load_task", timers.timed("data", runner.load_task)),
               (runner.Start, "measure", classmethod(timers.timed("wall", runner.Start.measure.__func__))),
               (runner, "run_method", timers.per_method(runner.run_method)),
               (clip, "text_head", timers.timed("text heads", clip.text_head))]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, new in patches:
            setattr(owner, name, new)
        yield
    finally:
        for owner, name, old in saved:
            setattr(owner, name, old)


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def run(args) -> dict:
    """Write the data, run the sequence, return what each method cost (and print it as markdown)."""
    import torch

    from bench import machine
    from continual import cli
    from continual.datasets import store
    from continual.run_folder import RunFolder

    cuda = torch.cuda.is_available() and args.device != "cpu"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seq_path, seq, plan = make_sequence(work, scale=args.scale, arch=args.arch, pretrained=args.pretrained,
                                        image_size=args.image_size, batch=args.batch)
    out = work / "runs"
    shutil.rmtree(out, ignore_errors=True)
    if args.fresh_store:
        shutil.rmtree(store.store_root(Path(seq["data_root"])), ignore_errors=True)
    timers = Timers(cuda)
    argv = ["run", str(seq_path), "--out", str(out), "--quiet", "--set", f"training.device={'cuda' if cuda else 'cpu'}"]
    if args.methods:
        argv += ["--methods", args.methods]
    began = time.perf_counter()
    with instrumented(timers):
        status = cli.main(argv)
    wall = time.perf_counter() - began
    if status:
        sys.exit(f"continual run exited with status {status}")
    folder = out / seq["name"]
    batch, steps = seq["training"]["batch_size"], seq["training"]["steps_per_task"]
    rows = {}
    run_folder = RunFolder(folder)
    for method_dir in sorted(p.parent for p in folder.glob("*/metrics.json")):
        doc = json.loads((method_dir / "metrics.json").read_text())
        timings = doc["timings"][1:]  # step 0 is shared and reported apart
        fit = sum(t["fit_seconds"] for t in timings)
        ev = sum(t["eval_seconds"] for t in timings)
        cache = sum(t.get("anchor_cache_seconds", 0.0) for t in timings)
        where = sorted({t["anchor_cache"] for t in timings if "anchor_cache" in t})
        name = doc["method"]
        seen = sum(seen_images(t["train_steps"], plan[task["name"]][2], batch)
                   for t, task in zip(timings, seq["tasks"]))
        test_images = sum(p[3] for p in plan.values())
        text = timers.get(name, "text heads")
        method_wall = timers.get(name, "wall")
        rows[name] = {"wall_s": method_wall, "train_s": fit, "eval_s": ev, "text_heads_s": text,
                      "anchor_cache_s": cache, "anchor_cache": ",".join(where) or "-",
                      "other_s": method_wall - fit - ev - text, "train_images": seen,
                      "train_img_s": seen / fit if fit else 0.0,
                      "eval_img_s": test_images * len(timings) / ev if ev else 0.0,
                      "peak_gpu_bytes": timers.peak.get(name),
                      "run_disk_bytes": disk(run_folder.method(name)) + disk(run_folder.checkpoints(name))}
    shared = {"wall_s": wall, "data_s": timers.get("step 0", "data"), "step0_s": timers.get("step 0", "wall"),
              "step0_text_heads_s": timers.get("step 0", "text heads"),
              "store_bytes": disk(store.store_root(Path(seq["data_root"]))),
              "images_bytes": sum(disk(p[0]) for p in plan.values()) + disk(Path(seq["data_root"]) / "imagenet"),
              "run_bytes": disk(folder), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    report(args, seq, plan, rows, shared, machine=machine(), steps=steps, batch=batch, cuda=cuda)
    return {"rows": rows, "shared": shared}


def report(args, seq, plan, rows, shared, *, machine: str, steps: int, batch: int, cuda: bool) -> None:
    model = seq["model"]
    arch = "tiny CLIP (bench/mtil.py's TINY_CLIP_CONFIG)" if args.arch == TINY else f"open_clip {model['arch']}"
    weights = f"weights {model['pretrained']}" if model["pretrained"] else "random init (no --pretrained given)"
    train = sum(p[2] for p in plan.values())
    test = sum(p[3] for p in plan.values())
    print(f"\n### MTIL order I shape (bench/mtil.py --scale {args.scale:g}): {arch}, {weights}, "
          f"{args.image_size or ('32' if args.arch == TINY else 'its own')} px, {len(plan)} tasks "
          f"({train:,} train / {test:,} test images), {steps} steps of {batch} a task\n\nMachine: {machine}\n")
    memory = "peak GPU memory" if cuda else "peak GPU memory (no GPU)"
    print(f"| method | wall s | training s | evaluation s | text heads s | anchor cache s | other s | "
          f"train img/s | eval img/s | {memory} | run folder |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        peak = gib(r["peak_gpu_bytes"]) if r["peak_gpu_bytes"] is not None else "-"
        cache = f"{r['anchor_cache_s']:.1f} ({r['anchor_cache']})" if r["anchor_cache"] != "-" else "-"
        print(f"| {name} | {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['eval_s']:.1f} | {r['text_heads_s']:.1f} | "
              f"{cache} | {r['other_s']:.1f} | {r['train_img_s']:.0f} | {r['eval_img_s']:.0f} | {peak} | "
              f"{gib(r['run_disk_bytes'])} |")
    s = shared
    methods = sum(r["wall_s"] for r in rows.values())
    print(f"\nWall time {s['wall_s']:.1f} s: loading the data {s['data_s']:.1f} s (the store built where it was "
          f"not), step 0 {s['step0_s']:.1f} s (of it CLIP text heads {s['step0_text_heads_s']:.1f} s), the methods "
          f"{methods:.1f} s, the rest (imports, the model, the plan, the report) "
          f"{s['wall_s'] - s['data_s'] - s['step0_s'] - methods:.1f} s. Training includes the anchor cache's build; "
          f"'other' is a method's time outside training, evaluation and text heads (set-up, checkpoints, files). "
          f"Disk: store {gib(s['store_bytes'])}, source JPEGs {gib(s['images_bytes'])}, run folder "
          f"{gib(s['run_bytes'])}; peak RSS {gib(s['peak_rss_bytes'])}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="image counts, steps and warm-up x this")
    parser.add_argument("--arch", default="ViT-B-16", help=f"an open_clip architecture, or '{TINY}' (CPU)")
    parser.add_argument("--pretrained", help="open_clip weights (a tag cached locally or a checkpoint file); "
                        "default: random init")
    parser.add_argument("--image-size", type=int, help="model input px (default: the model's: 224, tiny 32)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (mtil-order-1.yaml's: 64)")
    parser.add_argument("--methods", help="comma-separated subset (default: every method of mtil-order-1.yaml)")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "continual-mtil-bench"),
                        help="where images, the store and the run go (images and store kept between runs)")
    parser.add_argument("--fresh-store", action="store_true", help="empty the store first: its build is timed")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
