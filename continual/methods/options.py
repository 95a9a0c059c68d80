"""Each method's options, as the sequence YAML gives them, and what the method declares of itself: one
strict pydantic class per method.

Only pydantic here, so the schema (and `continual validate`, `continual list`) can check a method's
options without importing torch or avalanche. `name` is the tag the schema dispatches on: the YAML item
`- ldifs: {lambda: 10}` becomes LDIFSOptions(name="ldifs", lambda_=10.0), and from there on the typed
object is what the runner hands to the method (`options.lambda_` from YAML to loss).

Besides its fields, each class declares (the `Options` base says what each means): its one-line SUMMARY,
where its IMPLEMENTATION is, what it NEEDS of the model, whether it trains ONCE, whether it can run
DISTRIBUTED, the options that name it in a LEGEND, the `references:` it reads and the PROBLEMS of its
options in a sequence. The runner, `continual list` and the report read these and name no method; the
other half of the contract, what a method does, is continual/methods/contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from continual.config.schema import Sequence


# A label names a folder, CSV values and legend entries, as task names do (config/schema.py's DATA_NAME).
LABEL = r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}"
# A method's folder is <run>/<key>, next to the run folder's own (run_folder.py): no key may be one of these.
RESERVED_KEYS = frozenset({"checkpoints", "cache"})

# Why the methods that cannot run under torchrun cannot (Options.DISTRIBUTED; docs/gpus.md, "Several GPUs in one run").
AVALANCHE_LOOP = ("Avalanche trains with its own loop and plugins (continual/methods/avalanche.py), which do not "
                  "support DistributedDataParallel: each rank would train a model of its own")
BATCH_COUPLED = ("its contrastive loss compares each image with every caption in the batch, so it is not a mean "
                 "of per-image terms: split over ranks, each image would meet only its own rank's captions")
UNDECLARED = ("a method runs under torchrun only when its options declare DISTRIBUTED = True (its loss a mean of "
              "per-image terms, trained by Trainer.fit)")


class Options(BaseModel):
    # Unknown keys are errors, no coercion beyond int -> float; `lambda` (a Python keyword) is `lambda_`.
    # No inf or nan (`.inf`, or `1e400`, which YAML reads as inf): a λ, α or temperature of inf passed
    # the range checks and trained into nan (issue #11).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True,
                              allow_inf_nan=False)
    # What this entry is called in the run folder, the tables and the legends: the method's name unless
    # given. The same method twice in one sequence (two λ of LDIFS) needs a label on all but one.
    label: str | None = Field(default=None, pattern=f"^{LABEL}$")

    # ---- What the method declares of itself (class constants: pydantic leaves ClassVars out of the fields) ----
    # One line for `continual list`.
    SUMMARY: ClassVar[str] = ""
    # Its class, "module:Class", imported only when it runs (the Avalanche baselines pull in avalanche-lib, ~9 s).
    # A plugin hands its class to `methods.register` instead.
    IMPLEMENTATION: ClassVar[str] = ""
    # What it needs of the model, keys of methods.NEEDS ("taps", "text"): checked by `validate` from the model's
    # config and by `run` on the built model, before anything is written, naming the method's entry.
    NEEDS: ClassVar[tuple[str, ...]] = ()
    # Trains once, at the last step, on every task together (joint): the runner skips the steps before it,
    # leaving their rows empty (NaN), and sizes torchrun's batches for the union of the tasks.
    ONCE: ClassVar[bool] = False
    # Whether it can be one run over several ranks under torchrun: True, or why not. A method that trains
    # with Trainer.fit can when each loss term is a mean over the batch of a term per image (cross-entropy,
    # LDIFS's distances) or the same on every rank (L2-SP's weight distance, ZSCL's distillation on a
    # reference batch every rank draws alike): the loop weights each rank's share by its size, and DDP's mean
    # of the ranks' gradients is then the whole batch's gradient. False: it has not said (UNDECLARED).
    DISTRIBUTED: ClassVar[bool | str] = False
    # The options that name it in the report's legends, `ldifs (λ = 10)`: (option as YAML names it, format,
    # shown only when it differs from its default). Any other option shows where two entries differ in it.
    LEGEND: ClassVar[tuple[tuple[str, str, bool], ...]] = ()
    # Why its model cannot be exported (keep_models, `continual export`: continual/export.py), or None: what it
    # scores is then a backbone of the family's own and linear heads, which the export writes. A method whose
    # predictions need state of its own (prompts, routers, a fused adapter) says what; a run asking for its
    # model is refused before anything is written.
    NO_EXPORT: ClassVar[str | None] = None

    def references(self) -> tuple[str, ...]:
        """The sequence's `references:` (by name) it reads: only those are loaded (a run without ZSCL needs
        no ImageNet on disk)."""
        return ()

    def problems(self, sequence: Sequence) -> list[tuple[str, str]]:
        """What is wrong with these options in `sequence`, found without torch, as (option, message) pairs,
        the option as YAML names it (the entry's key path is added by the caller): refused by `validate` and
        `run` before anything is loaded. (What only the built model can say: contract.Method.problems.)"""
        return []

    @field_validator("label")
    @classmethod
    def _not_reserved(cls, label: str | None) -> str | None:
        if label in RESERVED_KEYS:
            raise ValueError(f"{label!r} is a folder of the run itself; choose another label")
        return label

    @property
    def key(self) -> str:
        return self.label or self.name

    def settings(self) -> dict:
        """The options as YAML gives them, without the name (and without the label when there is none)."""
        raw = self.model_dump(mode="json", by_alias=True, exclude={"name"})
        if raw.get("label") is None:
            raw.pop("label", None)
        return raw


@dataclass(frozen=True)
class MethodItem:
    """One item of a sequence's `methods:` as written, before validation."""

    index: int  # its place in the list: methods[index]
    key: str  # its label, else its name: its folder in the run, its column, its legend entry
    name: str  # the method
    options: dict  # as written, `label` included; {} for none


def method_items(methods) -> list[MethodItem]:
    """The items of `methods:` as a sequence file or a run's config.yaml holds them, read without validating:
    `- finetune`, `- ldifs:` (no options), `- {ldifs: {lambda: 10, label: l10}}`. For the readers of a file
    that a hand, or a version before a key existed, may have left in another shape (the report, a resume,
    `--set`, the checks that go on past a validation error), whose own messages come from the schema: a
    `methods` that is not a list holds no item; an item that is neither a name nor a one-key mapping, or
    whose name is not a string (`- 5: {}`), is skipped; options that are not a mapping count as none; a
    label that is not a string is no label."""
    items = []
    for index, item in enumerate(methods if isinstance(methods, list) else []):
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, options), = item.items()
            options = options if isinstance(options, dict) else {}
        else:
            continue
        if isinstance(name, str):
            label = options.get("label")
            items.append(MethodItem(index, label if isinstance(label, str) else name, name, options))
    return items


