"""Inputs that are almost right (issue #11): image folders, torchvision files, weight files and open_clip tags
that load, or nearly, but would give an empty split, a crash, a hang or accuracies at chance. Each is a
DataError or ModelError naming the file and the key, raised while inputs are read."""

import pickle
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from continual.datasets import catalog, folders, tasks
from continual.models import ModelError, build_backbone


def spec(dataset="imagefolder", classes=None, *, path=None, name="task"):
    return SimpleNamespace(name=name, dataset=dataset, classes=classes, train_per_class=None, test_per_class=None,
                           path=path)


def load(s, *, root=Path("/nonexistent-data-root"), download=False):
    tasks.clear_cache()  # folders are rewritten between cases
    return tasks.load_task(s, image_size=8, data_root=root, seed=0, download=download)


def data_error(s, **kwargs) -> catalog.DataError:
    with pytest.raises(catalog.DataError) as err:
        load(s, **kwargs)
    assert "\n" not in err.value.message
    return err.value


def images(folder: Path, n: int, *, ext="png", color=(90, 160, 30), size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, color).save(folder / f"{i}.{ext}")


# ---- image folders: too few images, classes missing from test/, one class ---------------------------

@pytest.mark.parametrize("counts, short, words", [
    ({"a": 1, "b": 5}, "a", ["has 1 image:"]),
    ({"a": 5, "b": 2, "c": 1}, "b", ["has 2 images", "c has 1"]),
])
def test_too_few_images_to_split_off_a_test_set(tmp_path, counts, short, words):
    for name, n in counts.items():
        images(tmp_path / name, n)
    err = data_error(spec(path=tmp_path))
    assert err.key == "path"
    assert f"{tmp_path / short} has" in err.message and f"at least {catalog.MIN_TO_SPLIT} images" in err.message
    assert all(w in err.message for w in words)
    assert catalog.MIN_TO_SPLIT == 3  # round(3 * 0.2) = 1 test image, 2 to train
    for name, n in counts.items():  # three each is enough
        images(tmp_path / name, max(n, 3))
    task = load(spec(path=tmp_path))
    assert (task.test.labels.bincount() >= 1).all() and (task.train.labels.bincount() >= 2).all()


@pytest.mark.parametrize("make_test, missing", [
    (lambda test: test.mkdir(), "a, b"),  # empty test/
    (lambda test: images(test / "a", 1), "b"),
    (lambda test: (images(test / "a", 1), (test / "b").mkdir()), "b"),  # b's folder, but no images in it
])
def test_test_folder_lacking_classes(tmp_path, make_test, missing):
    images(tmp_path / "train" / "a", 3)
    images(tmp_path / "train" / "b", 3)
    make_test(tmp_path / "test")
    err = data_error(spec(path=tmp_path))
    assert err.key == "path" and str(tmp_path / "test") in err.message
    assert err.message.split(f"{tmp_path / 'train'}: ")[1].startswith(f"{missing};")


@pytest.mark.parametrize("make_train, words", [
    (lambda train: images(train / "a", 3), ["has class folders missing from", ": b"]),  # b only in test/
    (lambda train: (images(train / "a", 3), (train / "b").mkdir()), ["no images", str(Path("train") / "b")]),
])
def test_train_folder_lacking_classes(tmp_path, make_train, words):
    make_train(tmp_path / "train")
    images(tmp_path / "test" / "a", 1)
    images(tmp_path / "test" / "b", 1)
    err = data_error(spec(path=tmp_path))
    assert err.key == "path" and all(w in err.message for w in words)


@pytest.mark.parametrize("make, key, words", [
    (lambda p: images(p / "only", 5), "path", ["one class ('only') (", "has one class folder)"]),
    (lambda p: (images(p / "a", 5), images(p / "b", 5)), "classes", ["one class ('b'):"]),
])
def test_one_class_is_refused(tmp_path, make, key, words):
    make(tmp_path)
    err = data_error(spec(path=tmp_path, classes=["b"] if key == "classes" else None))
    assert err.key == key and "at least 2 classes" in err.message and all(w in err.message for w in words)


