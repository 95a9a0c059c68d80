"""RAIL: a ridge-regression adapter on frozen CLIP features, solved analytically task by task, fused with
zero-shot CLIP without training.

Xu et al., "Advancing Cross-domain Discriminability in Continual Learning of Vision-Language Models",
NeurIPS 2024 (arXiv 2406.18868). Their code, linghan1997/Regression-based-Analytic-Incremental-Learning
at eaac644, as followed here (primal_RAIL.py, dual_RAIL.py, utils.py, configs/analytic_clip.yaml):
- Features: CLIP's image embedding, L2-normalised (primal_RAIL.py l. 36-39), of every training image.
- Primal: a random hidden layer φ(f) = ReLU(P f), P as nn.Linear(512, 15000, bias=False) draws it and then
  never trained (l. 30-33); ridge regression of φ onto one-hot labels of every class seen so far. Task 1
  in closed form, R = (ΦᵀΦ + λI)⁻¹, W = R ΦᵀY (l. 69-73); later tasks W gets zero columns for the new
  classes (l. 80) and each batch updates R ← R − R Xᵀ(I + X R Xᵀ)⁻¹ X R, W ← W + R Xᵀ(Y − X W)
  (l. 99-101): recursive least squares, so W is always the ridge solution on every image seen so far.
- Dual: kernel ridge regression with the Gaussian kernel k(x, x') = exp(−γ‖x − x'‖²) (utils.py l. 77-91)
  on the features of every image seen so far, kept (dual_RAIL.py l. 111-117): α = (K + λI)⁻¹ Y re-solved
  after each task (l. 119, utils.py l. 123-129), the adapter's scores k(f, X) α (utils.py l. 131-140).
- Fusion (primal_RAIL.py l. 253-273, dual_RAIL.py l. 165-186): p = softmax of the zero-shot logits over the
  classes of every domain of the sequence, seen or not (l. 159-169, 236); where argmax p is a seen class,
  the scores are (1 − w)·p + w·adapter (the adapter 0 on unseen classes), elsewhere p itself.

Here each task's head computes that fused vector's columns of its own classes (FusedHead): the heads of a
class-incremental run side by side are the reference's vector over the classes seen. After each task every
task's head is rebuilt (W, α and the seen classes change); a task not learned yet has no adapter columns,
so its argmax is zero-shot CLIP's. The backbone never changes: probes keep their pre-trained scores.
What differs: the features of the training images as stored (their loader's train transform, l. 203-204,
is not applied), the sequence's templates (theirs: "a photo of a {}.", l. 234), every task through the same
recursion from R = I/λ (the closed form of task 1, the same solution), in float64 (theirs float32), and
exp(logit_scale) of the model as the zero-shot scale (100 for OpenAI's weights, l. 115).
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from continual.datasets.prompts import readable_names
from continual.datasets.tasks import TaskData
from continual.evaluate import extract_features
from continual.methods import Context
from continual.methods.contract import Method
from continual.methods.options import RAILOptions
from continual.models import Backbone, Head, TaskModel, zero_shot_head
from continual.train import FitStats, Trainer, use_bf16


def rls_update(R: torch.Tensor, W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    """One batch of recursive least squares, in place (primal_RAIL.py l. 99-101): with S = I + X R Xᵀ,
    R ← R − R Xᵀ S⁻¹ X R and W ← W + R_new Xᵀ (Y − X W), where R_new Xᵀ = R Xᵀ S⁻¹. From R = I/λ, W = 0,
    W after any batches is the ridge solution (ΣXᵀX + λI)⁻¹ ΣXᵀY on all of them."""
    U = R @ X.T
    S = X @ U
    S.diagonal().add_(1)  # I + X R Xᵀ: symmetric positive definite (theirs inverts it with pinverse)
    G = torch.cholesky_solve(U.T, torch.linalg.cholesky(S))  # S⁻¹ X R
    R.addmm_(U, G, alpha=-1)  # R is symmetric, so X R = Uᵀ
    W.addmm_(G.T, Y - X @ W)


def rbf(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """exp(−γ‖a_i − b_j‖²) (utils.py l. 86)."""
    squared = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)
    return torch.exp(-gamma * squared)


class Expansion(nn.Module):
    """What the adapter regresses on, in float64: ReLU(f Pᵀ) (primal; f itself without P) or the kernel
    k(f, memory) (dual), f the L2-normalised feature. One module, shared by every task's head."""

    def __init__(self, *, projection: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                 gamma: float = 0.0):
        super().__init__()
        self.register_buffer("projection", projection)
        self.register_buffer("memory", memory)
        self.gamma = gamma

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features.double(), dim=-1)
        if self.memory is not None:
            return rbf(f, self.memory, self.gamma)
        return f if self.projection is None else torch.relu(f @ self.projection.double().T)