class FinetuneOptions(Options):
    name: Literal["finetune"] = "finetune"
    SUMMARY = "plain end-to-end fine-tuning: cross-entropy on the current task's head"
    IMPLEMENTATION = "continual.methods.finetune:Finetune"
    DISTRIBUTED = True


class LDIFSOptions(Options):
    name: Literal["ldifs"] = "ldifs"
    SUMMARY = "cross-entropy + λ · distance of intermediate features to the frozen pre-trained model"
    IMPLEMENTATION = "continual.methods.ldifs:LDIFS"
    NEEDS = ("taps",)
    DISTRIBUTED = True
    LEGEND = (("lambda", "λ = {}", False),)
    # The paper's value. On the default sequence λ=100 keeps more (BWT -0.06 against -0.42 at λ=10,
    # docs/results.md), so that sequence sets it; per-sample normalisation makes λ mean the same for any tap size.
    lambda_: float = Field(default=10.0, alias="lambda", ge=0)
    # pretrained: the model as loaded before task 1, never refreshed (the paper's definition).
    # previous: re-anchor to the model at the start of each task (what the paper's code does in sequences).
    anchor: Literal["pretrained", "previous"] = "pretrained"
    # The anchor is frozen and the training transform deterministic, so its tap outputs for a task's
    # training images are computed once per task and looked up per batch, instead of a second forward
    # every step (the paper's code: 1.30-1.41x a fine-tuning step against 1.05-1.07x cached, docs/performance.md).
    # auto: only where it pays (methods/ldifs.py plan_cache, docs/methods/ldifs.md): a task whose steps visit each image 1.5
    # times or more, and taps that fit a quarter of free GPU memory (float16), else a quarter of available
    # RAM (float32), else half the scratch disk (float16); otherwise the anchor runs per step. memory, disk:
    # cache whatever the visits (refused before allocating where it cannot fit at all). off: the paper's way.
    # With training.augment the images differ every step: auto then runs the anchor per batch, and
    # memory or disk is refused (config/loading.py).
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    # per_sample: each sample's whole tap L2-normalised, distance in [0, 4] per tap whatever its size (ours).
    # paper: the public code's loss (omegafragger/ldifs_code loss/ldifs.py): each tap normalised along dim 1
    # (a ViT's tokens, a CNN's channels), a plain mean of squared differences, a tap's term at most 4/(its
    # dim-1 size): λ is not comparable across the two.
    distance: Literal["per_sample", "paper"] = "per_sample"
    # Which of the backbone's taps (Backbone.tap_names, e.g. ln_pre, resblocks.11; an unknown name is refused
    # with the model's list); None = all of them, the paper's five for a ViT.
    taps: list[str] | None = Field(default=None, min_length=1)

    def cache_refused(self, augment: str) -> str | None:
        """Why `cache` cannot be used with training.augment `augment`, or None. The cache holds the anchor's
        features of the training images as they are; augmented images differ every step. `cache: auto` then
        runs the anchor per batch (said in the log and in metrics.json); a cache asked for by name is refused
        rather than silently not used."""
        if augment == "none" or self.cache not in ("memory", "disk"):
            return None
        return (f"cache: {self.cache} cannot be used with training.augment: {augment} (augmented images differ "
                "every step, so the anchor runs on each batch); use cache: auto or off, or training.augment: none")

    def problems(self, sequence: Sequence) -> list[tuple[str, str]]:
        why = self.cache_refused(sequence.training.augment)
        return [("cache", why)] if why else []


