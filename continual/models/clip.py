"""open_clip models: any architecture's image tower is the backbone, its text tower (never trained)
makes zero-shot heads. open_clip is imported inside the functions: it takes ~2.5 s to import (timm
and friends), which EfficientNet-only runs should not pay."""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import torch
from torch import nn

from continual.models.backbone import OPEN_CLIP, Backbone, Head, ModelError
from continual.models.weights import as_state_dict, check_state_fits, one_line, read_checkpoint


class _SharedFrozen:
    """Holds the CLIP text side outside the Backbone's module tree.

    Why not a frozen submodule: the text tower is never fine-tuned, so keeping it out of
    `parameters()` / `state_dict()` means optimizers, weight decay, LDIFS and backbone checkpoints
    only ever see the image tower, with nothing to filter. Deep copies share it (the LDIFS reference
    is a deepcopy of the backbone; duplicating a frozen text tower would only cost memory).
    """

    def __init__(self, model: nn.Module, arch: str):
        self.model = model.requires_grad_(False).eval()
        self.arch = arch
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # built on first use: HF tokenizers would download at build time
            import open_clip
            self._tokenizer = open_clip.get_tokenizer(self.arch)
        return self._tokenizer

    def __deepcopy__(self, memo):
        return self


class OpenClipVisual(Backbone):
    def __init__(self, clip: nn.Module, *, arch: str, embed_dim: int, image_size: int):
        pp = clip.visual.preprocess_cfg  # set by open_clip.create_model (tag-specific mean/std if any)
        super().__init__(family=OPEN_CLIP, feature_dim=embed_dim, image_size=image_size,
                         # The paper's and wise-ft's heads act on L2-normalised CLIP image embeddings.
                         normalize_features=True, mean=pp["mean"], std=pp["std"])
        self.visual = clip.visual
        clip.visual = None  # what remains of the CLIP model is the text side and logit_scale
        self._text = _SharedFrozen(clip, arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)  # the projected embedding (embed_dim), not normalised here

    def _taps(self) -> list[tuple[str, nn.Module, bool]]:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        v = self.visual
        if isinstance(v, VisionTransformer):
            # The paper's code: ln_pre output, then the residual stream after each quarter of the blocks.
            # Indices are de-duplicated for towers under 4 blocks (a repeated tap would count twice in LDIFS).
            n = len(v.transformer.resblocks)
            ends = sorted({math.ceil(n * q / 4) - 1 for q in (1, 2, 3, 4)})
            # Recent open_clip runs blocks batch-first; older/hand-built towers run (L,B,D).
            seq_first = not getattr(v.transformer, "batch_first", False)
            return [("ln_pre", v.ln_pre, False)] + [(f"resblocks.{i}", v.transformer.resblocks[i], seq_first) for i in ends]
        if isinstance(v, ModifiedResNet):
            # The stem is a method, not a module; its last op is `avgpool` (blocks own their own avgpools).
            return [("stem", v.avgpool, False)] + [(f"layer{i}", getattr(v, f"layer{i}"), False) for i in range(1, 5)]
        raise ModelError("arch", "LDIFS taps are defined for ViT and ModifiedResNet towers "
                                 f"(this open_clip tower is {type(v).__name__})")


def _open_clip_load_error(path: str, clip: nn.Module, arch: str, err: Exception) -> ModelError:
    """Why open_clip could not load `path`, in one line: its own errors are paragraphs (a strict
    load_state_dict lists every missing key). Read the file again only to say what is wrong with it."""
    if not path.endswith((".safetensors", ".npz", ".npy")):  # other readers than torch.load
        state = read_checkpoint(path)  # raises on unreadable or unsafe files
        if isinstance(state, dict) and "state_dict" in state:  # open_clip's training checkpoints
            state = state["state_dict"]
        state = as_state_dict(state, path)
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
        check_state_fits(state, clip, what=f"open_clip {arch}", path=path)
    return ModelError("pretrained", f"cannot load {path!r} into open_clip {arch}: {one_line(err)}")


