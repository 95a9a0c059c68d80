"""The avalanche-lib baselines: Naive, EWC, LwF and Replay, run by Avalanche's own strategy and plugins.

The only module that imports avalanche. Each baseline is Avalanche's `SupervisedTemplate` with one of its
plugins (`EWCPlugin`, `LwFPlugin`, `ReplayPlugin`, none for Naive), trained on our model, our tensors and
our settings; Avalanche never evaluates (the runner scores every method with the same evaluator).

To make the comparison with our own methods fair, Avalanche's template runs on the pieces of our one
training step (continual/train.py: the task's plan of steps, the optimiser, schedule, clipping, autocast,
label-smoothed cross-entropy, augmentation and loss log, with each task's own settings where it has them),
which replace three of its defaults:
* the optimiser: Avalanche keeps one optimiser over *all* parameters with its state carried across
  experiences; here each task gets a fresh one over the backbone and that task's head
  (`Trainer.trainable_parameters`: other heads would otherwise be shrunk by AdamW's weight decay);
* the schedule and clipping: the warm-up + cosine schedule, stepped per iteration, and gradient
  clipping (`Trainer.update`);
* the multi-head model: Avalanche's `MultiHeadClassifier` makes randomly initialised heads and its
  multi-task forward runs the backbone once per head (LwF distils every head, so T backbone passes).
  `_Heads` routes task labels to our heads (initialised by linear probe or zero-shot) and runs the
  backbone once per batch, reusing that pass when LwF asks for all heads of the same batch.
Class-incremental sequences run in Avalanche's single-head form: every sample has task label 0, targets
are offset past earlier tasks' classes, and `_Heads` answers with the grown head (every task's head up
to the current one, side by side), so LwF distils it on the classes seen before and replayed images
compete with every class seen so far.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import defaultdict

import torch
from torch.utils.data import TensorDataset

from continual import checkpoints
from continual.augment import augment
from continual.augment import generator as augmentation_generator
from continual.datasets.source import resize_uint8
from continual.datasets.tasks import TaskData
from continual.methods.contract import Method
from continual.models import TaskModel
from continual.train import FitStats, LossLog, Trainer, epoch_means

with warnings.catch_warnings():  # avalanche's optional solvers warn at import; nothing we use needs them
    warnings.simplefilter("ignore")
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.task_aware import with_task_labels
    from avalanche.benchmarks.utils import DataAttribute
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset
    from avalanche.models import MultiTaskModule
    from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LwFPlugin, ReplayPlugin, SupervisedPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.templates import SupervisedTemplate
    from avalanche.training.utils import ParamData


# ----------------------------------------------------------------------------------------------------
# Our model and data in the shapes Avalanche expects


class _Heads(MultiTaskModule):
    """Our TaskModel as an Avalanche multi-task module: task label i -> the head of the i-th task."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.model = model
        self.task_names: list[str] = []  # task label -> task name, filled as tasks arrive
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, features) of the last pass

    def adaptation(self, experience) -> None:
        pass  # heads are made by the runner (linear probe / zero-shot), not grown by Avalanche

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is x:
            return self._last[1]  # LwF's all-heads pass on the batch just forwarded: reuse it
        features = self.model.backbone(self.model.backbone.preprocess(x))
        self._last = (x, features)
        return features

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor | int | None) -> torch.Tensor:
        if task_labels is None:  # Avalanche's convention: every head's output, by task label
            return self.forward_all_tasks(x)
        features = self._features(x)
        if self.model.class_incremental:  # one task label (0), one head grown over every class seen so far
            return self.model.logits(features, self.task_names[-1])
        if isinstance(task_labels, int):
            return self.model.heads[self.task_names[task_labels]](features)
        tasks = task_labels.unique().tolist()
        if len(tasks) == 1:
            return self.model.heads[self.task_names[tasks[0]]](features)
        # Mixed batch (replay): pad each task's logits with -inf, so padding takes no probability mass
        # (Avalanche pads with zeros, which would leak into the cross-entropy of smaller heads).
        width = max(len(self.model.heads[self.task_names[t]].linear.weight) for t in tasks)
        out = features.new_full((len(x), width), float("-inf"))
        for t in tasks:
            mask = task_labels == t
            logits = self.model.heads[self.task_names[t]](features[mask])
            out[mask, : logits.shape[1]] = logits
        return out

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.forward(x, task_label)

    def forward_all_tasks(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        features = self._features(x)
        if self.model.class_incremental:  # LwF then distils the grown head on the classes seen before
            return {0: self.model.logits(features, self.task_names[-1])}
        return {t: self.model.heads[name](features) for t, name in enumerate(self.task_names)}

    def train(self, mode: bool = True) -> _Heads:
        self.model.train(mode)  # TaskModel.train keeps BatchNorm frozen when configured
        self.training = mode
        return self

    def __getstate__(self):  # deep copies (LwF's previous model) must not drag the cached graph along
        state = self.__dict__.copy()
        state["_last"] = None
        return state


def _dataset(images: torch.Tensor, targets: torch.Tensor, task_labels: torch.Tensor):
    """Our tensors as an Avalanche classification dataset whose items are (image, target, task label)."""
    return TaskAwareSupervisedClassificationDataset(
        [TensorDataset(images, targets)],
        data_attributes=[DataAttribute(targets, "targets"),
                         DataAttribute(task_labels, "targets_task_labels", use_in_getitem=True)],
    )


def _tensors(dataset) -> dict[str, torch.Tensor]:
    """The inverse of `_dataset`, in the dataset's order (a replay buffer is a few hundred images)."""
    items = [dataset[i] for i in range(len(dataset))]
    return {"images": torch.stack([x for x, _, _ in items]),
            "labels": torch.tensor([int(y) for _, y, _ in items]),
            "task_labels": torch.tensor([int(t) for _, _, t in items])}


class _AtSize:
    """A task's images as Avalanche reads them, item by item, each resized to `size` (bilinear, antialiased
    when shrinking, rounded to uint8) where it is kept at another size. A replay batch stacks images of
    several tasks, and those can be kept at different sizes (MNIST's 28 px in memory, a folder's store
    at the model's 224 px): without this, a batch could not be stacked."""

    def __init__(self, images, size: int):
        self.images, self.image_size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def size(self, dim: int | None = None):
        shape = torch.Size((len(self.images), 3, self.image_size, self.image_size))
        return shape if dim is None else shape[dim]

    def __getitem__(self, i) -> torch.Tensor:
        return resize_uint8(self.images[i][None], self.image_size)[0]


def _experience(task: TaskData, label: int, *, offset: int = 0, size: int | None = None):
    """One Avalanche experience over our uint8 tensors, with task label `label` on every sample and targets
    offset by `offset` (class-incremental: past the classes of earlier tasks); images at `size` when given
    (methods whose batches mix tasks), else as kept (the backbone resizes each batch)."""
    targets = task.train.labels + offset
    images = task.train.images if size is None else _AtSize(task.train.images, size)
    dataset = _dataset(images, targets, torch.full_like(targets, label))
    return with_task_labels(benchmark_from_datasets(train=[dataset])).train_stream[0]


class _Strategy(SupervisedTemplate):
    """Avalanche's supervised template with our step's pieces (continual/train.py): optimiser, schedule,
    clipping, autocast, augmentation, progress bar and loss log."""

    def __init__(self, *, model: TaskModel, trainer: Trainer, plugins: list[SupervisedPlugin], penalty: str):
        t = trainer.training
        self.heads = _Heads(model)
        self.trainer = trainer
        self.penalty = penalty  # name of the term the plugin adds to the loss, for the log
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Nn]o loggers.*")
            super().__init__(model=self.heads, optimizer=trainer.make_optimizer(list(model.parameters())),
                             criterion=torch.nn.CrossEntropyLoss(), train_mb_size=t.batch_size,
                             train_epochs=t.epochs, eval_mb_size=trainer.eval_batch_size, device=trainer.device,
                             plugins=plugins, evaluator=EvaluationPlugin(loggers=[]), eval_every=-1)

    def make_optimizer(self, **kwargs) -> None:
        task = self.heads.task_names[-1]
        self.params = self.trainer.trainable_parameters(self.heads.model, task)
        self.optimizer = self.trainer.make_optimizer(self.params)

    def _before_training_exp(self, **kwargs) -> None:
        super()._before_training_exp(**kwargs)  # plugins may swap the dataloader here (replay)
        per_epoch = len(self.dataloader)
        # steps_per_task: as many passes as it takes, the last cut short by stop_training() in optimizer_step
        self.total, self.train_epochs = self.trainer.plan(per_epoch)
        self.per_epoch = per_epoch
        self.schedule = self.trainer.make_schedule(self.optimizer, self.total)
        self.log = LossLog(self.trainer, self.total, self.trainer.label)
        self.iterations = 0
        # training.augment (continual/augment.py): None (and nothing drawn) for none
        self.augment_draws = augmentation_generator(self.augment_kind)

    def _before_training_epoch(self, **kwargs) -> None:
        super()._before_training_epoch(**kwargs)
        self.log.new_pass()
        self.epoch_iterations = 0

    @property
    def augment_kind(self) -> str:
        return self.trainer.training.augment

    def _unpack_minibatch(self) -> None:
        super()._unpack_minibatch()  # the batch, on the device
        if self.is_training and self.augment_draws is not None:
            # training.augment, once per batch and before any forward, so the model,
            # LwF's teacher and the replayed images all see the same augmented batch. (EWC's importances,
            # computed by the plugin's own loop after a task, see the images as they are.)
            self.mbatch[0] = augment(self.mbatch[0], self.augment_kind, self.augment_draws)

    def forward(self):
        with self.trainer.autocast:  # bf16 where the run asks for it
            return super().forward()

    def criterion(self) -> torch.Tensor:
        with self.trainer.autocast:
            ce = super().criterion()
        self._ce = ce.detach()
        return ce

    def optimizer_step(self) -> None:
        # the images of the batch (replayed ones too)
        self.trainer.update(self.optimizer, self.schedule, self.params, self.log, images=len(self.mbatch[0]))
        terms = {"ce": self._ce}
        if self.penalty:
            terms[self.penalty] = self.loss.detach() - self._ce
        self.log.add(terms)
        self.iterations += 1
        self.epoch_iterations += 1
        if self.iterations == self.total:
            self.stop_training()  # ends the (last) pass: steps_per_task reached
        self.log.stepped(self.epoch_iterations,
                         last=self.epoch_iterations == self.per_epoch or self.iterations == self.total)