class FusedHead(Head):
    """One task's columns of RAIL's fused scores: `linear` its columns of W (or α) over the shared expansion,
    none for a task not learned yet; `zero_shot` the text head of every class of the sequence; `seen` which
    of those classes are learned (bool)."""

    def __init__(self, expansion: Expansion, zero_shot: Head, *, columns: slice, seen: torch.Tensor,
                 adapter: torch.Tensor | None, weight: float):
        nn.Module.__init__(self)  # not Head's: its Linear draws random weights, these are W's columns
        self.normalize = True
        n = columns.stop - columns.start
        with warnings.catch_warnings():  # torch warns that a Linear of no inputs (no adapter) has nothing to draw
            warnings.simplefilter("ignore", UserWarning)
            self.linear = nn.utils.skip_init(nn.Linear, 0 if adapter is None else adapter.shape[0], n,
                                             dtype=torch.float64, device=seen.device).requires_grad_(False)
        with torch.no_grad():
            if adapter is not None:
                self.linear.weight.copy_(adapter.T)
            self.linear.bias.zero_()
        self.expansion, self.zero_shot, self.columns, self.weight = expansion, zero_shot, columns, weight
        self.register_buffer("seen", seen)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        p = self.zero_shot(features).float().softmax(dim=1)  # primal_RAIL.py l. 253-254
        own = p[:, self.columns]
        fused = (1 - self.weight) * own  # + w · 0: the adapter's zero padding of classes not learned (l. 270-271)
        if self.linear.in_features:
            fused = fused + self.weight * self.linear(self.expansion(features)).float()
        # the adapter only where zero-shot CLIP places the image in a learned domain (l. 263-273)
        return torch.where(self.seen[p.argmax(1)].unsqueeze(1), fused, own)


