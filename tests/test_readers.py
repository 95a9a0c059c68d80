"""Every dataset reader on its real on-disk layout: tiny fake files written here the way each archive
unpacks (CIFAR pickles, SVHN and Flowers102 .mat files, GTSRB's CSV and .ppm, the text listings of DTD,
Food-101, FGVC-Aircraft, Pets, SUN397, Tiny-ImageNet and CUB), loaded through the public path, checked for
class names, labels, split sizes and decoded pixels. Only torchvision's MD5 check of real files is
bypassed, never the format. Also: `download: true` without network fails at once, naming the dataset and
the folder to fill; and the shipped benchmark sequences say what they claim.
(EuroSAT's and RESISC45's folders are read in test_data.py.)"""
import json
import pickle
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from continual.config import load_sequence
from continual.datasets import catalog, tasks, torchvision_sets

ROOT = Path(__file__).resolve().parents[1]
SIZE = 8  # decoded size: every fake image is one colour, so any resize keeps its pixels


@pytest.fixture(autouse=True)
def fresh_cache():
    yield
    tasks.clear_cache()  # each test writes its own files


def spec(dataset, classes=None, *, train=None, test=None, name="task"):
    return SimpleNamespace(name=name, dataset=dataset, classes=classes, train_per_class=train,
                           test_per_class=test, path=None)


def load(root: Path, dataset: str, classes=None, **caps):
    return tasks.load_task(spec(dataset, classes, **caps), image_size=SIZE, data_root=root, seed=0)


def color(label: int) -> tuple[int, int, int]:
    """A colour per class, at least 20 apart from any other class's in the first channel."""
    return (20 + 20 * label % 220, 200 - 9 * label % 190, 60 + label % 3 * 60)


