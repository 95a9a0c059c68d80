"""training.compile (issue #24): the backbone's forward, taps included, compiled by torch.compile gives the
eager forward's loss terms and taps, on the tiny CLIP on CPU (inductor, through the C compiler)."""

import copy
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from continual import methods
from continual.config import TrainingConfig
from continual.datasets.tasks import Split, TaskData
from continual.evaluate import evaluate
from continual.methods.options import FinetuneOptions, LDIFSOptions
from continual.models import Head, TaskModel, build_backbone
from continual.train import Trainer, use_compile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_compile_key_and_what_auto_means():
    assert TrainingConfig().compile == "auto"
    assert TrainingConfig(compile=True).compile is True and TrainingConfig(compile=False).compile is False
    with pytest.raises(ValidationError):
        TrainingConfig(compile="yes")
    assert not use_compile(TrainingConfig(), CPU) and not use_compile(TrainingConfig(), CUDA)  # auto: off until measured
    assert use_compile(TrainingConfig(compile=True), CPU) and not use_compile(TrainingConfig(compile=False), CUDA)


def tiny_task(n=8, classes=2):
    g = torch.Generator().manual_seed(0)
    split = Split(images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                  labels=torch.arange(n) % classes)
    return TaskData(name="t", dataset="synthetic", class_names=[str(c) for c in range(classes)],
                    train=split, test=split)


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="inductor compiles CPU kernels with a C compiler")
def test_compiled_forward_gives_the_eager_loss_terms_and_taps(tiny_clip, monkeypatch):
    import torch._dynamo
    import torch._inductor.config

    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        # inductor still writes vectorised C++ (at::vec) for this CPU, which the `default` build's headers leave
        # out (g++: "'at::vec' has not been declared"): scalar kernels, as that capability means
        monkeypatch.setattr(torch._inductor.config.cpp, "simdlen", 1)

    arch, checkpoint = tiny_clip
    anchor = build_backbone(SimpleNamespace(family="open_clip", arch=arch, pretrained=str(checkpoint),
                                            image_size=None, head_init="random"))
    start = copy.deepcopy(anchor)
    torch.manual_seed(0)
    with torch.no_grad():  # moved off the anchor, so that LDIFS's first term is not 0 = 0
        for p in start.parameters():
            p.add_(0.01 * torch.randn_like(p))
    head = Head(start.feature_dim, 2, normalize=True)
    task = tiny_task()
    x = start.preprocess(task.train.images)

    def run(compile: bool):
        trainer = Trainer(TrainingConfig(batch_size=8, steps_per_task=1, warmup_steps=0, compile=compile),
                          device=CPU, progress=False)
        out = {}
        for options in (FinetuneOptions(), LDIFSOptions(cache="off")):
            model = TaskModel(copy.deepcopy(start), {"t": copy.deepcopy(head)})
            torch.manual_seed(1)
            stats = methods.build(options, pretrained=anchor).fit_task(model, task, step=1, trainer=trainer)
            out[options.name] = {**stats.first_losses, **{f"first_ce.{k}": v for k, v in stats.first_ce.items()}}
            assert "forward" not in vars(model.backbone)  # the plain module again after the task
        backbone = copy.deepcopy(start)  # in train mode, as LDIFS's step ran it: the graph compiled there serves
        with backbone.compiled(compile):
            out["taps"] = [t.detach() for t in backbone.forward_with_taps(x)[1]]
        model = TaskModel(copy.deepcopy(start), {"t": copy.deepcopy(head)})
        out["eval"] = evaluate(model, [task], [], learned=1, head_init="random", zero_shot_probes=None,
                               batch_size=8, device=CPU, compile=compile).row
        return out

    torch._dynamo.reset()
    eager = run(False)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = run(True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert set(eager["ldifs"]) == {"ce", "ldifs", "first_ce.train", "first_ce.eval"} and eager["ldifs"]["ldifs"] > 0
    for name in ("finetune", "ldifs"):
        assert compiled[name] == pytest.approx(eager[name], rel=1e-5)
    assert len(compiled["taps"]) == len(eager["taps"]) == 5
    for tap, expected in zip(compiled["taps"], eager["taps"]):
        torch.testing.assert_close(tap, expected, rtol=1e-5, atol=1e-5)
    assert compiled["eval"] == eager["eval"]
