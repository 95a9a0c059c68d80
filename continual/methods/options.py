"""Each method's options, as the sequence YAML gives them: one strict pydantic class per method.

Only pydantic here, so the schema (and `continual validate`, `continual list`) can check a method's
options without importing torch or avalanche. `name` is the tag the schema dispatches on: the YAML item
`- ldifs: {lambda: 10}` becomes LDIFSOptions(name="ldifs", lambda_=10.0), and from there on the typed
object is what the runner hands to the method (`options.lambda_` from YAML to loss).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# A label names a folder, CSV values and legend entries, as task names do (config/schema.py's DATA_NAME).
LABEL = r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}"
# A method's folder is <run>/<key>, next to the run folder's own (run_folder.py): no key may be one of these.
RESERVED_KEYS = frozenset({"checkpoints", "cache"})


class Options(BaseModel):
    # Unknown keys are errors, no coercion beyond int -> float; `lambda` (a Python keyword) is `lambda_`.
    # No inf or nan (`.inf`, or `1e400`, which YAML reads as inf): a λ, α or temperature of inf passed
    # the range checks and trained into nan (issue #11).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True,
                              allow_inf_nan=False)
    # What this entry is called in the run folder, the tables and the legends: the method's name unless
    # given. The same method twice in one sequence (two λ of LDIFS) needs a label on all but one.
    label: str | None = Field(default=None, pattern=f"^{LABEL}$")

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


def item_key(item) -> str | None:
    """The key of a method item as YAML or config.yaml holds it (`ldifs`, `{ldifs: {label: l100}}`): its
    label, else its name; None for an item of another shape."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and len(item) == 1:
        (name, options), = item.items()
        label = options.get("label") if isinstance(options, dict) else None
        return label if isinstance(label, str) else name
    return None


class FinetuneOptions(Options):
    name: Literal["finetune"] = "finetune"


class LDIFSOptions(Options):
    name: Literal["ldifs"] = "ldifs"
    # The paper's value. On the default sequence λ=100 keeps more (BWT -0.06 against -0.42 at λ=10,
    # README), so that sequence sets it; per-sample normalisation makes λ mean the same for any tap size.
    lambda_: float = Field(default=10.0, alias="lambda", ge=0)
    # pretrained: the model as loaded before task 1, never refreshed (the paper's definition).
    # previous: re-anchor to the model at the start of each task (what the paper's code does in sequences).
    anchor: Literal["pretrained", "previous"] = "pretrained"
    # The anchor is frozen and the training transform deterministic, so its tap outputs for a task's
    # training images are computed once per task and looked up per batch, instead of a second forward
    # every step (the paper's code: 1.30-1.41x a fine-tuning step against 1.05-1.07x cached, README).
    # auto: only where it pays (methods/ldifs.py plan_cache, README): a task whose steps visit each image 1.5
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


class FrozenOptions(Options):
    name: Literal["frozen"] = "frozen"


class JointOptions(Options):
    # No options: it trains with the sequence's `training:`, once, on every task together.
    name: Literal["joint"] = "joint"


class L2SPOptions(Options):
    name: Literal["l2sp"] = "l2sp"
    # Li et al. 2018 search α in {0.001, 0.01, 0.1, 1} and report 0.1 for most targets (their table 2);
    # the sum runs over every backbone weight, so a larger model pulls harder at the same λ.
    lambda_: float = Field(default=0.1, alias="lambda", ge=0)


class WiseFTOptions(Options):
    name: Literal["wise_ft"] = "wise_ft"
    # 0.5: the paper's headline mixing weight (Wortsman et al. 2022, fig. 1), and ZSCL's WiSE-FT row.
    alpha: float = Field(default=0.5, ge=0, le=1)
    # pretrained: interpolate towards the model as loaded (ZSCL's MTIL baseline); previous: towards the
    # model before this task (a moving average of the sequence).
    anchor: Literal["pretrained", "previous"] = "pretrained"


class LPFTOptions(Options):
    # No options: the linear probe is the evaluation's (L-BFGS logistic regression to convergence, as Kumar
    # et al. fit theirs), and the fine-tuning is `training:`'s.
    name: Literal["lp_ft"] = "lp_ft"


class FLYPOptions(Options):
    name: Literal["flyp"] = "flyp"
    # No options of its own: the paper's recipe (Goyal et al. 2023; locuslab/FLYP's flyp_loss.py) is CLIP's
    # loss with every weight trained and no extra coefficient; lr, weight decay, epochs and batch size
    # (whose size sets how many negatives each image sees) are `training:`'s.


class ZSCLOptions(Options):
    name: Literal["zscl"] = "zscl"
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


class NaiveOptions(Options):
    name: Literal["naive"] = "naive"


class EWCOptions(Options):
    name: Literal["ewc"] = "ewc"
    # On the default sequence (64 px EfficientNet-Lite0, 2k images/task) λ=1e3 was reported to barely
    # help; λ=1e5 gave BWT +0.003 here (README). Avalanche's importances are mean squared mini-batch
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
    # Avalanche's defaults (alpha 1, temperature 2); BWT -0.39 on the default sequence (README).
    alpha: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=2.0, gt=0)


class ReplayOptions(Options):
    name: Literal["replay"] = "replay"
    # 300 stored images (15% of one task) gave BWT +0.003 on the default sequence (README).
    memory_size: int = Field(default=300, gt=0)