def test_one_class_is_refused_for_every_dataset_kind():
    err = data_error(spec("mnist", [3]))  # checked where every source's classes pass, not in folders only
    assert (err.key, err.message) == ("classes", "one class (3): a task or probe needs at least 2 classes "
                                                 "(accuracy over one class is always 1.0)")


# ---- image files: bombs, mixed formats, files that are not images ------------------------------------

def write_bilevel_png(path: Path, width: int, height: int):
    """A valid all-black 1-bit PNG, written chunk by chunk: zlib squeezes its 20000 x 9000 pixels into ~20 KB
    in a fraction of the time PIL's encoder takes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then 8 pixels a byte
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("error")  # PIL's DecompressionBombWarning must not leak out either
@pytest.mark.parametrize("width, height", [
    (20000, 9000),  # 180 M pixels: above twice PIL's limit, where PIL itself raises
    (10000, 9000),  # 90 M pixels: above PIL's limit, where PIL only warns and would decode it
])
def test_decompression_bomb_is_refused_by_name(tmp_path, width, height):
    images(tmp_path / "a", 3)
    images(tmp_path / "b", 3)
    write_bilevel_png(tmp_path / "b" / "bomb.png", width, height)
    assert (tmp_path / "b" / "bomb.png").stat().st_size < 50_000
    start = time.perf_counter()
    err = data_error(spec(path=tmp_path))
    assert time.perf_counter() - start < 5
    assert err.key == "path" and f"image {tmp_path / 'b' / 'bomb.png'}" in err.message
    assert "decompression bomb" in err.message and f"{folders.MAX_PIXELS:,}" in err.message


def test_mixed_formats_and_modes_load_as_rgb(tmp_path):
    """Every format and mode a photo folder holds, all of one grey (200), read as the same RGB pixels;
    files that are not images, or hidden, are skipped as torchvision's ImageFolder skips them."""
    a = tmp_path / "a"
    a.mkdir()
    grey = Image.new("L", (12, 10), 200)
    for ext in ("jpg", "png", "bmp", "gif", "webp", "tiff"):
        grey.convert("RGB").save(a / f"rgb.{ext}")
    grey.save(a / "grey.png")
    grey.convert("RGBA").save(a / "rgba.png")
    grey.convert("LA").save(a / "la.png")
    grey.convert("P").save(a / "palette.png")
    grey.convert("RGB").save(a / "upper.JPEG")
    Image.fromarray(np.full((10, 12), 200 * 257, dtype=np.uint16)).save(a / "sixteen_bit.png")
    (a / "notes.txt").write_text("not an image")
    (a / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 not an image either")
    (a / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (a / "._rgb.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden, with an image extension
    (a / ".ipynb_checkpoints").mkdir()
    (a / ".ipynb_checkpoints" / "broken.png").write_bytes(b"not a png")
    images(tmp_path / "b", 3)
    task = load(spec(path=tmp_path))
    counts = (task.train.labels.bincount() + task.test.labels.bincount()).tolist()
    assert counts == [12, 3]  # the 12 images of a, none of the rest
    pixels = torch.cat([task.train.images[task.train.labels == 0], task.test.images[task.test.labels == 0]])
    assert pixels.shape == (12, 3, 8, 8)
    assert (pixels.int() - 200).abs().max() <= 3  # lossy JPEG and WebP give or take a little


@pytest.mark.parametrize("name, make", [
    ("truncated.jpg", lambda path, good: path.write_bytes(good[:len(good) // 2])),
    ("text.jpg", lambda path, good: path.write_text("hello, I am not a JPEG\n")),
    ("empty.png", lambda path, good: path.write_bytes(b"")),
])
def test_undecodable_image_is_named(tmp_path, name, make):
    images(tmp_path / "a", 3, ext="jpg", size=(64, 64))
    images(tmp_path / "b", 3)
    make(tmp_path / "a" / name, (tmp_path / "a" / "0.jpg").read_bytes())
    err = data_error(spec(path=tmp_path))
    assert err.key == "path" and err.message.startswith(f"cannot read image {tmp_path / 'a' / name}: ")


# ---- torchvision: files present but damaged ---------------------------------------------------------

def test_torchvision_cifar10_partial_files_are_a_checksum_mismatch(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"  # torchvision's layout, as unpacked
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw = pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]})
        (folder / name).write_bytes(raw[:len(raw) // 2])  # cut short, as by an interrupted unpacking
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": catalog.CIFAR10}))
    assert catalog.files_present("cifar10", data_root=tmp_path)
    err = data_error(spec("cifar10"), root=tmp_path)
    assert err.key == "dataset" and "not found" not in err.message
    assert err.message.startswith(f"cifar10: data_batch_1, data_batch_2, data_batch_3 and 4 more under "
                                  f"{tmp_path / 'cifar10'} fail torchvision's MD5 check")
    assert f"checksum mismatch: a partial download?); delete {folder} and run again" in err.message


def test_torchvision_svhn_truncated_file_is_named(tmp_path):
    from scipy.io import savemat

    path = tmp_path / "svhn" / "train_32x32.mat"
    path.parent.mkdir()
    savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.arange(1, 5)[:, None]})
    path.write_bytes(path.read_bytes()[:200])
    err = data_error(spec("svhn"), root=tmp_path)
    assert err.key == "dataset"
    assert err.message == (f"svhn: train_32x32.mat under {tmp_path / 'svhn'} fails torchvision's MD5 check "
                           f"(checksum mismatch: a partial download?); delete {path} and run again with "
                           "`download: true`")


# ---- model.pretrained: checkpoints that load but are not weights --------------------------------------

def corrupt(state: dict, how: str) -> tuple[dict, int, str | None]:
    """A copy of `state` spoiled as `how` says, how many tensors that spoils, and the first of them."""
    floats = [k for k, v in state.items() if v.is_floating_point()]
    state = dict(state)
    if how == "nan":
        for k in floats[:3]:
            state[k] = state[k].clone()
            state[k][(0,) * state[k].ndim] = float("nan")
        return state, 3, floats[0]
    if how == "inf":
        state[floats[1]] = torch.full_like(state[floats[1]], float("-inf"))
        return state, 1, floats[1]
    if how == "meta":
        return {k: v.to("meta") for k, v in state.items()}, len(state), next(iter(state))
    if how == "int64":
        return {k: v.to(torch.int64) if k in floats else v for k, v in state.items()}, len(floats), floats[0]
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[how]
    return {k: v.to(dtype) if k in floats else v for k, v in state.items()}, 0, None


BAD_VALUES = [("nan", "3 tensors hold NaN or inf"), ("inf", "1 tensor holds NaN or inf"),
              ("meta", "meta tensors, shapes without values"), ("int64", "tensors are int64 where")]


def expect_bad_values(build, state, how, words, tmp_path):
    spoiled, n, first = corrupt(state, how)
    path = tmp_path / f"{how}.pt"
    torch.save(spoiled, path)
    with pytest.raises(ModelError) as err:
        build(str(path))
    assert err.value.key == "pretrained" and "\n" not in err.value.message
    assert err.value.message.startswith(f"{str(path)!r}: {n} tensor")
    assert words in err.value.message and f"(e.g. {first!r})" in err.value.message


@pytest.fixture(scope="module")
def lite0_state():
    return build_backbone(SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=None, image_size=32,
                                          head_init="random")).net.state_dict()


def lite0(path: str):
    return build_backbone(SimpleNamespace(family="efficientnet_lite0", arch=None, pretrained=path, image_size=32,
                                          head_init="random"))


@pytest.mark.parametrize("how, words", BAD_VALUES)
def test_efficientnet_checkpoint_with_bad_values(tmp_path, lite0_state, how, words):
    expect_bad_values(lite0, lite0_state, how, words, tmp_path)


@pytest.mark.parametrize("how, words", BAD_VALUES)
def test_open_clip_checkpoint_with_bad_values(tmp_path, tiny_clip, how, words):
    arch, checkpoint = tiny_clip
    state = torch.load(checkpoint, weights_only=True)
    build = lambda path: build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=path,  # noqa: E731
                                                        image_size=None, head_init="random"))
    expect_bad_values(build, state, how, words, tmp_path)


def test_half_precision_checkpoints_are_cast(tmp_path, lite0_state, tiny_clip):
    half, _, _ = corrupt(lite0_state, "float16")
    torch.save(half, tmp_path / "lite0.pt")
    loaded = lite0(str(tmp_path / "lite0.pt")).net.state_dict()
    assert all(loaded[k].dtype == v.dtype for k, v in lite0_state.items())
    assert torch.equal(loaded["_conv_stem.weight"], half["_conv_stem.weight"].float())
    arch, checkpoint = tiny_clip
    brain, _, _ = corrupt(torch.load(checkpoint, weights_only=True), "bfloat16")
    torch.save(brain, tmp_path / "clip.pt")
    clip = build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=str(tmp_path / "clip.pt"),
                                          image_size=None, head_init="random"))
    assert all(p.dtype == torch.float32 for p in clip.parameters())
    assert torch.equal(clip.visual.conv1.weight, brain["visual.conv1.weight"].float())


