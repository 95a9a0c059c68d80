"""FLYP in a sequence: fine-tune like CLIP was pre-trained, the text tower included.

Goyal et al., "Finetune like you pretrain: Improved finetuning of zero-shot vision models", CVPR 2023
(arXiv 2212.00638). Their code, locuslab/FLYP at 215d5bb6, as followed here:
- Captions: each training image is paired with its class name in one of the dataset's templates; the
  CSV holds one row per (image, template) (datacreation_scripts/imagenet_csv_creator.py l. 245-250), read
  shuffled (src/datasets/laion.py l. 476-485), so a batch pairs each image with a template drawn at random.
  Here: one template per image, drawn uniformly from torch's global RNG at every step.
- Loss: CLIP's, with no labels (src/models/flyp_loss.py l. 59-64, 101-105): image and text embeddings
  L2-normalised, logits = exp(logit_scale) · image @ text.T (clip/model.py l. 375-378, clip/loss.py
  l. 116-117), cross-entropy towards the diagonal both ways, averaged (clip/loss.py l. 194-208). Another
  image of the same class in the batch is a negative, as there (its `ground_labels` masking is unused).
- Trained: every CLIP parameter, logit_scale included, in one AdamW (flyp_loss.py l. 66-69), unclamped.
- Heads: after training, zero-shot heads from the fine-tuned text tower with all of the templates, in
  eval mode without gradients: per-template embeddings normalised, averaged, renormalised, times
  exp(logit_scale) (src/models/zeroshot.py l. 39-64; rebuilt each epoch at flyp_loss.py l. 122-123).

Here the image tower is the run's backbone and the text tower the method's own trainable copy (the
backbone's shared one stays frozen). Before a task its head is the current text tower's; after it, the
head of every task in the sequence and of every probe is re-embedded, so learned tasks, the transfer
to tasks not yet learned, and the probes' zero-shot column are all scored with the current text tower
(as MTIL and ZSCL score CLIP). With `head_init: linear_probe` the runner still scores tasks not yet
learned with linear probes on the current features; with `random`, step 0 shows the random heads and
every later step the text heads. FLYP never reads `model.heads` while training: its head is the text.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from continual.datasets.prompts import readable_names
from continual.datasets.tasks import TaskData
from continual.methods import Context
from continual.methods.contract import Method
from continual.methods.options import FLYPOptions
from continual.models import Backbone, Head, TaskModel
from continual.models.clip import text_head, text_tower
from continual.train import Batch, FitStats, Trainer


class FLYP(Method):
    def __init__(self, options: FLYPOptions, *, pretrained: Backbone, context: Context | None = None):
        super().__init__(options, pretrained=pretrained)
        if context is None:
            raise ValueError("flyp re-embeds every task's and probe's prompts: build it with context=Context(...)")
        self.context = context
        shared = text_tower(pretrained)
        self.tokenizer = shared.tokenizer
        # Our own copy (`.model`: the wrapper's deepcopy is the shared tower itself), trained from here on.
        self.text = copy.deepcopy(shared.model).requires_grad_(True).eval()
        self.text.to(next(pretrained.parameters()).device)
        self.tokens: torch.Tensor | None = None  # this task's prompts, (classes, templates, context)
        self.zero_shot_probes: dict[str, Head] | None = None  # set after the first task (contract.Method)

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        self.text.to(trainer.device)
        self.tokens = self.prompt_tokens(task).to(trainer.device)
        model.heads[task.name] = self.head(task, "tasks", device=trainer.device)  # the current text tower's
        self.text.train()
        try:
            stats = trainer.fit(model, task, loss_terms=self.loss_terms, extra_parameters=list(self.text.parameters()))
        finally:
            self.text.eval()
        self.refresh_heads(model, device=trainer.device)
        stats.extra["logit_scale"] = float(self.text.logit_scale.detach().exp())  # CLIP's 1/temperature, trained
        return stats

    def loss_terms(self, model: TaskModel, batch: Batch) -> dict[str, torch.Tensor]:
        y = batch.y - model.label_offset(batch.task)  # the task's own classes (class-incremental: offset)
        pick = torch.randint(self.tokens.shape[1], y.shape).to(y.device)  # a template per image
        image = F.normalize(model.backbone(batch.x), dim=-1)
        text = F.normalize(self.text.encode_text(self.tokens[y, pick]), dim=-1)
        logits = self.text.logit_scale.exp() * image @ text.T  # (images, captions): cosine · exp(logit_scale)
        pairs = torch.arange(len(logits), device=logits.device)  # image i belongs with caption i, and only it
        return {"flyp": (F.cross_entropy(logits, pairs) + F.cross_entropy(logits.T, pairs)) / 2}

    def prompt_tokens(self, task: TaskData) -> torch.Tensor:
        names = readable_names(task.dataset, task.class_names)
        templates = self.context.templates[("tasks", task.name)]
        tokens = self.tokenizer([t.format(name) for name in names for t in templates])
        return tokens.view(len(names), len(templates), -1)

    def head(self, data: TaskData, group: str, *, device: torch.device) -> Head:
        return text_head(self.text, self.tokenizer, readable_names(data.dataset, data.class_names),
                         self.context.templates[(group, data.name)], device=device)

    def refresh_heads(self, model: TaskModel, *, device: torch.device) -> None:
        for task in self.context.tasks:
            model.heads[task.name] = self.head(task, "tasks", device=device)
        self.zero_shot_probes = {p.name: self.head(p, "probes", device=device) for p in self.context.probes}

    def state_dict(self) -> dict:
        # The text tower is all FLYP carries; the heads it made are the model's, saved by the runner.
        return {"text": {k: v.detach().cpu().clone() for k, v in self.text.state_dict().items()}}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        self.text.load_state_dict(state["text"])
        self.text.to(trainer.device)
        self.zero_shot_probes = {p.name: self.head(p, "probes", device=trainer.device) for p in self.context.probes}
