"""torchvision's datasets under <data_root>/<name> (catalog.TORCHVISION says which class, which split
argument, and which file shows they are there), downloaded by torchvision when the sequence allows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from continual.datasets.catalog import DATASETS, TORCHVISION, DataError
from continual.datasets.source import Pool, Source, pil_pool, split_fixed


# Datasets torchvision can no longer download: what to fetch by hand and where torchvision looks for it.
BY_HAND = {
    "stanford_cars": "torchvision cannot download it (its original URL is gone): fetch Stanford Cars by hand (e.g. "
                     "a Kaggle mirror with the devkit) and unpack into {base}: devkit/ (cars_meta.mat, "
                     "cars_train_annos.mat), cars_train/, cars_test/ and cars_test_annos_withlabels.mat",
}


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    import torchvision.datasets  # here, not at the top: only these datasets need it

    spec = TORCHVISION[dataset]
    root = data_root / dataset

    def make(split: str):
        kwargs = {"train": {"train": split == "train"}, "split": {"split": split}, None: {}}[spec.split_arg]
        cls = getattr(torchvision.datasets, spec.cls_name)
        try:
            return cls(root, download=download, **kwargs)
        except Exception as err:  # missing or damaged files, no network: a data problem, not a traceback
            # torchvision says "not found or corrupted" either way; tell the two apart.
            bad = _failing_checksums(cls, root)
            if bad:
                target = bad[0] if len(bad) == 1 else Path(os.path.commonpath(bad))
                names = ", ".join(p.name for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                fail = "fails" if len(bad) == 1 else "fail"
                raise DataError("dataset", f"{dataset}: {names} under {root} {fail} torchvision's MD5 check "
                                           f"(checksum mismatch: a partial download?); delete {target} and run again"
                                           f"{'' if download else ' with `download: true`'}") from err
            if dataset in BY_HAND:
                base = root / spec.marker.split("/")[0]
                raise DataError("dataset", f"{dataset} not found under {root}; "
                                           f"{BY_HAND[dataset].format(base=base)}") from err
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


def _failing_checksums(cls, root: Path) -> list[Path]:
    """Files of a torchvision dataset class that are present but fail its MD5 check. Where it keeps them
    and their sums are read from the class: CIFAR's batches and archive, SVHN's .mat files, Flowers102's
    .mat files and archive (the others only check that their folders exist)."""
    from torchvision.datasets.utils import check_md5

    if hasattr(cls, "train_list"):  # CIFAR10, CIFAR100
        folder = root / cls.base_folder
        expected = [(folder / name, md5) for name, md5 in cls.train_list + cls.test_list]
        expected += [(folder / cls.meta["filename"], cls.meta["md5"]), (root / cls.filename, cls.tgz_md5)]
    elif hasattr(cls, "split_list"):  # SVHN: split -> (url, file, md5)
        expected = [(root / name, md5) for _, name, md5 in cls.split_list.values()]
    elif hasattr(cls, "_file_dict"):  # Flowers102: what -> (file, md5)
        expected = [(root / "flowers-102" / name, md5) for name, md5 in cls._file_dict.values()]
    else:
        expected = []
    return [path for path, md5 in expected if path.is_file() and not check_md5(path, md5)]
