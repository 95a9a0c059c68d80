"""The merging methods (issue #26): task arithmetic, TIES-merging and MagMax. Their merges on small tensors worked
out by hand and against a transcription of the reference code; each method's backbone after every task is
θ_0 + λ · its merge of the task vectors so far, fine-tuned from where it says; λ = 0 is the pre-trained
backbone exactly; each runs through the CLI and resumes bit for bit."""

import copy

import pytest
import torch
import yaml

from continual import methods
from continual.cli import main
from continual.config import TrainingConfig
from continual.methods import CLASSES
from continual.methods import merging as m
from continual.methods.options import MagMaxOptions, TaskArithmeticOptions, TIESOptions
from continual.models import TaskModel
from continual.train import Trainer
from helpers import assert_same_results, tiny_sequence, tiny_setting

MERGING = ("task_arithmetic", "ties", "magmax")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ---- the merges, by hand ----------------------------------------------------------------------------------

# Three task vectors over a model of two tensors, five entries in all.
TAUS = [{"w": torch.tensor([4.0, -1.0, 2.0, 0.5]), "b": torch.tensor([-3.0])},
        {"w": torch.tensor([-1.0, 5.0, -2.0, 0.125]), "b": torch.tensor([0.5])},
        {"w": torch.tensor([-6.0, -3.0, 1.0, 0.25]), "b": torch.tensor([2.0])}]


def test_ties_trims_elects_and_merges_a_three_task_example_as_worked_by_hand():
    # keep 40 % of d = 5: the reference keeps the entries at or above the (5 − ⌊2.0⌋) = 3rd smallest magnitude,
    # 3 of them: one more than 40 %, as its kthvalue counts.
    trimmed = [m.trim(tau, keep=40) for tau in TAUS]
    assert same(trimmed[0], {"w": torch.tensor([4.0, 0, 2, 0]), "b": torch.tensor([-3.0])})
    assert same(trimmed[1], {"w": torch.tensor([-1.0, 5, -2, 0]), "b": torch.tensor([0.0])})
    assert same(trimmed[2], {"w": torch.tensor([-6.0, -3, 0, 0]), "b": torch.tensor([2.0])})
    sums = None
    for t in trimmed:
        sums = m.ties_add(sums, t)
    # Elect: w sums (−3, 2, 0, 0), b −1: signs (−, +, 0, 0) and −; 1 positive, 2 negative: the two 0s take −.
    # Disjoint mean: w0 the negatives (−1 − 6)/2; w1 the positive 5; w2 the negative −2; w3 none: 0; b −3.
    assert same(m.ties_merge(sums), {"w": torch.tensor([-3.5, 5.0, -2.0, 0.0]), "b": torch.tensor([-3.0])})
    assert same(m.trim(TAUS[0], keep=100), TAUS[0])  # nothing trimmed


def test_magmax_keeps_each_entrys_largest_magnitude_with_its_sign_the_later_on_a_tie():
    taus = [{"w": torch.tensor([1.0, -3.0, 2.0])}, {"w": torch.tensor([-2.0, 1.0, -2.0])},
            {"w": torch.tensor([0.5, 3.0, 1.0])}]
    kept = None
    for tau in taus:
        kept = m.max_magnitude(kept, tau)
    # w0: |−2| wins; w1: |−3| and |3| tie, the later +3; w2: |2| and |−2| tie at task 2, the later −2
    assert same(kept, {"w": torch.tensor([-2.0, 3.0, -2.0])})
    assert same(taus[0], {"w": torch.tensor([1.0, -3.0, 2.0])})  # the task vectors are left as they were


def test_task_arithmetic_sums_and_apply_scales_onto_the_pretrained_backbone():
    total = None
    for tau in TAUS:
        total = m.add(total, tau)
    assert same(total, {"w": torch.tensor([-3.0, 1.0, 1.0, 0.875]), "b": torch.tensor([-0.5])})
    bn = torch.nn.BatchNorm1d(2)
    pretrained = {k: v.clone() for k, v in bn.state_dict().items()}
    with torch.no_grad():
        bn.weight.add_(1.0)
    bn.num_batches_tracked.fill_(7)
    tau = {"weight": torch.tensor([1.0, -2.0]), "bias": torch.tensor([0.5, 0.0]),
           "running_mean": torch.tensor([0.0, 1.0]), "running_var": torch.tensor([0.0, 0.0])}
    m.apply(bn, pretrained, tau, scale=0.5)  # numbers exact in float32
    assert torch.equal(bn.weight.detach(), torch.tensor([1.5, 0.0]))
    assert torch.equal(bn.bias.detach(), torch.tensor([0.25, 0.0]))
    assert torch.equal(bn.running_mean, torch.tensor([0.0, 0.5]))  # floating buffers merge like the weights
    assert int(bn.num_batches_tracked) == 0  # the others are the pre-trained ones
    m.apply(bn, pretrained, tau, scale=0.0)
    assert same(bn.state_dict(), pretrained)


