"""Benchmark: what a training step costs with each method against a bare PyTorch loop, and where the wall
time of the default sequence goes. Prints markdown tables naming the machine.

    python bench/bench.py              # CPU: step ratios (~2 min), then the default sequence end to end
    python bench/bench.py --ratios     # the step ratios only
    python bench/bench.py --gpu        # GPU: ViT-B-32 and ViT-B-16 (random init): training and evaluation throughput,
                                       # and every method's step cost on ViT-B-32
    python bench/bench.py --baselines  # the methods' step cost on an open_clip ViT (CPU: ViT-B-32, batch 16)

Step ratios: EfficientNet-Lite0 with its shipped weights, 64 px, batch 64, on synthetic uint8 images of
the default sequence's shape; every variant trains the same tensors from the same weights for one task
of `--steps` steps, the variants interleaved for `--rounds` rounds, the median step time reported.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import numpy as np
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from continual import methods  # noqa: E402
from continual.config import TrainingConfig  # noqa: E402
from continual.datasets.tasks import Split, TaskData  # noqa: E402
from continual.models import Head, TaskModel, build_backbone  # noqa: E402
from continual.train import Trainer  # noqa: E402


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def synthetic_task(n: int, size: int, classes: int = 10) -> TaskData:
    g = torch.Generator().manual_seed(0)
    split = Split(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                  labels=torch.arange(n) % classes)
    return TaskData(name="bench", dataset="synthetic", class_names=[str(c) for c in range(classes)],
                    train=split, test=split)


def bare_loop(model: TaskModel, task: TaskData, training, device: torch.device) -> float:
    """The same training written as plainly as possible: seconds per step."""
    images, labels = task.train.images, task.train.labels
    params = [p for p in list(model.backbone.parameters()) + list(model.heads[task.name].parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay)
    steps = math.ceil(len(labels) / training.batch_size)
    warmup = min(training.warmup_steps, steps - 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    model.train()
    order = torch.randperm(len(labels))
    began = time.perf_counter()
    for b in range(steps):
        idx = order[b * training.batch_size : (b + 1) * training.batch_size]
        x = model.backbone.preprocess(images[idx].to(device))
        loss = F.cross_entropy(model(x, task.name), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training.grad_clip)
        opt.step()
        sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - began) / steps


def method_step(name: str, options: dict, model: TaskModel, task: TaskData, trainer: Trainer, pretrained,
                context: methods.Context | None = None) -> tuple[float, dict]:
    method = methods.build(methods.METHODS[name].model_validate(options), pretrained=pretrained,
                           context=context)
    stats = method.fit_task(model, task, step=1, trainer=trainer)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return stats.seconds / stats.steps, stats.extra


def ratios(args) -> None:
    device = torch.device("cpu")
    backbone = build_backbone(SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=64,
                                              head_init="linear_probe"))
    training = TrainingConfig(batch_size=64, warmup_steps=2)
    task = synthetic_task(args.steps * training.batch_size, 64)
    torch.manual_seed(0)
    head = Head(backbone.feature_dim, 10, normalize=False)
    trainer = Trainer(training, device=device, progress=False)
    variants = {
        "bare PyTorch loop": None,
        "finetune (Trainer.fit)": ("finetune", {}),
        "ldifs, frozen forward per step (paper's code)": ("ldifs", {"cache": "off"}),
        "ldifs, anchor features cached": ("ldifs", {"cache": "memory"}),
        "naive (Avalanche SupervisedTemplate)": ("naive", {}),
    }
    times = {k: [] for k in variants}
    cache_seconds = []
    for _ in range(args.rounds):
        for label, spec in variants.items():
            model = TaskModel(copy.deepcopy(backbone), {"bench": copy.deepcopy(head)}, freeze_batchnorm=True)
            torch.manual_seed(1)
            if spec is None:
                times[label].append(bare_loop(model, task, training, device))
            else:
                seconds, extra = method_step(*spec, model, task, trainer, backbone)
                times[label].append(seconds)
                if "anchor_cache_seconds" in extra:
                    cache_seconds.append(extra["anchor_cache_seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    bare, ft = med["bare PyTorch loop"], med["finetune (Trainer.fit)"]
    print(f"\n### Training step, EfficientNet-Lite0 64 px, batch 64, {args.steps} steps x {args.rounds} rounds "
          f"interleaved\n\nMachine: {machine()}\n")
    print("| variant | ms / step | vs bare loop | vs finetune |\n|---|---|---|---|")
    for label, t in med.items():
        print(f"| {label} | {t * 1000:.0f} | {t / bare:.3f}x | {t / ft:.3f}x |")
    c = statistics.median(cache_seconds)
    with_build = (med["ldifs, anchor features cached"] * args.steps + c) / (ft * args.steps)
    print(f"\nAnchor cache: built in {c:.2f} s per task ({args.steps * 64} images); counting the build, an LDIFS "
          f"task of {args.steps} steps costs {with_build:.3f}x a fine-tuning task.")


def default_run(args) -> None:
    """The default sequence end to end in a fresh process: wall time, and evaluation's share of it."""
    sequence = ROOT / "sequences" / "mnist-fashion-animals.yaml"
    with tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "continual", "run", str(sequence), "--out", out, "--quiet"],
                       check=True, cwd=ROOT)
        wall = time.perf_counter() - began
        folder = Path(out) / "mnist-fashion-animals"
        docs = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/metrics.json"))}
    start_eval = next(iter(docs.values()))["timings"][0]["eval_seconds"]
    print(f"\n### Default sequence (`{sequence.relative_to(ROOT)}`), all methods, end to end\n\nMachine: {machine()}\n")
    print("| method | fit s | eval s |\n|---|---|---|")
    fit_total, eval_total = 0.0, start_eval
    for name, doc in docs.items():
        fit = sum(t["fit_seconds"] for t in doc["timings"])
        ev = sum(t["eval_seconds"] for t in doc["timings"][1:])
        fit_total, eval_total = fit_total + fit, eval_total + ev
        print(f"| {name} | {fit:.1f} | {ev:.1f} |")
    print(f"| step 0 (shared) | | {start_eval:.1f} |")
    print(f"\nWall time {wall:.0f} s ({wall / 60:.1f} min): training {fit_total:.0f} s ({fit_total / wall:.0%}), "
          f"evaluation {eval_total:.0f} s ({eval_total / wall:.0%}), the rest (start-up, data, files, report) "
          f"{wall - fit_total - eval_total:.0f} s.")


