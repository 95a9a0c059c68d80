"""InfLoRA: per task a low-rank update of each attention block's k and v whose down-projection A is designed so
that the update leaves the inputs of earlier tasks (as far as their subspace is kept) where they were.

Liang and Li, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning", CVPR 2024 (arXiv
2404.00228). Their code, liangyanshuo/InfLoRA at e08b00e, as followed here (methods/inflora.py,
models/vit_inflora.py, models/sinet_inflora.py, configs/cifar100_inflora.json):
- Where: every block of the ViT (sinet_inflora.py l. 67), on the attention's k and v projections only, q left
  as it is: k += x (B_k A)ᵀ, v += x (B_v A)ᵀ, x the attention's input, norm1 of the residual stream
  (vit_inflora.py l. 191-194, 244-249, 304), no scaling besides A's.
- A of task t: with C the mean of x xᵀ over every token of the task's training images (vit_inflora.py l.
  236-238) and M a basis of the subspace kept of earlier tasks' inputs, A = the top r left singular vectors of
  (I − M Mᵀ) C, over √3, the same A for k and v (inflora.py l. 116-158). Its rows are orthogonal to M, so the
  update B A maps what earlier tasks' inputs have in span(M) to zero: it acts only on their part outside it.
- Only B trains (zeros at first), and the task's classifier (l. 93-108).
- After training, C again with the trained update (l. 188-200), and DualGPM adds the directions of the task's
  inputs outside span(M) that bring M's share of C's energy (squared singular values) up to the threshold
  ε_t = lamb + (lame − lamb)·t/T, t the 0-based task, T the tasks (l. 321-412).
Here each task's update is merged into the attention's in_proj_weight once it is trained (theirs keeps every
task's A and B and sums B_t A_t at each forward, l. 246-247: the same weights up to rounding), so the model's
checkpoint holds the merged weights and the method's state only the bases. What differs: M is always the
basis of the kept subspace (their DualGPM stores its complement instead once it passes d/2 dimensions,
'retain', the same projection; for a first task past d/2 their branch stores the subspace itself as the
complement and then fails its own assertion, l. 333-338, 410); C comes from the stored training images, not
their augmented loader, in eval mode, accumulated in float64, the SVDs in float64 on the CPU (theirs float32
for A, float64 numpy for the bases); and training is the sequence's (`training:`: optimiser, schedule, lr),
theirs Adam at lr 5e-4, no weight decay, batch 128, 20 epochs, a cosine per epoch (cifar100_inflora.json l.
18-27).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.nn.utils import parametrize

from continual.datasets.tasks import TaskData
from continual.methods import Context
from continual.methods.contract import Method
from continual.methods.options import InfLoRAOptions
from continual.models import Backbone, TaskModel
from continual.train import Batch, FitStats, Trainer, use_bf16


def attentions(backbone: nn.Module) -> list[nn.MultiheadAttention]:
    """Each block's attention of an open_clip ViT image tower, in order; [] for any other tower (ModifiedResNet,
    a timm trunk) or attention (separate q/k/v weights)."""
    blocks = getattr(getattr(getattr(backbone, "visual", None), "transformer", None), "resblocks", None)
    found = [getattr(block, "attn", None) for block in blocks or ()]
    ok = all(isinstance(a, nn.MultiheadAttention) and a._qkv_same_embed_dim for a in found)
    return found if ok else []


@torch.no_grad()
def input_covariances(backbone: Backbone, images, layers: list[nn.MultiheadAttention], *, batch_size: int,
                      device: torch.device, bf16: bool) -> list[torch.Tensor]:
    """Per block, C = the mean of x xᵀ over every token of every image, x the attention's input (vit_inflora.py
    l. 236-238), float64 on the CPU. A forward pre-hook for one pass with no gradient (the attention's input is
    no output open_clip returns)."""
    sums = [torch.zeros(a.embed_dim, a.embed_dim, dtype=torch.float64) for a in layers]
    tokens = [0] * len(layers)

    def recorder(i: int):
        def record(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (B, N, d) or (N, B, d): every token
            sums[i] += (x.T @ x).double().cpu()
            tokens[i] += len(x)
        return record

    handles = [a.register_forward_pre_hook(recorder(i)) for i, a in enumerate(layers)]
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(images), batch_size):
                backbone(backbone.preprocess(images[start : start + batch_size].to(device, non_blocking=True)))
    finally:
        for handle in handles:
            handle.remove()
        backbone.train(was_training)
    return [s / n for s, n in zip(sums, tokens)]


def design_a(cov: torch.Tensor, basis: torch.Tensor | None, rank: int) -> torch.Tensor:
    """A (rank × d): the top `rank` left singular vectors of (I − M Mᵀ) C, over √3 (inflora.py l. 127, 149-154);
    of C itself before any basis is kept."""
    if basis is not None:
        cov = cov - basis @ (basis.T @ cov)
    return torch.linalg.svd(cov).U[:, :rank].T / math.sqrt(3)


def update_basis(basis: torch.Tensor | None, cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """DualGPM (inflora.py l. 321-368): M with the fewest directions of C outside span(M), largest first, that
    bring the share of C's energy (Σ σ², σ its singular values) inside span(M) to `threshold`; the first task's
    M the fewest of C's own (at least one)."""
    total = torch.linalg.svdvals(cov).pow(2).sum()
    if basis is None:
        U, S, _ = torch.linalg.svd(cov)
        r = int((torch.cumsum(S.pow(2) / total, 0) < threshold).sum())  # l. 332
        return U[:, : max(r, 1)]
    U, S, _ = torch.linalg.svd(cov - basis @ (basis.T @ cov))  # what C has outside span(M) (l. 346)
    ratios = (S.pow(2) / total).tolist()
    inside, r = float(1 - S.pow(2).sum() / total), 0
    while r < len(ratios) and inside < threshold:  # l. 353-359
        inside += ratios[r]
        r += 1
    return torch.cat([basis, U[:, :r]], dim=1)[:, : cov.shape[0]]  # never more directions than d (l. 364-368)


