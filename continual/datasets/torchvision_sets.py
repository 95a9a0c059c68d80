"""torchvision's datasets under <data_root>/<name> (catalog.TORCHVISION says which class, which split
argument, and which file shows they are there), downloaded by torchvision when the sequence allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from continual.datasets.catalog import DATASETS, TORCHVISION, DataError
from continual.datasets.source import Pool, Source, pil_pool, split_fixed


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    import torchvision.datasets  # here, not at the top: only these datasets need it

    spec = TORCHVISION[dataset]
    root = data_root / dataset

    def make(split: str):
        kwargs = {"train": {"train": split == "train"}, "split": {"split": split}, None: {}}[spec.split_arg]
        try:
            return getattr(torchvision.datasets, spec.cls_name)(root, download=download, **kwargs)
        except Exception as err:  # missing files or no network: a data problem, not a traceback
            how = "the download failed" if download else "set `download: true` or place the files there"
            raise DataError("dataset", f"{dataset} not found under {root} (expected {root / spec.marker}); "
                                       f"{how} (torchvision: {err})") from err

    def pool(ds) -> Pool:
        # Labels from the dataset's own list, so that only the selected images are ever decoded.
        for attr in ("targets", "labels", "_labels"):
            if hasattr(ds, attr):
                return pil_pool(np.asarray(getattr(ds, attr)), lambda i: ds[i][0])
        return pil_pool([label for _, label in ds._samples], lambda i: ds[i][0])

    train = make("train")
    train_pool, test_pool = split_fixed(pool(train)) if spec.split_arg is None else (pool(train), pool(make("test")))
    names = (DATASETS[dataset].class_names or getattr(train, "classes", None)
             or [str(c) for c in range(train_pool.labels.max() + 1)])
    return Source(list(names), train_pool, test_pool)
