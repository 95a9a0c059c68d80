"""Reading weight files a user names in a sequence (`model.pretrained`), with errors that name the file
in one line: never unpickling arbitrary objects, and saying what does not fit before loading."""

from __future__ import annotations

import os
import pickle
import re

import torch
from torch import nn

from continual.models.backbone import ModelError


def one_line(err: Exception, limit: int = 200) -> str:
    """An exception as one short line: torch and open_clip messages run to paragraphs and key lists."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text if len(text) <= limit else text[:limit - 3] + '...'}"


def read_checkpoint(path: str) -> object:
    """torch.load of a file named in a sequence, with errors that name the path in one line."""
    if os.path.isdir(path):
        raise ModelError("pretrained", f"{path!r} is a directory; expected a checkpoint file (a saved state dict)")
    if not os.path.isfile(path):
        raise ModelError("pretrained", f"checkpoint file not found: {path!r} (use 'imagenet' for the shipped weights)")
    try:
        # weights_only: never unpickle arbitrary objects from a user-given path.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ModelError("pretrained", f"{path!r} is not a readable PyTorch checkpoint ({one_line(e)})") from e
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"Python objects ({found.group(1)})" if found else "Python objects"
        raise ModelError("pretrained", f"refusing to load {path!r}: it holds {what}, not only tensors, and "
                                       "checkpoints are read with torch.load(weights_only=True) so that a file "
                                       "cannot run code; save a state dict instead") from e
    except Exception as e:  # truncated, not a torch file at all, ...
        raise ModelError("pretrained", f"{path!r} is not a readable PyTorch checkpoint "
                                       f"(truncated, or not written by torch.save?): {one_line(e)}") from e


def as_state_dict(state: object, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError("pretrained", f"{path!r} does not hold a state dict (name -> tensor), "
                                       f"but a {type(state).__name__}")
    if not state:
        raise ModelError("pretrained", f"{path!r} holds no tensors (an empty state dict)")
    return state


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    return as_state_dict(read_checkpoint(path), path)


def check_state_fits(state: dict[str, torch.Tensor], module: nn.Module, *, what: str, path: str) -> None:
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(k for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    problems = [f"{len(keys)} {label} (e.g. {keys[0]!r})"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("keys with the wrong shape", wrong_shape)) if keys]
    if problems:
        raise ModelError("pretrained", f"{path!r} does not fit {what}: " + ", ".join(problems))