class HostTrainer(Trainer):
    """A Trainer that never moves a split to the GPU whole: every batch is copied from pinned host memory,
    as it is for a split over 4 GiB (ImageNet-sized tasks)."""

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        return images


def gpu(args) -> None:
    """open_clip ViTs (random init: no download) at 224 px: training images/s and peak memory per method,
    where the batches come from, and evaluation (feature extraction) images/s."""
    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device")
    from continual.evaluate import auto_eval_batch, extract_features

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    batch, steps = args.gpu_batch, args.gpu_steps
    print(f"\nMachine: {machine()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    for arch in args.gpu_archs.split(","):
        backbone = build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=None, image_size=None,
                                                  head_init="linear_probe")).to(device)
        training = TrainingConfig(batch_size=batch, warmup_steps=2, eval_batch_size=256)
        task = synthetic_task(batch * steps, backbone.image_size, classes=100)
        torch.manual_seed(0)
        head = Head(backbone.feature_dim, 100, normalize=True)
        plain = Trainer(training, device=device, progress=False)
        print(f"\n### GPU training: open_clip {arch} (random init), {backbone.image_size} px, batch {batch}, "
              f"bf16 autocast, {steps} steps per row\n")
        print("| variant | images / s | ms / step | vs finetune | peak GPU memory |\n|---|---|---|---|---|")
        results = {}
        for label, name, options, trainer in [
                ("finetune (cold: first CUDA kernels)", "finetune", {}, plain),
                ("finetune", "finetune", {}, plain),
                ("finetune, batches copied from pinned host memory", "finetune", {}, HostTrainer(training, device=device, progress=False)),
                # training.fused's row: auto turns it on for CUDA, measured faster here (schema.py)
                ("finetune, foreach AdamW (fused: false)", "finetune", {},
                 Trainer(training.model_copy(update={"fused": False}), device=device, progress=False)),
                # training.compile's rows: auto turns it on for CUDA once these measure it faster (schema.py)
                ("finetune, torch.compile", "finetune", {},
                 Trainer(training.model_copy(update={"compile": True}), device=device, progress=False)),
                ("ldifs, frozen forward per step", "ldifs", {"cache": "off"}, plain),
                ("ldifs, anchor features cached", "ldifs", {"cache": "memory"}, plain),  # auto: per step at 1 visit on a GPU
                ("ldifs, anchor per step, torch.compile", "ldifs", {"cache": "off"},
                 Trainer(training.model_copy(update={"compile": True}), device=device, progress=False))]:
            model = TaskModel(copy.deepcopy(backbone), {"bench": copy.deepcopy(head).to(device)})
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            seconds, extra = method_step(name, options, model, task, trainer, backbone)
            results[label] = seconds
            peak = torch.cuda.max_memory_allocated() / 2**30
            ft = results.get("finetune", seconds)
            print(f"| {label} | {batch / seconds:.0f} | {seconds * 1000:.1f} | {seconds / ft:.3f}x | {peak:.1f} GiB |"
                  + (f" cache built in {extra['anchor_cache_seconds']:.1f} s ({extra['anchor_cache']})"
                     if "anchor_cache_seconds" in extra else ""), flush=True)
            del model
        print(f"\nEvaluation (features of {len(task.train.labels)} images, eval mode, inference):\n")
        print("| batch | precision | images / s |\n|---|---|---|")
        auto = auto_eval_batch(backbone, task.train.images[:16], device=device, bf16=True)  # eval_batch_size: auto
        print(f"(training.eval_batch_size: auto chose {auto} here)\n")
        for eval_batch, bf16 in [(256, True), (1024, True), (auto, True), (256, False)]:
            extract_features(backbone, task.train, batch_size=eval_batch, device=device, bf16=bf16)  # warm
            torch.cuda.synchronize()
            began = time.perf_counter()
            extract_features(backbone, task.train, batch_size=eval_batch, device=device, bf16=bf16)
            torch.cuda.synchronize()
            print(f"| {eval_batch} | {'bf16' if bf16 else 'fp32 (tf32)'} | "
                  f"{len(task.train.labels) / (time.perf_counter() - began):.0f} |", flush=True)
        if arch == args.gpu_archs.split(",")[0]:
            store_rows(args, backbone, head, training, device)
        del backbone
        torch.cuda.empty_cache()


