"""Models that travel (issue #27): a fine-tuned model written in the format its family loads, with its task heads
and a card, so that another sequence continues from it (`model.pretrained: <folder>`) and other tools load it.

    <folder>/continual.json       the card, machine-readable: family, arch, image size, sequence, method and its
                                  options, the step, the step's row and metrics, each head's classes, the version
    <folder>/model_card.md        the same for a reader, and how to load it
    <folder>/heads.safetensors    each task's head: `<task>.weight` (classes x features) and `<task>.bias`
    efficientnet_lite0            model.pth: the library's state dict (torch.save), as `model.pretrained` takes it
    open_clip                     open_clip_config.json + open_clip_model.safetensors: open_clip's local-dir (the
                                  whole CLIP model: the fine-tuned image tower and the text tower it was run with)
    timm                          config.json + model.safetensors: timm's own (`timm.create_model("local-dir:...")`)

Weights are plain: LoRA updates merged into the weights they adapt (models/trainable.py, `merged`), so the family's
loader needs neither peft nor this package. A folder is written under a temporary name and renamed: it is whole or
absent. Written by the runner (`keep_models`) and by `continual export` from a kept checkpoint, the same bytes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from continual import __version__, checkpoints, metrics
from continual.config import ConfigError, Sequence, load_sequence
from continual.datasets.tasks import TaskData
from continual.files import DiskFull, full_disk, make_folder
from continual.model_catalog import (EFFICIENTNET, EXPORT_CARD, EXPORT_HEADS, EXPORT_WEIGHTS, LOCAL_DIR,
                                     LOCAL_DIR_CONFIG, OPEN_CLIP, TIMM, is_export)
from continual.models import Head, ModelError, TaskModel, clip, export_card, trainable
from continual.run_folder import RunFolder

FORMAT = 1  # of continual.json; bumped when what a reader may rely on changes
MODEL_CARD = "model_card.md"


# ---- writing ------------------------------------------------------------------------------------------------

def card(seq: Sequence, method: str, *, step: int, rows: list[dict], tasks: list[TaskData], model: TaskModel) -> dict:
    """continual.json of `model` after `step` of `method` (its entry's key) in `seq`: `rows` the matrix rows 0..step."""
    options = seq.method(method)
    columns = [t.name for t in tasks]
    R = np.array([[row[c] for c in columns] for row in rows[: step + 1]], dtype=float)
    classes = {t.name: list(t.class_names) for t in tasks}
    backbone = model.backbone
    return {
        "format": FORMAT, "continual_version": __version__,
        "family": backbone.family, "arch": seq.model.arch, "image_size": backbone.image_size,
        "weights": EXPORT_WEIGHTS[backbone.family],
        "started_from": {"arch": seq.model.arch, "pretrained": seq.model.pretrained},
        "trainable": seq.model.trainable.model_dump(mode="json"),  # what trained; the weights here are merged
        "sequence": seq.name, "setting": seq.setting, "seed": seq.seed,
        "method": options.name, "label": options.key, "options": options.settings(),
        "step": step, "steps_total": len(tasks), "trained_on": columns[:step],
        "heads": {name: {"classes": classes.get(name), "normalize": head.normalize, "features": head.linear.in_features}
                  for name, head in model.heads.items()},
        "row": {k: _number(v) for k, v in rows[step].items()},
        "metrics": metrics.step_metrics(R)[step],
    }


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def write(model: TaskModel, folder: Path, *, card: dict, replace: bool = False) -> Path:
    """Write `model` (its backbone, LoRA merged, and every head) and its `card` into `folder`, whole or not at all:
    into a temporary folder beside it, then renamed. `replace`: an existing folder is replaced (the runner's
    keep_models); else it must not exist (FileExistsError)."""
    folder = Path(folder)
    make_folder(folder.parent)
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a kill's leftover
    try:
        tmp.mkdir()
        _write_weights(model.backbone, tmp)
        _save_safetensors({f"{name}.{part}": getattr(head.linear, part) for name, head in model.heads.items()
                           for part in ("weight", "bias")}, tmp / EXPORT_HEADS)
        (tmp / EXPORT_CARD).write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
        (tmp / MODEL_CARD).write_text(model_card(card))
        if replace and folder.exists():
            old = folder.parent / f".{folder.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if folder.exists() or folder.is_symlink():
                raise FileExistsError(f"{folder} exists")
            os.rename(tmp, folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if (full := full_disk(err)) is not None:  # torch.save says it as a RuntimeError around the OSError
            raise DiskFull(folder.parent, full) from None
        raise
    return folder


def _write_weights(backbone, folder: Path) -> None:
    """The backbone's weights in its family's own format (module docstring), LoRA merged on a copy."""
    # On a copy (the run's model keeps its adapters), merged on the CPU: the same bytes whichever device trained,
    # so `continual export` (CPU) writes what keep_models wrote.
    plain = trainable.merged(copy.deepcopy(backbone).cpu())
    family = backbone.family
    if family == EFFICIENTNET:
        state = {k: v.detach().cpu().contiguous() for k, v in plain.net.state_dict().items()}
        with open(folder / EXPORT_WEIGHTS[family], "wb") as f:
            torch.save(state, f)
    elif family == OPEN_CLIP:
        (folder / LOCAL_DIR_CONFIG).write_text(json.dumps(clip.local_dir_config(plain), indent=2) + "\n")
        _save_safetensors(clip.clip_state(plain), folder / EXPORT_WEIGHTS[family])
    elif family == TIMM:
        from timm.models import save_for_hf

        net = copy.deepcopy(plain.net).cpu()  # timm writes config.json and model.safetensors as its hub does
        size = backbone.image_size  # the size it ran at, not its pre-training's
        save_for_hf(net, str(folder), safe_serialization=True, data_config={"input_size": (3, size, size)})
    else:
        raise ModelError("family", f"no export format for {family}")


def _save_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})