class _AvalancheMethod(Method):
    """Shared by the four baselines: one Avalanche strategy kept across tasks, trained one task at a time.

    `state_dict()` is what the strategy carries from one task to the next (task labels, Avalanche's
    clock, the plugin's memory), as tensors and plain values, so a run can resume between tasks."""

    penalty = ""  # the loss term the plugin adds, as logged
    mixes_tasks = False  # whether a batch holds images of several tasks (a replay buffer's)

    def __init__(self, options, *, pretrained=None, context=None):
        super().__init__(options, pretrained=pretrained)
        self.strategy: _Strategy | None = None

    def plugins(self) -> list[SupervisedPlugin]:
        return []

    def fit_task(self, model: TaskModel, task: TaskData, *, step: int, trainer: Trainer) -> FitStats:
        if self.strategy is None:
            self.strategy = _Strategy(model=model, trainer=trainer, plugins=self.plugins(), penalty=self.penalty)
        strategy = self.strategy
        # This task's settings (the sequence's, with the task's own `training` over them): its optimiser,
        # schedule, steps and clipping are made from strategy.trainer when the experience starts, and its
        # criterion is the task's label-smoothed cross-entropy (Trainer.cross_entropy, Batch.ce's).
        strategy.trainer = trainer
        strategy._criterion = trainer.cross_entropy()
        strategy.heads.task_names.append(task.name)
        start = time.perf_counter()
        size = model.backbone.image_size if self.mixes_tasks else None
        # Class-incremental: Avalanche's single-head form, every sample task label 0, targets over all classes.
        label = 0 if model.class_incremental else step - 1
        strategy.train(_experience(task, label=label, offset=model.label_offset(task.name), size=size),
                       eval_streams=[])
        strategy.log.close()
        strategy.heads._last = None
        losses = epoch_means(strategy.log.sums, steps=strategy.epoch_iterations, task=task.name)
        return FitStats(steps=strategy.iterations, seconds=time.perf_counter() - start, losses=losses,
                        first_losses={k: float(v) for k, v in strategy.log.first.items()}, extra=self.extra())

    def extra(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        s = self.strategy
        return {"task_names": list(s.heads.task_names),
                "clock": {k: v for k, v in vars(s.clock).items() if isinstance(v, int)},
                "plugin": self.plugin_state()}

    def load_state_dict(self, state: dict, *, model: TaskModel, trainer: Trainer) -> None:
        """Continue from `state` with `model` (already holding the checkpoint's weights and heads)."""
        self.strategy = _Strategy(model=model, trainer=trainer, plugins=self.plugins(), penalty=self.penalty)
        self.strategy.heads.task_names[:] = state["task_names"]
        for k, v in state["clock"].items():  # train_exp_counter numbers EWC's experiences
            setattr(self.strategy.clock, k, v)
        self.load_plugin_state(state["plugin"])

    def plugin_state(self) -> dict:
        return {}

    def load_plugin_state(self, state: dict) -> None:
        pass  # Naive carries nothing


class Naive(_AvalancheMethod):
    """Avalanche's Naive strategy: fine-tuning with no protection against forgetting (parity check)."""



class EWC(_AvalancheMethod):
    """Avalanche's EWCPlugin: a quadratic penalty weighted by each parameter's importance on past tasks."""

    penalty = "ewc"

    def plugins(self) -> list[SupervisedPlugin]:
        o = self.options
        self.ewc = EWCPlugin(ewc_lambda=o.lambda_, mode=o.mode, decay_factor=o.decay)
        return [self.ewc]

    def plugin_state(self) -> dict:
        # {experience: {parameter name: tensor}}, in the plugin's own order (online mode zips by order)
        def plain(groups):
            return {exp: {k: p.data.detach().cpu().clone() for k, p in params.items()} for exp, params in groups.items()}

        return {"saved_params": plain(self.ewc.saved_params), "importances": plain(self.ewc.importances)}

    def load_plugin_state(self, state: dict) -> None:
        device = self.strategy.device
        for kind in ("saved_params", "importances"):
            groups = getattr(self.ewc, kind)
            groups.clear()
            for exp, params in state[kind].items():
                groups[exp] = {k: ParamData(k, init_tensor=t.to(device), device=device) for k, t in params.items()}


class LwF(_AvalancheMethod):
    """Avalanche's LwFPlugin: distil every previous head's outputs from the model after the last task."""

    penalty = "lwf"

    def plugins(self) -> list[SupervisedPlugin]:
        self.lwf = LwFPlugin(alpha=self.options.alpha, temperature=self.options.temperature)
        return [self.lwf]

    def plugin_state(self) -> dict:
        lwf = self.lwf.lwf
        prev = lwf.prev_model
        return {
            "expcount": lwf.expcount,
            "prev_classes_by_task": {t: sorted(c) for t, c in lwf.prev_classes_by_task.items()},
            # the model after the last task (the teacher): its weights, heads, task labels and mode
            "prev_model": None if prev is None else {
                **checkpoints.model_state(prev.model), "task_names": list(prev.task_names), "training": prev.training},
        }

    def load_plugin_state(self, state: dict) -> None:
        lwf = self.lwf.lwf
        lwf.expcount = state["expcount"]
        lwf.prev_classes_by_task = defaultdict(set, {t: set(c) for t, c in state["prev_classes_by_task"].items()})
        saved = state["prev_model"]
        if saved is not None:
            prev = copy.deepcopy(self.strategy.heads)
            checkpoints.load_model(prev.model, saved)
            prev.task_names = list(saved["task_names"])
            lwf.prev_model = prev.train(saved["training"])


class _ReplayPlugin(ReplayPlugin):
    def after_training_exp(self, strategy, **kwargs):
        # What ReplayPlugin does, minus the deprecated `update` shim it still goes through in avalanche
        # 0.6 (which warns on every task): store samples of the experience just learned.
        self.storage_policy.post_adapt(strategy, strategy.experience)


class Replay(_AvalancheMethod):
    """Avalanche's ReplayPlugin: an experience-balanced buffer of past images mixed into each batch."""

    mixes_tasks = True

    def plugins(self) -> list[SupervisedPlugin]:
        self.replay = _ReplayPlugin(mem_size=self.options.memory_size)
        return [self.replay]

    def extra(self) -> dict:
        return {"buffer_images": len(self.replay.storage_policy.buffer)}

    def plugin_state(self) -> dict:
        # The buffer, group by group, in its order, with the reservoir weights that decide what stays.
        policy = self.replay.storage_policy
        groups = {exp: {"max_size": g.max_size, "weights": g._buffer_weights.clone(), **_tensors(g.buffer)}
                  for exp, g in policy.buffer_groups.items()}
        return {"num_exps": policy._num_exps, "groups": groups}

    def load_plugin_state(self, state: dict) -> None:
        policy = self.replay.storage_policy
        policy._num_exps = state["num_exps"]
        policy.buffer_groups = {}
        for exp, g in state["groups"].items():
            group = ReservoirSamplingBuffer(g["max_size"])
            group._buffer_weights = g["weights"]
            group.buffer = _dataset(g["images"], g["labels"], g["task_labels"])
            policy.buffer_groups[exp] = group