class KVUpdate(nn.Module):
    """The parametrization of an nn.MultiheadAttention's in_proj_weight (q, k, v stacked, 3d × d) during a task:
    W + [0; B_k A; B_v A], A fixed (a buffer), B_k and B_v trained from zero."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        d, r = a.shape[1], a.shape[0]
        self.b_k = nn.Parameter(torch.zeros(d, r, dtype=a.dtype, device=a.device))
        self.b_v = nn.Parameter(torch.zeros(d, r, dtype=a.dtype, device=a.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        d = weight.shape[1]
        return weight + torch.cat([weight.new_zeros(d, d), self.b_k @ self.a, self.b_v @ self.a])


class InfLoRA(Method):
    def __init__(self, options: InfLoRAOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("inflora raises its threshold over the sequence's tasks: build it with context=Context(...)")
        self.tasks = len(context.tasks)
        self.bases: list[torch.Tensor] = []  # per block, M (d × k, float64): the subspace kept of earlier tasks' inputs
        self.adapters = nn.ModuleList()  # the last task's updates, merged: kept only to count what trained

    @classmethod
    def problems(cls, options: InfLoRAOptions, backbone: Backbone) -> list[tuple[str, str]]:
        layers = attentions(backbone)
        if not layers:
            tower = type(getattr(backbone, "visual", backbone)).__name__
            return [("", f"InfLoRA's rank-{options.rank} updates go on each block's k and v of an open_clip ViT "
                         f"image tower (nn.MultiheadAttention); this model's tower is {tower}")]
        if options.rank > layers[0].embed_dim:
            return [("rank", f"{options.rank} is more than the attention's width, {layers[0].embed_dim}")]
        return []

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        began, o = time.perf_counter(), self.options
        layers = attentions(model.backbone)
        covs = self.covariances(model, task, trainer, layers)
        self.adapters = nn.ModuleList()
        trains = {name: p.requires_grad for name, p in model.backbone.named_parameters()}
        model.backbone.requires_grad_(False)  # only B trains (and the task's head: trainer.fit)
        for i, (attn, cov) in enumerate(zip(layers, covs)):
            a = design_a(cov, self.bases[i] if self.bases else None, o.rank)
            self.adapters.append(KVUpdate(a.to(attn.in_proj_weight)))
            parametrize.register_parametrization(attn, "in_proj_weight", self.adapters[-1])
        merged = False
        try:
            stats = trainer.fit(model, task, loss_terms=self.loss_terms)
            merged = True
        finally:  # merged: W + [0; B_k A; B_v A] becomes the weight; else (interrupted) W as it was
            for attn in layers:
                parametrize.remove_parametrizations(attn, "in_proj_weight", leave_parametrized=merged)
            for name, p in model.backbone.named_parameters():  # by name: the merged weight is registered anew
                p.requires_grad_(trains[name])
        # DualGPM on the inputs of the trained model (l. 188-200), its threshold raised task by task (l. 322)
        threshold = o.threshold + (o.threshold_end - o.threshold) * (step - 1) / self.tasks
        covs = self.covariances(model, task, trainer, layers)
        self.bases = [update_basis(self.bases[i] if self.bases else None, cov, threshold)
                      for i, cov in enumerate(covs)]
        stats.seconds = time.perf_counter() - began
        stats.extra.update(inflora_threshold=threshold, inflora_kept=[b.shape[1] for b in self.bases])
        return stats

    @staticmethod
    def covariances(model: TaskModel, task: TaskData, trainer: Trainer,
                    layers: list[nn.MultiheadAttention]) -> list[torch.Tensor]:
        return input_covariances(model.backbone, task.train.images, layers, batch_size=trainer.eval_batch_size,
                                 device=trainer.device, bf16=use_bf16(trainer.training, trainer.device))

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}

    def state_dict(self) -> dict:
        return {"bases": [b.clone() for b in self.bases]}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.bases = [b.to(torch.float64) for b in state["bases"]]
