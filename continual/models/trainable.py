"""What of the backbone trains: `model.trainable` (docs/trainable.md), applied once to the run's model before step 0,
so that every method, ours and Avalanche's, trains the same set (each takes `requires_grad` parameters only:
Trainer.trainable_parameters). The heads always train. The pre-trained backbone the methods anchor to (LDIFS's
FrozenBackbone, ZSCL's teacher, L2-SP's and WiSE-FT's starting point) is never adapted: this works on the run's
copy.

    full         every parameter of the backbone (the default; the model is left exactly as built)
    lora         low-rank adapters (peft's LoRA) on `targets`, everything else frozen
    last_blocks  the last `n` blocks and what follows them (final norm, projection), the rest frozen
    bias         BitFit: every bias of the backbone, weights and norm scales frozen
    frozen       nothing of the backbone; the heads alone train

A checkpoint then holds only what trains (`saved_state`: the trained parameters plus the buffers, BatchNorm's
statistics among them), and a resume rebuilds the same adapted model (LoRA's A factors are drawn from the run's
seed) before loading them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from continual import seeds
from continual.model_catalog import EFFICIENTNET, OPEN_CLIP, TIMM
from continual.models.backbone import Backbone, ModelError

# LoRA's default targets per family (model.trainable.targets: null). Names are matched as peft matches
# target_modules: a module whose name is the target or ends with `.<target>`.
#   open_clip ViT: the attention's q/k/v projection (nn.MultiheadAttention's in_proj_weight) and the MLP's two
#     Linear layers. Not attn.out_proj: MultiheadAttention applies its weight without calling its forward, so a
#     LoRA there would never act (peft's own note on lora.MultiheadAttention).
#   timm: a ViT block's (ViT, DeiT, Swin, ...) attention and MLP Linear layers, as Hu et al. 2021 (arXiv 2106.09685)
#     adapt a transformer's attention weights; models without them (a ResNet) name their own.
#   efficientnet_lite0: every 1x1 convolution (each MBConv block's expansion and projection, and the head conv),
#     the Linear layers of a CNN; depthwise and strided convolutions are left as they are.
DEFAULT_TARGETS = {
    OPEN_CLIP: ("attn", "mlp.c_fc", "mlp.c_proj"),
    TIMM: ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    EFFICIENTNET: ("_expand_conv", "_project_conv", "_conv_head"),
}
ADAPTER = "default"  # peft's adapter name: parameter names read `<module>.lora_A.default.weight`


@dataclass(frozen=True)
class Applied:
    """What `apply` did to a backbone, kept on it (deep copies too): the mode, the parameters that train and the
    modules LoRA adapted."""

    kind: str
    trained: frozenset[str]  # names of the backbone's parameters that train
    adapted: tuple[str, ...] = ()  # lora: the modules adapted, by name


class LoraFactors(NamedTuple):
    """One adapted layer's update, scaling · B @ A (A and B flattened to matrices: a convolution's kernel too)."""

    a_key: str  # state_dict keys of A and B
    b_key: str
    a: nn.Parameter
    b: nn.Parameter
    scaling: float


def applied(backbone: nn.Module) -> Applied | None:
    """What `apply` did to `backbone`; None for a backbone as built (`full`, or never applied)."""
    return getattr(backbone, "_trainable", None)


def apply(backbone: Backbone, options, *, seed: int) -> Backbone:
    """Make `options` (`model.trainable`: kind, and lora's r, alpha, targets, last_blocks' n) true of `backbone`, in
    place, and return it; `seed` is the run's (LoRA's A factors are drawn from its own stream). ModelError naming
    the option (`trainable.targets`, `trainable.n`) where the model cannot do what it asks. `full` changes nothing."""
    kind = options.kind
    if kind == "full":
        return backbone
    adapted: tuple[str, ...] = ()
    if kind == "lora":
        adapted = _inject_lora(backbone, options, seed=seed)
        trained = {name for name, _ in backbone.named_parameters() if _is_lora(name)}
    elif kind == "last_blocks":
        trained = _last_blocks(backbone, options.n)
    elif kind == "bias":
        # BitFit (Ben Zaken, Goldberg, Ravfogel, ACL 2022): every bias term, LayerNorm's and BatchNorm's too,
        # as its code trains every parameter named bias; norm scales and every weight stay frozen.
        trained = {name for name, _ in backbone.named_parameters() if _is_bias(name)}
    elif kind == "frozen":
        trained = set()
    else:
        raise ModelError("trainable.kind", f"unknown mode {kind!r} (known: full, lora, last_blocks, bias, frozen)")
    for name, p in backbone.named_parameters():
        p.requires_grad_(name in trained)
    backbone._trainable = Applied(kind, frozenset(trained), adapted)
    return backbone


def _is_lora(name: str) -> bool:
    return any(part in ("lora_A", "lora_B") for part in name.split("."))


def _is_bias(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")  # nn.MultiheadAttention's in_proj_bias, a timm ViT's q_bias


def trainable_count(backbone: nn.Module) -> tuple[int, int]:
    """(elements of the backbone's parameters that train, elements of all of them)."""
    params = list(backbone.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe(backbone: nn.Module) -> str:
    """One line on what trains, for the run's start: `model.trainable lora: 12 modules (mlp.c_fc, mlp.c_proj, attn),
    14,336 of 72,512 backbone parameters train, and the heads` (the tiny CLIP of the tests)."""
    done = applied(backbone)
    kind = done.kind if done else "full"
    trains, total = trainable_count(backbone)
    where = f"{len(done.adapted)} modules ({', '.join(_kinds_of(done.adapted))}), " if done and done.adapted else ""
    return f"model.trainable {kind}: {where}{trains:,} of {total:,} backbone parameters train, and the heads"


# ---- LoRA ---------------------------------------------------------------------------------------------------

def _inject_lora(backbone: Backbone, options, *, seed: int) -> tuple[str, ...]:
    from peft import LoraConfig, inject_adapter_in_model  # ~6 s (it imports transformers): only when asked for

    targets = options.targets
    modules, parameters = _lora_targets(backbone, targets, defaults=targets is None)
    for name in modules:
        _plain_conv(backbone, name)
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, target_modules=modules or None,
                        target_parameters=parameters or None)
    # peft draws A (Kaiming-uniform) and B (zeros: the model starts exactly as pre-trained) from torch's CPU
    # generator: here from a stream of the run's seed, so a resume, every method and every device get the same A.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.derive(seed, "lora"))
        try:
            inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
        except (ValueError, TypeError, RuntimeError) as err:
            raise ModelError("trainable.targets", f"peft could not add LoRA to {', '.join(_kinds_of(modules))}: "
                                                  f"{str(err).splitlines()[0][:200]}") from None
    if backbone.family == EFFICIENTNET:  # its convolutions run channels-last (models/efficientnet.py); A and B too
        backbone.net.to(memory_format=torch.channels_last)
    return tuple(modules) + tuple(p.rsplit(".", 1)[0] for p in parameters)


def default_targets(backbone: Backbone) -> tuple[str, ...]:
    """The family's default targets; an open_clip model whose image tower is a timm model (`visual.trunk`,
    e.g. SigLIP's) takes timm's."""
    if backbone.family == OPEN_CLIP and hasattr(getattr(backbone, "visual", None), "trunk"):
        return DEFAULT_TARGETS[TIMM]
    return DEFAULT_TARGETS.get(backbone.family, ())


def _lora_targets(backbone: Backbone, targets: list[str] | None, *, defaults: bool) -> tuple[list[str], list[str]]:
    """The modules peft adapts (full names: Linear and Conv2d layers) and the parameters it adapts in place
    (nn.MultiheadAttention's in_proj_weight, through peft's target_parameters), or ModelError naming what cannot
    be. Each target given must match; of the defaults, those the model has (none at all is refused)."""
    named = dict(backbone.named_modules())
    what = _model_name(backbone)
    wanted = list(default_targets(backbone)) if defaults else list(targets)
    modules, parameters, problems = [], [], []
    for target in wanted:
        hits = [name for name in named if name == target or name.endswith("." + target)]
        if not hits and not defaults:
            problems.append(f"`{target}` names no module of {what}")
        refused = [(name, why) for name in hits if (why := _unadaptable(named, name))]
        if refused:
            more = f" and {len(refused) - 1} more like it" if len(refused) > 1 else ""
            problems.append(f"`{target}` names {refused[0][0]}{more}, {refused[0][1]}")
            continue
        for name in hits:
            if isinstance(named[name], nn.MultiheadAttention):
                parameters.append(f"{name}.in_proj_weight")
            else:
                modules.append(name)
    if problems:
        raise ModelError("trainable.targets", f"{'; '.join(problems)} (LoRA adapts Linear layers, "
                                              f"convolutions and nn.MultiheadAttention's q/k/v; this model has "
                                              f"{_examples(named)})")
    if not modules and not parameters:
        said = f"the defaults for {backbone.family} ({', '.join(wanted)}) match" if wanted else \
            f"{backbone.family} has no default targets, and none were given: they match"
        raise ModelError("trainable.targets", f"{said} no module of {what}: name its layers, e.g. {_examples(named)}")
    return modules, parameters


def _unadaptable(named: dict[str, nn.Module], name: str) -> str | None:
    """Why LoRA cannot adapt module `name`, or None."""
    module = named[name]
    parent = named.get(name.rsplit(".", 1)[0] if "." in name else "")
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        return ("nn.MultiheadAttention's output projection, whose weight it applies without calling the layer, so "
                "a LoRA there would never act (name the attention module itself: its q/k/v are adapted)")
    if isinstance(module, nn.MultiheadAttention):
        return None if module._qkv_same_embed_dim else "a MultiheadAttention with separate q/k/v weights"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1:
            return f"a grouped (depthwise) convolution ({module.groups} groups), which peft's LoRA does not adapt"
        padding = getattr(module, "static_padding", None)  # EfficientNet's TF-style "same" convolutions
        if padding is not None and not isinstance(padding, _NO_PADDING):
            return "a convolution padded by its own module (TF-style 'same'), which peft's LoRA would not pad alike"
        return None
    if isinstance(module, nn.Linear):
        return None
    return f"of type {type(module).__name__}, not a Linear layer, a convolution or a MultiheadAttention"


def _no_padding() -> tuple[type, ...]:
    try:
        from efficientnet_lite_pytorch.utils import Identity
    except ImportError:
        return (nn.Identity,)
    return (nn.Identity, Identity)


_NO_PADDING = _no_padding()


def _plain_conv(backbone: nn.Module, name: str) -> None:
    """An EfficientNet convolution that pads nothing (its 1x1 ones) as a plain nn.Conv2d holding the same
    parameters, the same computation (F.conv2d with the same arguments): peft builds LoRA's A and B by calling the
    adapted layer's class, and the library's class needs an image size. Other layers are left as they are."""
    owner_name, _, attr = name.rpartition(".")
    owner = backbone.get_submodule(owner_name) if owner_name else backbone
    conv = getattr(owner, attr)
    if type(conv) is nn.Conv2d or not isinstance(conv, nn.Conv2d) or not hasattr(conv, "static_padding"):
        return
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=tuple(conv.stride),
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                      device="meta")
    plain.weight = conv.weight
    if conv.bias is not None:
        plain.bias = conv.bias
    setattr(owner, attr, plain)