# ---- open_clip tags without network -----------------------------------------------------------------

@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a hub endpoint that cannot resolve (RFC 2606 .invalid), so that
    these tests take the offline path on any machine, networked or not."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    return tmp_path / "hub"


@pytest.mark.parametrize("arch, tag", [("RN50", "openai"), ("ViT-B-32", "laion2b_s34b_b79k")])
@pytest.mark.parametrize("offline", [False, True])
def test_uncached_tag_without_network_fails_fast(empty_hub, monkeypatch, arch, tag, offline):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=tag, image_size=None,
                                       head_init="random"))
    assert time.perf_counter() - start < 5  # open_clip alone retries for about a minute
    why = "HF_HUB_OFFLINE is set" if offline else "hub.invalid cannot be reached from this machine"
    assert err.value.key == "pretrained" and "\n" not in err.value.message
    assert err.value.message.startswith(f"open_clip weights {tag!r} for {arch} are not in the local cache "
                                        f"({empty_hub}) and {why}: download them on a machine with network")
    assert "local checkpoint file" in err.value.message


def test_cached_tag_loads_without_network(empty_hub, monkeypatch, tiny_clip):
    """A tag whose weights are in the Hugging Face cache (as copied from another machine) loads from there
    with the tag's preprocessing, without a request to the hub."""
    import open_clip.pretrained

    arch, checkpoint = tiny_clip
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    tag = {"hf_hub": "continual-test/tiny-clip/", "url": "", "mean": mean, "std": std, "size": 999}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, {"cached": tag})
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hub / "models--continual-test--tiny-clip"  # huggingface_hub's cache layout
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "open_clip_pytorch_model.bin").write_bytes(checkpoint.read_bytes())
    start = time.perf_counter()
    backbone = build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained="cached", image_size=None,
                                              head_init="random"))
    assert time.perf_counter() - start < 5
    assert backbone.image_size == 32  # the model's size, not the tag's
    assert torch.equal(backbone.pixel_mean.flatten(), torch.tensor(mean))
    assert torch.equal(backbone.pixel_std.flatten(), torch.tensor(std))
    saved = torch.load(checkpoint, weights_only=True)
    assert torch.equal(backbone.visual.conv1.weight, saved["visual.conv1.weight"])


def test_a_dataset_torchvision_cannot_download_says_what_to_fetch_and_where(tmp_path):
    from continual.datasets import torchvision_sets

    with pytest.raises(catalog.DataError) as err:
        torchvision_sets.load("stanford_cars", path=None, data_root=tmp_path, download=True)
    message = err.value.message
    assert "cannot download it" in message and str(tmp_path / "stanford_cars" / "stanford_cars") in message
    assert "cars_test_annos_withlabels.mat" in message
