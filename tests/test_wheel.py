"""The package as a user installs it: a built wheel (not this checkout, not editable) in a fresh venv.

The wheel is built from this checkout, installed into a new venv whose dependencies are the ones this
environment already has (its site-packages on the new venv's path, so pip resolves every requirement from what
is there, with no index), and driven from a folder outside the checkout: `--version`, `list`, `list
--sequences`, and a tiny run of a shipped sequence by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import continual
from continual.config.loading import shipped_sequences

ROOT = Path(__file__).resolve().parent.parent
# What each extra promises to install (pyproject.toml's optional-dependencies), by distribution name.
EXTRAS = {"test": "pytest", "slurm": "submitit", "ray": "ray", "wandb": "wandb", "mlflow": "mlflow",
          "docs": "mkdocs-material"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # From a copy of the checkout: setuptools builds in the source folder (build/lib, egg-info), where files left
    # from an earlier build would go into the wheel. --no-build-isolation: this environment's setuptools, offline.
    source = tmp_path_factory.mktemp("source") / "continual"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "runs", "reports", ".whl", ".cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True, env=_no_user_site())
    (built,) = out.glob("continual-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    # The wheels already there: this environment's packages, after the new venv's own (a .pth line adds the
    # folder; .pth files in it, such as this checkout's editable install, are not read from there).
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index",
                           "--no-compile", f"{wheel}[test]"], capture_output=True, text=True, env=_no_user_site())
    assert done.returncode == 0, done.stderr  # every requirement met by what is there: the metadata is right
    return env_dir / "bin"


def _no_user_site() -> dict:
    return {**os.environ, "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _continual(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in _no_user_site().items() if k != "PYTHONPATH"}
    return subprocess.run([str(bin_dir / "continual"), *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_wheel_holds_the_package_data_and_declares_each_extra(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = Parser().parsestr(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert {f"continual/sequences/{name}.yaml" for name in shipped_sequences()} <= names
    assert {"continual/datasets/zeroshot.json"} <= names
    assert not any(n.startswith(("tests/", "docs/", "bench/")) for n in names)
    assert meta["Version"] == continual.__version__
    extras = set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    for extra, dist in EXTRAS.items():
        assert extra in extras
        assert any(r.startswith(dist) and f'extra == "{extra}"' in r for r in requires), (extra, dist)


def test_the_installed_wheel_runs_a_shipped_sequence_by_name_outside_the_checkout(installed, tmp_path):
    where = _continual(installed, "--version", cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.split() == ["continual", continual.__version__]
    python = installed / "python"
    module = subprocess.check_output([str(python), "-c", "import continual; print(continual.__file__)"],
                                     cwd=tmp_path, text=True, env=_no_user_site()).strip()
    assert Path(module).is_relative_to(installed.parent) and not Path(module).is_relative_to(ROOT)

    listing = _continual(installed, "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "ldifs" in listing.stdout and "digits" in listing.stdout
    sequences = _continual(installed, "list", "--sequences", cwd=tmp_path)
    assert sequences.returncode == 0, sequences.stderr
    for name in shipped_sequences():
        assert f"  {name} " in sequences.stdout
    assert str(installed.parent) in sequences.stdout  # read from the installed package

    tiny = ("[{name: low, dataset: digits, classes: [0, 1], train_per_class: 8, test_per_class: 4},"
            " {name: high, dataset: digits, classes: [2, 3], train_per_class: 8, test_per_class: 4}]")
    run = _continual(installed, "run", "small-user-sequence", "--out", "runs", "--methods", "finetune",
                     "--set", f"tasks={tiny}", "--set", "probes=[]", "--set", "model.image_size=32",
                     "--no-tensorboard", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "runs" / "small"
    matrix = (folder / "finetune" / "accuracy_matrix.csv").read_text().splitlines()
    assert len(matrix) == 1 + 3  # header, step 0, each task's step
    assert (folder / "index.html").is_file()


def test_a_name_that_is_no_file_nor_shipped_sequence_lists_the_shipped_ones(tmp_path):
    from continual.config import ConfigError, load_sequence

    with pytest.raises(ConfigError) as err:
        load_sequence("mtil-order-9")
    assert "mtil-order-9: no such file (nor a shipped sequence: " in str(err.value)
    assert "mtil-order-1" in str(err.value)
    # A path with a folder is a file only: never looked up among the shipped sequences.
    with pytest.raises(ConfigError, match="no such file$"):
        load_sequence(tmp_path / "mtil-order-1.yaml")


def test_a_file_in_the_working_folder_comes_before_a_shipped_sequence_of_its_name(tmp_path, monkeypatch):
    from continual.config import load_sequence

    shipped = load_sequence("mnist-fashion-animals")
    assert shipped.name == "mnist-fashion-animals"
    (tmp_path / "mnist-fashion-animals.yaml").write_text(
        "name: mine\ntasks:\n  - {name: a, dataset: digits, classes: [0, 1]}\nmethods: [finetune]\n")
    monkeypatch.chdir(tmp_path)
    assert load_sequence("mnist-fashion-animals.yaml").name == "mine"
    assert load_sequence("mnist-fashion-animals").name == "mine"  # NAME.yaml here, before the shipped one


def test_the_changelog_opens_with_this_version():
    versions = [line.split()[1] for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert versions[0] == continual.__version__
    assert len(set(versions)) == len(versions)