class FrozenOptions(Options):
    name: Literal["frozen"] = "frozen"
    SUMMARY = "no training: the pre-trained backbone and each task's starting head (the reference row)"
    IMPLEMENTATION = "continual.methods.frozen:Frozen"
    DISTRIBUTED = True


class JointOptions(Options):
    # No options: it trains with the sequence's `training:`, once, on every task together.
    name: Literal["joint"] = "joint"
    SUMMARY = "one model trained on every task at once, scored after the last step (the upper-bound row)"
    IMPLEMENTATION = "continual.methods.joint:Joint"
    ONCE = True
    DISTRIBUTED = True


class L2SPOptions(Options):
    name: Literal["l2sp"] = "l2sp"
    SUMMARY = "cross-entropy + λ/2 · squared distance of the backbone's weights to the pre-trained ones"
    IMPLEMENTATION = "continual.methods.l2sp:L2SP"
    DISTRIBUTED = True
    LEGEND = (("lambda", "λ = {}", False),)
    # Li et al. 2018 search α in {0.001, 0.01, 0.1, 1} and report 0.1 for most targets (their table 2);
    # the sum runs over every backbone weight, so a larger model pulls harder at the same λ.
    lambda_: float = Field(default=0.1, alias="lambda", ge=0)


class WiseFTOptions(Options):
    name: Literal["wise_ft"] = "wise_ft"
    SUMMARY = ("fine-tune, then interpolate the backbone with the pre-trained (or previous) one: "
               "(1-α)·anchor + α·fine-tuned")
    IMPLEMENTATION = "continual.methods.wise_ft:WiseFT"
    DISTRIBUTED = True
    LEGEND = (("alpha", "α = {}", False),)
    # 0.5: the paper's headline mixing weight (Wortsman et al. 2022, fig. 1), and ZSCL's WiSE-FT row.
    alpha: float = Field(default=0.5, ge=0, le=1)
    # pretrained: interpolate towards the model as loaded (ZSCL's MTIL baseline); previous: towards the
    # model before this task (a moving average of the sequence).
    anchor: Literal["pretrained", "previous"] = "pretrained"


