"""Folders of class folders: the user's `imagefolder` (path/<class>/* or path/{train,test}/<class>/*)
and RESISC45 as unpacked under data_root."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from continual.datasets.catalog import IMG_EXTENSIONS, DataError, class_folders, resisc45_dir
from continual.datasets.source import Pool, Source, pil_pool, split_fixed


def _folder_pool(folder: Path, class_names: list[str], *, key: str, every_class: bool) -> Pool:
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
    return pil_pool(labels, read)


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
        return Source(names, *split_fixed(train))
    extra = sorted(set(class_folders(test_dir)) - set(names))
    if extra:
        raise DataError(key, f"{test_dir} has class folders missing from {train_dir}: {', '.join(extra)}")
    return Source(names, train, _folder_pool(test_dir, names, key=key, every_class=False))


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