def _model_name(backbone: Backbone) -> str:
    tower = getattr(backbone, "visual", None) or getattr(backbone, "net", None) or backbone
    return f"{backbone.family} ({type(tower).__name__})"


def _kinds_of(names) -> list[str]:
    """Module names with their place in the model left out, each once: `resblocks.3.mlp.c_fc` -> `mlp.c_fc`."""
    kinds = []
    for name in names:
        parts = name.split(".")
        last = len(parts) - 1
        while last > 0 and parts[last].isdigit():  # a trailing index is part of the name: `downsample.0`
            last -= 1
        numbered = [i for i in range(last) if parts[i].isdigit()]
        kind = ".".join(parts[numbered[-1] + 1:] if numbered else parts[last:])
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def _examples(named: dict[str, nn.Module], limit: int = 8) -> str:
    adaptable = [name for name, module in named.items() if name and isinstance(module, (nn.Linear, nn.Conv2d,
                                                                                        nn.MultiheadAttention))
                 and _unadaptable(named, name) is None]
    kinds = _kinds_of(adaptable)
    return ", ".join(kinds[:limit]) + (", ..." if len(kinds) > limit else "") if kinds else "no such layer"


def lora_factors(backbone: nn.Module) -> list[LoraFactors]:
    """Each LoRA-adapted layer's A, B and scaling (peft's lora_A/lora_B/scaling), in module order; [] when the
    backbone has none. Read by name, without importing peft."""
    found = []
    for name, module in backbone.named_modules():
        a, b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(a, nn.ModuleDict) and isinstance(b, nn.ModuleDict) and ADAPTER in a:
            prefix = f"{name}." if name else ""
            found.append(LoraFactors(f"{prefix}lora_A.{ADAPTER}.weight", f"{prefix}lora_B.{ADAPTER}.weight",
                                     a[ADAPTER].weight, b[ADAPTER].weight, float(module.scaling[ADAPTER])))
    return found


