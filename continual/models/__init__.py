"""Pre-trained backbones, per-task heads, and zero-shot heads.

    backbone      Backbone (features + taps), Head, TaskModel, ModelError
    efficientnet  EfficientNet-Lite0, ImageNet weights shipped in a pip package (works offline)
    clip          any open_clip architecture; only the image tower is fine-tuned; zero-shot heads
    weights       reading the user's weight files (torch.load(weights_only=True), errors naming the file;
                  NaN, meta or integer tensors refused)
"""

from __future__ import annotations

import os
from pathlib import Path

from continual import model_catalog
from continual.model_catalog import (EFFICIENTNET, EXPORT_WEIGHTS, FAMILIES, LOCAL_DIR, OPEN_CLIP, TIMM,
                                     export_problem, is_export)
from continual.models import clip, efficientnet, timm_models
from continual.models.backbone import Backbone, Head, ModelError, TaskModel
from continual.models.clip import text_tower, zero_shot_head

__all__ = ["Backbone", "Head", "ModelError", "TaskModel", "build_backbone", "export_card", "text_tower",
           "zero_shot_head"]


def build_backbone(model_cfg) -> Backbone:
    """model_cfg duck-typed: family, arch (str|None), pretrained (str|None), image_size (int|None), head_init."""
    family = model_cfg.family
    image_size = getattr(model_cfg, "image_size", None)
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0):
        raise ModelError("image_size", f"must be a positive integer, got {image_size!r}")
    # Fail before training starts rather than when the first zero-shot head is built.
    if getattr(model_cfg, "head_init", None) == "zero_shot" and family != OPEN_CLIP:
        raise ModelError("head_init", f"zero_shot heads need a text tower (family open_clip), not {family!r}")

    builders = {EFFICIENTNET: efficientnet.build, OPEN_CLIP: clip.build, TIMM: timm_models.build}
    if family not in builders:
        raise ModelError("family", f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    # A Path is fine too; `~/w.pt` is the user's home, as `continual validate` read it (a tag has no `~`).
    pretrained = None if model_cfg.pretrained is None else os.path.expanduser(str(model_cfg.pretrained))
    arch = model_cfg.arch
    if pretrained is not None and is_export(pretrained):
        arch, pretrained, image_size = from_export(family, arch, pretrained, image_size)
    return builders[family](arch=arch, pretrained=pretrained, image_size=image_size)


def export_card(folder: str | Path) -> dict:
    """The card (continual.json) of a model folder continual exported (continual/export.py), or ModelError."""
    try:
        return model_catalog.export_card(folder)
    except model_catalog.CardError as err:
        raise ModelError(err.key, err.message) from None


def from_export(family: str, arch: str | None, folder: str,
                image_size: int | None) -> tuple[str | None, str | None, int]:
    """(arch, pretrained, image_size) that load the exported model in `folder` with its family's own loader:
    EfficientNet's state dict, timm's model.safetensors, open_clip's local-dir. The arch must be the export's
    (timm, open_clip: it says what the weights fit); image_size defaults to the size it was trained at."""
    card = export_card(folder)
    if (problem := export_problem(family, arch, folder, card)) is not None:
        raise ModelError(*problem)
    size = image_size or card.get("image_size")
    weights = str(Path(folder) / EXPORT_WEIGHTS[family])
    if family == OPEN_CLIP:  # the folder is open_clip's local-dir: its own config and weights
        return f"{LOCAL_DIR}{folder}", None, size
    return arch, weights, size