class LPFTOptions(Options):
    # No options: the linear probe is the evaluation's (L-BFGS logistic regression to convergence, as Kumar
    # et al. fit theirs), and the fine-tuning is `training:`'s.
    name: Literal["lp_ft"] = "lp_ft"
    SUMMARY = ("linear probe, then fine-tune: each task's head refit as a logistic regression on the frozen "
               "features, then end-to-end fine-tuning")
    IMPLEMENTATION = "continual.methods.lp_ft:LPFT"
    DISTRIBUTED = True


class FLYPOptions(Options):
    name: Literal["flyp"] = "flyp"
    SUMMARY = ("fine-tune like CLIP was pre-trained: contrastive loss between images and their class prompts, "
               "text tower included")
    IMPLEMENTATION = "continual.methods.flyp:FLYP"
    NEEDS = ("text",)
    DISTRIBUTED = BATCH_COUPLED
    # No options of its own: the paper's recipe (Goyal et al. 2023; locuslab/FLYP's flyp_loss.py) is CLIP's
    # loss with every weight trained and no extra coefficient; lr, weight decay, epochs and batch size
    # (whose size sets how many negatives each image sees) are `training:`'s.


class ZSCLOptions(Options):
    name: Literal["zscl"] = "zscl"
    SUMMARY = "distil the pre-trained CLIP on reference images, plus a weight ensemble across steps"
    IMPLEMENTATION = "continual.methods.zscl:ZSCL"
    NEEDS = ("text",)
    DISTRIBUTED = True
    reference: str  # the name of one of the sequence's `references:` (ZSCL distils on ImageNet images)
    # Defaults: ZSCL's MTIL recipe, Thunderbeee/ZSCL mtil/scripts/ZSCL.sh (lines 13-25) on mtil/src/args.py.
    # Distillation temperature: --T, default 2.0 (args.py line 103), not set by the script.
    temperature: float = Field(default=2.0, gt=0)
    # Weight of the distillation of each reference image's distribution over the reference texts (--image_loss)
    # and of each text's over the batch's images (--text_loss): 1.0 each without --weight_adjust
    # (models/finetune.py lines 276-290); 0 turns a side off.
    image_weight: float = Field(default=1.0, ge=0)
    text_weight: float = Field(default=1.0, ge=0)
    # Reference images per step: ZSCL's reference loader takes --batch-size, 64 (args.py line 11; finetune.py
    # lines 140-144), whatever the training batch.
    reference_batch_size: int = Field(default=64, gt=0, le=65536)
    # Weight ensemble (--we): a running mean of the weights, taken every --avg_freq 100 iterations
    # (ZSCL.sh line 22; finetune.py lines 309-320), that ends the task. None: no ensemble.
    we_freq: int | None = Field(default=100, gt=0)
    # --l2 1 (ZSCL.sh line 23): + l2 · Σ (θ − θ_task start)² over every trained weight (helpers.py l2_loss).
    l2: float = Field(default=1.0, ge=0)

    def references(self) -> tuple[str, ...]:
        return (self.reference,)

    def problems(self, sequence: Sequence) -> list[tuple[str, str]]:
        names = [r.name for r in sequence.references]
        if self.reference in names:
            return []
        return [("reference", f"{self.reference!r} is not one of the sequence's `references:` "
                              f"({', '.join(names) or 'none given'})")]


