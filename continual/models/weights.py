"""Reading weight files a user names in a sequence (`model.pretrained`), with errors that name the file
in one line: never unpickling arbitrary objects, saying what does not fit before loading, and refusing
what loads but is not weights (NaN, meta tensors, integers)."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
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
    if path.endswith(".safetensors"):  # timm's and the hub's format (an exported timm model's model.safetensors)
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise ModelError("pretrained", f"{path!r} is not a readable safetensors file ({one_line(e)})") from e
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


def check_values(state: dict[str, torch.Tensor], module: nn.Module, *, what: str, path: str) -> None:
    """Refuse tensors that load_state_dict takes without a word but that are not weights: meta tensors
    (shapes without values), integers or complex numbers where the model has floats (a cast that rounded
    the weights away: every accuracy at chance), NaN or inf. Floats of another width (float16, bfloat16,
    float64) are fine: load_state_dict casts them."""
    expected = module.state_dict()
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise ModelError("pretrained", f"{path!r}: {_tensors(meta)} meta tensors, shapes without values "
                                       f"(e.g. {meta[0]!r}); save the state dict of a model that holds its weights")
    cast = [k for k, v in state.items()
            if k in expected and expected[k].is_floating_point() and not v.is_floating_point()]
    if cast:
        dtypes = "/".join(sorted({str(state[k].dtype).removeprefix("torch.") for k in cast}))
        raise ModelError("pretrained", f"{path!r}: {_tensors(cast)} {dtypes} where {what} has floating-point "
                                       f"weights (e.g. {cast[0]!r}); save the state dict in floating point")
    bad = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        raise ModelError("pretrained", f"{path!r}: {len(bad)} tensor{'s hold' if len(bad) > 1 else ' holds'} "
                                       f"NaN or inf (e.g. {bad[0]!r})")


def _finite(tensor: torch.Tensor) -> bool:
    # In numpy: torch starts its thread pool for every small tensor, which on a busy 2-core machine took
    # 1.7 s for Lite0's 245 tensors (numpy: 10 ms). numpy has no bfloat16 or float8: those go as float32.
    if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return bool(np.isfinite(tensor.numpy(force=True)).all())


def _tensors(keys: list[str]) -> str:
    return f"{len(keys)} tensors are" if len(keys) > 1 else "1 tensor is"
