"""Datasets whose classes and splits are listed in text files beside the images, as their archives unpack
under data_root: Tiny-ImageNet (wnids.txt, val/val_annotations.txt) and CUB-200-2011 (classes.txt,
images.txt, image_class_labels.txt, train_test_split.txt). Neither is downloaded here."""

from __future__ import annotations

from pathlib import Path

from continual.datasets.catalog import DataError, cub200_dir, image_files, tiny_imagenet_dir
from continual.datasets.folders import read_image
from continual.datasets.source import Pool, Source, pil_pool


def _files_pool(files: list[Path], labels: list[int]) -> Pool:
    return pil_pool(labels, lambda i: read_image(files[i], key="dataset"))


def _rows(path: Path, *, fields: int) -> list[list[str]]:
    """The whitespace-separated rows of a listing (blank lines skipped), each with at least `fields`
    fields, or a DataError naming the file and the line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError("dataset", f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = line.split()
        if len(row) < fields:
            raise DataError("dataset", f"{path}, line {number}: expected {fields} fields, got {line.strip()!r}")
        rows.append(row)
    return rows


def _missing(dataset: str, data_root: Path, *, archive: str, inner: str, files: str) -> DataError:
    return DataError("dataset", f"{dataset} not found under {data_root / dataset}: it cannot be downloaded "
                                f"automatically; unpack {archive} there so that "
                                f"{data_root / dataset / inner}/{files} exist")


def _tiny_imagenet(data_root: Path) -> Source:
    """tiny-imagenet-200/: wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG labelled by
    val/val_annotations.txt (file, wnid, box). Val is the test split (the test images have no labels).
    Classes: the WordNet ids, sorted (as torchvision's ImageFolder orders train/)."""
    root = tiny_imagenet_dir(data_root)
    if not (root / "wnids.txt").is_file():
        raise _missing("tiny_imagenet", data_root, archive="tiny-imagenet-200.zip", inner="tiny-imagenet-200",
                       files="wnids.txt, train/<wnid>/images/ and val/")
    names = sorted({row[0] for row in _rows(root / "wnids.txt", fields=1)})
    index = {name: i for i, name in enumerate(names)}
    train_files, train_labels = [], []
    for name in names:
        found = sorted(image_files(root / "train" / name))
        if not found:
            raise DataError("dataset", f"no training images of {name} (listed in {root / 'wnids.txt'}) in "
                                       f"{root / 'train' / name}")
        train_files += found
        train_labels += [index[name]] * len(found)
    listing = root / "val" / "val_annotations.txt"
    if not listing.is_file():
        raise DataError("dataset", f"{listing} is missing: tiny_imagenet's test split is val/, labelled by it")
    test_files, test_labels = [], []
    for file, wnid, *_ in _rows(listing, fields=2):
        if wnid not in index:
            raise DataError("dataset", f"{listing}: {file} is labelled {wnid}, which is not in "
                                       f"{root / 'wnids.txt'}")
        test_files.append(root / "val" / "images" / file)
        test_labels.append(index[wnid])
    return Source(names, _files_pool(train_files, train_labels), _files_pool(test_files, test_labels))


def _cub200(data_root: Path) -> Source:
    """CUB_200_2011/: classes.txt (id, 001.Black_footed_Albatross), images.txt (id, path under images/),
    image_class_labels.txt (id, class id), train_test_split.txt (id, 1 = train): the dataset's own split.
    Class names: the folder names without their number, `_` as a space (Black footed Albatross)."""
    root = cub200_dir(data_root)
    if not (root / "images.txt").is_file():
        raise _missing("cub200", data_root, archive="CUB_200_2011.tgz", inner="CUB_200_2011",
                       files="images.txt, classes.txt, image_class_labels.txt, train_test_split.txt and images/")
    classes = _rows(root / "classes.txt", fields=2)
    names = [row[1].split(".", 1)[-1].replace("_", " ") for row in classes]
    label_of_class = {row[0]: i for i, row in enumerate(classes)}
    tables = {listing: {row[0]: row[1] for row in _rows(root / listing, fields=2)}
              for listing in ("image_class_labels.txt", "train_test_split.txt")}
    labels, in_train = tables.values()
    split: dict[str, tuple[list[Path], list[int]]] = {"1": ([], []), "0": ([], [])}
    for image_id, file, *_ in _rows(root / "images.txt", fields=2):
        for listing, table in tables.items():
            if image_id not in table:
                raise DataError("dataset", f"{root / listing} has no line for image {image_id} of "
                                           f"{root / 'images.txt'}")
        if labels[image_id] not in label_of_class:
            raise DataError("dataset", f"{root / 'image_class_labels.txt'}: image {image_id} has class "
                                       f"{labels[image_id]}, not an id in {root / 'classes.txt'}")
        if in_train[image_id] not in split:
            raise DataError("dataset", f"{root / 'train_test_split.txt'}: image {image_id} has "
                                       f"{in_train[image_id]!r}, expected 1 (train) or 0 (test)")
        files, image_labels = split[in_train[image_id]]
        files.append(root / "images" / file)
        image_labels.append(label_of_class[labels[image_id]])
    return Source(names, _files_pool(*split["1"]), _files_pool(*split["0"]))


LOADERS = {"tiny_imagenet": _tiny_imagenet, "cub200": _cub200}


def load(dataset: str, *, path: Path | None, data_root: Path, download: bool) -> Source:
    return LOADERS[dataset](data_root)