def build(*, arch: str | None, pretrained: str | None, image_size: int | None) -> Backbone:
    import open_clip

    known = open_clip.list_models()
    if arch not in known:
        examples = ", ".join(a for a in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50") if a in known)
        raise ModelError("arch", f"unknown open_clip architecture {arch!r} (e.g. {examples}, ...)")

    kwargs = dict(force_image_size=image_size, pretrained_text=False, weights_only=True)
    path = None
    if pretrained is None:
        clip = open_clip.create_model(arch, **kwargs)  # random init: tests and smoke runs only
    elif os.path.isfile(pretrained):
        path = pretrained
        clip = open_clip.create_model(arch, **kwargs)
    elif os.path.isdir(pretrained):
        raise ModelError("pretrained", f"{pretrained!r} is a directory; expected an open_clip tag for {arch} "
                                       "or a checkpoint file")
    elif tag_cfg := open_clip.get_pretrained_cfg(arch, pretrained):
        try:
            # OpenAI weights were trained with QuickGELU; open_clip 3.x only warns on a mismatch, and the
            # plain configs (e.g. ViT-B-32) use nn.GELU, so follow the tag rather than the arch.
            clip = open_clip.create_model(arch, pretrained=pretrained,
                                          force_quick_gelu=bool(tag_cfg.get("quick_gelu")), **kwargs)
        except Exception as e:
            raise ModelError("pretrained", f"could not load open_clip weights {pretrained!r} for {arch}: {e}") from e
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ModelError("pretrained", f"{pretrained!r} is neither an open_clip tag for {arch} "
                                       f"(known: {', '.join(tags) or 'none'}) nor an existing file")
    if path is not None:
        # A local checkpoint holds the whole CLIP model's state dict (open_clip's format). Note: for OpenAI
        # weights saved locally, pick the "-quickgelu" arch so the activation matches.
        try:
            open_clip.load_checkpoint(clip, path, strict=True, weights_only=True)
        except Exception as e:
            raise _open_clip_load_error(path, clip, arch, e) from e

    size = clip.visual.preprocess_cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
        raise ModelError("image_size", f"{arch} expects non-square {height}x{width} input; only square images are supported")
    patch = getattr(clip.visual, "patch_size", None)
    if patch is not None and height % patch[0]:
        # A ViT silently drops the border pixels that do not fill a patch.
        raise ModelError("image_size", f"{height} is not a multiple of {arch}'s patch size {patch[0]}")
    embed_dim = open_clip.get_model_config(arch)["embed_dim"]  # timm towers have no output_dim attribute
    return OpenClipVisual(clip, arch=arch, embed_dim=embed_dim, image_size=height)


def zero_shot_head(backbone: Backbone, class_names: list[str], *,
                   templates: Sequence[str | Callable[[str], str]] | None = None) -> Head:
    """A Head whose rows are CLIP text embeddings of the class names (open_clip backbones only).

    Each class: embed every template, L2-normalise, average, renormalise (open_clip's
    build_zero_shot_classifier), then scale by exp(logit_scale) so the logits match CLIP's own
    (as wise-ft's ClassificationHead does). Templates are "{}"-format strings or callables.
    """
    import open_clip

    if not isinstance(backbone, OpenClipVisual):
        raise ModelError("head_init", f"zero-shot heads need an open_clip backbone (a text tower), not {backbone.family!r}")
    # open_clip's generic 7-prompt ensemble (from CLIP's ImageNet notebook); pass dataset-specific ones if known.
    templates = list(templates) if templates is not None else list(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    device = next(backbone.parameters()).device
    text = backbone._text
    text.model.to(device)  # stays there: the next task's head needs it too, and it is small next to activations
    # Folder-named classes (RESISC45 "bare_land", EuroSAT) read better to the text tower with spaces.
    names = [name.replace("_", " ") for name in class_names]
    weights = open_clip.build_zero_shot_classifier(text.model, text.tokenizer, names, templates, device=device)
    head = Head(backbone.feature_dim, len(class_names), normalize=True).to(device)
    with torch.no_grad():
        head.linear.weight.copy_(weights.T * text.model.logit_scale.exp())
        head.linear.bias.zero_()
    return head
