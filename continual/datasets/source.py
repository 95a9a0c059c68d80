"""What every source module hands to task assembly: class names and two pools of labelled images that
can decode any subset of themselves, resized once to uint8 (n, 3, S, S)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from continual.datasets.catalog import SPLIT_SEED, TEST_FRACTION


@dataclass(frozen=True)
class Pool:
    """One split of a dataset before selection: the label of every image, and a way to decode some."""

    labels: np.ndarray  # int64 (N,)
    decode: Callable[[np.ndarray, int], torch.Tensor]  # (indices, size) -> uint8 (n, 3, size, size)

    def subset(self, idx: np.ndarray) -> Pool:
        return Pool(self.labels[idx], lambda sel, size: self.decode(idx[sel], size))


@dataclass(frozen=True)
class Source:
    class_names: list[str]
    train: Pool
    test: Pool


def resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (n, C, h, w), C in {1, 3} -> uint8 (n, 3, size, size): shorter side to `size`
    (antialiased bilinear), centre crop, grayscale replicated to 3 channels."""
    n, _, h, w = images.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    chunks = []
    for chunk in images.split(1024):  # bounds the float copy for big arrays (60k MNIST digits)
        if (new_h, new_w) != (h, w):
            chunk = F.interpolate(chunk.float(), size=(new_h, new_w), mode="bilinear", antialias=True)
            chunk = chunk.round_().clamp_(0, 255).to(torch.uint8)
        chunks.append(chunk[..., top:top + size, left:left + size])
    out = torch.cat(chunks) if n else images.new_empty((0, images.shape[1], size, size))
    return out.expand(-1, 3, -1, -1).contiguous() if out.shape[1] == 1 else out.contiguous()


def array_pool(images: np.ndarray, labels: np.ndarray) -> Pool:
    """images: uint8 (N, H, W) grayscale or (N, H, W, 3) RGB, all in memory."""
    def decode(idx, size):
        batch = torch.from_numpy(np.ascontiguousarray(images[idx]))
        batch = batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
        return resize_crop(batch, size)
    return Pool(np.asarray(labels, dtype=np.int64), decode)


def pil_pool(labels, get_image: Callable[[int], Image.Image]) -> Pool:
    """Images decoded one at a time (files of different sizes): only the selected ones are read."""
    def decode(idx, size):
        out = torch.empty((len(idx), 3, size, size), dtype=torch.uint8)
        for row, i in enumerate(idx.tolist()):
            rgb = torch.from_numpy(np.array(get_image(i).convert("RGB")))
            out[row] = resize_crop(rgb.permute(2, 0, 1)[None], size)[0]
        return out
    return Pool(np.asarray(labels, dtype=np.int64), decode)


def fixed_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, TEST_FRACTION of each class to test, drawn with SPLIT_SEED."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * TEST_FRACTION)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_fixed(pool: Pool) -> tuple[Pool, Pool]:
    train, test = fixed_split(pool.labels)
    return pool.subset(train), pool.subset(test)