# ---- against the reference code ---------------------------------------------------------------------------
# ties-merging src/utils/merge_utils.py (topk_values_mask, resolve_sign "mass", resolve_zero_signs,
# disjoint_merge "dis-mean"), as magmax src/merging/ties.py copies it: on the tasks' vectors flattened into one
# row each, stacked.

def reference_ties(flat: torch.Tensor, k: float) -> torch.Tensor:
    n, d = flat.shape
    kth = d - int(d * (k / 100))
    kth_values, _ = flat.abs().kthvalue(kth, dim=1, keepdim=True)
    trimmed = flat * (flat.abs() >= kth_values)
    sign = torch.sign(trimmed.sum(dim=0))
    sign[sign == 0] = torch.sign(sign.sum())
    selected = trimmed * torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    return selected.sum(dim=0) / torch.clamp((selected != 0).sum(dim=0).float(), min=1)


def reference_magmax(taus: list[torch.Tensor]) -> torch.Tensor:  # magmax src/merging/task_vectors.py lines 113-125
    kept = taus[0]
    for tau in taus[1:]:
        kept = torch.where(tau.abs() >= kept.abs(), tau, kept)
    return kept


@pytest.mark.parametrize("k", [20, 37.5, 95])  # 100 fails in the reference (kthvalue(0))
def test_ties_equals_the_reference_on_random_task_vectors(k):
    torch.manual_seed(0)
    # Rounded to quarters so that signs, ties at the threshold and exact cancellations happen.
    taus = [{"w": (torch.randn(7, 5) * 4).round() / 4, "b": (torch.randn(3) * 4).round() / 4} for _ in range(5)]
    flat = torch.stack([torch.cat([t["w"].flatten(), t["b"]]) for t in taus])
    sums = None
    for tau in taus:
        sums = m.ties_add(sums, m.trim(tau, keep=k))
    ours = m.ties_merge(sums)
    assert torch.allclose(torch.cat([ours["w"].flatten(), ours["b"]]), reference_ties(flat, k), atol=1e-6)


def test_magmax_equals_the_reference_on_random_task_vectors():
    torch.manual_seed(0)
    taus = [(torch.randn(40) * 4).round() / 4 for _ in range(6)]  # with ties
    kept = None
    for tau in taus:
        kept = m.max_magnitude(kept, {"w": tau})
    assert torch.equal(kept["w"], reference_magmax(taus))


# ---- each method, task by task -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setting():
    backbone, head, task = tiny_setting()
    trainer = Trainer(TrainingConfig(batch_size=16, warmup_steps=1, lr=1e-3, steps_per_task=2),
                      device=torch.device("cpu"), progress=False)
    return backbone, head, task, trainer


class Recording:
    """A trainer that records the backbone each fine-tuning starts from and ends with."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.starts, self.ends = trainer, [], []

    def fit(self, model, task, **kwargs):
        self.starts.append(m.cpu_state(model.backbone))
        stats = self.trainer.fit(model, task, **kwargs)
        self.ends.append(m.cpu_state(model.backbone))
        return stats


def train(options, setting, *, tasks: int = 3):
    """(the method, the backbone after each of `tasks` tasks, the recording trainer)."""
    backbone, head, task, trainer = setting
    model = TaskModel(copy.deepcopy(backbone), {"t": copy.deepcopy(head)}, freeze_batchnorm=True)
    method = methods.build(options, pretrained=backbone)
    recording, after = Recording(trainer), []
    for step in range(1, tasks + 1):
        torch.manual_seed(step)
        method.fit_task(model, task, step=step, trainer=recording)
        after.append(m.cpu_state(model.backbone))
    return method, after, recording


def by_hand(name: str, taus: list[dict], options) -> dict:
    """The merged task vector of `taus`, written out from the method's definition."""
    if name == "task_arithmetic":
        return {k: sum(t[k] for t in taus) for k in taus[0]}
    if name == "magmax":
        return {k: reference_magmax([t[k] for t in taus]) for k in taus[0]}
    keys = list(taus[0])
    flat = torch.stack([torch.cat([t[k].flatten() for k in keys]) for t in taus])
    merged, out, at = reference_ties(flat, options.k), {}, 0
    for k in keys:
        out[k] = merged[at : at + taus[0][k].numel()].reshape(taus[0][k].shape)
        at += taus[0][k].numel()
    return out


@pytest.mark.parametrize("options", [TaskArithmeticOptions(), TIESOptions(), MagMaxOptions(),
                                     TaskArithmeticOptions(finetuning="sequential"),
                                     MagMaxOptions(finetuning="independent", lambda_=1.0)],
                         ids=lambda o: f"{o.name}-{o.finetuning}")