def unadapted_key(key: str) -> str:
    """A state_dict key of a LoRA-adapted backbone as the backbone as built names it: peft keeps an adapted layer's
    own tensors under `base_layer` (`mlp.c_fc.base_layer.weight` was `mlp.c_fc.weight`)."""
    return ".".join(part for part in key.split(".") if part != "base_layer")


def lora_update_norm(factors: LoraFactors) -> torch.Tensor:
    """‖scaling · B @ A‖² (Frobenius), the squared distance of the adapted weight from the pre-trained one, from
    the r x r Gram matrices (tr(BᵀB · AAᵀ)) rather than the weight-sized product."""
    a = factors.a.float().reshape(factors.a.shape[0], -1)
    b = factors.b.float().reshape(factors.b.shape[0], -1)
    return factors.scaling ** 2 * ((b.T @ b) * (a @ a.T)).sum()


def merged(backbone: nn.Module) -> nn.Module:
    """`backbone` (a copy made for inference) with each LoRA update merged into the weight it adapts and the
    layer put back as it was built: what BatchNorm folding (EfficientNet's for_inference) can work on. The
    backbone itself when it has no adapters."""
    done = applied(backbone)
    if done is None or not done.adapted:
        return backbone
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name in sorted(done.adapted, key=lambda n: -n.count(".")):
        owner_name, _, attr = name.rpartition(".")
        owner = backbone.get_submodule(owner_name) if owner_name else backbone
        layer = getattr(owner, attr)
        if not isinstance(layer, BaseTunerLayer):
            continue
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            layer.merge()
            base = layer.get_base_layer()
        setattr(owner, attr, base)
    backbone._trainable = Applied(done.kind, frozenset(), ())
    return backbone


