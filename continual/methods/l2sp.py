"""L2-SP: cross-entropy + λ/2 · squared L2 distance of the backbone's weights to the pre-trained ones.

Xuhong Li, Yves Grandvalet, Franck Davoine, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", ICML 2018 (arXiv 1802.01483), eq. 2: Ω(w) = α/2 ‖w_S − w_S⁰‖² on the weights
shared with the pre-trained network. Their β/2 ‖w_new‖² on the new layers is what AdamW's weight decay
already does to our heads. LDIFS's closest contrast: it holds the weights near the pre-trained ones where
LDIFS holds the features.

With `model.trainable: lora` the backbone's weights are W0 + s·BA with W0 frozen at the pre-trained weights, so the
distance is ‖s·BA‖² summed over the adapted layers (continual/models/trainable.py, lora_update_norm): the same
penalty on the weights the model computes with, not on the factors. Other modes penalise what trains, as here.
"""

from __future__ import annotations

import torch

from continual.datasets.tasks import TaskData
from continual.methods.contract import Method
from continual.methods.options import L2SPOptions
from continual.models import Backbone, TaskModel, trainable
from continual.train import Batch, FitStats, Trainer


class L2SP(Method):
    def __init__(self, options: L2SPOptions, *, pretrained: Backbone, context=None):
        super().__init__(options, pretrained=pretrained)
        # The starting point, frozen: name -> tensor (moved to the training device on the first task).
        self.start = {name: p.detach().clone() for name, p in pretrained.named_parameters()}

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        self.lora = trainable.lora_factors(model.backbone)
        adapters = {id(f.a) for f in self.lora} | {id(f.b) for f in self.lora}
        self.pairs = [(p, self.start[name].to(p.device)) for name, p in model.backbone.named_parameters()
                      if p.requires_grad and id(p) not in adapters]
        return trainer.fit(model, task, loss_terms=self.loss_terms)

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        # From a float32 zero (adding it changes no sum): under `model.trainable: frozen` nothing of the backbone trains.
        distance = batch.x.new_zeros((), dtype=torch.float32)
        distance = sum(((p.float() - p0.float()).pow(2).sum() for p, p0 in self.pairs), distance)
        distance = sum((trainable.lora_update_norm(f) for f in self.lora), distance)
        return {"ce": batch.ce(model(batch.x, batch.task)),
                "l2sp": self.options.lambda_ / 2 * distance}
