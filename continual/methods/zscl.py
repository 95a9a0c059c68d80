"""ZSCL: fine-tune while distilling the pre-trained CLIP on reference images, and average the weights.

Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language Models",
ICCV 2023 (arXiv 2303.06628); what follows is their MTIL code, Thunderbeee/ZSCL mtil/src/models/finetune.py
run by mtil/scripts/ZSCL.sh. Each step adds to the task's cross-entropy:

  - image-side distillation (lines 248-280): a batch of reference images (ImageNet in the paper) is scored
    against the reference texts' embeddings by the frozen pre-trained model (teacher, t) and by the model
    in training (student, s), both `exp(logit_scale) · normalised image @ normalised text`, with the
    teacher's text embeddings in both; loss T² · CE(s/T, softmax(t/T)), mean over images, T = 2
    (helpers.py `distillation`, lines 64-67);
  - text-side distillation (lines 283-290): the same on the transposed logits, each text's distribution
    over the batch's images. Both sides use the teacher's text embeddings, so both train only the image
    tower;
  - l2 (`--l2 1`): Σ (θ − θ₀)² over every trained weight, θ₀ the model at the task's start (lines 34-37,
    226-228);
  - weight ensemble (`--we --avg_freq 100`, lines 309-320 and helpers.py `merge_we`): starting from the
    task's initial weights (n = 0), after 0-based iteration k with k % 100 == 0, n += 1 and
    θ̄ ← (n·θ̄ + θ)/(n + 1): the plain mean of the start and the snapshots. Training continues from θ,
    and θ̄ is what is evaluated and saved, so the next task starts from it (lines 183-186, 344-352).

Here, as there, the teacher is the pre-trained model for every task, the reference batches come from a
shuffled pass over the reference set (a new order when it runs out, per task), and the ensemble and the
l2 anchor restart at each task, so nothing but the model carries over from one task to the next.

What differs, and why:
  - ZSCL trains the text tower (`--train-mode=whole`): its CE uses the current text embeddings of one
    prompt per class, and l2 and the ensemble cover the text tower too. Ours is frozen and shared; the
    task's head (the zero-shot text head, trained as a linear layer) stands in for it: it is in CE, l2 and
    the ensemble. The distillation terms never used the student's text tower, so they are ZSCL's own.
  - Reference texts: ZSCL's recipe embeds Conceptual Captions' ~15k validation captions (`--ref-sentences
    conceptual_captions`); we use the reference set's class prompts with its templates, as ZSCL does
    without --ref-sentences (lines 171-175) or with `--ref-sentences ImageNet` (scripts/ZSCL_minus.sh).
  - We log KL(softmax(t/T) ‖ softmax(s/T))·T², their soft cross-entropy less the teacher's entropy: the
    same gradients (the entropy does not depend on the student), and 0 while nothing has drifted.
  - Recipe-wide settings are the sequence's `training:` (ZSCL: label smoothing 0.2, weight decay 0,
    1000 iterations, which give 11 snapshots; a task of fewer than `we_freq` steps averages its start
    with one snapshot, after the first step, and so keeps little of what it learned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from continual.datasets.prompts import readable_names
from continual.datasets.tasks import TaskData
from continual.methods import Context
from continual.methods.ldifs import FrozenBackbone
from continual.methods.contract import Method
from continual.methods.options import ZSCLOptions
from continual.models import Backbone, TaskModel, zero_shot_head
from continual.train import Batch, FitStats, Trainer


def distillation(teacher: torch.Tensor, student: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), mean over rows: ZSCL's `distillation` (soft
    cross-entropy) less the teacher's entropy, which carries no gradient."""
    log_p = F.log_softmax(teacher.float() / temperature, dim=1)
    log_q = F.log_softmax(student.float() / temperature, dim=1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2


class WeightEnsemble:
    """ZSCL's `merge_we`: the running mean of the starting weights and a snapshot after 1-based step i
    whenever (i − 1) % every == 0 (their 0-based iteration k % every == 0, so the first step is one)."""

    def __init__(self, params: list[torch.nn.Parameter], *, every: int):
        self.params, self.every, self.n = params, every, 0
        self.mean = [p.detach().clone() for p in params]

    @torch.no_grad()
    def after_step(self, i: int) -> None:
        if (i - 1) % self.every == 0:
            self.n += 1
            for m, p in zip(self.mean, self.params):
                m.mul_(self.n).add_(p).div_(self.n + 1)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for m, p in zip(self.mean, self.params):
            p.copy_(m)


class ZSCL(Method):
    def __init__(self, options: ZSCLOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("zscl distils on the sequence's reference images: build it with context=Context(...)")
        ref = context.references[options.reference]
        self.images = ref.train.images  # uint8, read by rows; the labels are never used
        self.teacher = FrozenBackbone(pretrained)
        # The reference texts' embeddings by the pre-trained (frozen, shared) text tower, built once.
        names = readable_names(ref.dataset, ref.class_names)
        self.head = zero_shot_head(pretrained, names, templates=context.templates[("references", ref.name)])
        self.head.requires_grad_(False).eval()
        self.order, self.position = torch.empty(0, dtype=torch.long), 0

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        self.trainer = trainer
        self.teacher.to(trainer.device)
        self.head.to(trainer.device)
        self.on_device = trainer.on_device(self.images)
        self.order, self.position = torch.empty(0, dtype=torch.long), 0  # a fresh pass per task, as ZSCL
        trained = trainer.trainable_parameters(model, task.name)
        self.anchor = [(p, p.detach().clone()) for p in trained]
        ensemble = None if self.options.we_freq is None else WeightEnsemble(trained, every=self.options.we_freq)
        stats = trainer.fit(model, task, loss_terms=self.loss_terms,
                            after_step=None if ensemble is None else ensemble.after_step)
        if ensemble is not None:
            ensemble.copy_to_params()  # the averaged model ends the task, as ZSCL saves and evaluates it
            stats.extra["zscl_we_snapshots"] = ensemble.n
        self.on_device = self.anchor = None
        return stats

    def reference_rows(self) -> torch.Tensor:
        """The next reference batch: a shuffled pass over the set, from torch's global RNG (seeded per
        step by the runner), its last batch short, then a new order (a DataLoader with shuffle=True)."""
        if self.position >= len(self.order):
            self.order, self.position = torch.randperm(len(self.images)), 0
        rows = self.order[self.position : self.position + self.options.reference_batch_size]
        self.position += len(rows)
        return rows

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        o = self.options
        terms = {"ce": batch.ce(model(batch.x, batch.task))}
        if o.image_weight > 0 or o.text_weight > 0:
            images = self.on_device[self.reference_rows().to(self.on_device.device)]
            x = model.backbone.preprocess(self.trainer.batch_to_device(images))
            with torch.no_grad():
                teacher = self.head(self.teacher.backbone(x))
            student = self.head(model.backbone(x))
            if o.image_weight > 0:
                terms["zscl"] = o.image_weight * distillation(teacher, student, temperature=o.temperature)
            if o.text_weight > 0:
                terms["zscl_text"] = o.text_weight * distillation(teacher.T, student.T, temperature=o.temperature)
        if o.l2 > 0:
            terms["l2"] = o.l2 * sum((p.float() - p0.float()).pow(2).sum() for p, p0 in self.anchor)
        return terms