class RAIL(Method):
    def __init__(self, options: RAILOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("rail fuses zero-shot CLIP over every task's classes: build it with context=Context(...)")
        self.context, self.dim = context, pretrained.feature_dim
        heads = [zero_shot_head(pretrained, readable_names(t.dataset, t.class_names),
                                templates=context.templates[("tasks", t.name)]) for t in context.tasks]
        self.zero_shot = Head(self.dim, sum(h.linear.out_features for h in heads), normalize=True)
        with torch.no_grad():  # every class of the sequence, in its order (primal_RAIL.py l. 159-169, 236)
            self.zero_shot.linear.weight.copy_(torch.cat([h.linear.weight for h in heads]))
            self.zero_shot.linear.bias.zero_()
        self.zero_shot.requires_grad_(False).eval()
        self.columns, start = {}, 0
        for t in context.tasks:
            self.columns[t.name] = slice(start, start + len(t.class_names))
            start += len(t.class_names)
        self.learned: list[str] = []
        self.projection = self.R = self.W = self.memory = self.labels = self.alpha = None

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        began, o, device = time.perf_counter(), self.options, trainer.device
        if o.form == "primal" and o.width is not None and self.projection is None:
            # nn.Linear(dim, width, bias=False)'s default draw (primal_RAIL.py l. 30-33): U(±1/√dim), from
            # torch's RNG, seeded by the runner for the step
            bound = self.dim ** -0.5
            self.projection = torch.empty(o.width, self.dim).uniform_(-bound, bound).to(device)
        features = extract_features(model.backbone.for_inference(), task.train, batch_size=trainer.eval_batch_size,
                                    device=device, bf16=use_bf16(trainer.training, device))
        labels = task.train.labels.to(device) + self.columns[task.name].start  # among every class of the sequence
        self.to(device)
        if o.form == "primal":
            X = self.expansion()(features)
            if self.R is None:  # nothing seen: R = (0 + λI)⁻¹, W = 0 (every class's column, zero until learned)
                self.R = torch.eye(X.shape[1], dtype=torch.float64, device=device) / o.ridge
                self.W = torch.zeros(X.shape[1], self.zero_shot.linear.out_features, dtype=torch.float64, device=device)
            Y = F.one_hot(labels, self.W.shape[1]).double()
            size = trainer.training.batch_size  # theirs: an update per training batch (l. 86-101)
            for start in range(0, len(X), size):
                rls_update(self.R, self.W, X[start : start + size], Y[start : start + size])
        else:
            f = F.normalize(features.double(), dim=1)
            self.memory = f if self.memory is None else torch.cat([self.memory, f])
            self.labels = labels if self.labels is None else torch.cat([self.labels, labels])
            K = rbf(self.memory, self.memory, o.kernel_gamma)
            K.diagonal().add_(o.kernel_ridge)
            Y = F.one_hot(self.labels, self.zero_shot.linear.out_features).double()
            self.alpha = torch.cholesky_solve(Y, torch.linalg.cholesky(K))  # (K + λI)⁻¹ Y (utils.py l. 128)
        self.learned.append(task.name)
        self.set_heads(model)
        # no optimiser step, no loss: one regression on the task's images (the dual's on every image kept)
        return FitStats(steps=0, seconds=time.perf_counter() - began, losses={},
                        extra={"rail_images": len(features) if o.form == "primal" else len(self.labels)})

    def expansion(self) -> Expansion:
        if self.options.form == "dual":
            return Expansion(memory=self.memory, gamma=self.options.kernel_gamma)
        return Expansion(projection=self.projection)

    def set_heads(self, model: TaskModel) -> None:
        """Every task's head from the adapter as it is now (a learned task's columns change with each task)."""
        device = self.zero_shot.linear.weight.device
        seen = torch.zeros(self.zero_shot.linear.out_features, dtype=torch.bool, device=device)
        for name in self.learned:
            seen[self.columns[name]] = True
        adapter = self.W if self.options.form == "primal" else self.alpha
        expansion = self.expansion().to(device)
        for t in self.context.tasks:
            columns = self.columns[t.name]
            model.heads[t.name] = FusedHead(expansion, self.zero_shot, columns=columns, seen=seen,
                                            adapter=adapter[:, columns] if t.name in self.learned else None,
                                            weight=self.options.fusion_weight)

    def to(self, device: torch.device) -> RAIL:
        self.zero_shot.to(device)
        for key in ("projection", "R", "W", "memory", "labels", "alpha"):
            if getattr(self, key) is not None:
                setattr(self, key, getattr(self, key).to(device))
        return self

    def state_dict(self) -> dict:
        keys = ("projection", "R", "W") if self.options.form == "primal" else ("memory", "labels", "alpha")
        return {"learned": list(self.learned),
                **{k: getattr(self, k).detach().cpu().clone() for k in keys if getattr(self, k) is not None}}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.learned = list(state["learned"])
        for key in ("projection", "R", "W", "memory", "labels", "alpha"):
            setattr(self, key, state.get(key))
        self.to(trainer.device).set_heads(model)