def solid(path: Path, label: int, *, size=(10, 8)) -> Path:
    """A one-colour image of class `label`, in the format its extension names (JPEG at quality 95)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color(label)).save(path, quality=95)
    return path


def check(split, expected_labels: list[int], *, classes: list[int] | None = None, lossy=True, size=SIZE):
    """Labels as expected (in order), and each image the colour of its class (`classes`: the dataset's
    class of each label, where the task selected some). `size`: as kept (CIFAR's and SVHN's arrays stay
    at 32 px; the model's resize happens on the device)."""
    assert split.labels.tolist() == expected_labels
    images = split.images[:]
    assert tuple(images.shape) == (len(expected_labels), 3, size, size) and images.dtype == torch.uint8
    for image, label in zip(images, expected_labels):
        want = torch.tensor(color(classes[label] if classes else label), dtype=torch.int16)[:, None, None]
        assert (image.to(torch.int16) - want).abs().max() <= (4 if lossy else 0)


def counts(split) -> list[int]:
    return split.labels.bincount().tolist()


def no_md5(monkeypatch, module: str):
    """torchvision checks the MD5 of the real files; the fakes only have their format."""
    import importlib

    monkeypatch.setattr(importlib.import_module(f"torchvision.datasets.{module}"), "check_integrity",
                        lambda *args, **kwargs: True)


# ---- torchvision datasets ---------------------------------------------------------------------------

def cifar_batch(labels: list[int], key: str) -> bytes:
    data = np.stack([np.repeat(color(c), 32 * 32) for c in labels]).astype(np.uint8)  # a row: R, G, B planes
    return pickle.dumps({"data": data, key: labels, "filenames": [f"{i}.png" for i in range(len(labels))]})


@pytest.mark.parametrize("dataset, folder, train_files, test_file, meta, key, meta_key", [
    ("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
     "labels", "label_names"),
    ("cifar100", "cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
])
def test_cifar_pickles(tmp_path, monkeypatch, dataset, folder, train_files, test_file, meta, key, meta_key):
    no_md5(monkeypatch, "cifar")
    base = tmp_path / dataset / folder
    base.mkdir(parents=True)
    names = catalog.DATASETS[dataset].class_names
    for name in train_files:
        (base / name).write_bytes(cifar_batch([0, 2, 2, 1], key))
    (base / test_file).write_bytes(cifar_batch([1, 2], key))
    (base / meta).write_bytes(pickle.dumps({meta_key: names}))
    task = load(tmp_path, dataset, [2, 0, 1])
    assert task.class_names == [names[2], names[0], names[1]]
    n = len(train_files)
    check(task.train, [0] * 2 * n + [1] * n + [2] * n, classes=[2, 0, 1], lossy=False, size=32)
    check(task.test, [0, 2], classes=[2, 0, 1], lossy=False, size=32)
    # torchvision reads the class names from the same file: the catalog's static list agrees
    import torchvision.datasets

    assert getattr(torchvision.datasets, catalog.TORCHVISION[dataset].cls_name)(tmp_path / dataset).classes == names


def test_svhn_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat

    no_md5(monkeypatch, "svhn")
    (tmp_path / "svhn").mkdir()
    for split, digits in [("train", [10, 1, 5, 10]), ("test", [3, 10])]:
        images = np.stack([np.full((32, 32, 3), color(d % 10), np.uint8) for d in digits], axis=-1)  # (32, 32, 3, N)
        savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": images, "y": np.array(digits)[:, None]})
    task = load(tmp_path, "svhn")
    assert task.class_names == catalog.DIGITS
    check(task.train, [0, 0, 1, 5], lossy=False, size=32)  # the files' 10 is the digit 0 (selection: by class)
    check(task.test, [0, 3], lossy=False, size=32)


def test_dtd_listing(tmp_path):
    base = tmp_path / "dtd" / "dtd" / "dtd"
    listing = {"train": ["banded/banded_0001.jpg", "zigzagged/zigzagged_0004.jpg", "banded/banded_0002.jpg"],
               "val": ["banded/banded_0009.jpg", "zigzagged/zigzagged_0009.jpg"],
               "test": ["zigzagged/zigzagged_0002.jpg", "banded/banded_0003.jpg"]}
    for split, files in listing.items():
        (base / "labels").mkdir(parents=True, exist_ok=True)
        (base / "labels" / f"{split}1.txt").write_text("".join(f"{f}\n" for f in files))
        (base / "labels" / f"{split}2.txt").write_text("banded/banded_0001.jpg\n")  # other partitions: not read
        for f in files:
            solid(base / "images" / f, int(f.startswith("zig")))
    task = load(tmp_path, "dtd")
    assert task.class_names == ["banded", "zigzagged"]
    check(task.train, [0, 0, 1])  # the selection is sorted by class
    check(task.test, [0, 1])


def test_gtsrb_csv_and_ppm(tmp_path):
    base = tmp_path / "gtsrb" / "gtsrb"
    for label in range(43):  # GTSRB/Training/<class id, 5 digits>/*.ppm, with a CSV per class (not read)
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        for i in range(1 + (label == 2)):
            solid(folder / f"00000_{i:05d}.ppm", label)
        (folder / f"GT-{label:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    rows = [("00000.ppm", 2), ("00001.ppm", 42), ("00002.ppm", 2)]
    for name, label in rows:
        solid(base / "GTSRB" / "Final_Test" / "Images" / name, label)
    (base / "GT-final_test.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n" + "".join(
        f"{name};10;8;0;0;9;7;{label}\n" for name, label in rows))
    task = load(tmp_path, "gtsrb", [42, 2])
    names = catalog.DATASETS["gtsrb"].class_names or [str(c) for c in range(43)]
    assert task.class_names == [names[42], names[2]]
    check(task.train, [0, 1, 1], classes=[42, 2], lossy=False)
    check(task.test, [0, 1, 1], classes=[42, 2], lossy=False)


def test_flowers102_mat_labels_and_setid(tmp_path, monkeypatch):
    from scipy.io import savemat

    no_md5(monkeypatch, "flowers102")
    base = tmp_path / "flowers102" / "flowers-102"
    labels = [1, 1, 2, 102, 2, 1, 102]  # 1-based, for image_00001.jpg ... image_00007.jpg
    for i, label in enumerate(labels, 1):
        solid(base / "jpg" / f"image_{i:05d}.jpg", label - 1)
    savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(base / "setid.mat", {"trnid": np.array([[1, 3, 4]]), "valid": np.array([[2]]),
                                 "tstid": np.array([[5, 6, 7]])})
    task = load(tmp_path, "flowers102")
    names = catalog.DATASETS["flowers102"].class_names or [str(c) for c in range(102)]
    assert task.class_names == names
    check(task.train, [0, 1, 101])
    check(task.test, [0, 1, 101])


def test_food101_meta_json(tmp_path):
    base = tmp_path / "food101" / "food-101"
    meta = {"train": {"waffles": ["waffles/11", "waffles/12"], "apple_pie": ["apple_pie/3"]},
            "test": {"apple_pie": ["apple_pie/4", "apple_pie/5"], "waffles": ["waffles/13"]}}
    (base / "meta").mkdir(parents=True)
    for split, files in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(files))
        (base / "meta" / f"{split}.txt").write_text("".join(f"{f}\n" for fs in files.values() for f in fs))
        for name, paths in files.items():
            for p in paths:
                solid(base / "images" / f"{p}.jpg", int(name == "waffles"))
    task = load(tmp_path, "food101", ["waffles", "apple_pie"])
    assert task.class_names == ["waffles", "apple_pie"]
    check(task.train, [0, 0, 1], classes=[1, 0])
    check(task.test, [0, 1, 1], classes=[1, 0])


def annotations(rows: list[tuple[str, int]]) -> np.ndarray:
    """A MATLAB struct array as the Stanford Cars devkit stores it (bbox fields, 1-based class, file name)."""
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    return np.array([(0, 0, 9, 7, label, name) for name, label in rows], dtype=fields)[None]


def test_stanford_cars_devkit_mat(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "stanford_cars" / "stanford_cars"
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    train, test = [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 3)], [("00001.jpg", 2), ("00002.jpg", 1)]
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annotations(train)})
    savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations(test)})
    for folder, rows in [("cars_train", train), ("cars_test", test)]:
        for name, label in rows:
            solid(base / folder / name, label - 1)
    task = load(tmp_path, "stanford_cars")
    assert task.class_names == names
    check(task.train, [0, 2, 2])
    check(task.test, [0, 1])


