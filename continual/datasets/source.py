"""What every source module hands to task assembly: class names and two pools of labelled images, and
`Images`, the read-by-row view of a selection that training and evaluation index like a tensor.

A pool is either an array already in memory at its native size (MNIST's idx files, Animal-MNIST,
digits), read by row and never copied, or images that must be decoded one by one (files, torchvision
datasets), which `store` decodes once into a file on disk and reads by row from there."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from continual.datasets.catalog import SPLIT_SEED, TEST_FRACTION


@dataclass(frozen=True)
class Pool:
    """One split of a dataset before selection: the label of every image, and either the images as an
    array in memory (`array`, rows `index` of it) or a way to decode one of them at a given size."""

    labels: np.ndarray  # int64 (N,)
    decode: Callable[[int, int], np.ndarray] | None = None  # (i, size) -> uint8 (3, size, size), resized
    native: int | None = None  # decoded images are all native x native (CIFAR, SVHN: 32): stored at that size
    array: np.ndarray | None = None  # uint8 (M, H, W) or (M, H, W, 3), in memory
    index: np.ndarray | None = None  # rows of `array` (None: all, in order)
    # Which of the source's images, in which order, when a pool is a subset (a fixed 80/20 split): part of
    # a store's key, since the labels alone cannot tell two subsets with the same counts per class apart.
    order: str = ""

    def subset(self, idx: np.ndarray) -> Pool:
        if self.array is not None:
            rows = idx if self.index is None else self.index[idx]
            return Pool(self.labels[idx], array=self.array, index=rows)
        order = hashlib.sha256(self.order.encode() + np.ascontiguousarray(idx, dtype=np.int64).tobytes()).hexdigest()
        return Pool(self.labels[idx], lambda i, size: self.decode(int(idx[i]), size), native=self.native, order=order)


@dataclass(frozen=True)
class Source:
    class_names: list[str]
    train: Pool
    test: Pool
    whole: Pool | None = None  # every image, before the fixed split, where the source made one (random_split)


def array_pool(images: np.ndarray, labels: np.ndarray) -> Pool:
    """images: uint8 (N, H, W) grayscale or (N, H, W, 3) RGB, all in memory: read at their own size."""
    return Pool(np.asarray(labels, dtype=np.int64), array=images)


def pil_pool(labels, get_image: Callable[[int], Image.Image], *, native: int | None = None) -> Pool:
    """Images decoded one at a time (files of different sizes): only the selected ones are ever read.
    `native`: the size every image has (e.g. 32 for EuroSAT's 64), so that a store keeps them at that
    size and the model's resize happens on the device."""
    def decode(i: int, size: int) -> np.ndarray:
        return pil_resize_crop(get_image(i), size)
    return Pool(np.asarray(labels, dtype=np.int64), decode, native=native)


def pil_resize_crop(image: Image.Image, size: int) -> np.ndarray:
    """An image -> uint8 (3, size, size): shorter side to `size` with PIL's bilinear filter (antialiased
    when shrinking), centre crop, RGB. The backbone's resize on the device follows the same rule on
    tensors (they agree within one grey level); PIL is twice as fast per image as torch's antialiased
    interpolation (0.98 against 1.97 ms, 256 -> 224 px)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(rgb.crop((left, top, left + size, top + size))).transpose(2, 0, 1).copy()


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


def random_split(pool: Pool, *, train: float, seed: int) -> tuple[Pool, Pool]:
    """ZSCL's split (DataSpec.split): torch.utils.data.random_split(pool, [int(train * n), rest],
    generator=torch.Generator().manual_seed(seed)), which takes the first int(train * n) of
    torch.randperm(n, generator) to train and the rest to test. Each part in the pool's order."""
    n = len(pool.labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    k = int(train * n)
    return pool.subset(np.sort(order[:k])), pool.subset(np.sort(order[k:]))


# ---- a selection, read by row -----------------------------------------------------------------------

@dataclass(eq=False)
class Images:
    """uint8 images (N, 3, S, S) that stay where they live (an array in memory, a store on disk) and are
    read by row when indexed, so that a split of 100k images at 224 px costs no memory until a batch is
    read. Indexing (an int, a slice, an index tensor or array) returns a tensor, as a tensor would;
    `to(device)` copies the whole selection to a device in chunks. S is the stored size, which can
    differ from the model's: the backbone resizes each batch on its device."""

    read: Callable[[np.ndarray], np.ndarray]  # int64 rows, any order -> uint8 (k, 3, S, S)
    rows: np.ndarray  # int64: row of each image in what `read` reads
    image_size: int
    identity: Callable[[], str]  # what `read` reads from (a store's key, an array's digest)
    home: str = "memory"  # where the pixels are: "memory", or a store's folder
    dtype: torch.dtype = field(default=torch.uint8, init=False)
    device: torch.device = field(default=torch.device("cpu"), init=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), 3, self.image_size, self.image_size))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def nbytes(self) -> int:
        return len(self.rows) * 3 * self.image_size ** 2

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, tuple):  # images[rows, channels, ...]: the rows are read, the rest is a tensor's
            rows = self[key[0]]
            return rows[key[1:]] if rows.ndim == 3 else rows[(slice(None), *key[1:])]
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        if isinstance(key, slice):
            return self._take(self.rows[key])
        key = np.asarray(key)
        if key.dtype != bool:
            key = key.astype(np.int64)
        if key.ndim == 0:  # one image: (3, S, S)
            return self._take(self.rows[key][None])[0]
        return self._take(self.rows[key])

    def _take(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.read(rows))

    CHUNK = 4096  # images per copy in `to`: 600 MiB at 224 px, so a whole split never sits in host memory

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        out = torch.empty(tuple(self.shape), dtype=torch.uint8, device=device)
        for start in range(0, len(self), self.CHUNK):
            batch = self[start:start + self.CHUNK]
            out[start:start + len(batch)] = batch.pin_memory() if out.is_cuda else batch
        return out

    def fingerprint(self) -> str:
        """Which images, exactly: where they are read from and which rows (LDIFS keys its cache on it)."""
        digest = hashlib.sha256(self.identity().encode())
        digest.update(np.ascontiguousarray(self.rows, dtype=np.int64).tobytes())
        digest.update(str(self.image_size).encode())
        return digest.hexdigest()


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (k, 3, s, s) -> uint8 (k, 3, size, size): bilinear, antialiased when shrinking (as the backbone
    resizes a batch), rounded; the same tensor when already that size."""
    if images.shape[-1] == size:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                        antialias=images.shape[-1] > size, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def concatenated(parts: list, size: int) -> Images:
    """Several splits' images (tensors or Images) one after the other as one Images read by row, each image
    at `size` (resized where kept at another): a batch can mix them (joint training over every task)."""
    bounds = np.cumsum([0] + [len(part) for part in parts])

    def read(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), 3, size, size), dtype=np.uint8)
        part_of = np.searchsorted(bounds, rows, side="right") - 1
        for k, part in enumerate(parts):
            mine = part_of == k
            if mine.any():
                out[mine] = resize_uint8(part[torch.from_numpy(rows[mine] - bounds[k])], size).numpy()
        return out

    def identity() -> str:
        names = [part.fingerprint() if isinstance(part, Images) else hashlib.sha256(part.contiguous().numpy()).hexdigest()
                 for part in parts]
        return hashlib.sha256(repr((names, size)).encode()).hexdigest()

    return Images(read=read, rows=np.arange(bounds[-1], dtype=np.int64), image_size=size, identity=identity)


def array_images(pool: Pool, picked: np.ndarray) -> Images:
    """An Images over rows of an in-memory array pool, at the array's own size (centre-cropped square)."""
    array = pool.array
    rows = picked if pool.index is None else pool.index[picked]
    h, w = array.shape[1:3]
    size, top, left = min(h, w), (h - min(h, w)) // 2, (w - min(h, w)) // 2

    def read(sel: np.ndarray) -> np.ndarray:
        batch = array[sel, top:top + size, left:left + size]
        if batch.ndim == 3:  # grayscale: 3 identical channels
            return np.repeat(batch[:, None], 3, axis=1)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    digest: list[str] = []

    def identity() -> str:  # hashed once, when asked (a 47 MB array takes 0.1 s)
        if not digest:
            digest.append("array:" + hashlib.sha256(np.ascontiguousarray(array)).hexdigest())
        return digest[0]

    return Images(read, np.asarray(rows, dtype=np.int64), size, identity)