def test_after_each_task_the_backbone_is_the_pretrained_plus_lambda_times_the_merge(options, setting):
    pretrained = m.cpu_state(setting[0])
    method, after, recording = train(options, setting)
    # Where each task's fine-tuning starts: the pre-trained backbone, or where the last one's ended (not the merge).
    for t in (1, 2):
        start = recording.starts[t]
        assert same(start, recording.ends[t - 1] if options.finetuning == "sequential" else pretrained)
        assert not same(start, after[t - 1])  # the merge is what was scored, not where training goes on from
    floating = [k for k, v in pretrained.items() if v.is_floating_point()]
    taus = [{k: end[k] - pretrained[k] for k in floating} for end in recording.ends]
    for t in (1, 2, 3):
        merged = by_hand(options.name, taus[:t], options)
        expected = {k: pretrained[k] + options.lambda_ * merged[k] if k in merged else pretrained[k]
                    for k in pretrained}
        assert close(after[t - 1], expected), (options.name, t)


@pytest.mark.parametrize("options", [TaskArithmeticOptions(lambda_=0.0), TIESOptions(lambda_=0.0),
                                     MagMaxOptions(lambda_=0.0)], ids=lambda o: o.name)
def test_lambda_0_gives_back_the_pretrained_backbone_exactly(options, setting):
    _, after, recording = train(options, setting, tasks=2)
    pretrained = m.cpu_state(setting[0])
    assert not same(recording.ends[0], pretrained)  # it trained
    assert all(same(state, pretrained) for state in after)


# ---- through the CLI: a run, and a resume bit for bit -----------------------------------------------------

def interrupted(cls: type) -> type:
    """`cls` stopped by Ctrl-C at step 2 of a run it has not resumed (as test_resilience's Interrupted)."""

    class Interrupted(cls):
        resumed = False

        def load_state_dict(self, state, *, model, trainer):
            self.resumed = True
            super().load_state_dict(state, model=model, trainer=trainer)

        def fit_task(self, model, task, *, step, trainer):
            if step == 2 and not self.resumed:
                raise KeyboardInterrupt
            return super().fit_task(model, task, step=step, trainer=trainer)

    return Interrupted


def test_each_runs_through_the_cli_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    doc = tiny_sequence(name="merging", seed=0, keep_checkpoints=2,
                        training={"batch_size": 8, "warmup_steps": 1, "steps_per_task": 3, "lr": 1e-3},
                        methods=[{"task_arithmetic": {"lambda": 0.5}}, {"ties": {"k": 50}}, "magmax"])
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(doc))
    assert main(["run", str(seq), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    whole = tmp_path / "whole" / "merging"
    state = torch.load(whole / "checkpoints" / "magmax" / "step-2.pt", weights_only=True)["method_state"]
    assert set(state) == {"tau_max", "finetuned"}  # sequential: the fine-tuned weights the next task starts from
    assert "magmax (λ = 0.5)" in (whole / "summary.md").read_text()

    # Each interrupted at step 2 in turn (a run stops at the first), then resumed: the next resume continues it.
    for name in MERGING:
        monkeypatch.setitem(CLASSES, name, interrupted(methods.implementation(name)))
    assert main(["run", str(seq), "--out", str(tmp_path / "cut"), "--quiet"]) == 130
    for _ in MERGING[1:]:
        assert main(["run", str(seq), "--out", str(tmp_path / "cut"), "--quiet", "--resume"]) == 130
    assert main(["run", str(seq), "--out", str(tmp_path / "cut"), "--quiet", "--resume"]) == 0
    cut = tmp_path / "cut" / "merging"
    for name in MERGING:
        assert (cut / name / "accuracy_matrix.csv").read_bytes() == (whole / name / "accuracy_matrix.csv").read_bytes()
        assert_same_results(cut, whole, name)


def test_a_part_of_the_backbone_merges_and_lora_is_refused(tmp_path, capsys):
    """With model.trainable: bias only the biases train, so only they (and nothing frozen) move in the merge; LoRA
    adapters cannot hold a merge of their updates: refused before anything is written."""
    model = {"family": "efficientnet_lite0", "image_size": 32}
    doc = tiny_sequence(name="parts", seed=0, model={**model, "trainable": "bias"}, methods=["ties"],
                        training={"batch_size": 8, "warmup_steps": 1, "steps_per_task": 2, "lr": 1e-3})
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump(doc))
    assert main(["run", str(seq), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    state = torch.load(tmp_path / "out" / "parts" / "checkpoints" / "ties" / "step-2.pt", weights_only=True)
    moved = {k for k, v in state["method_state"]["ties"]["positive"].items() if v.any()}
    assert moved and all(k.endswith("bias") for k in moved)
    seq.write_text(yaml.safe_dump({**doc, "model": {**model, "trainable": "lora"}, "methods": list(MERGING)}))
    assert main(["run", str(seq), "--out", str(tmp_path / "lora"), "--quiet"]) == 2
    err = capsys.readouterr().err
    for i, name in enumerate(MERGING):
        assert f"methods[{i}].{name}.lambda: θ_0 + λ·τ, a merge of the task vectors, cannot be used with " in err
    assert not (tmp_path / "lora").exists()
