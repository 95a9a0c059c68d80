"""What models there are, without torch: the families, the forms an open_clip `arch` takes, the architectures
named as examples, and the rules a model config must meet, with their messages.

Both sides read them here, so that the two never drift: the light checks (`continual validate`, `continual
list`: config/loading.py, from names and config files only) and the builders (models/, on the model they
build). Like datasets/catalog.py for datasets; it lives outside models/ because importing that package
loads torch.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

from continual.files import BadFile, read_json

Family = Literal["efficientnet_lite0", "open_clip", "timm"]  # the YAML's model.family
FAMILIES = typing.get_args(Family)
EFFICIENTNET, OPEN_CLIP, TIMM = FAMILIES

# open_clip's own forms of a model the user brings, besides an architecture name and a model config JSON file.
LOCAL_DIR = "local-dir:"  # a folder saved by open_clip or the hub: open_clip_config.json and the weights
HF_HUB = "hf-hub:"  # a model repo on the Hugging Face hub: hf-hub:<org>/<repo>
LOCAL_DIR_CONFIG = "open_clip_config.json"  # a local-dir's model config, under "model_cfg"
LOCAL_DIR_WEIGHTS = ("*.safetensors", "*.bin", "*.pth")  # none: open_clip would warn and build random weights

# A model folder written by continual (continual/export.py; docs/export.md): its card, its task heads, and per
# family the weights in the format the family loads (open_clip's local-dir adds LOCAL_DIR_CONFIG, timm its
# config.json). `model.pretrained` naming such a folder loads it (and `arch: local-dir:<folder>` for open_clip).
EXPORT_CARD = "continual.json"
EXPORT_HEADS = "heads.safetensors"
EXPORT_WEIGHTS = {EFFICIENTNET: "model.pth", OPEN_CLIP: "open_clip_model.safetensors", TIMM: "model.safetensors"}


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder written by continual's export (it holds EXPORT_CARD)."""
    return (Path(path).expanduser() / EXPORT_CARD).is_file()


class CardError(ValueError):
    """An exported model's card that cannot be read: `key` the model config's key at fault, as ModelError's."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def export_card(folder: str | Path) -> dict:
    """The card (EXPORT_CARD) of a model folder continual exported (continual/export.py), or CardError."""
    path = Path(folder).expanduser() / EXPORT_CARD
    try:
        card = read_json(path)
    except (BadFile, OSError) as err:
        raise CardError("pretrained", f"cannot read the exported model's card {str(path)!r}: {err}") from None
    if not isinstance(card, dict) or card.get("family") not in FAMILIES:
        raise CardError("pretrained", f"{str(path)!r} is not the card of an exported model (no known family)")
    return card


def export_problem(family: str, arch: str | None, folder: str, card: dict | None = None) -> tuple[str, str] | None:
    """(key, message) where the model config naming the exported model `folder` as its pretrained cannot load it:
    its card unreadable, another family, or (timm, open_clip) another architecture than the weights fit; None
    where it can. `card`: the folder's, already read. `continual validate` says it from the card alone; the
    builder (models.from_export) raises it."""
    try:
        card = export_card(folder) if card is None else card
    except CardError as err:
        return err.key, err.message
    if card["family"] != family:
        return "pretrained", (f"{folder!r} holds an exported {card['family']} model, not {family}: "
                              f"set model.family: {card['family']}")
    if family != EFFICIENTNET and arch != card.get("arch") and arch != f"{LOCAL_DIR}{folder}":
        return "arch", (f"{folder!r} holds {family} {card.get('arch')!r}, not {arch!r}: "
                        f"set model.arch: {card.get('arch')}")
    return None


# open_clip architectures a message names as examples (an unknown arch; `continual list`, and the tags
# `continual list --pretrained` shows): OpenAI CLIP's ViT-B/32, B/16, L/14 and ResNet-50.
EXAMPLE_ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50")


def example_archs(known) -> list[str]:
    """The example architectures among `known` (the names this open_clip knows), in EXAMPLE_ARCHS order."""
    return [arch for arch in EXAMPLE_ARCHS if arch in known]


def own_weights(arch: str) -> str:
    """A `local-dir:` or `hf-hub:` arch with a `pretrained` too: open_clip ignores it (a run would use other
    weights than asked)."""
    return f"{arch} holds its own weights; leave pretrained unset"


def config_file(arch: str) -> tuple[Path, bool]:
    """The model config file of a `local-dir:` or model config JSON `arch`, and whether the config is nested
    under "model_cfg" in it (a local-dir's is)."""
    if arch.startswith(LOCAL_DIR):
        return Path(arch[len(LOCAL_DIR):]).expanduser() / LOCAL_DIR_CONFIG, True
    return Path(arch).expanduser(), False


def local_dir_problem(arch: str) -> str | None:
    """What a `local-dir:<folder>` lacks (its model config, its weights), or None. Its config's contents:
    model_config_problem, once read."""
    folder = Path(arch[len(LOCAL_DIR):]).expanduser()
    if not (folder / LOCAL_DIR_CONFIG).is_file():
        return (f"{arch}: no {LOCAL_DIR_CONFIG} in {folder} (a local-dir is a folder saved by open_clip or "
                "downloaded from the hub, with its weights)")
    if not any(next(folder.glob(pattern), None) for pattern in LOCAL_DIR_WEIGHTS):
        return f"{arch}: no weights (.safetensors, .bin or .pth) in {folder}"
    return None


def model_config_problem(cfg, path: Path, *, nested: bool) -> str | None:
    """Why `cfg`, read from `path` (under "model_cfg" when `nested`: a local-dir's), is no open_clip model
    config, or None."""
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        where = " under model_cfg" if nested else ""
        return f"{str(path)!r} is not an open_clip model config: no {', '.join(missing)}{where}"
    return None


def non_square(arch: str, height: int, width: int) -> str:
    return f"{arch} expects non-square {height}x{width} input; only square images are supported"


def patch_misfit(size: int, arch: str, patch: int) -> str | None:
    """A ViT tower silently drops the border pixels that do not fill a patch: refused."""
    return f"{size} is not a multiple of {arch}'s patch size {patch}" if size % patch else None


def untapped_tower(tower: str) -> str:
    """Why an open_clip image tower has no LDIFS taps (the taps of models/clip.py's OpenClipVisual): named by
    its class, built (OpenClipVisual.tap_names) or read from its config (config/loading.py)."""
    return f"LDIFS taps are defined for ViT and ModifiedResNet towers (this open_clip tower is {tower})"
