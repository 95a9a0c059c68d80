"""Methods by name: a plain registry, read top to bottom.

A method is a class with a pydantic `Options` schema (validated from the sequence YAML), a constructor
`Method(options, *, pretrained)` that receives the pre-trained backbone before task 1, and
`fit_task(model, task, *, step, trainer) -> FitStats`. Methods of our own hand named loss terms to the
shared loop (`Trainer.fit`); a method may also train its own way (the Avalanche baselines do) as long as
it leaves `model` trained on `task`. The runner evaluates every method with the same code.

A method that carries state from one task to the next (beyond the model, which the runner saves) also
has `state_dict() -> dict` of tensors and plain values, and `load_state_dict(state, *, model, trainer)`,
so that a run can be checkpointed after each step and resumed (see `continual/checkpoints.py`).
"""

from continual.methods.avalanche import EWC, LwF, Naive, Replay
from continual.methods.finetune import Finetune
from continual.methods.ldifs import LDIFS

METHODS = {
    "finetune": Finetune,
    "ldifs": LDIFS,
    # avalanche-lib's own strategy and plugins, on our model, data and settings (methods/avalanche.py)
    "naive": Naive,
    "ewc": EWC,
    "lwf": LwF,
    "replay": Replay,
}