# ---- last_blocks --------------------------------------------------------------------------------------------

def blocks(backbone: Backbone) -> list[str]:
    """The names of the backbone's blocks in forward order (a ViT's transformer blocks, a CNN's residual or MBConv
    blocks), or ModelError for a model whose blocks are not known here."""
    from continual.models.clip import OpenClipVisual

    if backbone.family == EFFICIENTNET:
        return [f"net._blocks.{i}" for i in range(len(backbone.net._blocks))]
    if isinstance(backbone, OpenClipVisual):
        visual = backbone.visual
        if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):  # VisionTransformer
            return [f"visual.transformer.resblocks.{i}" for i in range(len(visual.transformer.resblocks))]
        if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):  # ModifiedResNet
            return [f"visual.layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(visual, f"layer{i}")))]
        if hasattr(visual, "trunk"):  # a timm tower
            return [f"visual.trunk.{name}" for name in _timm_blocks(visual.trunk)]
    if backbone.family == TIMM:
        return [f"net.{name}" for name in _timm_blocks(backbone.net)]
    raise ModelError("trainable.kind", f"last_blocks does not know the blocks of {_model_name(backbone)}; "
                                       "use lora, bias, frozen or full")


def _timm_blocks(net: nn.Module) -> list[str]:
    """A timm model's blocks: `blocks` (ViT, DeiT, EVA), each stage's `blocks` (ConvNeXt, Swin's `layers`), or a
    ResNet's layer1..layer4."""
    if isinstance(getattr(net, "blocks", None), (nn.Sequential, nn.ModuleList)):
        return [f"blocks.{i}" for i in range(len(net.blocks))]
    for stages in ("stages", "layers"):
        group = getattr(net, stages, None)
        if isinstance(group, (nn.Sequential, nn.ModuleList)):
            names = []
            for i, stage in enumerate(group):
                inner = getattr(stage, "blocks", None)
                names += ([f"{stages}.{i}.blocks.{j}" for j in range(len(inner))]
                          if isinstance(inner, (nn.Sequential, nn.ModuleList)) else [f"{stages}.{i}"])
            return names
    if all(isinstance(getattr(net, f"layer{i}", None), nn.Sequential) for i in range(1, 5)):
        return [f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(net, f"layer{i}")))]
    raise ModelError("trainable.kind", f"last_blocks does not know the blocks of timm's {type(net).__name__}; "
                                       "use lora, bias, frozen or full")


