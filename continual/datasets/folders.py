"""Folders of class folders: the user's `imagefolder` (path/<class>/* or path/{train,test}/<class>/*)
and RESISC45 as unpacked under data_root."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from continual.datasets.catalog import (FOLDER_EXTENSIONS as EXTENSIONS, MIN_TO_SPLIT, TEST_FRACTION, DataError,
                                       class_folders, image_files, resisc45_dir)
from continual.datasets.source import Pool, Source, pil_pool, split_fixed

# Which files are images (EXTENSIONS: torchvision's list plus GIF, whose first frame PIL reads; hidden files
# such as .DS_Store and macOS's ._x.jpg skipped) and MIN_TO_SPLIT come from the catalog, which `continual
# validate` checks folders with, so that validate and run see the same images.
# PIL's own limit, Image.MAX_IMAGE_PIXELS (9459 x 9459, 256 MiB as RGB), made a refusal where PIL only warns
# up to twice that: every image is shrunk to the model's input (224 px for the shipped models), so a larger
# one (a 48-megapixel phone photo is not) is a raw export at best and a decompression bomb at worst: a few KB
# of PNG that declares 20000 x 20000 pixels and takes minutes and gigabytes to decode.
MAX_PIXELS = 89_478_485


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB. 16-bit grayscale (PNG, TIFF) is scaled: PIL's convert clips it at 255, so
    every pixel above 255 of 65535 would turn white."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257
        img = Image.fromarray(np.round(pixels).astype(np.uint8))
    return img.convert("RGB")


def read_image(path: Path, *, key: str) -> Image.Image:
    """The image at `path` as RGB, or a DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the file named
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise DataError(key, f"image {path} is {img.width} x {img.height} pixels, more than the "
                                         f"{MAX_PIXELS:,} read here (a decompression bomb?); shrink or remove it")
                return to_rgb(img)
    except Image.DecompressionBombError as err:  # PIL's own refusal, above twice its limit: its message has the size
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "larger"
        raise DataError(key, f"image {path} is {size}, more than the {MAX_PIXELS:,} read here "
                             "(a decompression bomb?); shrink or remove it") from err
    except DataError:
        raise
    except Exception as err:  # PIL's plugins raise OSError, ValueError, SyntaxError, struct.error, ...
        raise DataError(key, f"cannot read image {path}: {' '.join(str(err).split()) or type(err).__name__}") from err


def _image_files(folder: Path) -> list[Path]:
    return sorted(image_files(folder))


def _folder_pool(folder: Path, class_names: list[str], *, key: str, every_class: bool) -> Pool:
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = _image_files(folder / name) if (folder / name).is_dir() else []
        if every_class and not found:
            raise DataError(key, f"no images ({', '.join(EXTENSIONS)}) in {folder / name}")
        files += found
        labels += [label] * len(found)
    return pil_pool(labels, lambda i: read_image(files[i], key=key))


def folder_source(folder: Path, *, key: str) -> Source:
    """folder/train/<class>/* and folder/test/<class>/*, or folder/<class>/* (fixed 80/20 split)."""
    train_dir, test_dir = folder / "train", folder / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        raise DataError(key, f"{folder} has only one of train/ and test/; give both, or only class folders")
    top = train_dir if train_dir.is_dir() else folder
    names = class_folders(top)
    if not names:
        raise DataError(key, f"no class folders in {top}: expected one sub-folder of images per class")
    train = _folder_pool(top, names, key=key, every_class=True)
    if top is folder:
        counts = np.bincount(train.labels, minlength=len(names))
        few = [(names[c], counts[c]) for c in np.flatnonzero(counts < MIN_TO_SPLIT)]
        if few:
            listed = [f"{folder / few[0][0]} has {few[0][1]} image{'s' if few[0][1] != 1 else ''}"]
            listed += [f"{name} has {n}" for name, n in few[1:5]] + (["..."] if len(few) > 5 else [])
            raise DataError(key, f"{', '.join(listed)}: a class needs at least {MIN_TO_SPLIT} images for "
                                 f"{TEST_FRACTION:.0%} of them to be split off as its test set; add images, or "
                                 f"give {folder / 'train'}/ and {folder / 'test'}/")
        return Source(names, *split_fixed(train))
    extra = sorted(set(class_folders(test_dir)) - set(names))
    if extra:
        raise DataError(key, f"{test_dir} has class folders missing from {train_dir}: {', '.join(extra)}")
    test = _folder_pool(test_dir, names, key=key, every_class=False)
    missing = [names[c] for c in np.flatnonzero(np.bincount(test.labels, minlength=len(names)) == 0)]
    if missing:
        raise DataError(key, f"{test_dir} has no images of {len(missing)} of the {len(names)} classes in "
                             f"{train_dir}: {', '.join(missing)}; every class needs test images (or give only "
                             "class folders, split 80/20)")
    return Source(names, train, test)


def _imagefolder(*, path, data_root, download):
    if path is None:
        raise DataError("path", "dataset imagefolder needs `path`: a folder of class folders")
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    if not path.is_dir():
        raise DataError("path", f"{path} is a file; expected a folder of class folders (or train/ and test/)")
    return folder_source(path, key="path")


def _resisc45(*, path, data_root, download):
    folder = resisc45_dir(data_root)
    if not folder.is_dir() or not class_folders(folder):
        raise DataError("dataset", f"resisc45 not found under {data_root / 'resisc45'}: it cannot be downloaded "
                                   "automatically; unpack NWPU-RESISC45 there so that "
                                   f"{data_root / 'resisc45' / 'NWPU-RESISC45'}/<class>/*.jpg exist")
    return folder_source(folder, key="dataset")


LOADERS = {"imagefolder": _imagefolder, "resisc45": _resisc45}


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    return LOADERS[dataset](path=path, data_root=data_root, download=download)
