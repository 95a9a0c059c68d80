"""Pre-trained backbones, per-task heads, and zero-shot heads.

    backbone      Backbone (features + taps), Head, TaskModel, ModelError
    efficientnet  EfficientNet-Lite0, ImageNet weights shipped in a pip package (works offline)
    clip          any open_clip architecture; only the image tower is fine-tuned; zero-shot heads
    weights       reading the user's weight files (torch.load(weights_only=True), errors naming the file;
                  NaN, meta or integer tensors refused)
"""

from __future__ import annotations

import os

from continual.model_catalog import EFFICIENTNET, FAMILIES, OPEN_CLIP, TIMM
from continual.models import clip, efficientnet, timm_models
from continual.models.backbone import Backbone, Head, ModelError, TaskModel
from continual.models.clip import text_tower, zero_shot_head

__all__ = ["Backbone", "Head", "ModelError", "TaskModel", "build_backbone", "text_tower", "zero_shot_head"]


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
    return builders[family](arch=model_cfg.arch, pretrained=pretrained, image_size=image_size)