class NaiveOptions(Options):
    name: Literal["naive"] = "naive"
    SUMMARY = "Avalanche's Naive strategy: fine-tuning with no protection (a parity check)"
    IMPLEMENTATION = "continual.methods.avalanche:Naive"
    DISTRIBUTED = AVALANCHE_LOOP


class EWCOptions(Options):
    name: Literal["ewc"] = "ewc"
    SUMMARY = "Avalanche's EWCPlugin: quadratic penalty weighted by parameter importance on past tasks"
    IMPLEMENTATION = "continual.methods.avalanche:EWC"
    DISTRIBUTED = AVALANCHE_LOOP
    LEGEND = (("lambda", "λ = {}", False), ("mode", "{}", True))  # `online` is another method
    # On the default sequence (64 px EfficientNet-Lite0, 2k images/task) λ=1e3 was reported to barely
    # help; λ=1e5 gave BWT +0.003 here (docs/results.md). Avalanche's importances are mean squared mini-batch
    # gradients, tiny for a pre-trained network, hence the large λ.
    lambda_: float = Field(default=1e5, alias="lambda", ge=0)
    mode: Literal["separate", "online"] = "separate"
    decay: float | None = Field(default=None, gt=0, le=1)  # online mode only: importance decay per task

    @model_validator(mode="after")
    def _decay_with_online(self) -> EWCOptions:
        if self.mode == "online" and self.decay is None:
            raise ValueError("mode online needs `decay` (e.g. 0.9)")
        if self.mode == "separate" and self.decay is not None:
            raise ValueError("`decay` is for mode online only")
        return self


class LwFOptions(Options):
    name: Literal["lwf"] = "lwf"
    SUMMARY = "Avalanche's LwFPlugin: distil every previous head from the model after the last task"
    IMPLEMENTATION = "continual.methods.avalanche:LwF"
    DISTRIBUTED = AVALANCHE_LOOP
    LEGEND = (("alpha", "α = {}", False), ("temperature", "T = {}", True))
    # Avalanche's defaults (alpha 1, temperature 2); BWT -0.39 on the default sequence (docs/results.md).
    alpha: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=2.0, gt=0)


class ReplayOptions(Options):
    name: Literal["replay"] = "replay"
    SUMMARY = "Avalanche's ReplayPlugin: a buffer of past images mixed into each batch"
    IMPLEMENTATION = "continual.methods.avalanche:Replay"
    DISTRIBUTED = AVALANCHE_LOOP
    LEGEND = (("memory_size", "memory {}", False),)
    # 300 stored images (15% of one task) gave BWT +0.003 on the default sequence (docs/results.md).
    memory_size: int = Field(default=300, gt=0)


