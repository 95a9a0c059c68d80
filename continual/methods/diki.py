"""DIKI: per-task prompts in a residual attention branch of the frozen CLIP image tower, used for an image as much
as the image looks like the task's training images.

Tang et al., "Mind the Interference: Retaining Pre-trained Knowledge in Parameter Efficient Continual Learning of
Vision-Language Models", ECCV 2024 (arXiv 2407.05342). Their code, lloongx/DIKI at 8ef89e7, as followed here:
- Residual attention prompts (clip/attention.py): each prompted block's attention holds, per task, `length` key and
  `length` value prompts of the block's width (a pool of shape (tasks, 2, length, width), l. 167-173), used as they
  are, not through the block's k/v projections (l. 85-87, 117-119). The block's queries attend to the prompts alone,
  in an attention of their own beside the block's (l. 137-138); that output, times the image's weight (l. 139-140),
  is added to the block's attention output before the output projection (l. 141-144). Keys start U(−1, 1), values 0
  (l. 171-172): a new task's branch adds exactly nothing until trained, and a weight of 0 leaves the frozen CLIP.
- Which blocks: the first `prompt_depth_vision: 8` of the image tower (clip/model.py l. 214-219, 240-242;
  configs/MTIL.yaml l. 17), `n_ctx_vision: 8` prompts each (l. 19).
- Per task (DIKI/DIKI.py): before training, the mean and covariance (n − 1, + 1e-7·I) of the frozen tower's
  L2-normalised features of the task's training images (l. 361-376); then cross-entropy alone (l. 389-392) on the
  task's classes with the task's own prompts at weight 1 (task id given in training, l. 162-165). Only the prompt
  pool trains (l. 223-231); an earlier task's prompts get no gradient (their index is not used) and no weight decay
  (`weight_decay: 0`), so they never change. Here each task's prompts are parameters of their own, frozen after it.
- At test (l. 157-175, 188-190): the frozen tower's normalised feature f; log p_t(f) under each learned task's
  Gaussian; the prompts of t* = argmax_t log p_t(f), at weight w = sigmoid(log p_t*(f)/512 − 1), 512 the feature
  dimension of their ViT-B/16 (here: the model's). An image far from every learned task gets w ≈ 0: the frozen CLIP.

Here the model's image tower becomes DIKIVisual (the same modules, so checkpoints keep the same keys; the prompts and
statistics live in the method's state), and each task's head is its zero-shot text head.
What differs: the text tower is not prompted (theirs prompts its first 8 blocks alike, with the chosen task's
prompts at the batch's mean weight, DIKI.py l. 173, 185; here the heads act on image features, and the text tower
is the shared frozen one), so the heads are the plain zero-shot ones; each image chooses its own prompts (their
MTIL recipe, `batchwise_prompt: True`, l. 176-180, gives a whole test batch the prompts most of its images chose);
the statistics in float64 (theirs float32); their best epoch on a validation split (l. 414-432) is not kept, the
last is; the optimiser and schedule are the sequence's `training:` (theirs: SGD lr 5, no momentum, cosine,
batch 128, 10 epochs, MTIL.yaml l. 22-29).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import MultivariateNormal

from continual.datasets.prompts import readable_names
from continual.datasets.tasks import TaskData
from continual.evaluate import extract_features
from continual.methods import Context
from continual.methods.contract import Method
from continual.methods.options import DIKIOptions
from continual.models import Backbone, TaskModel, zero_shot_head
from continual.models.clip import OpenClipVisual
from continual.train import Batch, FitStats, Trainer, use_bf16

RIDGE = 1e-7  # added to each covariance's diagonal (DIKI.py l. 373)


def residual_prompt(attn: nn.MultiheadAttention, h: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    weight: torch.Tensor | None) -> torch.Tensor:
    """What the prompts add to a block's attention output (clip/attention.py l. 84-144): the queries of `h` (B, L, E)
    attend to the prompts (B, P, E) alone, per head, times `weight` (B,) when given, through the output projection's
    weight (its bias is the block's own attention's)."""
    B, L, E = h.shape
    heads = attn.num_heads
    bias = attn.in_proj_bias[:E] if attn.in_proj_bias is not None else None
    q = F.linear(h, attn.in_proj_weight[:E], bias).view(B, L, heads, E // heads).transpose(1, 2)
    k = key.to(q.dtype).reshape(B, -1, heads, E // heads).transpose(1, 2)
    v = value.to(q.dtype).reshape(B, -1, heads, E // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, E)
    if weight is not None:
        out = out * weight.to(out.dtype).view(B, 1, 1)
    return F.linear(out, attn.out_proj.weight)


def prompted_block(block: nn.Module, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   weight: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward (no mask: the image tower's) with the prompts' branch added."""
    h = block.ln_1(x)
    a = block.attn(h, h, h, need_weights=False)[0] + residual_prompt(block.attn, h, key, value, weight)
    x = x + block.ls_1(a)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def calibrate(features: torch.Tensor, means: torch.Tensor, tril: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(task chosen, weight) per image from its frozen features (DIKI.py l. 167-172): the task of largest log-likelihood
    under the tasks' Gaussians (`means` (T, d), Cholesky factors `tril` of their covariances), and
    sigmoid(that log-likelihood / d − 1)."""
    f = F.normalize(features.double(), dim=-1)
    log_p = MultivariateNormal(means, scale_tril=tril, validate_args=False).log_prob(f.unsqueeze(1))  # (B, T)
    best, index = log_p.max(dim=1)
    return index, torch.sigmoid(best / f.shape[1] - 1)


class Prompts(nn.Module):
    """Every task's key and value prompts: keys[t] and values[t] of shape (depth, length, width)."""

    def __init__(self, *, depth: int, length: int, width: int):
        super().__init__()
        self.shape = (depth, length, width)
        self.keys, self.values = nn.ParameterList(), nn.ParameterList()

    def add(self, *, device: torch.device, key: torch.Tensor | None = None, value: torch.Tensor | None = None) -> None:
        """A task's prompts: `key` and `value` as given (a resume), else keys U(−1, 1), drawn on the CPU from the
        runner's seed for the step, and values 0 (clip/attention.py l. 171-172). Every earlier task's are frozen."""
        self.requires_grad_(False)
        key = torch.empty(self.shape).uniform_(-1, 1) if key is None else key
        value = torch.zeros(self.shape) if value is None else value
        self.keys.append(nn.Parameter(key.to(device)))
        self.values.append(nn.Parameter(value.to(device)))


class DIKIVisual(OpenClipVisual):
    """The CLIP image tower with DIKI's prompts: the same `visual` module as the tower it wraps (so its state_dict is
    that tower's, and a checkpoint of the model loads into the pre-trained one), the prompts and statistics read from
    the method. `task`: the task whose prompts train, at weight 1; None: each image's chosen by `calibrate`."""

    def __init__(self, plain: OpenClipVisual, method: DIKI):
        Backbone.__init__(self, family=plain.family, feature_dim=plain.feature_dim, image_size=plain.image_size,
                           normalize_features=plain.normalize_features, mean=plain.pixel_mean.flatten().tolist(),
                           std=plain.pixel_std.flatten().tolist())
        self.visual, self._text = plain.visual, plain._text
        self.to(plain.pixel_mean.device)
        self.method, self.task, self.prompted = method, None, True

    @contextlib.contextmanager
    def unprompted(self) -> Iterator[None]:
        """Inside the block, the frozen CLIP tower's features."""
        self.prompted = False
        try:
            yield
        finally:
            self.prompted = True

    def forward(self, x: torch.Tensor, taps: list[int] | None = None) -> torch.Tensor:
        if taps is not None:
            raise ValueError("DIKI's prompted image tower gives no taps")
        m = self.method
        if not self.prompted or (self.task is None and not m.learned):
            return self.visual(x)
        if self.task is not None:  # training: the task's own prompts for every image, unscaled (DIKI.py l. 162-165)
            keys = m.prompts.keys[self.task].unsqueeze(0).expand(len(x), -1, -1, -1)
            values = m.prompts.values[self.task].unsqueeze(0).expand(len(x), -1, -1, -1)
            weight = None
        else:
            with torch.no_grad():  # the frozen tower's features choose (DIKI.py l. 157-160)
                index, weight = calibrate(self.visual(x), m.means, m.tril())
            keys, values = torch.stack(list(m.prompts.keys))[index], torch.stack(list(m.prompts.values))[index]
        v = self.visual  # VisionTransformer.forward, the first blocks prompted
        h = v._embeds(x)
        for i, block in enumerate(v.transformer.resblocks):
            h = prompted_block(block, h, keys[:, i], values[:, i], weight) if i < keys.shape[1] else block(h)
        pooled, _ = v._pool(h)
        return pooled @ v.proj if v.proj is not None else pooled


class DIKI(Method):
    def __init__(self, options: DIKIOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("diki scores each task with its zero-shot text head: build it with context=Context(...)")
        self.context = context
        self.prompts = Prompts(depth=options.depth, length=options.length,
                               width=pretrained.visual.transformer.width)
        self.learned: list[str] = []
        self.means = self.covariances = self._tril = None  # (tasks, d), (tasks, d, d), float64

    @classmethod
    def problems(cls, options: DIKIOptions, backbone: Backbone) -> list[tuple[str, str]]:
        """A ViT image tower of open_clip's plain blocks, at least `depth` of them."""
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        visual = getattr(backbone, "visual", None)
        if not isinstance(visual, VisionTransformer):
            return [("", f"DIKI prompts the attention of a ViT image tower's blocks; this model's image tower is "
                         f"a {type(visual).__name__}")]
        blocks = visual.transformer.resblocks
        plain = visual.transformer.batch_first and all(
            type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") and b.attn.in_proj_weight is not None
            for b in blocks)
        if not plain:
            return [("depth", "DIKI prompts open_clip's ResidualAttentionBlock (batch first, one q/k/v projection); "
                              "this image tower's blocks are another kind")]
        if options.depth > len(blocks):
            return [("depth", f"depth {options.depth} is more than the image tower's {len(blocks)} blocks")]
        return []

    def wrap(self, model: TaskModel) -> DIKIVisual:
        """The model's image tower as DIKI's (once), frozen: only prompts train."""
        if not isinstance(model.backbone, DIKIVisual):
            model.backbone = DIKIVisual(model.backbone, self)
        return model.backbone.requires_grad_(False)

    def tril(self) -> torch.Tensor:
        if self._tril is None:
            self._tril = torch.linalg.cholesky(self.covariances)
        return self._tril

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        backbone, device = self.wrap(model), trainer.device
        # The task's Gaussian of the frozen tower's features of its training images, before training (l. 361-376).
        with backbone.unprompted():
            features = extract_features(backbone, task.train, batch_size=trainer.eval_batch_size, device=device,
                                        bf16=use_bf16(trainer.training, device))
        if len(features) < 2:
            raise ValueError(f"diki needs at least 2 training images of task {task.name!r} for its covariance")
        f = F.normalize(features.double(), dim=1)
        mean = f.mean(0)
        covariance = (f - mean).T @ (f - mean) / (len(f) - 1)
        covariance.diagonal().add_(RIDGE)
        self.means = mean[None] if self.means is None else torch.cat([self.means, mean[None]])
        self.covariances = covariance[None] if self.covariances is None else torch.cat([self.covariances, covariance[None]])
        self._tril = None
        self.prompts.add(device=device)
        # Each task's scores: its zero-shot text head, frozen (their text prompts: the module's docstring).
        model.heads[task.name] = zero_shot_head(backbone, readable_names(task.dataset, task.class_names),
                                                templates=self.context.templates[("tasks", task.name)])
        for name in model.heads_up_to(task.name):
            model.heads[name].requires_grad_(False)
        backbone.task = len(self.learned)
        try:
            stats = trainer.fit(model, task, loss_terms=self.loss_terms,
                                extra_parameters=[self.prompts.keys[-1], self.prompts.values[-1]])
        finally:
            backbone.task = None
        self.learned.append(task.name)
        index, weight = calibrate(features, self.means, self.tril())
        stats.extra.update({"diki_own_task": float((index == len(self.learned) - 1).double().mean()),
                            "diki_weight": float(weight.mean())})  # of the task's training images
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}  # cross-entropy alone (DIKI.py l. 391)

    def state_dict(self) -> dict:
        if not self.learned:
            return {"learned": []}
        return {"learned": list(self.learned),
                "keys": torch.stack([p.detach().cpu() for p in self.prompts.keys]),
                "values": torch.stack([p.detach().cpu() for p in self.prompts.values]),
                "means": self.means.cpu().clone(), "covariances": self.covariances.cpu().clone()}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.learned = list(state["learned"])
        self.prompts = Prompts(depth=self.options.depth, length=self.options.length, width=self.prompts.shape[2])
        if self.learned:
            for key, value in zip(state["keys"], state["values"], strict=True):
                self.prompts.add(device=trainer.device, key=key.clone(), value=value.clone())
            self.prompts.requires_grad_(False)
            self.means, self.covariances = state["means"].to(trainer.device), state["covariances"].to(trainer.device)
        self._tril = None
        self.wrap(model)
