"""What a run keeps so that `continual run --resume` can continue it after a crash, a kill or Ctrl-C.

What is in them (their names and folders are continual/run_folder.py's):
    checkpoints/start.pt            step 0, shared by every method: initial heads, scores, probe heads
    checkpoints/<method>/step-K.pt  after step K: model, heads, method state, the rows and timings so far

With a `model.trainable` other than full, a step's checkpoint holds only the backbone's tensors that train (and
its buffers); a resume adapts the pre-trained model again, as the run did, and loads them.

A step's checkpoint is written before its result files, each atomically (temporary name, then rename),
so whatever moment a run dies at, the newest checkpoint is a completed step and the result files are
at most one step behind it (resume rewrites them from the checkpoint). Older steps are deleted once a
newer one is on disk; `keep_checkpoints` in the sequence says how many to keep (default 1).

No RNG state is stored: the runner seeds torch, numpy and random from (seed, step) at the start of
every step, so a resumed step draws exactly what the uninterrupted one drew.

Everything is saved as tensors, numbers, strings, lists and dicts, and read back with
`torch.load(weights_only=True)`: never pickled modules or objects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from continual.models import Backbone, Head, TaskModel, trainable
from continual.files import atomic_file, make_folder

# Bumped when a checkpoint's layout, or what a resumed step would draw, changes; older ones are refused
# with a message. 2: every seed comes from continual/seeds.py (format 1 runs selected other images).
# 3: heads are registered as `heads.@<task>` (EWC's saved importances are keyed by parameter name), and
# image folders skip hidden files, read GIFs and scale 16-bit images (a resumed step would see others).
FORMAT = 3


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, truncated, or made for another model or run."""

    def __init__(self, path: Path, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


def save(path: Path, state: dict) -> None:
    """torch.save under a temporary name, fsync, then rename: a checkpoint is whole or absent, and a full
    disk is a files.DiskFull (torch itself says only 'unexpected pos'), the older checkpoint intact."""
    make_folder(path.parent)
    with atomic_file(path) as f:
        torch.save(state, f)


def load(path: Path, *, expect: dict) -> dict:
    """Read a checkpoint with weights_only=True and check it is one of ours, for this run (`expect`:
    key -> value the checkpoint must hold, e.g. method and step). Any failure is a CheckpointError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, foreign pickle, permissions: all the same to a user
        raise CheckpointError(path, f"cannot be read ({type(err).__name__}: {first_line(err)}); "
                                    "it may be truncated or not a checkpoint") from None
    if isinstance(state, dict) and isinstance(state.get("format"), int) and state["format"] < FORMAT:
        raise CheckpointError(path, f"was written by an older version of continual (format {state['format']}, now "
                                    f"{FORMAT}: it selects other images and draws other seeds), so the run cannot be "
                                    "continued; start it again with --overwrite")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(path, f"not a continual checkpoint of format {FORMAT} (found {found!r})")
    for key, value in expect.items():
        if state.get(key) != value:
            raise CheckpointError(path, f"holds {key} {state.get(key)!r}, expected {value!r}")
    return state


def first_line(err: Exception) -> str:
    """An error's first line, at most 200 characters: torch's load errors run to paragraphs."""
    return (str(err).strip().splitlines() or [""])[0][:200]


# ----------------------------------------------------------------------------------------------------
# Heads and models as plain tensors


def heads_state(heads) -> dict[str, dict]:
    """{task: {"normalize", "weight", "bias"}}: enough to rebuild each Head with its shape."""
    return {name: {"normalize": head.normalize, "weight": head.linear.weight.detach().cpu().clone(),
                   "bias": head.linear.bias.detach().cpu().clone()} for name, head in heads.items()}


def build_heads(state: dict[str, dict], *, device: torch.device) -> dict[str, Head]:
    heads = {}
    for name, s in state.items():
        out_features, in_features = s["weight"].shape
        head = Head(in_features, out_features, normalize=s["normalize"])
        head.load_state_dict({"linear.weight": s["weight"], "linear.bias": s["bias"]})
        heads[name] = head.to(device)
    return heads


def model_state(model: TaskModel) -> dict:
    """The model as a checkpoint keeps it: the backbone's weights (with a `model.trainable` other than full, only
    what trains and the buffers: continual/models/trainable.py, `saved_state`) and every head."""
    return {"backbone": trainable.saved_state(model.backbone), "heads": heads_state(model.heads)}


def load_model(model: TaskModel, state: dict) -> None:
    """Put a `model_state` into `model`, whose heads are replaced by the saved ones; a model.trainable other than
    full must have adapted `model` as the saved one was (the rest is the pre-trained backbone already). A state that
    does not fit (another architecture, another mode) raises KeyError or RuntimeError; callers name the file."""
    heads = build_heads(state["heads"], device=next(model.backbone.parameters()).device)
    trainable.load_saved_state(model.backbone, state["backbone"])
    model.heads.clear()
    model.heads.update(heads)


def fingerprint(backbone: Backbone) -> str:
    """A hash of the backbone's weights: resume refuses a pre-trained model that is not the one the run
    started from (e.g. an open_clip model with random weights, or a checkpoint file replaced since)."""
    digest = hashlib.sha256()
    for name, tensor in backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]