class RAILOptions(Options):
    name: Literal["rail"] = "rail"
    SUMMARY = ("CLIP only, no backpropagation: a ridge-regression adapter on the frozen features, solved "
               "recursively task by task, fused with zero-shot CLIP")
    IMPLEMENTATION = "continual.methods.rail:RAIL"
    NEEDS = ("text",)  # the zero-shot half of its fusion
    DISTRIBUTED = ("it solves one ridge regression on the features of every training image of a task (no "
                   "gradient steps to split): a rank would need every image's features; it trains nothing, so one "
                   "process runs it in the time of a feature pass")
    LEGEND = (("form", "{}", False),)
    NO_EXPORT = ("its predictions fuse zero-shot CLIP with a ridge adapter kept in its own state (over a random "
                 "hidden layer, or every training feature for the dual form), which no backbone and linear heads hold")
    # Defaults: the reference code's configs/analytic_clip.yaml (linghan1997/Regression-based-Analytic-
    # Incremental-Learning), the recipe of the paper's runs.
    # primal: a random hidden layer, then ridge regression by recursive least squares (primal_RAIL.py);
    # dual: kernel ridge regression on the features of every image seen so far (dual_RAIL.py).
    form: Literal["primal", "dual"] = "primal"
    # primal: λ of (ΦᵀΦ + λI)⁻¹ΦᵀY, `regularization: 0.1` (analytic_clip.yaml l. 8; primal_RAIL.py l. 69).
    ridge: float = Field(default=0.1, gt=0)
    # primal: the random hidden layer's width, `hidden_dim: 15000` (analytic_clip.yaml l. 12; primal_RAIL.py
    # l. 30-33). Its R is width² float64s (1.8 GB at 15000), kept in every checkpoint. None: no hidden layer,
    # ridge regression on the features themselves (`feature_expansion: 0`, primal_RAIL.py l. 49-51).
    width: int | None = Field(default=15000, gt=0)
    # dual: λ of (K + λI)⁻¹Y, 0.001, set in the code, not the config (dual_RAIL.py l. 62).
    kernel_ridge: float = Field(default=0.001, gt=0)
    # dual: γ of the Gaussian kernel exp(−γ‖x − x'‖²) on L2-normalised features, `gamma: 0.1`
    # (analytic_clip.yaml l. 14; utils.py l. 86).
    kernel_gamma: float = Field(default=0.1, gt=0)
    # w of (1 − w)·softmax(zero-shot) + w·adapter, `fusion_weight: 0.8` (analytic_clip.yaml l. 9;
    # primal_RAIL.py l. 273).
    fusion_weight: float = Field(default=0.8, ge=0, le=1)

    @model_validator(mode="after")
    def _options_of_its_form(self) -> RAILOptions:
        other = {"primal": ("kernel_ridge", "kernel_gamma"), "dual": ("ridge", "width")}[self.form]
        given = [k for k in other if k in self.model_fields_set]
        if given:
            raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not an option of form "
                             f"{self.form}")
        return self

    def settings(self) -> dict:
        """Without the other form's options, which a sequence may not give (config.yaml is read back)."""
        raw = super().settings()
        for key in {"primal": ("kernel_ridge", "kernel_gamma"), "dual": ("ridge", "width")}[self.form]:
            raw.pop(key)
        return raw


# The merging methods (methods/merging.py): fine-tune on each task, then leave the backbone θ_0 + λ·τ, τ a merge
# of the task vectors τ_t = θ_t − θ_0 so far. `finetuning` says where each task's fine-tuning starts: from the
# last task's fine-tuned weights (sequential) or from the pre-trained ones (independent).
# DISTRIBUTED: trained by Trainer.fit on cross-entropy, and every rank merges its identical weights alike.
class MagMaxOptions(Options):
    name: Literal["magmax"] = "magmax"
    SUMMARY = ("sequential fine-tuning, then the backbone θ_0 + λ·τ, each entry of τ the task vector entry of "
               "largest magnitude")
    IMPLEMENTATION = "continual.methods.magmax:MagMax"
    DISTRIBUTED = True
    LEGEND = (("lambda", "λ = {}", False), ("finetuning", "{}", True))
    # 0.5: MagMax's (danielm1405/magmax merge_splitted.py line 70, merge_8datasets.py line 25).
    lambda_: float = Field(default=0.5, alias="lambda", ge=0)
    # Where each task's fine-tuning starts. sequential: from the last task's fine-tuned weights, MagMax itself
    # (finetune_splitted.py lines 35-38); independent: from the pre-trained ones (their scripts/CIL/finetune.sh).
    finetuning: Literal["sequential", "independent"] = "sequential"


class TaskArithmeticOptions(Options):
    name: Literal["task_arithmetic"] = "task_arithmetic"
    SUMMARY = "fine-tune, then the backbone θ_0 + λ·Σ τ_t, the sum of the task vectors so far"
    IMPLEMENTATION = "continual.methods.task_arithmetic:TaskArithmetic"
    DISTRIBUTED = True
    LEGEND = (("lambda", "λ = {}", False), ("finetuning", "{}", True))
    # 0.4: the TIES authors' task-arithmetic value without a validation set (ties-merging src/ties_minimal.ipynb);
    # Ilharco et al. choose λ per experiment on validation data.
    lambda_: float = Field(default=0.4, alias="lambda", ge=0)
    # Where each task's fine-tuning starts. independent: from the pre-trained weights, as the paper defines task
    # vectors and MagMax's comparison runs it; sequential: from the last task's fine-tuned weights (MagMax's).
    finetuning: Literal["sequential", "independent"] = "independent"


