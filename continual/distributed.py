"""One run over several processes: `torchrun --nproc_per_node=N -m continual run SEQUENCE.yaml`.

torchrun starts N copies of the command; each is a rank, told by its environment (WORLD_SIZE > 1, RANK,
LOCAL_RANK). Together they make one run, trained with DistributedDataParallel, whose numbers are those of
one process with the same `training.batch_size` (docs/gpus.md, "Several GPUs in one run"):

- each rank uses cuda:LOCAL_RANK with NCCL, or the CPU with gloo (`start`);
- every rank draws the same shuffled order (the runner seeds each step alike everywhere) and trains on its
  `share` of each global batch; the training loop weights each share's loss by its size (train.py);
- rank 0 alone writes files; a rank that waits for it leaves quietly if rank 0 failed (`on_main`), and a
  refusal every rank reaches alike is said once, by rank 0 (`said_once`);
- evaluation and LDIFS's anchor cache cut their batches as one process does and spread them over the
  ranks, each batch's outputs gathered by every rank (`each_batch`).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from continual.config import ConfigError

T = TypeVar("T")

# How long a rank waits in a collective. Long, because the other ranks wait for rank 0 to load the data
# first, and a first run decodes a dataset into the store (or downloads it): an hour for a large one. A rank
# that dies is noticed by torchrun at once, whatever this says (it stops the others).
TIMEOUT = datetime.timedelta(hours=4)

_owned = False  # whether `start` created the process group (then `stop` destroys it)


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0, the one that writes files and prints (also a single process)."""
    return rank() == 0


def active() -> bool:
    """Whether a process group of several ranks is up: the training loop, evaluation and the anchor cache
    then split their work (a single process, or a test calling them directly, never does)."""
    if not launched():
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class MainRankFailed(SystemExit):
    """Raised on ranks other than 0 when rank 0 failed or refused: rank 0 says why, these leave quietly
    (a SystemExit prints nothing), and torchrun reports the run failed."""

    def __init__(self, code: int = 2):
        super().__init__(code)


@contextlib.contextmanager
def said_once(*errors: type[BaseException]) -> Iterator[None]:
    """Around a refusal that every rank reaches alike (the same sequence, model and files): rank 0 raises
    it, with its message; the others leave quietly, so that it is printed once, not once per rank.
    `errors`: the exceptions meant (default: ConfigError)."""
    try:
        yield
    except errors or (ConfigError,):
        if is_main():
            raise
        raise MainRankFailed(2) from None


def check_device(device: str, *, source: str) -> None:
    """Refuse a `training.device` that does not name one device per rank."""
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(source, [("training.device", f"{device} asked for, but under torchrun each of the {world()} "
                                    "ranks uses its own device, cuda:LOCAL_RANK on GPUs or the CPU; set "
                                    "training.device to auto, cuda or cpu")])
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(source, [("training.device", "cuda asked for, but this machine has no CUDA device; "
                                                       "use auto or cpu")])


def start(device: str, *, source: str):
    """Join the process group; returns this rank's device: cuda:LOCAL_RANK (NCCL) for `auto` on a machine
    with GPUs and for `cuda`, else the CPU (gloo). `device` passed `check_device`."""
    global _owned
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda and local_rank() >= torch.cuda.device_count():
        raise ConfigError(source, [("training.device", f"rank {rank()} has LOCAL_RANK {local_rank()}, but this "
                                    f"machine has {torch.cuda.device_count()} CUDA device(s): start at most that "
                                    "many processes per node (--nproc_per_node)")])
    here = torch.device("cuda", local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(here)
    if not dist.is_initialized():  # a script of the user's may have joined it already
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, device_id=here if cuda else None)
        _owned = True
    return here


def stop() -> None:
    """Leave the process group `start` joined (after every rank got there)."""
    global _owned
    if _owned and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _owned = False


def _device():
    """Where this process group's collectives take tensors: the rank's GPU with NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def on_main(fn: Callable[[], T], *, share: bool = False) -> T | None:
    """`fn()` on rank 0 (writing files); the other ranks wait for it and get None, or with `share` what it
    returned (pickled). When it raised on rank 0, the others leave quietly (MainRankFailed). Without a
    process group: `fn()`."""
    if not active():
        return fn()
    box: list = [None, None]  # (whether it worked, its result)
    if is_main():
        try:
            result = fn()
        except BaseException:
            dist.broadcast_object_list([False, None], src=0, device=_device())
            raise
        dist.broadcast_object_list([True, result if share else None], src=0, device=_device())
        return result
    dist.broadcast_object_list(box, src=0, device=_device())
    if not box[0]:
        raise MainRankFailed(2)
    return box[1]


def main_first(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, then on the others once it worked there (loading data: rank 0 alone downloads or
    decodes into the store, the others then read it). When it raised on rank 0, the others leave quietly."""
    if not active():
        return fn()
    result = on_main(fn)
    return result if is_main() else fn()


def share(n: int) -> slice:
    """This rank's rows of a global batch of `n`: consecutive, as even as can be (the first n % world ranks
    one more), so that ranks in order hold the batch in order."""
    q, r = divmod(n, world())
    k = rank()
    low = k * q + min(k, r)
    return slice(low, low + q + (k < r))


def all_sum(values: list[float]) -> list[float]:
    """The sum over ranks of each number (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def least(value: float) -> float:
    """The smallest of every rank's `value`: a choice that must be the same on every rank (whether a cache
    fits in GPU memory) made for the rank with the least room."""
    tensor = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return float(tensor)


def each_batch(n: int, batch_size: int, compute: Callable[[int, int], list], store: Callable[[int, int, list], None],
               *, like: list[tuple[tuple[int, ...], object]]) -> None:
    """Rows [0, n) in the batches one process cuts (batch_size each, the last shorter), spread over the
    ranks: in round j rank r computes batch j·world + r with `compute(start, stop)` (a list of tensors of
    stop - start rows each), and every rank is handed every batch of the round, in order, with
    `store(start, stop, outputs)`. `like`: each output's (row shape, dtype), to pad a short or missing
    batch. The same batches as one process, so the same numbers (up to the kernels' thread count)."""
    ranks, device = world(), _device()
    batches = math.ceil(n / batch_size)
    for first in range(0, batches, ranks):
        mine = first + rank()
        start, stop = mine * batch_size, min((mine + 1) * batch_size, n)
        outputs = compute(start, stop) if start < n else []
        padded = []
        for k, (shape, dtype) in enumerate(like):
            full = torch.zeros((batch_size, *shape), dtype=dtype, device=device)
            if outputs:
                full[: stop - start] = outputs[k]
            padded.append(full)
        gathered = [[torch.empty_like(p) for _ in range(ranks)] for p in padded]
        for p, into in zip(padded, gathered):
            dist.all_gather(into, p)
        for r in range(ranks):
            start, stop = (first + r) * batch_size, min((first + r + 1) * batch_size, n)
            if start < n:
                store(start, stop, [into[r][: stop - start] for into in gathered])
