"""A task or probe spec -> tensors: the one path from (dataset, classes, per-class caps) to images.

The selected classes are relabelled 0..k-1 in spec order, at most `*_per_class` images per class are
chosen by a seeded generator, and the split's images are an `Images`: read by row when a batch needs
them, from the array a source holds in memory or from the dataset's store on disk (`store`), where the
selected images are decoded and resized once, the first time any run needs them. Source modules only
say what the labels are and how to decode one image; selection and storing are shared here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from continual import seeds
from continual.datasets import store
from continual.datasets.catalog import DataError, check_two_classes, info, resolve_classes
from continual.datasets.source import Images, Pool, Source, array_images, random_split


@dataclass(frozen=True)
class Split:
    images: Images | torch.Tensor  # uint8 (N, 3, S, S), S the stored size (the backbone resizes to its own)
    labels: torch.Tensor  # int64, (N,), 0..len(class_names)-1 in the order of the spec's classes


@dataclass(frozen=True)
class TaskData:
    """Cached and shared between methods of a run: treat the tensors as read-only."""

    name: str
    dataset: str
    class_names: list[str]  # selected classes, in label order (CLIP zero-shot prompts use them)
    train: Split
    test: Split


@lru_cache(maxsize=4)  # a sequence often has several tasks on one dataset (split MNIST): read it once
def load_source(dataset: str, path: Path | None, data_root: Path, download: bool) -> Source:
    module = importlib.import_module(f"continual.datasets.{info(dataset).source}")
    return module.load(dataset, path=path, data_root=data_root, download=download)


def clear_cache() -> None:
    """Forget loaded datasets and tasks (frees memory; tests use it after changing files)."""
    load_source.cache_clear()
    _TASKS.clear()
    _DECODED.clear()
    _IDENTITY.clear()
    _STORES.clear()  # each closes its file when the last split reading it goes


def dataset_class_names(dataset: str, *, path: Path | None, data_root: Path) -> list[str]:
    """All class names of a dataset: the static list when known, else read from the files."""
    names = info(dataset).class_names
    if names is not None:
        return list(names)
    return list(load_source(dataset, _path(path), Path(data_root), False).class_names)


_TASKS: dict[tuple, TaskData] = {}  # (name, data key) -> task, so a rerun of a spec is the same object
_DECODED: dict[tuple, tuple[list[str], Split, Split]] = {}  # data key -> splits, shared across names
_IDENTITY: dict[Path, str] = {}  # a dataset's folder -> store.source_identity, once per process
_STORES: dict[Path, store.Store] = {}  # a store's folder -> the open store


def load_task(spec, *, image_size: int, data_root: Path, seed: int, download: bool = False) -> TaskData:
    """Select, cap, decode and resize the images of one task or probe spec (see the module docstring).
    The same arguments return the same cached object, so methods of one run share the tensors."""
    path = _path(spec.path) if spec.dataset == "imagefolder" else None
    data_root = Path(data_root)
    classes = None if spec.classes is None else tuple(spec.classes)
    split = getattr(spec, "split", None)  # DataSpec.split: None, or ZSCL's random split
    shuffled = None if split is None else (split.random, split.seed)
    key = (spec.dataset, path, data_root, classes, spec.train_per_class, spec.test_per_class, seed, image_size, shuffled)
    if key not in _DECODED:
        source = load_source(spec.dataset, path, data_root, download)
        if split is not None:
            if source.whole is None:  # the schema allows it only for catalog.RANDOM_SPLIT, whose sources keep it
                raise DataError("split", f"{spec.dataset} has a test split of its own; a random split is for "
                                         "datasets that ship none")
            train_pool, test_pool = random_split(source.whole, train=split.random, seed=split.seed)
            source = Source(source.class_names, train_pool, test_pool, whole=source.whole)
        chosen = resolve_classes(spec.classes, source.class_names, dataset=spec.dataset)
        check_two_classes(spec, path, [source.class_names[c] for c in chosen])
        where = _Where(spec.dataset, path if path is not None else data_root / spec.dataset, data_root)
        train, test = (_select(pool, chosen, cap=cap, image_size=image_size, seed=seed, where=where, split=split)
                       for split, pool, cap in [("train", source.train, spec.train_per_class),
                                                ("test", source.test, spec.test_per_class)])
        _DECODED[key] = ([source.class_names[c] for c in chosen], train, test)
    if (spec.name, key) not in _TASKS:
        _TASKS[(spec.name, key)] = TaskData(spec.name, spec.dataset, *_DECODED[key])
    return _TASKS[(spec.name, key)]


def _path(path) -> Path | None:
    return None if path is None else Path(path).expanduser()


@dataclass(frozen=True)
class _Where:
    dataset: str
    files: Path  # the dataset's files: the store's key covers every one of them
    data_root: Path  # stores live under it


def _select(pool: Pool, chosen: list[int], *, cap: int | None, image_size: int, seed: int, where: _Where,
            split: str) -> Split:
    """Up to `cap` images of each chosen class, relabelled by position in `chosen`. Each class draws
    from its own stream (run seed, dataset, split, class), so its images do not depend on which other
    classes or tasks there are."""
    picked, labels = [], []
    for new_label, c in enumerate(chosen):
        idx = np.flatnonzero(pool.labels == c)
        if cap is not None and cap < len(idx):
            idx = np.sort(seeds.generator(seed, "data", where.dataset, split, c).choice(idx, size=cap, replace=False))
        picked.append(idx)
        labels.append(np.full(len(idx), new_label, dtype=np.int64))
    rows = np.concatenate(picked).astype(np.int64)
    return Split(_images(pool, rows, image_size=image_size, where=where, split=split),
                 torch.from_numpy(np.concatenate(labels)))


def _images(pool: Pool, rows: np.ndarray, *, image_size: int, where: _Where, split: str) -> Images:
    """The selected rows, read from memory (an array pool, at its own size) or from the pool's store,
    where those not stored yet are decoded now. A store keeps images at the model's size, or at their
    own when every image has it and it is smaller (CIFAR's 32 px feeds a 224 px model, resized on the device)."""
    if pool.array is not None:
        return array_images(pool, rows)
    size = min(pool.native, image_size) if pool.native else image_size
    if where.files not in _IDENTITY:
        _IDENTITY[where.files] = store.source_identity(where.files)
    key = store.key_for(where.dataset, split, size, source=_IDENTITY[where.files], labels=pool.labels,
                        order=pool.order, files=str(where.files))
    folder = store.store_root(where.data_root) / key.folder_name
    if folder not in _STORES:  # one open store (one file descriptor, one reader pool) per folder
        _STORES[folder] = store.Store.open(where.data_root, key, len(pool.labels))
    opened = _STORES[folder]
    opened.ensure(rows, pool.decode)
    return Images(opened.read, rows, size, lambda: key.folder_name, home=str(opened.folder))
