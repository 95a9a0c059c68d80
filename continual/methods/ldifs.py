"""LDIFS: cross-entropy + λ · distance between the model's intermediate features and a frozen anchor's.

Mukhoti, Gal, Torr, Dokania, "Fine-tuning can cripple your foundation model; preserving features may be
the solution" (arXiv 2308.13320). The anchor is the pre-trained backbone as loaded before task 1 and is
never refreshed; `anchor: previous` re-anchors to the model after the previous task, a moving anchor
the paper does not evaluate (its code's sequence runs pick an earlier fine-tuned encoder by validation
accuracy instead, omegafragger/ldifs_code finetune_functions.py).

`distance:` per_sample (ours, `feature_distance`) or paper (the public code's, `paper_distance`); `taps:`
keeps only some of the backbone's taps, in the model's forward, the anchor's and the anchor cache alike.
`cache: auto` caches the anchor's taps only where it pays (`plan_cache`: visits per image, and a budget).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from torch import nn

from continual import checkpoints, distributed, progress
from continual.datasets.tasks import TaskData
from continual.methods.contract import Method
from continual.methods.options import LDIFSOptions
from continual.models import Backbone, ModelError, TaskModel
from continual.files import DiskFull, full_disk
from continual.train import Batch, FitStats, Trainer


class FrozenBackbone(nn.Module):
    """A copy of a backbone that stays frozen: no gradients, eval mode (BatchNorm statistics and dropout
    fixed), and a `train()` that refuses to flip it back, so `model.train()` up the tree cannot."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        return self

    @torch.no_grad()
    def taps(self, x: torch.Tensor, names: list[str] | None = None) -> list[torch.Tensor]:
        return self.backbone.forward_with_taps(x, names)[1]


def feature_distance(taps: list[torch.Tensor], anchor: list[torch.Tensor]) -> torch.Tensor:
    """Mean over taps of the mean over the batch of ||a/|a| - b/|b|||², each sample's tap flattened.

    We L2-normalise each sample's whole flattened feature, so every tap contributes a distance in [0, 4]
    whatever its width or resolution, and λ means the same for a CNN and a ViT. The paper's code instead
    normalises along dim 1 (the token axis of a ViT's residual stream) and takes a plain mean over all
    elements (`paper_distance`), so a tap's term is at most 4 / (its size along dim 1).

    Computed as 2 - 2·cos(a, b) with sums over every non-batch dimension: the same number, without
    materialising normalised copies of the taps or flattening channels-last activations (which copies
    them): 11.6 -> 5.7 ms per step, forward and backward, on the default sequence's taps.
    """
    total = taps[0].new_zeros((), dtype=torch.float32)
    for a, b in zip(taps, anchor, strict=True):
        a, b = a.float(), b.float()
        dims = tuple(range(1, a.ndim))
        dot = (a * b).sum(dims)
        norms = a.pow(2).sum(dims).sqrt().clamp_min(1e-12) * b.pow(2).sum(dims).sqrt().clamp_min(1e-12)
        total = total + (2 - 2 * dot / norms).mean()
    return total / len(taps)


def _paper_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # omegafragger/ldifs_code, loss/ldifs.py lines 11-13 (`normalize_tensor`): eps added to the norm, not a
    # clamp, and the same ops, so the numbers are the code's.
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