class TIESOptions(Options):
    name: Literal["ties"] = "ties"
    SUMMARY = ("fine-tune, then TIES-merge the task vectors so far: trim to the top k %, elect each entry's sign, "
               "mean of the agreeing entries, θ_0 + λ·τ")
    IMPLEMENTATION = "continual.methods.ties:TIES"
    DISTRIBUTED = True
    LEGEND = (("lambda", "λ = {}", False), ("k", "top {}%", True), ("finetuning", "{}", True))
    # 1: the authors' (ties-merging src/ties_minimal.ipynb); MagMax ran TIES at 0.55 (merge_splitted.py line 117).
    lambda_: float = Field(default=1.0, alias="lambda", ge=0)
    # The share of each task vector's entries kept, in % of the whole model (one threshold): the authors' 20.
    k: float = Field(default=20.0, gt=0, le=100)
    # Where each task's fine-tuning starts. independent: from the pre-trained weights, as the paper defines task
    # vectors and MagMax's comparison runs it; sequential: from the last task's fine-tuned weights (MagMax's).
    finetuning: Literal["sequential", "independent"] = "independent"


class InfLoRAOptions(Options):
    name: Literal["inflora"] = "inflora"
    SUMMARY = ("open_clip ViT only: per task a LoRA on each block's k and v whose A spans the task's attention "
               "inputs outside the subspace of earlier tasks' (DualGPM bases); only B trains, then it is merged")
    IMPLEMENTATION = "continual.methods.inflora:InfLoRA"
    DISTRIBUTED = ("each task's A is designed from one pass over every training image of the task (the attention "
                   "inputs' covariance, an SVD per block) and the kept bases from a second, which every rank would "
                   "have to compute bit for bit alike; not wired through torchrun")
    LEGEND = (("rank", "r = {}", True), ("threshold", "ε = {}", True))
    # Defaults: the reference code's ViT-B/16 configs (liangyanshuo/InfLoRA configs/cifar100_inflora.json).
    # r of each task's A (r × d) and B (d × r): `"rank": 10` (cifar100_inflora.json l. 28; ImageNet-R's too).
    rank: int = Field(default=10, gt=0)
    # The energy threshold of the kept subspace after the first task, `"lamb": 0.95` (cifar100_inflora.json l. 29,
    # DomainNet's too; ImageNet-R's 0.98), raised linearly towards threshold_end over the sequence: after task t
    # (1-based) of T, threshold + (threshold_end − threshold)·(t − 1)/T (methods/inflora.py l. 322).
    threshold: float = Field(default=0.95, gt=0, le=1)
    # `"lame": 1.0` (cifar100_inflora.json l. 30).
    threshold_end: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _thresholds_rise(self) -> InfLoRAOptions:
        if self.threshold_end < self.threshold:
            raise ValueError(f"threshold_end ({self.threshold_end}) must be at least threshold ({self.threshold})")
        return self

    def problems(self, sequence: Sequence) -> list[tuple[str, str]]:
        model, found = sequence.model, []
        if model.family != "open_clip":
            found.append(("", f"InfLoRA adapts the attention of an open_clip ViT image tower (model.family: "
                              f"open_clip), not {model.family}"))
        if model.trainable.kind != "full":
            found.append(("", f"InfLoRA trains its own adapters (B of each block's k and v) and freezes the rest "
                              f"itself: it needs model.trainable: full, not {model.trainable.kind}"))
        return found


