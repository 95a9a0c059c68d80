"""What a CLIP zero-shot head reads: each dataset's class names as the CLIP literature writes them, and its
prompt templates. No torch; the data file is read once, on first use.

The names and templates are those of clip-benchmark 1.6.2 (LAION's zero-shot benchmark, MIT licence),
copied into `zeroshot.json` next to this module with their source and licence: the package itself
requires torch, open_clip, transformers, webdataset and pycocoevalcap to install, all to read two JSON
files. There they keep clip-benchmark's dataset keys (`flowers`, `cars`, `pets`, `imagenet1k`) and
its `{c}` placeholder; here a template holds `{}`, as open_clip's `build_zero_shot_classifier` formats it
(`template.format(name)`).

A task's classes are its dataset's own names (what a YAML `classes:` selects by); `readable_names` turns
each into CLIP's by that name, never by position in a subset.
"""

from __future__ import annotations

import json
import re
import string
from functools import cache
from importlib import resources

# Our dataset -> clip-benchmark's key for its class names. The others are already written as CLIP
# writes them, once `_` is a space: clip-benchmark itself uses torchvision's names for CIFAR, DTD, Food-101
# (`_` -> space), SUN397 (`_` and `/` -> spaces), Stanford Cars and FGVC Aircraft.
NAMES_FROM = {
    "mnist": "mnist", "svhn": "svhn", "eurosat": "eurosat", "gtsrb": "gtsrb", "flowers102": "flowers",
    "caltech101": "caltech101", "oxford_pets": "pets",
    # Their folders are WordNet ids: ImageNet-R's 200 are ImageNet-1k classes, and so are the Tiny ImageNet ids
    # checked (not all 200 could be, offline); an id not in ImageNet-1k stays as it is.
    "imagenet": "imagenet1k", "imagenet_r": "imagenet1k", "tiny_imagenet": "imagenet1k",
}
# Our dataset -> clip-benchmark's key for its templates. ImageNet-R has no entry of its own there:
# clip-benchmark falls back to ImageNet's 80. Datasets not listed get GENERIC.
TEMPLATES_FROM = {
    "mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn", "dtd": "dtd",
    "eurosat": "eurosat", "gtsrb": "gtsrb", "flowers102": "flowers", "food101": "food101",
    "stanford_cars": "cars", "resisc45": "resisc45", "fgvc_aircraft": "fgvc_aircraft", "caltech101": "caltech101",
    "oxford_pets": "pets", "sun397": "sun397", "imagenet": "imagenet1k", "imagenet_r": "imagenet1k",
}
# open_clip's SIMPLE_IMAGENET_TEMPLATES (the 7-prompt ensemble of CLIP's ImageNet notebook) as format
# strings: for our own datasets and image folders, for which the literature has none.
GENERIC = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
           "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


@cache
def _data() -> dict:
    return json.loads(resources.files(__package__).joinpath("zeroshot.json").read_text(encoding="utf-8"))


def clip_benchmark_names(dataset: str) -> list[str]:
    """clip-benchmark's class names of `dataset` (ours: flowers102, not flowers), in its label order.
    The catalog takes GTSRB's and Flowers102's from here: torchvision names their classes 0..n-1."""
    return list(_data()["classnames"][NAMES_FROM[dataset]])


@cache
def _by_own_name(dataset: str) -> dict[str, str]:
    """The dataset's own class name -> CLIP's, paired in label order: the catalog's static list (SVHN's
    digits, EuroSAT's folders) or the data file's (ImageNet's WordNet ids, Caltech 101's folders)."""
    from continual.datasets.catalog import DATASETS  # here: the catalog imports this module

    if dataset not in NAMES_FROM:
        return {}
    key = NAMES_FROM[dataset]
    readable = _data()["classnames"][key]
    table = {}
    for own in (_data()["dataset_names"].get(key), DATASETS[dataset].class_names if dataset in DATASETS else None):
        if own is not None and len(own) == len(readable):  # a list of another length is not in this order
            table.update(zip(own, readable))
    return table


def _spaced(dataset: str, name: str) -> str:
    """A dataset's own class name made readable: `_` (and SUN397's `/`) as spaces, as clip-benchmark does.
    Hyphens stay: they belong to names (T-shirt, hard-leaved pocket orchid, F-16A/B)."""
    if dataset == "cub200":
        name = re.sub(r"^\d+\.", "", name)  # CUB's folders are 001.Black_footed_Albatross
    for sep in "_/" if dataset == "sun397" else "_":
        name = name.replace(sep, " ")
    return " ".join(name.split()) or name


def readable_names(dataset: str, class_names: list[str]) -> list[str]:
    """CLIP's names for these classes of `dataset` (its own names, any subset, any order): from
    clip-benchmark where it has the dataset's list, else the name with `_` as spaces (image folders too)."""
    table = _by_own_name(dataset)
    return [table.get(name) or _spaced(dataset, name) for name in class_names]


def templates(dataset: str) -> list[str]:
    """The dataset's prompt templates from the CLIP zero-shot literature (`{}` where the name goes), else GENERIC."""
    if dataset not in TEMPLATES_FROM:
        return list(GENERIC)
    return [t.replace("{c}", "{}") for t in _data()["templates"][TEMPLATES_FROM[dataset]]]


def template_problem(template: str) -> str | None:
    """Why `template` cannot be a prompt template (None: it can). It must hold `{}` exactly once, where the
    class name goes: open_clip fills it with `template.format(name)`, and `{{`/`}}` are literal braces."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError:  # "Single '}' encountered in format string"
        return "has an unmatched brace ({{ and }} are literal braces)"
    if fields == [("", "", None)]:
        return None
    if any(name == "c" for name, _, _ in fields):
        return "{c} is clip-benchmark's spelling: write {} where the class name goes"
    if not fields:
        return "needs {} where the class name goes (e.g. 'a photo of a {}.')"
    return "must hold {} exactly once and nothing else in braces ({{ and }} are literal braces)"