def paper_distance(taps: list[torch.Tensor], anchor: list[torch.Tensor]) -> torch.Tensor:
    """The paper's public code, op for op: omegafragger/ldifs_code (commit 5ffdeef), loss/ldifs.py lines
    28-42, `LDIFSFinetune.forward`, with n(x) = x / (sqrt(Σ_dim1 x²) + 1e-10) (lines 11-13):

        per tap t and sample i: mean over every element of (n(a_t) - n(b_t))²[i]   (lines 33-40)
        loss = mean over the batch of the mean over taps    (line 41: stack(dim=1).mean(-1).mean(0))

    Its taps (model/modeling.py lines 69-75 and 95-119, `ImageEncoderAugmented`, N_slices = 5): ln_pre's
    output, then the residual stream after blocks 3, 6, 9 and 12 of ViT-B/32, each batch-first (B, L, D), so
    dim 1 is the token axis: each feature channel is normalised across the tokens. Our open_clip ViT taps
    are the same five (models/clip.py). The code reduces only 2- and 3-dimensional taps; a CNN's (B, C, H, W)
    is reduced the same way here (mean over every non-batch element), normalised along dim 1 = channels as
    LPIPS, whose `normalize_tensor` the code copies, does. A tap's term lies in [0, 4 / its size along dim 1].
    """
    diffs = []
    for a, b in zip(taps, anchor, strict=True):
        diff = (_paper_normalize(a.float()) - _paper_normalize(b.float())) ** 2
        while diff.ndim > 1:  # (B, L, D): .mean(-1).mean(-1), as the code; (B, D): .mean(-1)
            diff = diff.mean(dim=-1)
        diffs.append(diff)
    return torch.stack(diffs, dim=1).mean(dim=-1).mean(dim=0)


# `distance:` -> the function of (model taps, anchor taps) it names.
DISTANCES = {"per_sample": feature_distance, "paper": paper_distance}


# `cache: auto` builds the anchor cache only where it pays. Building it is one anchor forward per training
# image (in inference mode, BatchNorm folded); without it the anchor runs once per image a step visits; the
# cache's lookup is not free either. Break-even, from the Performance numbers (docs/performance.md): ViT-B/16 on an H100
# (build 0.23 ms an image, the anchor per step 0.20 ms a visit, the lookup 0.04 ms) at 1.41 visits per image;
# EfficientNet-Lite0 on 2 CPU cores (build 1.2 ms, per step 2.0 ms, lookup 0.34 ms) at 0.73. Per device type,
# a little above each: on a GPU one pass (epochs: 1) runs the anchor per step; on a CPU, where a batched
# inference forward costs much less than a training-mode one, one pass still pays for the cache (issue #24).
PAYS_FROM = {"cuda": 1.5, "cpu": 0.75}
# Budgets of `cache: auto`, each a share of what is free when a task starts, so the rest of the run (the split
# read ahead, the store's pages, evaluation, checkpoints) keeps room.
GPU_SHARE = 0.25  # of free GPU memory: float16 taps on the device (no host copy per step)
MEMORY_SHARE = 0.25  # of available RAM (MemAvailable, or the cgroup's limit): float32 taps in host memory
DISK_SHARE = 0.5  # of the scratch disk's free space: memory-mapped float16 files under <run>/cache/


class CacheTooLarge(DiskFull):
    """`cache: disk` larger than the scratch disk's free space, refused before anything is written; a DiskFull,
    so the runner stops the run as on a full disk, with a message that says what the cache needs."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


@dataclass(frozen=True)
class CachePlan:
    """Where a task's anchor cache lives and why, decided from sizes before anything is allocated."""

    where: str  # memory | disk | off (the anchor runs on every batch)
    on_gpu: bool  # memory: float16 on the GPU, else float32 in host memory
    estimate: int  # bytes of the cache where it lives; where: off, what it would take as float16
    visits: float  # images a task's steps visit per training image
    reason: str

    def extra(self) -> dict:
        """Its line in metrics.json's timings."""
        return {"anchor_cache": self.where, "anchor_cache_estimate_bytes": self.estimate,
                "anchor_visits_per_image": round(self.visits, 3), "anchor_cache_reason": self.reason}