def test_fgvc_aircraft_variants_train_and_test(tmp_path):
    data = tmp_path / "fgvc_aircraft" / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]  # names with spaces are split at the first space only
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    lists = {"train": [("1025794", 2), ("1340192", 0)], "val": [("0056978", 1)], "test": [("1514522", 1), ("0062765", 2)]}
    for split, rows in lists.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {variants[c]}\n" for i, c in rows))
        for image_id, label in rows:
            solid(data / "images" / f"{image_id}.jpg", label)
    (data / "images_variant_trainval.txt").write_text("".join(f"{i} {variants[c]}\n" for split in ("train", "val")
                                                              for i, c in lists[split]))
    task = load(tmp_path, "fgvc_aircraft")
    assert task.class_names == variants
    check(task.train, [0, 2])  # `train` as ZSCL: not the val image
    check(task.test, [1, 2])


def test_caltech101_drops_the_background_and_splits_80_20(tmp_path):
    base = tmp_path / "caltech101" / "caltech101" / "101_ObjectCategories"
    for label, (name, n) in enumerate([("Faces_easy", 5), ("accordion", 10), ("BACKGROUND_Google", 5)]):
        for i in range(1, n + 1):
            Image.new("L", (10, 8), color(label)[0]).save(solid(base / name / f"image_{i:04d}.jpg", label))  # grey
    task = load(tmp_path, "caltech101")
    assert task.class_names == ["Faces_easy", "accordion"]  # torchvision's sorted folders, no background
    assert counts(task.train) == [4, 8] and counts(task.test) == [1, 2]
    grey = task.test.images[:][:, :, 0, 0]
    assert (grey[:, 0] == grey[:, 1]).all() and (grey[:, 1] == grey[:, 2]).all()  # one channel to RGB
    assert abs(int(grey[0, 0]) - color(0)[0]) <= 4 and abs(int(grey[-1, 0]) - color(1)[0]) <= 4


def test_oxford_pets_trainval_and_test(tmp_path):
    base = tmp_path / "oxford_pets" / "oxford-iiit-pet"
    rows = {"trainval": [("Abyssinian_100", 1, 1), ("american_bulldog_10", 2, 2), ("Abyssinian_101", 1, 1)],
            "test": [("american_bulldog_11", 2, 2), ("Abyssinian_1", 1, 1)]}
    (base / "annotations").mkdir(parents=True)
    for split, listed in rows.items():
        (base / "annotations" / f"{split}.txt").write_text(
            "".join(f"{image} {label} {species} {label}\n" for image, label, species in listed))
        for image, label, _ in listed:
            solid(base / "images" / f"{image}.jpg", label - 1)
    task = load(tmp_path, "oxford_pets")
    assert task.class_names == ["Abyssinian", "American Bulldog"]
    check(task.train, [0, 0, 1])
    check(task.test, [0, 1])


def test_sun397_classes_and_fixed_split(tmp_path):
    base = tmp_path / "sun397" / "SUN397"
    classes = ["a/abbey", "b/bakery/shop"]
    base.mkdir(parents=True)
    (base / "ClassName.txt").write_text("".join(f"/{c}\n" for c in classes))
    for label, c in enumerate(classes):
        for i in range(5 * (label + 1)):
            solid(base / c / f"sun_{'abcdefghijklmno'[i]}{label}.jpg", label)
    task = load(tmp_path, "sun397")
    assert task.class_names == ["abbey", "bakery/shop"]
    assert counts(task.train) == [4, 8] and counts(task.test) == [1, 2]
    check(task.test, [0, 1, 1])
    # the split is by sorted file name, not by the order the file system lists them in
    source = tasks.load_source("sun397", None, tmp_path, False)
    train = source.train.labels.tolist()
    assert train == sorted(train)


