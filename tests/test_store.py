"""The decoded-image store: what is decoded and when, what is reused and what is rebuilt, reading rows,
two processes at once, bad files, a full disk, and `continual data prepare | list`."""
import json
import re
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from continual.cli import main
from continual.datasets import store, tasks
from continual.datasets.catalog import DataError
from continual.datasets.source import Images, Pool, array_images
from helpers import fill, small_tmpfs

ROOT = Path(__file__).resolve().parents[1]


def spec(path, *, train=None, test=None, classes=None, name="task"):
    return SimpleNamespace(name=name, dataset="imagefolder", classes=classes, train_per_class=train,
                           test_per_class=test, path=str(path), templates=None)


def write_folder(folder: Path, *, classes=("a", "b"), per_class=10, size=(30, 20)) -> None:
    """Images whose pixels say which file they are: value 10 * class + i in red, i in green."""
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.zeros((size[1], size[0], 3), np.uint8)
            pixels[..., 0], pixels[..., 1] = 10 * c + i, i
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")


def load(folder, data_root, *, size=8, **kw):
    return tasks.load_task(spec(folder, **kw), image_size=size, data_root=data_root, seed=0)


def stores(data_root: Path) -> list[store.Stored]:
    return store.list_stores(data_root)


@pytest.fixture(autouse=True)
def _fresh():
    tasks.clear_cache()
    yield
    tasks.clear_cache()


def test_round_trip_equals_decoding_each_file(tmp_path):
    write_folder(tmp_path / "f")
    task = load(tmp_path / "f", tmp_path / "data", size=8)
    images = task.train.images
    assert isinstance(images, Images) and images.shape == (16, 3, 8, 8) and images.home.startswith(str(tmp_path))
    # Row by row, the stored pixels are what decoding that file gives (same resize rule).
    from continual.datasets.folders import folder_source

    pool = folder_source(tmp_path / "f", key="path").train
    expected = torch.from_numpy(np.stack([pool.decode(i, 8) for i in range(16)]))
    assert torch.equal(images[:], expected)
    assert {(s.split, s.size, s.images, s.filled) for s in stores(tmp_path / "data")} == {("train", 8, 16, 16),
                                                                                        ("test", 8, 4, 4)}


def test_a_second_run_decodes_nothing_and_reads_the_same(tmp_path, monkeypatch):
    write_folder(tmp_path / "f")
    pixels = load(tmp_path / "f", tmp_path / "data").train.images[:]
    tasks.clear_cache()
    monkeypatch.setattr(store.Store, "_fill", lambda *a, **k: pytest.fail("decoded again"))
    again = load(tmp_path / "f", tmp_path / "data")
    assert torch.equal(again.train.images[:], pixels)


def test_only_the_selected_rows_are_decoded_then_the_rest_on_demand(tmp_path):
    write_folder(tmp_path / "f", per_class=20)
    few = load(tmp_path / "f", tmp_path / "data", train=3, test=1)
    (train,) = [s for s in stores(tmp_path / "data") if s.split == "train"]
    assert (train.images, train.filled) == (32, 6)  # 16 + 16 training images, 3 + 3 selected
    tasks.clear_cache()
    everything = load(tmp_path / "f", tmp_path / "data")
    (train,) = [s for s in stores(tmp_path / "data") if s.split == "train"]
    assert train.filled == 32 and len(stores(tmp_path / "data")) == 2  # the same store, filled up
    rows = {tuple(x.flatten().tolist()) for x in everything.train.images[:]}
    assert all(tuple(x.flatten().tolist()) in rows for x in few.train.images[:])


def test_a_changed_file_or_size_opens_another_store(tmp_path):
    write_folder(tmp_path / "f")
    before = load(tmp_path / "f", tmp_path / "data").train.images[:]
    tasks.clear_cache()
    Image.new("RGB", (30, 20), (255, 255, 255)).save(tmp_path / "f" / "a" / "000.png")  # same name, new pixels
    after = load(tmp_path / "f", tmp_path / "data").train.images[:]
    assert not torch.equal(before, after) and (after == 255).all(dim=(1, 2, 3)).sum() == 1
    assert len(stores(tmp_path / "data")) == 4  # never reused for other pixels
    tasks.clear_cache()
    assert load(tmp_path / "f", tmp_path / "data", size=12).train.images.shape[-1] == 12
    assert len(stores(tmp_path / "data")) == 6


