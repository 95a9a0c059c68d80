"""LDIFS: cross-entropy + λ · distance between the model's intermediate features and a frozen anchor's.

Mukhoti, Gal, Torr, Dokania, "Fine-tuning can cripple your foundation model; preserving features may be
the solution" (arXiv 2308.13320). The anchor is the pre-trained backbone as loaded before task 1 and is
never refreshed; `anchor: previous` re-anchors to the model after the previous task, which is what the
paper's public code does across a sequence.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import os
import sys
import time
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from continual import checkpoints
from continual.datasets.tasks import TaskData
from continual.methods.options import LDIFSOptions
from continual.models import Backbone, TaskModel
from continual.run_folder import DiskFull, full_disk
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
    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.forward_with_taps(x)[1]


def feature_distance(taps: list[torch.Tensor], anchor: list[torch.Tensor]) -> torch.Tensor:
    """Mean over taps of the mean over the batch of ||a/|a| - b/|b|||², each sample's tap flattened.

    We L2-normalise each sample's whole flattened feature, so every tap contributes a distance in [0, 4]
    whatever its width or resolution, and λ means the same for a CNN and a ViT. The paper's code instead
    normalises along dim 1 (the token axis of a ViT's residual stream) and takes a plain mean over all
    elements, which scales each tap's term by its size.

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


class AnchorCache:
    """The anchor's tap outputs for every training image of one task, computed once, looked up by index."""

    MEMORY_LIMIT = 2**30  # bytes of float32 taps kept in memory by `cache: auto`; larger goes to disk

    def __init__(self, taps: list, key: str, where: str, nbytes: int, seconds: float):
        self.taps, self.key, self.where, self.nbytes, self.seconds = taps, key, where, nbytes, seconds

    @classmethod
    def build(cls, anchor: FrozenBackbone, images: torch.Tensor, *, key: str, where: str, folder: Path | None,
              batch_size: int, device: torch.device) -> AnchorCache:
        began = time.perf_counter()
        n = len(images)
        # The anchor's inference form (BatchNorm folded into convolutions: 1.3x faster on CPU, taps equal
        # to ~1e-6 relative), built once per task. Its tap modules are those of the anchor, so the taps match.
        encoder = anchor.backbone.for_inference().eval()
        taps_of = lambda x: encoder.forward_with_taps(x)[1]  # noqa: E731
        with torch.inference_mode():
            probe = taps_of(anchor.backbone.preprocess(images[:1].to(device)))
        per_sample = sum(t[0].numel() for t in probe)
        # In memory: float32 on the CPU; float16 on the GPU itself when it fits in a quarter of its free
        # memory (no host copy per step), else float32 in host memory.
        on_gpu = device.type == "cuda" and n * per_sample * 2 <= torch.cuda.mem_get_info(device)[0] / 4
        dtype, home = (torch.float16, device) if on_gpu else (torch.float32, torch.device("cpu"))
        if where == "auto":
            where = "memory" if on_gpu or n * per_sample * 4 <= cls.MEMORY_LIMIT else "disk"
        if where == "disk":
            if folder is None:
                raise ValueError("ldifs cache: disk needs a scratch folder (the runner gives one)")
            folder.mkdir(parents=True, exist_ok=True)
            try:
                taps = [np.lib.format.open_memmap(folder / f"{key}-tap{i}.npy", mode="w+", dtype=np.float16,
                                                  shape=(n, *t.shape[1:])) for i, t in enumerate(probe)]
                for tap in taps:
                    _reserve(Path(tap.filename))
            except OSError as err:
                if full_disk(err):  # the runner removes the scratch folder
                    raise DiskFull(folder, err) from None
                raise
        else:
            taps = [torch.empty((n, *t.shape[1:]), dtype=dtype, device=home) for t in probe]
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x = anchor.backbone.preprocess(images[start : start + batch_size].to(device))
                for store, tap in zip(taps, taps_of(x)):
                    if isinstance(store, np.ndarray):
                        store[start : start + len(tap)] = tap.half().cpu().numpy()
                    else:
                        store[start : start + len(tap)] = tap.to(store.device, store.dtype)
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
        for path in paths:
            path.unlink(missing_ok=True)


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now. Its pages are otherwise written lazily, and a full disk
    then kills the process with SIGBUS, mid-step, with no message; reserved, it is ENOSPC up front."""
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate: lazily, then
            raise


def cache_key(anchor: FrozenBackbone, images: torch.Tensor) -> str:
    """What the cached taps depend on: the anchor's weights and tap layers, the exact training images
    (dataset, subset, resize) and the preprocessing."""
    digest = hashlib.sha256()
    digest.update(checkpoints.fingerprint(anchor.backbone).encode())
    digest.update(repr([name for name, _, _ in anchor.backbone._taps()]).encode())
    b = anchor.backbone
    digest.update(repr((b.image_size, b.pixel_mean.tolist(), b.pixel_std.tolist(), tuple(images.shape))).encode())
    if isinstance(images, torch.Tensor):
        digest.update(images.contiguous().numpy())  # buffer protocol: no copy
    else:  # an Images: where its rows come from and which (a store's key names every file it holds)
        digest.update(images.fingerprint().encode())
    return digest.hexdigest()[:16]


class LDIFS:
    def __init__(self, options: LDIFSOptions, *, pretrained: Backbone):
        self.options = options
        self.anchor = FrozenBackbone(pretrained)
        self.cache: AnchorCache | None = None  # None: the anchor runs on every batch
        self.said_per_step = False

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        if self.options.anchor == "previous" and step > 1:
            self.anchor = FrozenBackbone(model.backbone)
        extra = {"anchor_cache": self.options.cache}
        augment = getattr(trainer.training, "augment", "none")
        if augment != "none":
            extra = self.anchor_per_step(augment)
        elif self.options.cache != "off":
            key = cache_key(self.anchor, task.train.images)
            if self.cache is None or self.cache.key != key:
                if self.cache is not None:
                    self.cache.close()
                self.cache = AnchorCache.build(self.anchor, task.train.images, key=key, where=self.options.cache,
                                               folder=trainer.scratch, batch_size=trainer.training.eval_batch_size,
                                               device=trainer.device)
            extra = {"anchor_cache": self.cache.where, "anchor_cache_mb": round(self.cache.nbytes / 2**20, 1),
                     "anchor_cache_seconds": round(self.cache.seconds, 3)}
        stats = trainer.fit(model, task, loss_terms=self.loss_terms, label=f"ldifs {step}:{task.name}")
        stats.extra.update(extra)
        return stats

    def anchor_per_step(self, augment: str) -> dict:
        """With training.augment, the anchor's taps depend on each batch's draws, so no cache can hold them:
        the anchor runs on every augmented batch (the batch the model sees). Said once, and in metrics.json."""
        if self.options.cache in ("memory", "disk"):  # load_sequence refuses this; a Sequence built in Python may not
            raise ValueError(f"methods.ldifs.cache: {self.options.cache} cannot hold the anchor's features with "
                             f"training.augment: {augment}; use cache: auto (or off)")
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if not self.said_per_step:
            print(f"ldifs: training.augment is {augment}, so the anchor's features cannot be cached; the frozen "
                  f"anchor runs on every augmented batch (about 1.3-1.4x a fine-tuning step, README)", file=sys.stderr)
            self.said_per_step = True
        return {"anchor_cache": "off", "anchor_per_step": f"training.augment: {augment}"}

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        features, taps = model.backbone.forward_with_taps(batch.x)
        if self.cache is None:  # cache: off, or training.augment
            anchor = self.anchor.taps(batch.x)
        else:
            anchor = self.cache.lookup(batch.index, batch.x.device)
        return {
            "ce": F.cross_entropy(model.heads[batch.task](features), batch.y),
            "ldifs": self.options.lambda_ * feature_distance(taps, anchor),
        }