# ---- folders and listings under data_root -----------------------------------------------------------

def test_imagenet_train_and_val_folders(tmp_path):
    real = tmp_path / "elsewhere"  # the user's copy, linked into data_root/imagenet
    for split, n in [("train", 3), ("val", 2)]:
        for label, wnid in enumerate(["n01440764", "n01443537"]):
            for i in range(n):
                solid(real / split / wnid / f"{wnid}_{i}.JPEG", label)
    (tmp_path / "imagenet").mkdir()
    for split in ("train", "val"):
        (tmp_path / "imagenet" / split).symlink_to(real / split)
    assert catalog.files_present("imagenet", data_root=tmp_path)
    task = load(tmp_path, "imagenet", ["n01443537", 0])
    assert task.class_names == ["n01443537", "n01440764"]
    check(task.train, [0, 0, 0, 1, 1, 1], classes=[1, 0])
    check(task.test, [0, 0, 1, 1], classes=[1, 0])


def test_imagenet_val_must_match_train(tmp_path):
    solid(tmp_path / "imagenet" / "train" / "n01440764" / "a.JPEG", 0)
    solid(tmp_path / "imagenet" / "train" / "n01443537" / "a.JPEG", 1)
    solid(tmp_path / "imagenet" / "val" / "n01440764" / "a.JPEG", 0)
    with pytest.raises(catalog.DataError, match=r"val lacks 1 of the 2 classes in .*train: n01443537"):
        load(tmp_path, "imagenet")


@pytest.mark.parametrize("inner", ["imagenet-r", ""])
def test_imagenet_r_folders_split_80_20(tmp_path, inner):
    for label, wnid in enumerate(["n01443537", "n01484850", "n01494475"]):
        for i in range(5):
            solid(tmp_path / "imagenet_r" / inner / wnid / f"art_{i}.jpg", label)
    assert catalog.files_present("imagenet_r", data_root=tmp_path)
    task = load(tmp_path, "imagenet_r", [2, 0])
    assert task.class_names == ["n01494475", "n01443537"]
    assert counts(task.train) == [4, 4]
    check(task.test, [0, 1], classes=[2, 0])