def _huge_npy_header(path: Path) -> None:
    """filled.npy whose header claims 10**11 rows (np.load would try to allocate 93 GiB)."""
    data = path.read_bytes()
    path.write_bytes(data.replace(b"'shape': (16,), }", b"'shape': (99999999999,),}"))


def _replace(path: Path, by) -> None:
    path.unlink()
    by(path)


# Damage of every kind a file of the store can suffer (issue #23: a folder where images.u8 belongs was a
# traceback); each store is rebuilt, as a truncated one always was.
DAMAGE = {
    "truncate": lambda f: os.truncate(f / "images.u8", 100),
    "manifest": lambda f: (f / "manifest.json").write_text(
        json.dumps(json.loads((f / "manifest.json").read_text()) | {"resize": "nearest"})),
    "filled": lambda f: np.save(f / "filled.npy", np.ones(3, bool)),
    "manifest nested too deeply": lambda f: (f / "manifest.json").write_text("[" * 100_000),
    "manifest not an object": lambda f: (f / "manifest.json").write_text("[1, 2]"),
    "manifest not UTF-8": lambda f: (f / "manifest.json").write_bytes(b"\xff\xfe{}"),
    "filled an .npz": lambda f: (np.savez(f / "filled.npz", np.ones(16, bool)),
                                 (f / "filled.npz").rename(f / "filled.npy")),
    "filled a pickle": lambda f: np.save(f / "filled.npy", np.array([None] * 16, object)),
    "filled claims 10**11 rows": lambda f: _huge_npy_header(f / "filled.npy"),
    **{f"{name} a folder": (lambda name: lambda f: _replace(f / name, Path.mkdir))(name)
       for name in ("images.u8", "filled.npy", "manifest.json")},
    ".lock a folder": lambda f: (_replace(f / ".lock", Path.mkdir),
                                 os.truncate(f / "images.u8", 100)),  # so that the rebuild takes the lock
    **{f"{name} a FIFO": (lambda name: lambda f: _replace(f / name, os.mkfifo))(name)
       for name in ("images.u8", "filled.npy", "manifest.json")},
    "the store a file": lambda f: (shutil.rmtree(f), f.write_text("x")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_rebuilt_not_reused(tmp_path, damage):
    write_folder(tmp_path / "f")
    pixels = load(tmp_path / "f", tmp_path / "data").train.images[:]
    tasks.clear_cache()
    (folder,) = [s.folder for s in stores(tmp_path / "data") if s.split == "train"]
    DAMAGE[damage](folder)
    assert len(stores(tmp_path / "data")) in (1, 2)  # `data list` skips what it cannot read, never hangs on a FIFO
    again = load(tmp_path / "f", tmp_path / "data").train.images[:]
    assert torch.equal(again, pixels)
    assert (folder / "images.u8").stat().st_size == 16 * 3 * 8 * 8
    assert len(stores(tmp_path / "data")) == 2


def test_a_corrupt_image_names_the_file_and_stores_nothing_of_it(tmp_path):
    write_folder(tmp_path / "f")
    bad = tmp_path / "f" / "b" / "003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"cannot read image .*003\.png") as caught:
        load(tmp_path / "f", tmp_path / "data")
    assert caught.value.key == "path"
    (train,) = [s for s in stores(tmp_path / "data") if s.split == "train"]
    assert train.filled < train.images  # not the bad file's row (the rows decoded before it are kept)
    tasks.clear_cache()
    write_folder(tmp_path / "f")  # fixed: the next run builds it
    assert load(tmp_path / "f", tmp_path / "data").train.images[:].shape == (16, 3, 8, 8)


def test_parallel_workers_store_the_same_bytes(tmp_path):
    write_folder(tmp_path / "f", per_class=150, size=(12, 9))
    from continual.datasets.folders import folder_source

    pool = folder_source(tmp_path / "f", key="path").train
    rows = np.arange(len(pool.labels))
    stored = {}
    for workers in (0, 2):
        key = store.key_for("imagefolder", "train", 6, source=f"workers {workers}", labels=pool.labels)
        opened = store.Store.open(tmp_path / "data", key, len(pool.labels))
        assert opened.ensure(rows, pool.decode, workers=workers) == len(rows)
        assert opened.ensure(rows, pool.decode, workers=workers) == 0
        stored[workers] = opened.read(rows)
    assert np.array_equal(stored[0], stored[2])


COUNTING_FILL = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from continual.datasets import store

    log = Path(sys.argv[2])
    def decode(i, size):
        with open(log, "a") as f:
            f.write(f"{i}\\n")
        time.sleep(0.002)
        return np.full((3, size, size), i % 256, np.uint8)

    labels = np.arange(300) % 3
    key = store.key_for("race", "train", 4, source="test", labels=labels)
    opened = store.Store.open(Path(sys.argv[1]), key, len(labels))
    opened.ensure(np.arange(300), decode, workers=0)
    assert opened.read(np.arange(300))[:, 0, 0, 0].tolist() == [i % 256 for i in range(300)]
""")


def test_two_processes_filling_one_store_decode_each_row_once(tmp_path):
    script = tmp_path / "fill.py"
    script.write_text(COUNTING_FILL)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "log")], env=env)
             for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    decoded = (tmp_path / "log").read_text().split()
    assert sorted(map(int, decoded)) == list(range(300))  # one process decoded all, the other waited and read


def test_a_full_disk_while_storing_is_a_clear_error_and_the_next_run_finishes(tmp_path):
    write_folder(tmp_path / "f", per_class=40, size=(64, 64))
    with small_tmpfs(1.0) as data_root:  # 64 training images at 32 px = 192 KiB; leave less than that
        filler = fill(data_root, leave=100 * 1024)
        with pytest.raises(DataError, match=r"the disk is full while storing decoded images in .*free some space"):
            load(tmp_path / "f", data_root, size=32)
        filler.unlink()
        tasks.clear_cache()
        done = load(tmp_path / "f", data_root, size=32)
        assert done.train.images[:].shape == (64, 3, 32, 32)
        assert not list(data_root.rglob("*.tmp"))


def test_images_index_like_a_tensor():
    array = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)  # grayscale, 6 images
    images = array_images(Pool(np.zeros(6, np.int64), array=array), np.array([5, 1, 2, 0]))
    full = torch.from_numpy(array[[5, 1, 2, 0]])[:, None].expand(-1, 3, -1, -1)
    assert images.shape == (4, 3, 4, 4) and len(images) == 4 and images.nbytes == 4 * 3 * 16
    assert torch.equal(images[:], full) and torch.equal(images[1], full[1]) and torch.equal(images[1:3], full[1:3])
    idx = torch.tensor([3, 3, 0])
    assert torch.equal(images[idx], full[idx]) and torch.equal(images[np.array([2])], full[[2]])
    assert torch.equal(images[:, 0, 1:3], full[:, 0, 1:3]) and torch.equal(images.to("cpu"), full)
    other = array_images(Pool(np.zeros(6, np.int64), array=array), np.array([5, 1, 2, 1]))
    assert images.fingerprint() != other.fingerprint()
    assert images.fingerprint() == array_images(Pool(np.zeros(6, np.int64), array=array.copy()),
                                                np.array([5, 1, 2, 0])).fingerprint()


def test_array_images_are_centre_cropped_squares():
    array = np.zeros((2, 4, 8, 3), np.uint8)
    array[:, :, 2:6] = 200  # the centre 4x4 of a 4x8 image
    images = array_images(Pool(np.zeros(2, np.int64), array=array), np.arange(2))
    assert images.shape == (2, 3, 4, 4) and (images[:] == 200).all()
    assert torch.equal(images[:], torch.from_numpy(array[:, :, 2:6]).permute(0, 3, 1, 2))


def test_data_prepare_then_list_then_a_run_decodes_nothing(tmp_path, capsys, monkeypatch):
    write_folder(tmp_path / "f", per_class=6)
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump({
        "name": "prep", "model": {"family": "efficientnet_lite0", "image_size": 32},
        "tasks": [{"name": "mine", "dataset": "imagefolder", "path": "f"},
                  {"name": "digits", "dataset": "digits", "classes": [0, 1], "train_per_class": 4}],
        "data_root": "data", "methods": ["finetune"], "download": False}))
    assert main(["data", "prepare", str(seq)]) == 0
    out = capsys.readouterr().out
    assert "task mine: imagefolder, 10 training and 2 test images at 32 px, in " in out
    assert "task digits: digits, 8 training" in out and "in memory (an array, nothing to decode)" in out
    assert re.search(r"imagefolder +train +32px +10 of 10 +[0-9.]+ KiB", out), out
    assert main(["data", "list", str(tmp_path / "data")]) == 0
    listed = capsys.readouterr().out
    assert "2 store(s)" in listed
    assert f"images of {(tmp_path / 'f').resolve()}\n" in listed  # which image folder: each is `imagefolder`
    assert main(["data", "list", str(tmp_path / "nothing")]) == 0
    assert "no stored images under" in capsys.readouterr().out
    tasks.clear_cache()
    monkeypatch.setattr(store.Store, "_fill", lambda *a, **k: pytest.fail("decoded again"))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 0


def test_the_stores_resize_agrees_with_the_devices():
    """Files are stored resized by PIL (twice as fast); images kept at another size are resized by the
    backbone on the device (torch, as Backbone.preprocess does it): within a grey level of each other."""
    from continual.datasets.source import pil_resize_crop

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (12, 12, 3)), np.ones((5, 5, 1))).astype(np.uint8)  # 60 x 60, blocks
    for size in (20, 37, 90):  # shrink, shrink to an odd size, enlarge
        by_pil = torch.from_numpy(pil_resize_crop(Image.fromarray(smooth), size)).int()
        x = torch.from_numpy(smooth).permute(2, 0, 1)[None].float()
        by_torch = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=size < 60,
                                                   align_corners=False)[0].round().int()
        assert by_pil.shape == by_torch.shape == (3, size, size)
        assert (by_pil - by_torch).abs().max() <= 2, size  # 1 measured: fixed-point PIL against float torch


def test_replay_mixes_tasks_kept_at_different_sizes(tmp_path):
    """Replay stacks a past task's images with the current task's: digits kept at 8 px in memory and a
    folder stored at the model's 32 px must make one batch."""
    import continual

    write_folder(tmp_path / "f", per_class=10)
    doc = {"name": "mixed", "seed": 0, "model": {"family": "efficientnet_lite0", "image_size": 32},
           "tasks": [{"name": "digits", "dataset": "digits", "classes": [0, 1], "train_per_class": 8},
                     {"name": "mine", "dataset": "imagefolder", "path": str(tmp_path / "f")}],
           "training": {"batch_size": 8, "warmup_steps": 1}, "methods": [{"replay": {"memory_size": 8}}],
           "data_root": str(tmp_path / "data"), "download": False}
    folder = continual.run(doc, out=tmp_path / "out", progress=False)
    matrix = continual.load_run(folder)["replay"]
    assert list(matrix.index) == [0, 1, 2] and matrix.notna().all().all()


def test_a_run_keeps_reading_what_it_stored_when_the_store_is_deleted(tmp_path):
    write_folder(tmp_path / "f")
    task = load(tmp_path / "f", tmp_path / "data")
    pixels = task.train.images[:]
    import shutil

    shutil.rmtree(tmp_path / "data")  # a user reclaiming space, or another run rebuilding it, mid-run
    assert torch.equal(task.train.images[:], pixels)  # the open file keeps its rows


def test_images_index_by_row_then_channel_and_with_empty_or_scalar_keys():
    array = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)  # RGB
    images = array_images(Pool(np.zeros(3, np.int64), array=array), np.arange(3))
    full = torch.from_numpy(array).permute(0, 3, 1, 2)
    assert torch.equal(images[1, 2], full[1, 2]) and torch.equal(images[np.int64(2)], full[2])
    assert torch.equal(images[torch.tensor(1)], full[1]) and images[[]].shape == (0, 3, 2, 2)
    assert torch.equal(images[torch.tensor([True, False, True])], full[[0, 2]])


def test_a_subset_with_the_same_labels_opens_another_store(tmp_path):
    """Two fixed splits with the same counts per class have the same labels: the key must tell them apart."""
    from continual.datasets.source import pil_pool

    pool = pil_pool(np.repeat([0, 1], 10), lambda i: Image.new("RGB", (4, 4), (i, 0, 0)))
    a, b = pool.subset(np.array([0, 1, 10, 11])), pool.subset(np.array([2, 3, 12, 13]))
    keys = [store.key_for("x", "train", 4, source="s", labels=p.labels, order=p.order) for p in (a, b)]
    assert np.array_equal(a.labels, b.labels) and keys[0].folder_name != keys[1].folder_name
