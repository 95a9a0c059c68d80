"""Folders of class folders: the user's `imagefolder` (path/<class>/* or path/{train,test}/<class>/*),
and RESISC45, ImageNet-R and ImageNet as unpacked under data_root (none of them is downloaded here)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from continual.datasets.catalog import (FOLDER_EXTENSIONS, DataError, class_folders, folder_classes, has_class_folders,
                                        imagenet_r_dir, resisc45_dir)
from continual.datasets.source import Pool, Source, pil_pool, split_fixed

# Which files are images (torchvision's extensions plus GIF, whose first frame PIL reads; hidden files such
# as .DS_Store and macOS's ._x.jpg skipped) and the layout's rules come from the catalog, which `continual
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
    """catalog.image_files, sorted: the same files (by extension, hidden ones skipped, links followed),
    listed with os.scandir (a file's type comes with its name: no stat each), sorted on strings:
    pathlib's rglob, relative_to and Path comparisons took 9 of the 16 s a warm start spent on 100k images."""
    found, stack = [], [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in FOLDER_EXTENSIONS and entry.is_file():
                    found.append(entry.path)
    # In pathlib's order (by path component), as before: a store's rows follow this order, and its key
    # (store.FORMAT) must change with it.
    return [Path(f) for f in sorted(found, key=lambda f: f.split(os.sep))]


def _folder_pool(folder: Path, class_names: list[str], *, key: str) -> Pool:
    files, labels = [], []
    for label, name in enumerate(class_names):
        found = _image_files(folder / name)
        files += found
        labels += [label] * len(found)
    return pil_pool(labels, lambda i: read_image(files[i], key=key))


def folder_source(folder: Path, *, key: str) -> Source:
    """folder/train/<class>/* and folder/test/<class>/*, or folder/<class>/* (fixed 80/20 split). The
    layout is checked by the catalog's `folder_classes`, from file names, as `continual validate` does."""
    names = folder_classes(folder, key=key)
    if not (folder / "train").is_dir():
        return Source(names, *split_fixed(_folder_pool(folder, names, key=key)))
    return Source(names, _folder_pool(folder / "train", names, key=key), _folder_pool(folder / "test", names, key=key))


def _imagefolder(*, path, data_root, download):
    if path is None:
        raise DataError("path", "dataset imagefolder needs `path`: a folder of class folders")
    if not path.exists():
        raise DataError("path", f"{path} does not exist")
    if not path.is_dir():
        raise DataError("path", f"{path} is a file; expected a folder of class folders (or train/ and test/)")
    return folder_source(path, key="path")


def _unpacked(dataset: str, folder: Path, *, data_root: Path, what: str, inner: str, files: str) -> Source:
    """A dataset unpacked by hand under data_root/<dataset> (flat class folders: fixed 80/20 split)."""
    if not has_class_folders(folder):
        raise DataError("dataset", f"{dataset} not found under {data_root / dataset}: it cannot be downloaded "
                                   f"automatically; unpack {what} there so that "
                                   f"{data_root / dataset / inner}/{files} exist")
    return folder_source(folder, key="dataset")


def _resisc45(*, path, data_root, download):
    return _unpacked("resisc45", resisc45_dir(data_root), data_root=data_root, what="NWPU-RESISC45",
                     inner="NWPU-RESISC45", files="<class>/*.jpg")


def _imagenet_r(*, path, data_root, download):
    return _unpacked("imagenet_r", imagenet_r_dir(data_root), data_root=data_root,
                     what="imagenet-r.tar (https://github.com/hendrycks/imagenet-r)", inner="imagenet-r",
                     files="<wnid>/*.jpg")


def _imagenet(*, path, data_root, download):
    """ImageNet as the user extracted it: train/<wnid>/ and val/<wnid>/ (val is the test split). Never
    downloaded (its licence asks for a sign-up), and kept under data_root/imagenet like every dataset."""
    root = data_root / "imagenet"
    train, val = root / "train", root / "val"
    if not (has_class_folders(train) and has_class_folders(val)):
        raise DataError("dataset", f"imagenet not found under {root}: it is never downloaded; extract ILSVRC 2012 "
                                   f"there (or link your copy's folders) so that {train}/<wnid>/*.JPEG and "
                                   f"{val}/<wnid>/*.JPEG exist, the validation images sorted into class folders")
    names = class_folders(train)
    val_names = set(class_folders(val))
    extra, missing = sorted(val_names - set(names)), [name for name in names if name not in val_names]
    if extra:
        raise DataError("dataset", f"{val} has class folders missing from {train}: {_some(extra)}")
    if missing:
        raise DataError("dataset", f"{val} lacks {len(missing)} of the {len(names)} classes in {train}: "
                                   f"{_some(missing)}; every class needs validation images")
    return Source(names, _folder_pool(train, names, key="dataset"), _folder_pool(val, names, key="dataset"))


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


LOADERS = {"imagefolder": _imagefolder, "resisc45": _resisc45, "imagenet_r": _imagenet_r, "imagenet": _imagenet}


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    return LOADERS[dataset](path=path, data_root=data_root, download=download)
