"""open_clip models: any architecture's image tower is the backbone, its text tower (never trained)
makes zero-shot heads. open_clip is imported inside the functions: it takes ~2.5 s to import (timm
and friends), which EfficientNet-only runs should not pay."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from continual.files import BadFile, read_json
from continual.model_catalog import (HF_HUB, LOCAL_DIR, LOCAL_DIR_CONFIG, OPEN_CLIP, config_file, example_archs,
                                     local_dir_problem, model_config_problem, non_square, own_weights, patch_misfit,
                                     untapped_tower)
from continual.models.backbone import Backbone, Head, ModelError
from continual.models.weights import as_state_dict, check_state_fits, check_values, one_line, read_checkpoint
from continual.network import reachable as _reachable  # tests stand in for the network here


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

    def forward(self, x: torch.Tensor, taps: list[int] | None = None):
        if taps is None:
            return self.visual(x)  # the projected embedding (embed_dim), not normalised here
        return self._forward_taps(x, taps)

    def _vit_ends(self) -> list[int]:
        # The paper's code: ln_pre output, then the residual stream after each quarter of the blocks.
        # Indices are de-duplicated for towers under 4 blocks (a repeated tap would count twice in LDIFS).
        n = len(self.visual.transformer.resblocks)
        return sorted({math.ceil(n * q / 4) - 1 for q in (1, 2, 3, 4)})

    @property
    def tap_names(self) -> list[str]:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        if isinstance(self.visual, VisionTransformer):
            return ["ln_pre"] + [f"resblocks.{i}" for i in self._vit_ends()]
        if isinstance(self.visual, ModifiedResNet):
            return ["stem"] + [f"layer{i}" for i in range(1, 5)]
        raise ModelError("arch", untapped_tower(type(self.visual).__name__))

    def _forward_taps(self, x: torch.Tensor, wanted: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        from open_clip.transformer import VisionTransformer

        v = self.visual
        if isinstance(v, VisionTransformer):
            # VisionTransformer.forward step by step (open_clip/transformer.py): _embeds ends with ln_pre
            # (tap 0); the transformer's forward_intermediates returns the chosen blocks' outputs batch-first
            # whichever way its blocks run (older open_clip ran them (L, B, D)).
            x = v._embeds(x)
            taps = {0: x} if 0 in wanted else {}
            ends = self._vit_ends()
            blocks = [ends[i - 1] for i in wanted if i > 0]
            if blocks:
                x, outputs = v.transformer.forward_intermediates(x, indices=blocks)
                taps.update(zip([i for i in wanted if i > 0], outputs, strict=True))
            else:
                x = v.transformer(x)
            pooled, _ = v._pool(x)
            return (pooled @ v.proj if v.proj is not None else pooled), taps
        # ModifiedResNet (tap_names refused any other tower before this is called): stem, layer1..4. Always
        # all five: open_clip 3.3's forward_intermediates stops after the last index asked for unless
        # stop_early (its test is inverted), and would pool an early layer.
        out = v.forward_intermediates(x)
        return out["image_features"], {i: out["image_intermediates"][i] for i in wanted}


def _torch_state(path: str) -> dict[str, torch.Tensor]:
    """A torch.save'd CLIP checkpoint as open_clip reads it, with errors naming the file in one line."""
    state = read_checkpoint(path)  # raises on unreadable or unsafe files
    if isinstance(state, dict) and "state_dict" in state:  # open_clip's training checkpoints
        state = state["state_dict"]
    state = as_state_dict(state, path)
    return {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel


def _open_clip_load_error(path: str, clip: nn.Module, arch: str, err: Exception) -> ModelError:
    """Why open_clip could not load `path`, in one line: its own errors are paragraphs (a strict
    load_state_dict lists every missing key). Read the file again only to say what is wrong with it."""
    if not path.endswith(_OTHER_READERS):
        check_state_fits(_torch_state(path), clip, what=f"open_clip {arch}", path=path)
    return ModelError("pretrained", f"cannot load {path!r} into open_clip {arch}: {one_line(err)}")


_OTHER_READERS = (".safetensors", ".npz", ".npy")  # files open_clip reads without torch.load
# What of a pretrained tag's settings shapes the input (open_clip's PreprocessCfg, less `size`: the
# model's own size wins, as in create_model).
_TAG_PREPROCESS = ("mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def _cached_tag_file(tag_cfg: dict) -> str | None:
    """The cached file of a tag's weights on the Hugging Face hub (where open_clip takes every tag from,
    safetensors first), or None when it is not cached or the tag's weights come from elsewhere."""
    if not tag_cfg.get("hf_hub") or tag_cfg.get("file"):
        return None
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(tag_cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    # The .safetensors twin that open_clip tries first (open_clip.pretrained._get_safe_alternatives).
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for name in names:
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):  # else None (not cached) or a marker that the hub has no such file
            return cached
    return None


def _check_download_possible(arch: str, tag: str, tag_cfg: dict) -> None:
    """Refuse at once a tag whose weights are not on this machine and cannot be fetched: open_clip (through
    huggingface_hub) would retry for about a minute, printing some 45 warnings, before failing."""
    if tag_cfg.get("file"):
        return
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import constants

        url, cache, offline = constants.ENDPOINT, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    else:  # a plain URL, cached by open_clip under ~/.cache/clip
        url, cache, offline = tag_cfg.get("url", ""), os.path.expanduser("~/.cache/clip"), False
        if not url or os.path.isfile(os.path.join(cache, os.path.basename(url))):
            return
    if offline:
        why = "HF_HUB_OFFLINE is set"
    elif not _reachable(url):
        from urllib.parse import urlparse

        why = f"{urlparse(url).hostname} cannot be reached from this machine"
    else:
        return
    raise ModelError("pretrained", f"open_clip weights {tag!r} for {arch} are not in the local cache ({cache}) "
                                   f"and {why}: download them on a machine with network (e.g. "
                                   f"open_clip.create_model({arch!r}, pretrained={tag!r})) and copy {cache} here, "
                                   "or give a local checkpoint file as model.pretrained")


def build(*, arch: str | None, pretrained: str | None, image_size: int | None) -> Backbone:
    """`arch`: an open_clip architecture name, `local-dir:<folder>` (open_clip_config.json and weights,
    as open_clip and the HF hub save a model), or a model config JSON file (the user's architecture,
    registered under its file name); `pretrained`: a tag, a checkpoint file, or None (random)."""
    import open_clip

    if arch is not None and arch.startswith(LOCAL_DIR):
        return _build_local_dir(open_clip, arch, pretrained=pretrained, image_size=image_size)
    if arch is not None and arch.startswith(HF_HUB):
        return _build_hf_hub(open_clip, arch, pretrained=pretrained, image_size=image_size)
    if arch is not None and arch.lower().endswith(".json"):
        arch = _register_config(open_clip, arch)
    known = open_clip.list_models()
    if arch not in known:
        examples = ", ".join(example_archs(known))
        raise ModelError("arch", f"unknown open_clip architecture {arch!r} (e.g. {examples}, ...)")

    kwargs = dict(force_image_size=image_size, pretrained_text=False, weights_only=True)
    path = None
    if pretrained is None:
        clip = _create(open_clip, arch, **kwargs)  # random init: tests and smoke runs only
    elif os.path.isfile(pretrained):
        path = pretrained
        clip = _create(open_clip, arch, **kwargs)
    elif os.path.isdir(pretrained):
        raise ModelError("pretrained", f"{pretrained!r} is a directory; expected an open_clip tag for {arch} "
                                       "or a checkpoint file")
    elif tag_cfg := open_clip.get_pretrained_cfg(arch, pretrained):
        # OpenAI weights were trained with QuickGELU; open_clip 3.x only warns on a mismatch, and the
        # plain configs (e.g. ViT-B-32) use nn.GELU, so follow the tag rather than the arch.
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu"))
        if cached := _cached_tag_file(tag_cfg):
            # The file open_clip would resolve the tag to, with the tag's preprocessing, and no request to
            # the hub: without network, huggingface_hub retries for a minute before it uses its cache.
            tag_preprocess = {k: v for k, v in tag_cfg.items() if k in _TAG_PREPROCESS}
            source, kwargs["force_preprocess_cfg"] = cached, tag_preprocess
        else:
            _check_download_possible(arch, pretrained, tag_cfg)
            source = pretrained
        try:
            clip = open_clip.create_model(arch, pretrained=source, **kwargs)
        except Exception as e:
            where = f" (cached as {source})" if source != pretrained else ""
            raise ModelError("pretrained", f"could not load open_clip weights {pretrained!r} for {arch}{where}: "
                                           f"{one_line(e)}") from e
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ModelError("pretrained", f"{pretrained!r} is neither an open_clip tag for {arch} "
                                       f"(known: {', '.join(tags) or 'none'}) nor an existing file")
    if path is not None:
        # A local checkpoint holds the whole CLIP model's state dict (open_clip's format). Note: for OpenAI
        # weights saved locally, pick the "-quickgelu" arch so the activation matches.
        if not path.endswith(_OTHER_READERS):  # read here too: open_clip loads NaN or integers without a word
            check_values(_torch_state(path), clip, what=f"open_clip {arch}", path=path)
        try:
            open_clip.load_checkpoint(clip, path, strict=True, weights_only=True)
        except Exception as e:
            raise _open_clip_load_error(path, clip, arch, e) from e
        if path.endswith(_OTHER_READERS):
            check_values(clip.state_dict(), clip, what=f"open_clip {arch}", path=path)  # NaN or inf, as loaded

    embed_dim = open_clip.get_model_config(arch)["embed_dim"]  # timm towers have no output_dim attribute
    return _visual(clip, arch=arch, embed_dim=embed_dim)


def _create(open_clip, arch: str, **kwargs) -> nn.Module:
    """open_clip's model for `arch`, or ModelError: a user's model config can be JSON of the right keys and
    still not one open_clip can build (`"vision_cfg": []`)."""
    try:
        return open_clip.create_model(arch, **kwargs)
    except Exception as e:
        raise ModelError("arch", f"cannot build open_clip {arch}: {one_line(e)}") from e


def _visual(clip: nn.Module, *, arch: str, embed_dim: int) -> Backbone:
    size = clip.visual.preprocess_cfg["size"]
    height, width = (size, size) if isinstance(size, int) else size
    if height != width:
        raise ModelError("image_size", non_square(arch, height, width))
    patch = getattr(clip.visual, "patch_size", None)
    if patch is not None and (misfit := patch_misfit(height, arch, patch[0])):
        raise ModelError("image_size", misfit)
    return OpenClipVisual(clip, arch=arch, embed_dim=embed_dim, image_size=height)


def _model_config(path: Path, *, nested: bool) -> dict:
    """An open_clip model config read from `path` (under "model_cfg" in a local-dir's file), or ModelError."""
    try:
        doc = read_json(path)
    except BadFile as err:  # nested too deeply, not JSON, a folder or a FIFO: the message names the file
        raise ModelError("arch", f"cannot read the model config: {err}") from None
    except OSError as err:
        raise ModelError("arch", f"cannot read the model config {str(path)!r}: {one_line(err)}") from None
    cfg = doc.get("model_cfg") if nested and isinstance(doc, dict) else doc
    if problem := model_config_problem(cfg, path, nested=nested):
        raise ModelError("arch", problem)
    return cfg


def _register_config(open_clip, text: str) -> str:
    """A user's model config JSON registered with open_clip under its file name (which names it)."""
    path, nested = config_file(text)
    if not path.is_file():
        raise ModelError("arch", f"model config file not found: {text!r}")
    _model_config(path, nested=nested)
    open_clip.add_model_config(path)
    return path.stem


def _build_local_dir(open_clip, arch: str, *, pretrained: str | None, image_size: int | None) -> Backbone:
    folder = Path(arch[len(LOCAL_DIR):]).expanduser()
    if pretrained is not None:  # open_clip ignores it with a log line: a run would use other weights than asked
        raise ModelError("pretrained", own_weights(arch))
    if problem := local_dir_problem(arch):  # its config file or its weights missing
        raise ModelError("arch", problem)
    path, nested = config_file(arch)
    cfg = _model_config(path, nested=nested)
    try:
        clip = open_clip.create_model(f"{LOCAL_DIR}{folder}", force_image_size=image_size, pretrained_text=False,
                                      weights_only=True)
    except Exception as e:
        raise ModelError("arch", f"cannot load {arch}: {one_line(e)}") from e
    check_values(clip.state_dict(), clip, what=f"open_clip {arch}", path=str(folder))
    return _visual(clip, arch=f"{LOCAL_DIR}{folder}", embed_dim=cfg["embed_dim"])


def _build_hf_hub(open_clip, arch: str, *, pretrained: str | None, image_size: int | None) -> Backbone:
    """`hf-hub:<org>/<repo>`: the repo's open_clip_config.json and weights, from the local hub cache when
    they are there (as a local-dir: no request, so no minute of retries without network), else downloaded
    by open_clip's own hub code when the hub can be reached, else a ModelError saying how to bring them."""
    from huggingface_hub import constants, snapshot_download

    repo = arch[len(HF_HUB):]
    if pretrained is not None:  # open_clip ignores it: a run would use other weights than asked
        raise ModelError("pretrained", own_weights(arch))
    try:
        folder = snapshot_download(repo, local_files_only=True,
                                   allow_patterns=[LOCAL_DIR_CONFIG, "*.safetensors", "*.bin"])
    except Exception:  # not cached (huggingface_hub raises LocalEntryNotFoundError, or a ValueError on a bad id)
        folder = None
    if folder is not None and (Path(folder) / LOCAL_DIR_CONFIG).is_file():
        return _build_local_dir(open_clip, f"{LOCAL_DIR}{folder}", pretrained=None, image_size=image_size)
    why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
           else None if _reachable(constants.ENDPOINT) else f"{constants.ENDPOINT} cannot be reached from this machine")
    if why is not None:
        raise ModelError("arch", f"{arch} is not in the local hub cache ({constants.HF_HUB_CACHE}) and {why}: "
                                 f"download it where there is network (huggingface-cli download {repo}) and copy "
                                 "the cache here, or give its folder as arch: local-dir:<folder>")
    try:
        clip = open_clip.create_model(arch, force_image_size=image_size, pretrained_text=False, weights_only=True)
    except Exception as e:
        raise ModelError("arch", f"cannot load {arch} from the hub: {one_line(e)}") from e
    check_values(clip.state_dict(), clip, what=f"open_clip {arch}", path=arch)
    return _visual(clip, arch=arch, embed_dim=open_clip.get_model_config(arch)["embed_dim"])


def local_dir_config(backbone: Backbone) -> dict:
    """open_clip's local-dir config (open_clip_config.json: `model_cfg` and `preprocess_cfg`) of the CLIP model
    whose image tower `backbone` is, as it was built: its architecture's config at the image size it runs at,
    QuickGELU where its blocks use it (a tag's `quick_gelu`), and the tower's own preprocessing."""
    import copy

    import open_clip
    from open_clip.transformer import QuickGELU

    arch = text_tower(backbone).arch
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ModelError("arch", f"open_clip has no model config for {arch!r} to export")
    cfg = copy.deepcopy(cfg)
    cfg["vision_cfg"]["image_size"] = backbone.image_size
    # Either tower: a ResNet image tower has no GELU, while its text tower was built with QuickGELU (OpenAI's RN50).
    towers = (backbone.visual, text_tower(backbone).model)
    if any(isinstance(module, QuickGELU) for tower in towers for module in tower.modules()):
        cfg["quick_gelu"] = True
    preprocess = {k: v for k, v in backbone.visual.preprocess_cfg.items() if k != "size"}  # the model's own size
    return {"model_cfg": cfg, "preprocess_cfg": preprocess}


def clip_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The whole CLIP model's state dict (open_clip's keys) of the open_clip `backbone`: its image tower under
    `visual.`, and the frozen text side it shares."""
    state = {f"visual.{k}": v for k, v in backbone.visual.state_dict().items()}
    state.update(text_tower(backbone).model.state_dict())  # `visual` is None there: the text side and logit_scale
    return state


def text_tower(backbone: Backbone) -> _SharedFrozen:
    """The CLIP text side of an open_clip backbone (`.model`: the CLIP model less its image tower, frozen
    and shared by every copy of the backbone; `.tokenizer`), or ModelError for a backbone without one.
    A method that trains the text tower (FLYP) trains its own copy of `.model`."""
    if not isinstance(backbone, OpenClipVisual):
        raise ModelError("family", f"{backbone.family} has no text tower (CLIP models only: family open_clip)")
    return backbone._text


def zero_shot_head(backbone: Backbone, class_names: list[str], *,
                   templates: Sequence[str | Callable[[str], str]] | None = None) -> Head:
    """A Head whose rows are CLIP text embeddings of the class names (open_clip backbones only).

    Each class: embed every template, L2-normalise, average, renormalise (open_clip's
    build_zero_shot_classifier), then scale by exp(logit_scale) so the logits match CLIP's own
    (as wise-ft's ClassificationHead does). Templates are "{}"-format strings or callables. The names are
    used as given: continual/datasets/prompts.py makes a dataset's readable, and has its templates.
    """
    import open_clip

    if not isinstance(backbone, OpenClipVisual):
        raise ModelError("head_init", f"zero-shot heads need an open_clip backbone (a text tower), not {backbone.family!r}")
    # open_clip's generic 7-prompt ensemble (from CLIP's ImageNet notebook); the runner passes a dataset's own.
    templates = list(templates) if templates is not None else list(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    device = next(backbone.parameters()).device
    text = backbone._text
    text.model.to(device)  # stays there: the next task's head needs it too, and it is small next to activations
    return text_head(text.model, text.tokenizer, class_names, templates, device=device)


@torch.no_grad()
def text_head(text: nn.Module, tokenizer, names: list[str], templates: Sequence[str | Callable[[str], str]], *,
              device: torch.device) -> Head:
    """The zero-shot head of a text tower (`text`: a CLIP model's text side, in eval mode; FLYP passes its
    own trained copy): rows are the classes' template-averaged, renormalised text embeddings times
    exp(logit_scale), bias 0, on L2-normalised image features."""
    import open_clip

    weights = open_clip.build_zero_shot_classifier(text, tokenizer, list(names), list(templates), device=device)
    head = Head(weights.shape[0], len(names), normalize=True).to(device)
    head.linear.weight.copy_(weights.T * text.logit_scale.exp())
    head.linear.bias.zero_()
    return head
