"""torchvision's datasets under <data_root>/<name> (catalog.TORCHVISION says which class, which split
argument, and which file shows they are there), downloaded by torchvision when the sequence allows."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from continual.datasets.catalog import DATASETS, TORCHVISION, DataError
from continual.datasets.source import Pool, Source, array_pool, pil_pool, split_fixed
from continual.network import reachable as _reachable  # tests stand in for the network here


# Datasets torchvision can no longer download: what to fetch by hand and where torchvision looks for it.
BY_HAND = {
    "stanford_cars": "torchvision cannot download it (its original URL is gone): fetch Stanford Cars by hand (e.g. "
                     "a Kaggle mirror with the devkit) and unpack into {base}: devkit/ (cars_meta.mat, "
                     "cars_train_annos.mat), cars_train/, cars_test/ and cars_test_annos_withlabels.mat",
}

# Datasets of files whose images all have one size: stored at it (when smaller than the model's) and resized
# on the device, instead of stored at the model's size (EuroSAT at 224 px would take 12x the disk).
NATIVE_SIZE = {"eurosat": 64}

# Where torchvision downloads each dataset from (a test checks each host is in the class's source). With
# `download: true` and the files absent, the host is tried first for a few seconds: torchvision's urlopen
# has no timeout, so a network that drops packets would otherwise hang the run before it starts.
DOWNLOAD_URLS = {
    "cifar10": "https://www.cs.toronto.edu",
    "cifar100": "https://www.cs.toronto.edu",
    "svhn": "http://ufldl.stanford.edu",
    "dtd": "https://www.robots.ox.ac.uk",
    "eurosat": "https://huggingface.co",
    "gtsrb": "https://sid.erda.dk",
    "flowers102": "https://www.robots.ox.ac.uk",
    "food101": "http://data.vision.ee.ethz.ch",
    "fgvc_aircraft": "https://www.robots.ox.ac.uk",
    "caltech101": "https://data.caltech.edu",
    "oxford_pets": "https://www.robots.ox.ac.uk",
    "sun397": "http://vision.princeton.edu",
}


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    import torchvision.datasets  # here, not at the top: only these datasets need it

    spec = TORCHVISION[dataset]
    root = data_root / dataset
    if download and dataset in DOWNLOAD_URLS and not (root / spec.marker).exists():
        url = DOWNLOAD_URLS[dataset]
        if not _reachable(url):
            raise DataError("dataset", f"{dataset} not found under {root} and `download: true` cannot fetch it: "
                                       f"{urlparse(url).hostname} cannot be reached from this machine; download it "
                                       f"where there is network and copy the folder to {root} (so that "
                                       f"{root / spec.marker} exists)")

    def make(split: str):
        if spec.split_arg == "train":
            kwargs = {"train": split == "train"}
        elif spec.split_arg is None:
            kwargs = {}
        else:  # split="train"/"test", or "trainval"/"test"
            kwargs = {"split": "trainval" if spec.split_arg == "trainval" and split == "train" else split}
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
        if dataset == "sun397":  # listed by rglob, in the file system's order: sort, so the 80/20 split is fixed
            order = sorted(range(len(ds._image_files)), key=lambda i: ds._image_files[i])
            ds._image_files, ds._labels = [ds._image_files[i] for i in order], [ds._labels[i] for i in order]
        data = getattr(ds, "data", None)
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4:
            # CIFAR (N, 32, 32, 3) and SVHN (N, 3, 32, 32) come as one array: read by row at 32 px, never
            # decoded or stored (the model's resize happens on the device)
            labels = np.asarray(ds.targets if hasattr(ds, "targets") else ds.labels)
            return array_pool(data if data.shape[-1] == 3 else data.transpose(0, 2, 3, 1), labels)
        native = NATIVE_SIZE.get(dataset)
        for attr in ("targets", "labels", "_labels", "y"):  # y: Caltech101
            if hasattr(ds, attr):
                return pil_pool(np.asarray(getattr(ds, attr)), lambda i: ds[i][0], native=native)
        return pil_pool([label for _, label in ds._samples], lambda i: ds[i][0], native=native)

    train = make("train")
    whole = pool(train) if spec.split_arg is None else None  # no test split: the fixed one, or a task's random one
    train_pool, test_pool = split_fixed(whole) if whole is not None else (pool(train), pool(make("test")))
    names = (DATASETS[dataset].class_names or getattr(train, "classes", None) or getattr(train, "categories", None)
             or [str(c) for c in range(train_pool.labels.max() + 1)])
    return Source(list(names), train_pool, test_pool, whole=whole)


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
