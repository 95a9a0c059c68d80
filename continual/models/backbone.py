"""What every model is made of: a pre-trained Backbone (uint8 images -> features, plus intermediate
"taps" for feature-space methods such as LDIFS), one Head per task, and the TaskModel that holds them.

Taps are returned by the forward itself (`forward_with_taps`: a loop over the blocks, or the library's
`forward_intermediates`), not caught by hooks: a plain forward stores nothing, a deepcopy (the frozen
reference) holds nothing bound to the original, and torch.compile can trace it (issue #24).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ModelError(Exception):
    """Bad model spec or checkpoint. `key` is the model-config key at fault ("pretrained", "arch", "family", "head_init"...)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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
        """uint8 (B,3,s,s) on any device -> float normalised (B,3,S,S) input on the same device, S the
        model's size. Images stored at another size (CIFAR's 32 px for a 224 px model) are resized here,
        on the device, per batch: bilinear, antialiased when shrinking, as the store resizes."""
        # Refuse floats: an already-normalised batch normalised twice trains without error, just badly.
        if images.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ValueError(f"preprocess expects square (B, 3, S, S) images, got {tuple(images.shape)}")
        mean = self.pixel_mean.to(images.device)
        std = self.pixel_std.to(images.device)
        x = images.to(mean.dtype)  # the model's dtype: float32, or float64 in tests
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=x.shape[-1] > self.image_size, align_corners=False)
        return (x / 255 - mean) / std

    def forward(self, x: torch.Tensor, taps: list[int] | None = None):
        """Features (B, feature_dim); with `taps` (positions in `tap_names`, ascending), (features, {position:
        tap output, batch-first}) from the same pass. One forward for both, so that a hook on the backbone
        sees every pass and torch.compile of the module covers the tapped one too."""
        raise NotImplementedError

    # (whole, rows) while the training loop runs one rank's share of a global batch under torchrun (continual/
    # distributed.py): a forward of a batch of len(rows) images is rows `rows` of a batch of `whole`, and a
    # backbone with stochastic layers draws for the whole batch and keeps these rows' draws, as one process
    # would (EfficientNet's drop-connect). None: each batch is whole. Backbones without such layers ignore it.
    batch_share: tuple[int, slice] | None = None

    @contextlib.contextmanager
    def sharing(self, whole: int, rows: slice) -> Iterator[None]:
        self.batch_share = (whole, rows)
        try:
            yield
        finally:
            self.batch_share = None

    @contextlib.contextmanager
    def compiled(self, enabled: bool = True) -> Iterator[None]:
        """Inside the block, the forward (plain or tapped) runs torch.compile'd; outside, the plain module
        again, so that deep copies (LDIFS's anchor) and checkpoints never carry a compiled wrapper bound to
        this one. Hooks on the module stay eager (only `forward` is compiled). Compiled graphs are cached by
        torch for the forward's code, so a later block reuses them where the guards still hold."""
        if not enabled:
            yield
            return
        self.forward = torch.compile(type(self).forward.__get__(self))
        try:
            yield
        finally:
            del self.forward

    @property
    def tap_names(self) -> list[str]:
        """The taps LDIFS can use, in forward order; ModelError for a model that has none."""
        raise NotImplementedError

    def for_inference(self) -> Backbone:
        """A module that computes the same features faster, for evaluation passes only (callers put it in
        eval mode). Subclasses with a faster inference form return a fused copy; by default, itself."""
        return self

    def forward_with_taps(self, x: torch.Tensor, names: Sequence[str] | None = None
                          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features plus the tap outputs of this same forward pass, each batch-first (B, ...): every tap
        in `tap_names` order, or only `names`, in that order."""
        known = self.tap_names
        if names is None:
            order = list(range(len(known)))
        else:
            unknown = [name for name in names if name not in known]
            if unknown:
                raise ValueError(f"unknown taps {unknown} (this model's taps: {', '.join(known)})")
            order = [known.index(name) for name in names]
        features, taps = self(x, sorted(set(order)))
        return features, [taps[i] for i in order]


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


class Heads(nn.ModuleDict):
    """Task name -> Head. A ModuleDict whose keys are the task names the user wrote, registered under
    `@<name>`: a ModuleDict refuses names that are its attributes (a task named `train`, `to` or `keys`),
    and no attribute starts with `@`. Only state_dict keys show the prefix (`heads.@train.linear.weight`)."""

    @staticmethod
    def _key(name: str) -> str:
        return f"@{name}"

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(self._key(name))

    def __setitem__(self, name: str, head: nn.Module) -> None:
        super().__setitem__(self._key(name), head)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(self._key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self._key(name))

    def __iter__(self):
        return (key[1:] for key in self._modules)

    def keys(self):
        return list(self)

    def items(self):
        return [(key[1:], module) for key, module in self._modules.items()]

    def pop(self, name: str) -> nn.Module:
        head = self[name]
        del self[name]
        return head

    def order(self, names: list[str]) -> None:
        """Put the heads in the order of `names` (the sequence's tasks; any other after them, as they were): the
        order class-incremental logits read them in, whenever each was added (an exported model's heads are
        there from step 0, a linear-probe head from its task's start)."""
        rank = {name: i for i, name in enumerate(names)}
        items = sorted(self._modules.items(), key=lambda item: rank.get(item[0][1:], len(names)))
        self._modules.clear()
        self._modules.update(items)


class TaskModel(nn.Module):
    """Shared backbone + one head per task. Task-incremental: a task's logits are its head's.
    Class-incremental: the heads of every task up to it, side by side, in the order they were added (the
    sequence's): one head grown by each task's rows, its labels offset by the classes before it.
    `all_classes` (setting x_tail): trained as class-incremental, but scored among every task's classes,
    learned or not (evaluate); it implies `class_incremental`."""

    def __init__(self, backbone: Backbone, heads: dict[str, Head] | None = None, *, freeze_batchnorm: bool = False,
                 class_incremental: bool = False, all_classes: bool = False):
        super().__init__()
        self.backbone = backbone
        self.heads = Heads()
        self.heads.update(heads or {})
        self.freeze_batchnorm = freeze_batchnorm
        self.class_incremental = class_incremental or all_classes
        self.all_classes = all_classes

    def heads_up_to(self, task: str) -> list[str]:
        """The tasks whose heads give `task`'s logits: itself, or with class_incremental every task up to it."""
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r} (heads: {', '.join(self.heads) or 'none'})")
        if not self.class_incremental:
            return [task]
        names = list(self.heads)
        return names[: names.index(task) + 1]

    def label_offset(self, task: str) -> int:
        """What to add to `task`'s labels to index its logits: the classes of the heads before it (0 unless
        class_incremental)."""
        if not self.class_incremental:
            return 0
        return sum(self.heads[t].linear.out_features for t in self.heads_up_to(task)[:-1])

    def logits(self, features: torch.Tensor, task: str) -> torch.Tensor:
        names = self.heads_up_to(task)
        if len(names) == 1:
            return self.heads[task](features)
        return torch.cat([self.heads[t](features) for t in names], dim=1)

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
        return self.logits(self.backbone(x), task)