def model_card(card: dict) -> str:
    """model_card.md: the card for a reader, and the lines that load the model."""
    folder = "<this folder>"
    load = {
        EFFICIENTNET: f"model:\n  family: efficientnet_lite0\n  pretrained: {folder}",
        OPEN_CLIP: f"model:\n  family: open_clip\n  arch: {LOCAL_DIR}{folder}",
        TIMM: f"model:\n  family: timm\n  arch: {card['arch']}\n  pretrained: {folder}",
    }[card["family"]]
    elsewhere = {
        EFFICIENTNET: ("efficientnet_lite_pytorch", "net = EfficientNet.from_name('efficientnet-lite0', "
                       f"image_size={card['image_size']}); del net._fc; "
                       "net.load_state_dict(torch.load('model.pth', weights_only=True))"),
        OPEN_CLIP: ("open_clip", f"open_clip.create_model_and_transforms('{LOCAL_DIR}{folder}')"),
        TIMM: ("timm", f"timm.create_model('{LOCAL_DIR}{folder}', pretrained=True)"),
    }[card["family"]]
    options = ", ".join(f"{k}: {v}" for k, v in card["options"].items()) or "defaults"
    row = "\n".join(f"| {column} | {'—' if v is None else f'{v:.4f}'} |" for column, v in card["row"].items())
    metric = card["metrics"]
    shown = ", ".join(f"{k} {'—' if metric.get(k) is None else f'{metric[k]:.4f}'}"
                      for k in ("average_accuracy", "forgetting", "bwt"))
    heads = "\n".join(f"- `{name}`: {len(h['classes'] or [])} classes ({', '.join(map(str, h['classes'] or []))})"
                      for name, h in card["heads"].items())
    model = f"{card['family']} {card['arch']}" if card["arch"] else card["family"]
    return f"""# {model} fine-tuned by {card['label']} on {card['sequence']}

Written by continual {card['continual_version']} after step {card['step']} of {card['steps_total']}
(trained on: {', '.join(card['trained_on']) or 'nothing yet'}).

- model: {model}, {card['image_size']} px, started from {card['started_from']['pretrained'] or 'its default weights'}
- method: {card['method']} ({options}); what trained: {card['trainable']['kind']} (weights here are plain, LoRA merged)
- sequence: {card['sequence']} ({card['setting']}, seed {card['seed']})
- metrics after this step: {shown}

## Accuracy after this step

| column | accuracy |
|---|---|
{row}

## Heads (heads.safetensors)

{heads}

## Loading it

In a sequence (its tasks of the same names start from these heads):

```yaml
{load}
```

Without continual ({elsewhere[0]}): `{elsewhere[1]}`

continual.json holds all of this, machine-readable.
"""


# ---- reading: the heads another sequence starts from -----------------------------------------------------------

def source_folder(seq: Sequence) -> Path | None:
    """The exported folder `seq` loads its model from: `model.pretrained`, or an open_clip `arch: local-dir:`,
    naming one; None otherwise."""
    named = [seq.model.pretrained, seq.model.arch[len(LOCAL_DIR):] if (seq.model.arch or "").startswith(LOCAL_DIR)
             else None]
    return next((Path(p).expanduser() for p in named if p is not None and is_export(p)), None)