def plan_cache(choice: str, *, images: int, visits: int, per_sample: int, gpu_free: float | None, ram_free: float,
               disk_free: float | None, pays_from: float = PAYS_FROM["cuda"]) -> CachePlan:
    """The cache for `images` training images whose taps have `per_sample` elements each, visited `visits`
    times over the task, given the free bytes (gpu_free None: not on a GPU; disk_free None: no scratch folder);
    `auto` caches from `pays_from` visits per image (PAYS_FROM of the device).
    `choice` is the `cache:` option. A forced cache that cannot fit at all is refused here (before anything
    is allocated): memory larger than the available RAM, disk larger than the free space."""
    half, full = images * per_sample * 2, images * per_sample * 4  # float16 (GPU, disk), float32 (host memory)
    ratio = visits / max(images, 1)
    seen = f"{visits:,} visits to {images:,} images, {ratio:.2f} each"
    sizes = f"{_size(half)} in float16, {_size(full)} in float32"

    def plan(where: str, reason: str, *, on_gpu: bool = False) -> CachePlan:
        estimate = full if where == "memory" and not on_gpu else half
        return CachePlan(where, on_gpu, estimate, ratio, reason)

    if choice == "off":
        return plan("off", "cache: off (the paper's way)")
    fits_gpu = gpu_free is not None and half <= GPU_SHARE * gpu_free
    if choice == "memory":
        if fits_gpu:
            return plan("memory", f"cache: memory; on the GPU ({_size(half)})", on_gpu=True)
        if full > ram_free:
            raise MemoryError(f"methods.ldifs.cache: memory needs {_size(full)} of host memory for the anchor's "
                              f"taps of {images:,} images (float32), and {_size(ram_free)} is available; use "
                              f"cache: auto (it caches on disk, or runs the anchor per step) or cache: disk")
        return plan("memory", f"cache: memory ({_size(full)}, {_size(ram_free)} available)")
    if choice == "disk":
        if disk_free is None:
            raise ValueError("ldifs cache: disk needs a scratch folder (the runner gives one)")
        if half > disk_free:
            raise CacheTooLarge(f"methods.ldifs.cache: disk needs {_size(half)} for the anchor's taps of {images:,} "
                                f"images (float16), and the scratch disk has {_size(disk_free)} free: the disk is full "
                                f"for it, nothing was written; free some space and run again with --resume, or use "
                                f"cache: auto (the anchor per step where the cache does not fit)")
        return plan("disk", f"cache: disk ({_size(half)}, {_size(disk_free)} free)")
    if ratio < pays_from:
        return plan("off", f"{seen}: under {pays_from}, building the cache costs about the anchor passes it "
                           f"saves ({sizes})")
    if fits_gpu:
        return plan("memory", f"{seen}; {_size(half)} fits a quarter of free GPU memory", on_gpu=True)
    if full <= MEMORY_SHARE * ram_free:
        return plan("memory", f"{seen}; {_size(full)} fits a quarter of available RAM ({_size(ram_free)})")
    if disk_free is not None and half <= DISK_SHARE * disk_free:
        return plan("disk", f"{seen}; {_size(half)} fits half the scratch disk's free space ({_size(disk_free)}), "
                            f"not a quarter of available RAM ({_size(ram_free)})")
    budgets = ([] if gpu_free is None else [f"a quarter of free GPU memory ({_size(gpu_free)})"]) + [
        f"a quarter of available RAM ({_size(ram_free)})"] + (
        [] if disk_free is None else [f"half the scratch disk's free space ({_size(disk_free)})"])
    return plan("off", f"{seen}, but {sizes} fit none of {', '.join(budgets)}")


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def available_memory() -> int:
    """Bytes of RAM this process could still take: /proc/meminfo's MemAvailable, capped by a cgroup v2
    limit (a container's); elsewhere os.sysconf's free pages."""
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if room is None:
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            room = 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            room = min(room, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(room, 0)


def free_disk(folder: Path) -> int:
    """Free bytes on the disk that holds `folder` (its nearest existing parent: the scratch folder is made
    when the cache is)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


class AnchorCache:
    """The anchor's tap outputs for every training image of one task, computed once, looked up by index."""

    def __init__(self, taps: list, key: str, where: str, nbytes: int, seconds: float):
        self.taps, self.key, self.where, self.nbytes, self.seconds = taps, key, where, nbytes, seconds

    @classmethod
    def build(cls, anchor: FrozenBackbone, images: torch.Tensor, *, key: str, plan: CachePlan, folder: Path | None,
              batch_size: int, device: torch.device, names: list[str] | None = None, label: str = "",
              show_progress: bool = False) -> AnchorCache:
        """Where `plan` says (memory or disk). `names`: only those taps (LDIFS's `taps:`), in that order; None:
        all of them. `show_progress`: a bar over the images, described by `label`."""
        began = time.perf_counter()
        n, where = len(images), plan.where
        # The anchor's inference form (BatchNorm folded into convolutions: 1.3x faster on CPU, taps equal
        # to ~1e-6 relative), built once per task. Its tap modules are those of the anchor, so the taps match.
        encoder = anchor.backbone.for_inference().eval()
        taps_of = lambda x: encoder.forward_with_taps(x, names)[1]  # noqa: E731
        with torch.inference_mode():
            probe = taps_of(anchor.backbone.preprocess(images[:1].to(device)))
        # Under torchrun every rank made the same plan (from the least room of any rank) and computes its
        # batches of the cache; all of them are gathered, so that every rank holds the taps of every image:
        # in memory, each its own copy; on disk, in rank 0's files, which the others then read.
        shared = distributed.active()
        paths = []
        if where == "disk":
            if folder is None:
                raise ValueError("ldifs cache: disk needs a scratch folder (the runner gives one)")
            paths = [folder / f"{key}-tap{i}.npy" for i in range(len(probe))]
        taps = _allocate(plan, n=n, probe=probe, paths=paths, device=device)

        def put(start: int, outputs: list[torch.Tensor]) -> None:
            for store, tap in zip(taps, outputs):
                if isinstance(store, np.ndarray):
                    store[start : start + len(tap)] = tap.half().cpu().numpy()
                else:
                    store[start : start + len(tap)] = tap.to(store.device, store.dtype)

        shown = progress.bar(n, f"{label}: anchor features ({where})" if label else f"anchor features ({where})",
                             enabled=show_progress)

        def stored(start: int, outputs: list[torch.Tensor]) -> None:
            if taps is not None:  # None: a rank other than 0, with the cache on rank 0's disk
                put(start, outputs)
            shown.update(len(outputs[0]))

        with torch.inference_mode(), shown:
            if shared:
                distributed.each_batch(n, batch_size,
                                       lambda a, b: taps_of(anchor.backbone.preprocess(images[a:b].to(device))),
                                       lambda a, b, outputs: stored(a, outputs),
                                       like=[(tuple(t.shape[1:]), t.dtype) for t in probe])
            else:
                for start in range(0, n, batch_size):
                    stored(start, taps_of(anchor.backbone.preprocess(images[start : start + batch_size].to(device))))
        if shared and paths:  # rank 0 wrote the files: the others map them once they are on disk
            distributed.on_main(lambda: [tap.flush() for tap in taps])
            if taps is None:
                taps = [np.load(path, mmap_mode="r") for path in paths]
        nbytes = sum(t.nbytes for t in taps)
        return cls(taps, key, where, nbytes, time.perf_counter() - began)

    def lookup(self, index: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        if self.where == "disk":
            rows = index.numpy()
            return [torch.from_numpy(t[rows]).to(device, non_blocking=True).float() for t in self.taps]
        return [t[index.to(t.device, non_blocking=True)].to(device, torch.float32, non_blocking=True) for t in self.taps]

    def close(self) -> None:
        """Drop the taps and delete their memory-mapped files, if any."""
        paths = [Path(t.filename) for t in self.taps if isinstance(t, np.memmap)]
        self.taps = []
        for path in paths if distributed.is_main() else []:  # under torchrun, rank 0's files
            path.unlink(missing_ok=True)


def _allocate(plan: CachePlan, *, n: int, probe: list[torch.Tensor], paths: list[Path],
              device: torch.device) -> list | None:
    """The cache's storage for `n` images, shaped as `probe`'s taps: tensors in memory (float16 on the GPU,
    float32 in host memory), or float16 files at `paths` (None on a rank other than 0, which reads rank 0's)."""
    if plan.where == "disk":
        return distributed.on_main(lambda: _open_files(paths, n=n, probe=probe))
    dtype, home = (torch.float16, device) if plan.on_gpu else (torch.float32, torch.device("cpu"))
    return [torch.empty((n, *t.shape[1:]), dtype=dtype, device=home) for t in probe]


def _open_files(paths: list[Path], *, n: int, probe: list[torch.Tensor]) -> list[np.memmap]:
    """float16 memory-mapped files for the taps of `n` images, their disk space reserved."""
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    try:
        taps = [np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *t.shape[1:]))
                for path, t in zip(paths, probe)]
        for tap in taps:
            _reserve(Path(tap.filename))
    except OSError as err:
        if full_disk(err):  # the runner removes the scratch folder
            raise DiskFull(paths[0].parent, err) from None
        raise
    return taps


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now. Its pages are otherwise written lazily, and a full disk
    then kills the process with SIGBUS, mid-step, with no message; reserved, it is ENOSPC up front."""
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: lazily, then
            raise


def cache_key(anchor: FrozenBackbone, images: torch.Tensor, names: list[str] | None = None) -> str:
    """What the cached taps depend on: the anchor's weights and tap layers (all, or `names`), the exact
    training images (dataset, subset, resize) and the preprocessing."""
    digest = hashlib.sha256()
    digest.update(checkpoints.fingerprint(anchor.backbone).encode())
    digest.update(repr(list(names) if names is not None else anchor.backbone.tap_names).encode())
    b = anchor.backbone
    digest.update(repr((b.image_size, b.pixel_mean.tolist(), b.pixel_std.tolist(), tuple(images.shape))).encode())
    if isinstance(images, torch.Tensor):
        digest.update(images.contiguous().numpy())  # buffer protocol: no copy
    else:  # an Images: where its rows come from and which (a store's key names every file it holds)
        digest.update(images.fingerprint().encode())
    return digest.hexdigest()[:16]


class LDIFS(Method):
    def __init__(self, options: LDIFSOptions, *, pretrained: Backbone, context=None):
        problems = self.problems(options, pretrained)
        if problems:
            raise ValueError("; ".join(f"methods.{options.key}.{key}: {message}" for key, message in problems))
        super().__init__(options, pretrained=pretrained)
        # The selected taps in the model's order (the same taps in any order are the same cache), or None: all.
        self.tap_names = None if options.taps is None else [n for n in pretrained.tap_names if n in options.taps]
        self.anchor = FrozenBackbone(pretrained)
        self.cache: AnchorCache | None = None  # None: the anchor runs on every batch
        self.cache_plan: CachePlan | None = None  # why the cache is where it is
        self.said_per_step = False

    @classmethod
    def problems(cls, options: LDIFSOptions, backbone: Backbone) -> list[tuple[str, str]]:
        """`taps:` must name taps of this backbone, each once."""
        if options.taps is None:
            return []
        try:
            known = backbone.tap_names
        except ModelError as err:  # a tower without taps (the runner's needs check says so too)
            return [("taps", err.message)]
        problems, seen = [], set()
        for name in options.taps:
            if name in seen:
                problems.append(("taps", f"tap {name!r} is listed twice"))
            elif name not in known:
                problems.append(("taps", f"unknown tap {name!r} (this model's taps: {', '.join(known)})"))
            seen.add(name)
        return problems

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        if self.options.anchor == "previous" and step > 1:
            self.anchor = FrozenBackbone(model.backbone)
        augment = trainer.training.augment
        extra = (self.anchor_per_step(augment) if augment != "none"
                 else self.prepare_cache(task, trainer, label=trainer.label))
        stats = trainer.fit(model, task, loss_terms=self.loss_terms)
        stats.extra.update(extra)
        return stats

    def prepare_cache(self, task: TaskData, trainer: Trainer, *, label: str) -> dict:
        """Build the anchor cache this task's plan asks for (or keep the one that holds these taps already),
        or drop it so that the anchor runs per step. Said in one line before anything is allocated; returns
        the plan's entries of metrics.json."""
        plan = self.plan(task.train.images, trainer)
        if plan.where == "off":
            self.drop_cache()
            self.say(label, plan)
            return plan.extra()
        key = cache_key(self.anchor, task.train.images, self.tap_names)
        if self.cache is None or self.cache.key != key:
            self.drop_cache()
            self.say(label, plan)
            self.cache = AnchorCache.build(self.anchor, task.train.images, key=key, plan=plan, folder=trainer.scratch,
                                           batch_size=trainer.eval_batch_size, device=trainer.device,
                                           names=self.tap_names, label=label, show_progress=trainer.progress)
            self.cache_plan = plan
        return {**self.cache_plan.extra(), "anchor_cache_mb": round(self.cache.nbytes / 2**20, 1),
                "anchor_cache_seconds": round(self.cache.seconds, 3)}

    def plan(self, images, trainer: Trainer) -> CachePlan:
        """plan_cache for this task: its visits per image from the trainer's steps and batch size, the size of
        one image's taps from the anchor on one image, and the room free now (under torchrun, every rank's
        least, so that every rank makes the same plan)."""
        n = len(images)
        total, per_epoch = trainer.total_steps(n), trainer.steps_per_epoch(n)
        # Whole epochs visit every image; a cut epoch (steps_per_task) visits full batches only.
        visits = total // per_epoch * n + total % per_epoch * trainer.training.batch_size
        if self.options.cache == "off":
            return plan_cache("off", images=n, visits=visits, per_sample=0, gpu_free=None, ram_free=0, disk_free=None)
        x = self.anchor.backbone.preprocess(images[:1].to(trainer.device))
        per_sample = sum(t[0].numel() for t in self.anchor.taps(x, self.tap_names))
        cuda = trainer.device.type == "cuda"
        gpu_free = torch.cuda.mem_get_info(trainer.device)[0] if cuda else None
        ram_free = available_memory() / distributed.world()  # in memory, every rank holds its own copy
        disk_free = None if trainer.scratch is None else free_disk(trainer.scratch)
        if distributed.active():
            ram_free = distributed.least(ram_free)
            gpu_free = distributed.least(gpu_free) if cuda else None
            disk_free = None if disk_free is None else distributed.least(disk_free)
        return plan_cache(self.options.cache, images=n, visits=visits, per_sample=per_sample, gpu_free=gpu_free,
                          ram_free=ram_free, disk_free=disk_free,
                          pays_from=PAYS_FROM.get(trainer.device.type, PAYS_FROM["cuda"]))

    def say(self, label: str, plan: CachePlan) -> None:
        if self.options.cache == "off" or not distributed.is_main():
            return
        where = ("per step, no cache" if plan.where == "off" else
                 f"cached in {'GPU memory' if plan.on_gpu else plan.where}, {_size(plan.estimate)}")
        print((f"{label}: " if label else "") + f"anchor {where}: {plan.reason}", file=sys.stderr)

    def drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def anchor_per_step(self, augment: str) -> dict:
        """With training.augment, the anchor's taps depend on each batch's draws, so no cache can hold them:
        the anchor runs on every augmented batch (the batch the model sees). Said once, and in metrics.json."""
        if why := self.options.cache_refused(augment):  # load_sequence refuses this; a Sequence built in Python may not
            raise ValueError(f"methods.{self.options.key}.{why}")
        self.drop_cache()
        if not self.said_per_step and distributed.is_main():
            print(f"{self.options.key}: training.augment is {augment}, so the anchor's features cannot be cached; the frozen "
                  f"anchor runs on every augmented batch (about 1.3-1.4x a fine-tuning step, docs/performance.md)", file=sys.stderr)
            self.said_per_step = True
        return {"anchor_cache": "off", "anchor_per_step": f"training.augment: {augment}"}

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        features, taps = model.backbone.forward_with_taps(batch.x, self.tap_names)
        if self.cache is None:  # cache: off, a task where it would not pay (plan_cache), or training.augment
            anchor = self.anchor.taps(batch.x, self.tap_names)
        else:
            anchor = self.cache.lookup(batch.index, batch.x.device)
        return {
            "ce": batch.ce(model.logits(features, batch.task)),
            "ldifs": self.options.lambda_ * DISTANCES[self.options.distance](taps, anchor),
        }