class DIKIOptions(Options):
    name: Literal["diki"] = "diki"
    SUMMARY = ("CLIP ViT only, backbone frozen: per-task key/value prompts in a residual attention branch, scaled "
               "for each image by its likelihood under the learned tasks' feature Gaussians")
    IMPLEMENTATION = "continual.methods.diki:DIKI"
    NEEDS = ("text",)  # each task's head is its zero-shot text head
    DISTRIBUTED = True  # trained by Trainer.fit on cross-entropy; the statistics come from a gathered feature pass
    LEGEND = (("depth", "depth {}", True), ("length", "{} prompts", True))
    NO_EXPORT = ("its task prompts and the feature Gaussians that weigh them per image are its own state, outside "
                 "CLIP's weights (which it never changes)")
    # Defaults: the reference code's MTIL recipe (lloongx/DIKI configs/MTIL.yaml).
    # Prompted blocks: the first `depth` of the image tower, `prompt_depth_vision: 8` (l. 17; clip/model.py l. 214-219).
    depth: int = Field(default=8, gt=0)
    # Key and value prompts per prompted block and task, `n_ctx_vision: 8` (l. 19; clip/attention.py l. 170).
    length: int = Field(default=8, gt=0)

    def problems(self, sequence: Sequence) -> list[tuple[str, str]]:
        if sequence.model.trainable.kind != "full":
            return [("", f"DIKI trains its own prompts and freezes the backbone itself: it needs model.trainable: "
                         f"full (the default), not {sequence.model.trainable.kind}")]
        return []


class MoEAdaptersOptions(Options):
    name: Literal["moe_adapters"] = "moe_adapters"
    SUMMARY = ("CLIP ViT only, CLIP frozen: top-k routed adapter experts in every block of both towers, a router "
               "per task, and autoencoders that send each image to its task's router or to frozen CLIP")
    IMPLEMENTATION = "continual.methods.moe_adapters:MoEAdapters"
    NEEDS = ("text",)  # its loss and heads are prompts through the text tower
    DISTRIBUTED = ("after a task it freezes the experts its router picked most often over the task's images: "
                   "under torchrun each rank would count only its share and freeze others")
    LEGEND = (("experts", "{} experts", True), ("top_k", "top-{}", True))
    NO_EXPORT = ("its experts, routers and autoencoders are its own state, outside CLIP's weights (which it never "
                 "changes)")
    # Defaults: the reference code's MTIL recipe (JiazuoYu/MoE-Adapters4CL, mtil/): train_full_shot_router11_
    # experts22_1000iters.sh and src/args.py. Its training settings go in `training:` (lr 1e-3 for most tasks,
    # 1000 steps, batch 64, 100 warm-up steps, label smoothing 0.2, weight decay 0): docs/methods/moe_adapters.md.
    # Experts per block, `num=22` (the script).
    experts: int = Field(default=22, gt=0, le=1024)
    # Experts each input goes through, `--topk 2` (args.py l. 324).
    top_k: int = Field(default=2, gt=0)
    # The adapters' bottleneck, `--ffn_num 64` (args.py l. 304; adapter.py l. 35).
    width: int = Field(default=64, gt=0)
    # Where the experts go: both towers, `--ffn_adapt_where AdapterDoubleEncoder` (the script), or the image's only.
    towers: Literal["both", "image"] = "both"
    # Experts of each block frozen after each task: its router's most picked, 2 (finetune.py l. 199-200); 0: none.
    freeze_top: int = Field(default=2, ge=0)
    # Updates of each task's DDAS autoencoder, `--iterations 300` (the script's autochooser runs after the first).
    ddas_steps: int = Field(default=300, gt=0)
    # Reconstruction error above which an image goes to frozen CLIP. The reference's 0.0655 was fit to its
    # AlexNet features, not to these (moe_adapters.py); None: each task's own, its largest on its training images.
    threshold: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _top_k_of_the_experts(self) -> MoEAdaptersOptions:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        return self

    def problems(self, sequence: Sequence) -> list[tuple[str, str]]:
        if sequence.model.trainable.kind != "full":
            return [("", f"MoE-Adapters trains its own experts and freezes CLIP itself: it needs model.trainable: "
                         f"full (the default), not {sequence.model.trainable.kind}")]
        return []