def start_heads(seq: Sequence, tasks: list[TaskData], *, feature_dim: int, source: str) -> dict[str, Head]:
    """The exported heads the tasks of `seq` start from: each task named as a head of the export `seq` loads
    (source_folder), which must have the same classes in the same order; {} without an export. ConfigError
    naming the task otherwise."""
    folder = source_folder(seq)
    if folder is None:
        return {}
    try:
        described = export_card(folder)["heads"]
        from safetensors.torch import load_file

        tensors = load_file(str(folder / EXPORT_HEADS), device="cpu")
    except Exception as err:  # noqa: BLE001 - the card's ModelError, a missing key, safetensors' own SafetensorError
        raise ConfigError(source, [("model.pretrained", f"cannot read the heads of {folder}: {err}")]) from None
    heads, problems = {}, []
    for i, task in enumerate(tasks):
        if task.name not in described:
            continue
        info, weight, bias = described[task.name], tensors.get(f"{task.name}.weight"), tensors.get(f"{task.name}.bias")
        if weight is None or bias is None:
            problems.append((f"tasks[{i}]", f"{folder / EXPORT_HEADS} has no head {task.name!r}"))
        elif info.get("classes") != list(task.class_names):
            problems.append((f"tasks[{i}]", f"the exported head {task.name!r} of {folder} has classes "
                                            f"{info.get('classes')}, this task {list(task.class_names)}: a task of an "
                                            "exported head's name starts from it, so give this task another name or "
                                            "the head's classes"))
        elif weight.shape[1] != feature_dim:
            problems.append((f"tasks[{i}]", f"the exported head {task.name!r} takes {weight.shape[1]} features, "
                                            f"this model gives {feature_dim}"))
        else:
            head = Head(weight.shape[1], weight.shape[0], normalize=bool(info.get("normalize")))
            head.load_state_dict({"linear.weight": weight, "linear.bias": bias})
            heads[task.name] = head
    if problems:
        raise ConfigError(source, problems)
    return heads


# ---- `continual export RUN --method NAME [--step K] --out DIR` ---------------------------------------------------

def export_run(folder: Path, *, method: str, step: int | None, out: Path) -> Path:
    """Export `method`'s model after `step` (default: its newest kept) of the run in `folder` into `out`, from the
    kept checkpoint: what keep_models would have written. Everything that can be refused is, naming the flag,
    before anything is loaded or written."""
    run = RunFolder(folder)
    if not run.config.is_file():
        raise ConfigError(str(folder), [("", "not a run folder (no config.yaml)")])
    seq = load_sequence(run.config)
    listed = [o.key for o in seq.methods]
    if method not in listed:
        raise ConfigError("--method", [("", f"{method!r} did not run in {folder} (its methods: {', '.join(listed)})")])
    if (why := seq.method(method).NO_EXPORT) is not None:
        raise ConfigError("--method", [("", f"the model of {method} cannot be exported: {why}")])
    kept = run.checkpoint_steps(method)
    if not kept:
        raise ConfigError("--method", [("", f"no checkpoint of {method} is kept in {run.checkpoints(method)} "
                                            f"(keep_checkpoints: {seq.keep_checkpoints}), so there is nothing to "
                                            "export; run it again with keep_models: last or every_step")])
    step = kept[-1] if step is None else step
    if step not in kept:
        raise ConfigError("--step", [("", f"step {step} of {method} is not kept (kept: {', '.join(map(str, kept))}); "
                                          "keep more with keep_checkpoints, or every model with keep_models: "
                                          "every_step")])
    if out.exists() or out.is_symlink():
        raise ConfigError("--out", [("", f"{out} exists; give a new folder (nothing is overwritten)")])

    from continual import runner  # the layer above the writers: what a run loads, loaded the same way

    path = run.step_checkpoint(method, step)
    state = checkpoints.load(path, expect={"method": method, "step": step})
    device = torch.device("cpu")
    inputs = runner.load_inputs(seq, source=str(run.config), device=device, references=set())
    if run.start_checkpoint.exists():  # the pre-trained model a checkpoint's trained tensors go on: the run's own
        checkpoints.load(run.start_checkpoint, expect={"step": 0, "backbone": checkpoints.fingerprint(inputs.backbone)})
    model = TaskModel(runner.trained_backbone(seq, inputs.backbone, source=str(run.config)),
                      freeze_batchnorm=seq.training.batchnorm == "frozen", class_incremental=seq.one_head,
                      all_classes=seq.setting == "x_tail")
    try:
        checkpoints.load_model(model, state)
    except (KeyError, RuntimeError, ValueError) as err:
        raise checkpoints.CheckpointError(path, f"does not fit this run's model ({type(err).__name__}: "
                                                f"{checkpoints.first_line(err)})") from None
    return write(model, out, card=card(seq, method, step=step, rows=state["rows"], tasks=inputs.tasks, model=model))
