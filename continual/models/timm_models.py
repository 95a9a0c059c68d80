"""Any timm image model (ResNet-50, ConvNeXt, a timm ViT, ...) as a Backbone: the models users bring.
timm ships with open_clip, so it is always here. Weights come from a local checkpoint file (the
hub's `pretrained=True` needs network, which a GPU node often lacks), or random (`pretrained` unset).

LDIFS taps are the outputs of timm's own feature stages (`feature_info`: a CNN's stages, a ViT's
blocks), the layers timm exposes for feature extraction. They come from the model's own
`forward_intermediates` (one plain forward, which torch.compile can trace) where the model has it and it
gives exactly those outputs: checked once per backbone, on the first tapped batch, against forward hooks on
the stage modules. Elsewhere (no `forward_intermediates`, or one whose outputs differ: timm 1.0.31's
MambaOut returns NCHW where its stages give NHWC) the taps are still caught by hooks registered for one
call, as before.
"""

from __future__ import annotations

import torch
from torch import nn

from continual.model_catalog import TIMM, patch_misfit
from continual.models.backbone import Backbone, ModelError
from continual.models.weights import check_state_fits, load_state_file, one_line


class TimmBackbone(Backbone):
    def __init__(self, net: nn.Module, *, image_size: int, mean, std):
        super().__init__(family=TIMM, feature_dim=net.num_features, image_size=image_size,
                         normalize_features=False, mean=mean, std=std)
        self.net = net  # built with num_classes=0: its forward returns pooled features

    def forward(self, x: torch.Tensor, taps: list[int] | None = None):
        return self.net(x) if taps is None else self._forward_taps(x, taps)

    # Whether `forward_intermediates` gives the hooks' taps: None until the first tapped forward checks it.
    # Deep copies (the LDIFS anchor) share the net's code, so they keep the answer.
    _intermediates_fit: bool | None = None

    @property
    def tap_names(self) -> list[str]:
        names = [name for name in self._stages() if name is not None]
        if not names:
            raise ModelError("arch", f"timm's {type(self.net).__name__} lists no feature stages (feature_info) "
                                     "to tap, so LDIFS cannot be used with it")
        return names

    def _stages(self) -> list[str | None]:
        """feature_info's modules, None for one the net does not have (never tapped)."""
        modules = dict(self.net.named_modules())
        return [f["module"] if f["module"] in modules else None for f in getattr(self.net, "feature_info", [])]

    def _forward_taps(self, x: torch.Tensor, wanted: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        if self._intermediates_fit is None:
            self._intermediates_fit = self._check_intermediates(x[:1])
        if self._intermediates_fit:
            return self._intermediates(x, wanted)
        return self._hooked(x, wanted)

    def _intermediates(self, x: torch.Tensor, wanted: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """timm's forward_intermediates at feature_info's indices (its convention), then the pooled head.
        A ViT's intermediates keep their (B, L, D) form with the prefix tokens put back in front, as its
        blocks return them."""
        import inspect

        net = self.net
        kwargs = {}
        takes = inspect.signature(net.forward_intermediates).parameters
        if hasattr(net, "num_prefix_tokens") and "output_fmt" in takes:
            kwargs = dict(output_fmt="NLC", return_prefix_tokens=net.num_prefix_tokens > 0)
        final, outputs = net.forward_intermediates(x, indices=wanted, **kwargs)
        if kwargs.get("return_prefix_tokens"):
            outputs = [torch.cat([prefix, tokens], dim=1) for tokens, prefix in outputs]
        return net.forward_head(final), dict(zip(wanted, outputs, strict=True))

    def _hooked(self, x: torch.Tensor, wanted: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The taps caught by forward hooks on the stage modules, for this call only: a deep copy never
        inherits hooks bound to this backbone."""
        modules = dict(self.net.named_modules())
        names = self.tap_names
        captured: dict[int, torch.Tensor] = {}

        def capture(i: int):
            return lambda module, args, output: captured.__setitem__(i, output)

        handles = [modules[names[i]].register_forward_hook(capture(i)) for i in wanted]
        try:
            features = self.net(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [names[i] for i in wanted if i not in captured]
        if missing:  # a code path that bypasses the tap modules would otherwise give stale or no taps
            raise RuntimeError(f"taps {missing} did not run during the forward pass")
        return features, captured

    @torch.no_grad()
    def _check_intermediates(self, x: torch.Tensor) -> bool:
        """Whether forward_intermediates gives exactly the hooks' features and taps on this image, in eval
        mode (no random layer draws, so the training's random stream is untouched), each module's mode restored."""
        stages = self._stages()
        if not hasattr(self.net, "forward_intermediates") or None in stages:
            return False  # an index of forward_intermediates is a position in feature_info: all must exist
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            every = list(range(len(stages)))
            try:
                features, taps = self._intermediates(x, every)
            except Exception:  # e.g. timm 1.0.31's relative-position ViT asked for prefix tokens it lacks
                return False
            hook_features, hook_taps = self._hooked(x, every)
            return torch.equal(features, hook_features) and all(
                taps[i].shape == hook_taps[i].shape and torch.equal(taps[i], hook_taps[i]) for i in every)
        finally:
            for module, mode in modes.items():
                module.training = mode


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
    if (isinstance(patch, (tuple, list)) and patch and isinstance(patch[0], int)
            and not getattr(embed, "dynamic_img_pad", False)):
        if misfit := patch_misfit(size, f"timm {arch}", patch[0]):
            raise ModelError("image_size", misfit)

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