def test_tiny_imagenet_zip_layout(tmp_path):
    base = tmp_path / "tiny_imagenet" / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537"]  # wnids.txt is not sorted; the classes are
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\n")
    for wnid in wnids:
        label = sorted(wnids).index(wnid)
        for i in range(3):
            solid(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", label, size=(64, 64))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    rows = [("val_0.JPEG", "n02124075"), ("val_1.JPEG", "n01443537"), ("val_2.JPEG", "n02124075")]
    (base / "val" / "val_annotations.txt").parent.mkdir(parents=True)
    (base / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t32\t44\t62\n" for f, w in rows))
    for f, w in rows:
        solid(base / "val" / "images" / f, sorted(wnids).index(w), size=(64, 64))
    solid(base / "test" / "images" / "test_0.JPEG", 0, size=(64, 64))  # unlabelled: not read
    assert catalog.files_present("tiny_imagenet", data_root=tmp_path)
    task = load(tmp_path, "tiny_imagenet")
    assert task.class_names == ["n01443537", "n02124075"]
    check(task.train, [0, 0, 0, 1, 1, 1])
    check(task.test, [0, 1, 1])


def test_cub200_listings(tmp_path):
    base = tmp_path / "cub200" / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    images = [(1, 0, 1), (2, 0, 0), (3, 1, 1), (4, 1, 1), (5, 1, 0)]  # id, class index, is training image
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    (base / "images.txt").write_text("".join(f"{i} {classes[c]}/{classes[c][4:]}_{i:04d}.jpg\n" for i, c, _ in images))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c + 1}\n" for i, c, _ in images))
    (base / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, t in images))
    for i, c, _ in images:
        solid(base / "images" / classes[c] / f"{classes[c][4:]}_{i:04d}.jpg", c)
    assert catalog.files_present("cub200", data_root=tmp_path)
    task = load(tmp_path, "cub200")
    assert task.class_names == ["Black footed Albatross", "Laysan Albatross"]
    check(task.train, [0, 1, 1])
    check(task.test, [0, 1])
    (base / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 yes\n5 0\n")
    tasks.clear_cache()
    with pytest.raises(catalog.DataError, match=r"train_test_split.txt: image 4 has 'yes', expected 1 \(train\)"):
        load(tmp_path, "cub200")


@pytest.mark.parametrize("dataset, inner, words", [
    ("imagenet", "", "it is never downloaded; extract ILSVRC 2012 there"),
    ("imagenet_r", "imagenet-r", "unpack imagenet-r.tar"),
    ("tiny_imagenet", "tiny-imagenet-200", "unpack tiny-imagenet-200.zip"),
    ("cub200", "CUB_200_2011", "unpack CUB_200_2011.tgz"),
])
def test_missing_hand_placed_dataset_names_the_folder(tmp_path, dataset, inner, words):
    assert not catalog.files_present(dataset, data_root=tmp_path)
    for download in (False, True):  # none of them can be downloaded
        with pytest.raises(catalog.DataError) as err:
            tasks.load_source(dataset, None, tmp_path, download)
        assert err.value.key == "dataset" and words in err.value.message
        assert f"{dataset} not found under {tmp_path / dataset}" in err.value.message
        assert str(tmp_path / dataset / inner) in err.value.message


# ---- download: true without network ----------------------------------------------------------------

def test_download_hosts_are_torchvisions():
    import inspect

    import torchvision.datasets

    for dataset, url in torchvision_sets.DOWNLOAD_URLS.items():
        cls = getattr(torchvision.datasets, catalog.TORCHVISION[dataset].cls_name)
        assert url.split("//")[1] in inspect.getsource(cls), dataset
    assert set(torchvision_sets.DOWNLOAD_URLS) | set(torchvision_sets.BY_HAND) == set(catalog.TORCHVISION)


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("dataset", sorted(catalog.TORCHVISION))
def test_download_without_network_fails_at_once(tmp_path, no_network, dataset):
    start = time.monotonic()
    with pytest.raises(catalog.DataError) as err:
        torchvision_sets.load(dataset, path=None, data_root=tmp_path, download=True)
    assert time.monotonic() - start < 5
    message = err.value.message
    assert err.value.key == "dataset" and message.startswith(f"{dataset} not found under {tmp_path / dataset}")
    if dataset not in torchvision_sets.BY_HAND:
        assert "cannot be reached from this machine" in message
        assert str(tmp_path / dataset / catalog.TORCHVISION[dataset].marker) in message


def test_download_that_fails_after_the_probe_is_a_data_error(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(torchvision_sets, "_reachable", lambda url: True)  # the host answered, the download not
    with pytest.raises(catalog.DataError) as err:
        torchvision_sets.load("oxford_pets", path=None, data_root=tmp_path, download=True)
    assert f"oxford_pets not found under {tmp_path / 'oxford_pets'}" in err.value.message
    assert "the download failed" in err.value.message


# ---- the benchmark sequences ------------------------------------------------------------------------

ZSCL_ORDER_1 = ["fgvc_aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers102", "food101", "mnist",
                "oxford_pets", "stanford_cars", "sun397"]  # ZSCL's mtil/scripts/ZSCL.sh
ZSCL_ORDER_2 = ["stanford_cars", "food101", "mnist", "oxford_pets", "flowers102", "sun397", "fgvc_aircraft",
                "caltech101", "dtd", "eurosat", "cifar100"]


@pytest.mark.parametrize("name, order", [("mtil-order-1", ZSCL_ORDER_1), ("mtil-order-2", ZSCL_ORDER_2)])
def test_mtil_sequences(name, order):
    seq = load_sequence(ROOT / "sequences" / f"{name}.yaml")
    assert [t.dataset for t in seq.tasks] == order and all(t.classes is None for t in seq.tasks)
    assert (seq.model.family, seq.model.arch, seq.model.pretrained) == ("open_clip", "ViT-B-16", "openai")
    assert (seq.training.batch_size, seq.training.lr, seq.training.steps_per_task) == (64, 1e-5, 1000)
    assert seq.setting == "multi_domain" and seq.method("zscl").reference == "imagenet"


def test_split_sequences_cover_every_class_once():
    cifar = load_sequence(ROOT / "sequences" / "split-cifar100.yaml")
    assert cifar.setting == "class_incremental"
    classes = [t.classes for t in cifar.tasks]
    assert [len(c) for c in classes] == [10] * 10 and sorted(sum(classes, [])) == list(range(100))
    assert classes[0][:3] == [87, 0, 52]  # ZSCL's cil/class_orders/cifar100.yaml
    imagenet_r = load_sequence(ROOT / "sequences" / "split-imagenet-r.yaml")
    assert [t.classes for t in imagenet_r.tasks] == [list(range(i, i + 20)) for i in range(0, 200, 20)]
