"""Training augmentation (`training.augment`), done on the device, one batch at a time, on uint8 images.

none       nothing, and no random number drawn (the default: runs without augmentation are unchanged).
flip       a horizontal flip of each image with probability 1/2 (an exact pixel copy, no resampling).
crop_flip  open_clip's training transform, `RandomResizedCrop(scale=(0.9, 1.0))` with bicubic resampling
           (open_clip `transform.py`: `AugmentationCfg.scale` and `image_transform(is_train=True)`), then
           the flip. A crop keeps 90-100% of the image's area, with an aspect ratio in [3/4, 4/3]
           (torchvision's default), resized back to the image's size. A gentle crop: these are
           pre-trained models adapted for a few epochs, not ImageNet trained from scratch (torchvision's
           default scale, 0.08-1, is for that).
crop       the same crop without the flip: open_clip's training transform as CLIP continual-learning code
           uses it (MoE-Adapters' mtil/clip/clip.py l. 63-70), where a mirrored digit or text changes its class.

Where the numbers come from: each image's draws (flip, crop area, aspect ratio, position) are drawn
on the CPU from a `torch.Generator` that `generator()` seeds from torch's global generator, which the
runner seeds per step. So a step draws the same augmentations whichever device trains, and a resumed
run (which reseeds per step) draws exactly what the uninterrupted one did. The draws then reach the
device, and the crop and flip of a whole batch is one `F.grid_sample` there.

Differences from torchvision's RandomResizedCrop, for one batched kernel with no loop: instead of
retrying a draw until the box fits in the image (up to 10 times, then the whole image), the aspect
ratio is drawn within the range where a box of the drawn area fits; the box's corners are not rounded
to whole pixels; and the result is rounded back to uint8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("none", "flip", "crop", "crop_flip")
SCALE = (0.9, 1.0)  # fraction of the area a crop keeps: open_clip's AugmentationCfg.scale
RATIO = (3 / 4, 4 / 3)  # width / height of a crop: torchvision's RandomResizedCrop default


def generator(kind: str) -> torch.Generator | None:
    """A CPU generator for one task's augmentation draws, seeded by one draw from torch's global generator
    (seeded per step by the runner); None for `none`, which draws nothing."""
    if kind == "none":
        return None
    seed = int(torch.empty((), dtype=torch.int64).random_())  # as torch's DataLoader seeds its sampler
    return torch.Generator().manual_seed(seed)


def augment(images: torch.Tensor, kind: str, generator: torch.Generator | int, *, whole: int | None = None,
            rows: slice | None = None) -> torch.Tensor:
    """`images` (B, 3, H, W) uint8, on any device, augmented as `kind` says; uint8, same shape and device.
    `generator`: a CPU torch.Generator (or a seed for one) that every draw comes from. `whole`, `rows`:
    `images` are rows `rows` of a batch of `whole` (one rank's share under torchrun): the draws of the
    whole batch are made and these rows' kept, so each image is augmented as in one process."""
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(KINDS)})")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) uint8 batch, got {tuple(images.shape)} {images.dtype}")
    if kind == "none":
        return images
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    whole, rows = (len(images), slice(None)) if whole is None else (whole, rows)  # one process: all of them
    if len(range(whole)[rows]) != len(images):
        raise ValueError(f"rows {rows} of a batch of {whole} are not the {len(images)} images given")
    if kind == "flip":
        flip = _to((torch.rand(whole, generator=generator) < 0.5)[rows].contiguous(), images.device)
        return torch.where(flip[:, None, None, None], images.flip(-1), images)
    theta = crop_flip_transforms(whole, generator=generator, flip=kind == "crop_flip")
    return _crop_flip(images, theta[rows].contiguous())


def crop_flip_transforms(n: int, *, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """(n, 2, 3) affine transforms, each mapping an output image's coordinates (-1..1, as F.affine_grid
    takes them) into its crop box in the input, mirrored for the images that are flipped (`flip`; without it
    the same draws, the same boxes, none mirrored)."""
    # float64 arithmetic, rounded to float32 at the end: the same transforms whatever CPU computes them.
    u = torch.rand(n, 5, dtype=torch.float64, generator=generator)
    area = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0]
    # log(width / height), uniform over the part of RATIO where a box of this area fits in the image
    # (w = sqrt(area·ratio) <= 1 and h = sqrt(area/ratio) <= 1)
    low, high = area.log().clamp(min=math.log(RATIO[0])), (-area.log()).clamp(max=math.log(RATIO[1]))
    ratio = torch.exp(low + (high - low) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # sides as fractions of the image's (clamped: rounding)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    x0, y0 = (1 - w) * u[:, 2], (1 - h) * u[:, 3]
    mirror = torch.where((u[:, 4] < 0.5) & flip, -1.0, 1.0).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = w * mirror, 2 * x0 + w - 1  # x: scale (and mirror), centre
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * y0 + h - 1
    return theta.float()


def _crop_flip(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    x = images.float()
    grid = F.affine_grid(_to(theta, images.device), list(x.shape), align_corners=False)
    # Bicubic, as open_clip's crop; the identity box gives back the image exactly. Clamped: bicubic overshoots.
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _to(draws: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU draws onto the batch's device. Pinned, so the copy queues behind the GPU's work without a sync."""
    if device.type == "cuda":
        return draws.pin_memory().to(device, non_blocking=True)
    return draws.to(device)