def store_rows(args, backbone, head, training, device) -> None:
    """Training with the images where runs keep them: 256 px JPEGs decoded once into the store (at the
    model's size) and read per batch from it, or moved to the GPU whole; and 32 px images (CIFAR's size)
    resized to the model's on the GPU per batch."""
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    import data_store

    from continual.datasets import tasks
    from continual.datasets.source import Pool, array_images

    batch, steps = args.gpu_batch, args.gpu_steps
    work = Path(tempfile.mkdtemp())
    n = batch * steps * 5 // 4  # the folder's 80/20 split leaves batch * steps to train on
    began = time.perf_counter()
    data_store.make_folder(work / "jpegs", n, classes=max(2, min(100, n // 10)))
    written = time.perf_counter() - began
    began = time.perf_counter()
    stored = tasks.load_task(data_store.spec(work / "jpegs"), image_size=backbone.image_size, data_root=work / "data",
                             seed=0)
    built = time.perf_counter() - began
    g = torch.Generator().manual_seed(0)
    small = torch.randint(0, 256, (len(stored.train.labels), 32, 32, 3), dtype=torch.uint8, generator=g).numpy()
    cifar_like = array_images(Pool(stored.train.labels.numpy(), array=small), np.arange(len(small)))
    print(f"\nThe store in the loop ({len(stored.train.labels):,} training images of {n:,} 256 px JPEGs written in "
          f"{written:.1f} s, decoded into the store in {built:.1f} s by {data_store.store_workers()} processes):\n")
    print("| variant | images / s | ms / step | peak GPU memory |\n|---|---|---|---|")
    for label, images, trainer in [
            ("finetune, batches read from the store (host)", stored.train.images,
             HostTrainer(training, device=device, progress=False)),
            ("finetune, the stored split moved to the GPU once (the default when it fits)", stored.train.images,
             Trainer(training, device=device, progress=False)),
            ("finetune, 32 px images resized to 224 px on the GPU per batch", cifar_like,
             Trainer(training, device=device, progress=False))]:
        task = TaskData(name="bench", dataset="synthetic", class_names=[str(c) for c in range(100)],
                        train=Split(images, stored.train.labels % 100), test=stored.test)
        model = TaskModel(copy.deepcopy(backbone), {"bench": copy.deepcopy(head).to(device)})
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        seconds, _ = method_step("finetune", {}, model, task, trainer, backbone)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"| {label} | {batch / seconds:.0f} | {seconds * 1000:.1f} | {peak:.1f} GiB |", flush=True)
        del model


def baselines(args, *, device: torch.device, arch: str, batch: int, steps: int) -> None:
    """What a training step of each method costs against finetune's, on an open_clip ViT (random init) and a
    synthetic task of 100 classes. wise_ft and lp_ft add work once a task (an interpolation, a linear probe),
    reported apart; ldifs builds its anchor cache once a task (reported apart, as in the other tables)."""
    from continual.datasets import prompts

    backbone = build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=None, image_size=None,
                                              head_init="zero_shot")).to(device)
    training = TrainingConfig(batch_size=batch, warmup_steps=2, eval_batch_size=max(batch, 64))
    task = synthetic_task(batch * steps, backbone.image_size, classes=100)
    reference = dataclasses.replace(synthetic_task(batch * steps, backbone.image_size, classes=100), name="ref")
    context = methods.Context(tasks=[task], probes=[], references={"ref": reference},
                              templates={("tasks", "bench"): prompts.templates("synthetic"),
                                         ("references", "ref"): prompts.templates("synthetic")})
    torch.manual_seed(0)
    head = Head(backbone.feature_dim, 100, normalize=True)
    trainer = Trainer(training, device=device, progress=False)
    where = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\n### The methods' training step: open_clip {arch} (random init), {backbone.image_size} px, batch {batch}, "
          f"{where}, {steps} steps each\n\nMachine: {machine()}\n")
    print("| method | ms / step | vs finetune | once a task |\n|---|---|---|---|")
    ft = None
    only = set(args.bench_methods.split(",")) if args.bench_methods else None
    for name, options in [("finetune", {}), ("finetune", {}), ("l2sp", {}), ("wise_ft", {}), ("lp_ft", {}),
                          ("ldifs", {"cache": "memory"}), ("ldifs", {"cache": "off"}), ("flyp", {}),
                          ("zscl", {"reference": "ref"})]:
        if only is not None and name not in only | {"finetune"}:
            continue
        model = TaskModel(copy.deepcopy(backbone), {"bench": copy.deepcopy(head).to(device)})
        began = time.perf_counter()
        seconds, extra = method_step(name, options, model, task, trainer, backbone, context)
        total = time.perf_counter() - began
        once = total - seconds * steps  # what the task cost beyond its steps: probe, interpolation, cache
        if ft is None:  # the first finetune warms the kernels up and is not reported
            ft = 0.0
            continue
        ft = ft or seconds
        label = name + "".join(f", {k} {v}" for k, v in options.items() if k != "reference")
        print(f"| {label} | {seconds * 1000:.0f} | {seconds / ft:.2f}x | {once:.1f} s |", flush=True)
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", action="store_true", help="step ratios only (no end-to-end run)")
    parser.add_argument("--gpu", action="store_true", help="the GPU variant only")
    parser.add_argument("--steps", type=int, default=16, help="steps per measured task (CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (CPU)")
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--gpu-steps", type=int, default=40)
    parser.add_argument("--gpu-archs", default="ViT-B-32,ViT-B-16", help="open_clip architectures (GPU)")
    parser.add_argument("--baselines", action="store_true", help="the methods' step cost on an open_clip ViT only")
    parser.add_argument("--baseline-arch", default="ViT-B-32")
    parser.add_argument("--bench-methods", default="", help="with --baselines: only these (and finetune), comma-separated")
    args = parser.parse_args()
    if args.gpu:
        gpu(args)
        baselines(args, device=torch.device("cuda"), arch=args.gpu_archs.split(",")[0], batch=args.gpu_batch,
                  steps=args.gpu_steps)
        return
    if args.baselines:
        baselines(args, device=torch.device("cpu"), arch=args.baseline_arch, batch=16, steps=args.steps // 2)
        return
    ratios(args)
    if not args.ratios:
        default_run(args)


if __name__ == "__main__":
    main()