def _last_blocks(backbone: Backbone, n: int) -> set[str]:
    """The parameters from the first of the last `n` blocks on, in the order the model registers them (the
    blocks, then the final norm and projection: ln_post, timm's norm, EfficientNet's head conv), plus open_clip
    ViT's `proj`, a parameter of the tower itself that its forward applies last."""
    names = blocks(backbone)
    if n > len(names):
        raise ModelError("trainable.n", f"{n} is more than the {len(names)} blocks of {_model_name(backbone)}")
    first = names[-n] + "."
    order = [name for name, _ in backbone.named_parameters()]
    start = next(i for i, name in enumerate(order) if name.startswith(first))
    trained = set(order[start:])
    if "visual.proj" in order and hasattr(getattr(backbone, "visual", None), "transformer"):
        trained.add("visual.proj")
    return trained


# ---- checkpoints --------------------------------------------------------------------------------------------

def _saved_keys(backbone: nn.Module) -> set[str] | None:
    """The state_dict keys a checkpoint keeps: every one (None) for a full backbone, else the parameters that
    train and every buffer (BatchNorm's statistics move with training.batchnorm: train whatever trains)."""
    done = applied(backbone)
    if done is None:
        return None
    buffers = {name for name, _ in backbone.named_buffers()}
    return {key for key in backbone.state_dict() if key in done.trained or key in buffers}


def saved_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of `backbone` (tensors detached, on the CPU): all of it, or with a
    model.trainable other than full, what trains and the buffers."""
    keep = _saved_keys(backbone)
    return {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items() if keep is None or k in keep}


def load_saved_state(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put a `saved_state` back into `backbone`, which was adapted as the one saved (`apply` with the same options
    and seed): every other tensor is the pre-trained one already. KeyError for a state that does not fit."""
    keep = _saved_keys(backbone)
    if keep is None:
        backbone.load_state_dict(state)
        return
    if set(state) != keep:
        missing, unexpected = sorted(keep - set(state)), sorted(set(state) - keep)
        raise KeyError(f"the checkpoint holds other tensors than this model.trainable trains (missing "
                       f"{missing[:3]}, unexpected {unexpected[:3]})")
    backbone.load_state_dict(state, strict=False)

