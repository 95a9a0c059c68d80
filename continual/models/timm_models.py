"""Any timm image model (ResNet-50, ConvNeXt, a timm ViT, ...) as a Backbone: the models users bring.
timm ships with open_clip, so it is always here. Weights come from a local checkpoint file (the
hub's `pretrained=True` needs network, which a GPU node often lacks), or random (`pretrained` unset).

LDIFS taps are the outputs of timm's own feature stages (`feature_info`: a CNN's stages, a ViT's
blocks), the layers timm exposes for feature extraction.
"""

from __future__ import annotations

import torch
from torch import nn

from continual.models.backbone import TIMM, Backbone, ModelError
from continual.models.weights import check_state_fits, load_state_file, one_line


class TimmBackbone(Backbone):
    def __init__(self, net: nn.Module, *, image_size: int, mean, std):
        super().__init__(family=TIMM, feature_dim=net.num_features, image_size=image_size,
                         normalize_features=False, mean=mean, std=std)
        self.net = net  # built with num_classes=0: its forward returns pooled features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _taps(self) -> list[tuple[str, nn.Module, bool]]:
        modules = dict(self.net.named_modules())
        names = [f["module"] for f in getattr(self.net, "feature_info", [])]
        found = [(name, modules[name], False) for name in names if name in modules]
        if not found:
            raise ModelError("arch", f"timm's {type(self.net).__name__} lists no feature stages (feature_info) "
                                     "to tap, so LDIFS cannot be used with it")
        return found


def build(*, arch: str | None, pretrained: str | None, image_size: int | None) -> Backbone:
    import timm  # only when a timm model is asked for: importing it takes a second

    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{(arch or '').split('.')[0][:6]}*")[:5] if arch else []
        hint = f" (similar: {', '.join(close)})" if close else " (timm.list_models() names them)"
        raise ModelError("arch", f"unknown timm architecture {arch!r}{hint}")
    net = _create(timm, arch, image_size)
    cfg = net.pretrained_cfg
    size = image_size or cfg["input_size"][-1]
    _check_input_size(net, arch=arch, size=size)  # before a checkpoint is read
    if pretrained is not None:
        state = load_state_file(pretrained)
        # A checkpoint of the full classifier (timm's own, or torchvision-style) carries the head we
        # dropped: num_classes=0 replaced it, so its keys are not the backbone's.
        heads = [cfg.get("classifier")] if isinstance(cfg.get("classifier"), str) else list(cfg.get("classifier") or [])
        state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
        check_state_fits(state, net, what=f"timm {arch}", path=pretrained)
        net.load_state_dict(state)
    return TimmBackbone(net, image_size=size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))


def _check_input_size(net: nn.Module, *, arch: str, size: int) -> None:
    """Refuse, when the model is built (before anything is written), an image size the net cannot take: a
    ViT's side not a multiple of its patch, a net whose strides shrink the image below a kernel (timm's
    convnext under 32 px). Only a forward pass knows every architecture's rule, so one image goes through,
    first on the meta device (shapes only: 0.2 s for ViT-B/16 where a real pass took 0.9 s on this
    project's CPU); what fails there is tried for real, so that an operator meta lacks never refuses a net."""
    from torch.func import functional_call

    embed = getattr(net, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    if (isinstance(patch, (tuple, list)) and patch and isinstance(patch[0], int) and size % patch[0]
            and not getattr(embed, "dynamic_img_pad", False)):
        # A ViT silently drops the border pixels that do not fill a patch (as models/clip.py refuses them).
        raise ModelError("image_size", f"{size} is not a multiple of timm {arch}'s patch size {patch[0]}")

    def forward(device: str) -> None:
        state = None
        if device == "meta":
            state = {k: torch.empty_like(v, device="meta") for k, v in (*net.named_parameters(), *net.named_buffers())}
        with torch.no_grad():
            x = torch.zeros(1, 3, size, size, device=device)
            net(x) if state is None else functional_call(net, state, (x,))

    was_training = net.training
    net.eval()
    try:
        try:
            forward("meta")
        except Exception:
            forward("cpu")
    except Exception as err:
        raise ModelError("image_size", f"timm {arch} cannot take {size} px images ({one_line(err)}); "
                                       f"choose another model.image_size") from None
    finally:
        net.train(was_training)


def _create(timm, arch: str, image_size: int | None) -> nn.Module:
    """The model without its classifier, at `image_size` when it has a fixed input size (a ViT's
    position embeddings); convolutional nets take any size and have no such argument."""
    if image_size is not None:
        try:
            return timm.create_model(arch, pretrained=False, num_classes=0, img_size=image_size)
        except TypeError:
            pass  # no img_size argument: a size-agnostic net
        except Exception as err:  # the size itself: a relative-position table of -1 rows at 8 px (test_vit_relpos)
            raise ModelError("image_size", f"timm {arch} cannot be built for {image_size} px images "
                                           f"({one_line(err)}); choose another model.image_size") from None
    return timm.create_model(arch, pretrained=False, num_classes=0)
