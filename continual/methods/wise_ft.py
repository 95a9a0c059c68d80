"""WiSE-FT in a sequence: fine-tune on the task, then interpolate the backbone's weights with an anchor's.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022 (arXiv 2109.01903), eq. 1:
θ_α = (1 − α)·θ_zero-shot + α·θ_fine-tuned. Here after every task, with the anchor the pre-trained
backbone (`anchor: pretrained`, as ZSCL's MTIL table runs it) or the backbone before this task
(`anchor: previous`): α = 0 gives back the anchor, α = 1 plain fine-tuning. Only the backbone is
interpolated: each task keeps the head it trained (the paper's zero-shot head and ours start equal for
`head_init: zero_shot`, and a linear-probe head has no zero-shot counterpart). Floating buffers
(BatchNorm statistics) are interpolated like the weights.

With `model.trainable: lora` the backbone computes with W0 + s·BA, W0 the frozen pre-trained weight, and
interpolating with the pre-trained anchor is exactly W0 + α·s·BA: B is scaled by α (A and W0 stay). With `anchor:
previous` the mean of two LoRA updates is no rank-r product, so that combination is refused before the run starts.
"""

from __future__ import annotations

import copy

import torch

from continual.datasets.tasks import TaskData
from continual.methods.contract import Method
from continual.methods.options import WiseFTOptions
from continual.models import Backbone, TaskModel, trainable
from continual.train import Batch, FitStats, Trainer


class WiseFT(Method):
    def __init__(self, options: WiseFTOptions, *, pretrained: Backbone, context=None):
        super().__init__(options, pretrained=pretrained)
        self.pretrained = {k: v.detach().clone() for k, v in pretrained.state_dict().items()}

    @classmethod
    def problems(cls, options: WiseFTOptions, backbone: Backbone) -> list[tuple[str, str]]:
        if options.anchor == "previous" and trainable.lora_factors(backbone):
            return [("anchor", "previous cannot be used with model.trainable: lora: (1 − α)·B'A' + α·BA, the "
                               "interpolation of two LoRA updates, is not an update of rank r that the adapters can "
                               "hold; use anchor: pretrained (α then scales the LoRA update, exactly), or another "
                               "model.trainable")]
        return []

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        anchor = (self.pretrained if self.options.anchor == "pretrained"
                  else copy.deepcopy(model.backbone.state_dict()))
        stats = trainer.fit(model, task, loss_terms=self.loss_terms)
        interpolate(model.backbone, anchor, alpha=self.options.alpha)
        stats.extra["wise_ft_alpha"] = self.options.alpha
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": batch.ce(model(batch.x, batch.task))}


@torch.no_grad()
def interpolate(backbone: Backbone, anchor: dict[str, torch.Tensor], *, alpha: float) -> None:
    """backbone ← (1 − α)·anchor + α·backbone, for every floating tensor of its state (in place). A LoRA-adapted
    backbone against an anchor without its adapters (the pre-trained one): each update s·BA becomes α·s·BA."""
    factors = trainable.lora_factors(backbone)
    scaled = {f.b_key for f in factors if f.b_key not in anchor}
    left = {f.a_key for f in factors if f.a_key not in anchor}  # BA scales with B alone
    for name, value in backbone.state_dict().items():
        if not value.is_floating_point() or name in left:
            continue
        if name in scaled:
            value.mul_(alpha)
        else:  # an adapted layer's own weight is under base_layer: the anchor's of the same name without it
            same = anchor[trainable.unadapted_key(name) if factors else name]
            value.copy_(torch.lerp(same.to(value.device, value.dtype), value, alpha))
