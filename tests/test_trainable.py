"""model.trainable (docs/trainable.md): what of the backbone trains, whichever method runs. Each mode trains what it
says (counted by hand on the tiny CLIP), `full` leaves runs as they were, LoRA runs end to end with fine-tuning and
LDIFS through `main`, its checkpoints hold only what trains and a resume continues bit for bit, L2-SP and WiSE-FT
act on the weights the adapted model computes with, and what the model cannot do is refused naming the key."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import digits, tiny_clip_model, tiny_clip_sequence, tiny_sequence

from continual import methods
from continual.cli import main
from continual.config import load_sequence
from continual.methods import CLASSES
from continual.methods.finetune import Finetune
from continual.methods.wise_ft import interpolate
from continual.models import trainable
from continual.report.tables import load_tables
from continual.runner import Start, load_inputs, trained_backbone

CPU = torch.device("cpu")

# The tiny CLIP (helpers.TINY_CLIP_CONFIG): width 32, 4 blocks, MLP 4 x 32 = 128, embed_dim 16.
WIDTH, BLOCKS, MLP, EMBED = 32, 4, 128, 16
# LoRA at r = 8 on each block's q/k/v (32 -> 96), c_fc (32 -> 128) and c_proj (128 -> 32): r·(in + out) each.
LORA = BLOCKS * 8 * ((WIDTH + 3 * WIDTH) + (WIDTH + MLP) + (MLP + WIDTH))
# One block: ln_1, in_proj (weight + bias), out_proj, ln_2, c_fc, c_proj.
BLOCK = (2 * WIDTH + (3 * WIDTH * WIDTH + 3 * WIDTH) + (WIDTH * WIDTH + WIDTH) + 2 * WIDTH
         + (WIDTH * MLP + MLP) + (MLP * WIDTH + WIDTH))
# last_blocks n = 1: the last block, ln_post and proj (width -> embed_dim).
LAST_BLOCK = BLOCK + 2 * WIDTH + WIDTH * EMBED
# bias: each block's ln_1, in_proj, out_proj, ln_2, c_fc and c_proj biases, and ln_pre's and ln_post's.
BIASES = BLOCKS * (WIDTH + 3 * WIDTH + WIDTH + WIDTH + MLP + WIDTH) + 2 * WIDTH
HEAD = EMBED * 2 + 2  # a task's head of two digit classes


def write(tmp_path: Path, seq: dict, name: str = "seq.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(seq))
    return path


def loaded(seq: dict, tmp_path: Path):
    sequence = load_sequence(write(tmp_path, seq))
    return sequence, load_inputs(sequence, source="<test>", device=CPU)


def trains(backbone) -> int:
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize("mode, count", [("lora", LORA), ({"kind": "last_blocks", "n": 1}, LAST_BLOCK),
                                         ("bias", BIASES), ("frozen", 0)])
def test_each_mode_trains_what_it_says_on_the_tiny_clip(tiny_clip, tmp_path, mode, count):
    seq, inputs = loaded(tiny_clip_sequence(tiny_clip, model=tiny_clip_model(tiny_clip, trainable=mode)), tmp_path)
    backbone = trained_backbone(seq, inputs.backbone)
    assert trains(backbone) == count
    names = {n for n, p in backbone.named_parameters() if p.requires_grad}
    if mode == "lora":
        assert all(".lora_A.default." in n or ".lora_B.default." in n for n in names) and len(names) == 2 * 3 * BLOCKS
    elif mode == "bias":
        assert all(n.endswith(("bias", "_bias")) for n in names)
    elif mode != "frozen":
        assert names >= {"visual.proj", "visual.ln_post.weight"} and not any("resblocks.2." in n for n in names)
    # the pre-trained backbone the methods anchor to is neither adapted nor frozen
    assert trainable.applied(inputs.backbone) is None and not trainable.lora_factors(inputs.backbone)
    assert all(p.requires_grad for p in inputs.backbone.parameters())
    # the forward and LDIFS's taps work on the adapted model, and LoRA starts as the pre-trained model (B = 0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = backbone.eval().forward_with_taps(x), inputs.backbone.eval().forward_with_taps(x)
    assert len(ours[1]) == len(theirs[1]) == 5
    if mode == "lora":
        assert torch.equal(ours[0], theirs[0]) and all(torch.equal(a, b) for a, b in zip(ours[1], theirs[1]))


def test_lora_on_efficientnet_adapts_its_1x1_convolutions(tmp_path):
    seq, inputs = loaded(tiny_sequence(model={"family": "efficientnet_lite0", "image_size": 32, "trainable": "lora"}),
                         tmp_path)
    convs = [m for n, m in inputs.backbone.named_modules() if n.endswith(("_expand_conv", "_project_conv", "_conv_head"))]
    assert all(m.kernel_size == (1, 1) for m in convs) and len(convs) == 32
    backbone = trained_backbone(seq, inputs.backbone)
    assert trains(backbone) == sum(8 * (m.in_channels + m.out_channels) for m in convs) == 182_272
    # evaluation folds BatchNorm into the convolutions: the LoRA update is merged into them first
    factors = trainable.lora_factors(backbone)
    torch.manual_seed(0)
    for f in factors:
        torch.nn.init.normal_(f.b, std=0.01)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        plain = backbone.eval()(backbone.preprocess(x))
        fused = backbone.for_inference()(backbone.preprocess(x))
    assert torch.allclose(plain, fused, atol=1e-4) and not torch.allclose(plain, inputs.backbone.eval()(
        inputs.backbone.preprocess(x)), atol=1e-3)
    assert len(trainable.lora_factors(backbone)) == 32  # the for_inference copy took the merge, not the model
    saved = trainable.saved_state(backbone)  # what a checkpoint keeps: A, B and BatchNorm's statistics
    assert sum(".lora_" in k for k in saved) == 2 * 32
    assert all(".lora_" in k or k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in saved)


def test_the_anchors_methods_copy_stay_pre_trained(tiny_clip, tmp_path):
    seq, inputs = loaded(tiny_clip_sequence(tiny_clip, model=tiny_clip_model(tiny_clip, trainable="lora"),
                                            methods=["ldifs"]), tmp_path)
    start = Start.measure(seq, inputs, device=CPU)
    assert trains(start.model.backbone) == LORA
    ldifs = methods.build(seq.method("ldifs"), pretrained=inputs.backbone)
    assert not trainable.lora_factors(ldifs.anchor.backbone)
    assert ldifs.anchor.backbone.visual.transformer.resblocks[0].attn.in_proj_weight.shape == (3 * WIDTH, WIDTH)


def test_l2sp_and_wise_ft_act_on_the_weights_lora_computes_with(tiny_clip, tmp_path):
    seq, inputs = loaded(tiny_clip_sequence(tiny_clip, model=tiny_clip_model(tiny_clip, trainable="lora")), tmp_path)
    backbone = trained_backbone(seq, inputs.backbone)
    torch.manual_seed(1)
    for f in trainable.lora_factors(backbone):
        torch.nn.init.normal_(f.b, std=0.1)
    pretrained = inputs.backbone.state_dict()

    def weights(b):  # the weights the model computes with: LoRA merged into a copy, keyed as the pre-trained model
        return trainable.merged(copy.deepcopy(b)).state_dict()

    moved = weights(backbone)
    assert moved.keys() == pretrained.keys()
    distance = sum(float((moved[k] - pretrained[k]).pow(2).sum()) for k in pretrained)
    assert distance > 1e-2
    with torch.no_grad():
        penalty = float(sum(trainable.lora_update_norm(f) for f in trainable.lora_factors(backbone)))
    assert penalty == pytest.approx(distance, rel=1e-4)  # L2-SP's, from the r x r Gram matrices
    interpolate(backbone, {k: v.clone() for k, v in pretrained.items()}, alpha=0.3)
    mixed = weights(backbone)
    for k in pretrained:
        assert torch.allclose(mixed[k], 0.7 * pretrained[k] + 0.3 * moved[k], atol=1e-6), k


# ---- end to end -----------------------------------------------------------------------------------------------

def clip_lora(tiny_clip, **changes) -> dict:
    return tiny_clip_sequence(tiny_clip, model=tiny_clip_model(tiny_clip, trainable="lora"),
                              methods=["finetune", {"ldifs": {"lambda": 10}}], **changes)


@pytest.fixture(scope="module")
def lora_run(tiny_clip, tmp_path_factory):
    """finetune and LDIFS with LoRA on the tiny CLIP, through `main`, uninterrupted: (folder, sequence file)."""
    tmp = tmp_path_factory.mktemp("lora")
    path = write(tmp, clip_lora(tiny_clip))
    assert main(["run", str(path), "--out", str(tmp / "out"), "--quiet", "--no-tensorboard"]) == 0
    return tmp / "out" / "tiny", path


def test_finetune_and_ldifs_with_lora_run_end_to_end(lora_run, tiny_clip):
    folder, _ = lora_run
    costs = load_tables(folder)["costs"].set_index(["method", "metric"])["value"]
    for method in ("finetune", "ldifs"):
        timings = json.loads((folder / method / "metrics.json").read_text())["timings"]
        assert [t.get("trainable_parameters") for t in timings[1:]] == [LORA + HEAD, LORA + HEAD]
        assert costs[(method, "cost:trainable_parameters")] == LORA + HEAD  # the report's cost column
        assert (folder / method / "accuracy_matrix.csv").read_text().count("\n") == 4  # the header and steps 0, 1, 2
        saved = torch.load(folder / "checkpoints" / method / "step-2.pt", weights_only=True)["backbone"]
        assert len(saved) == 2 * 3 * BLOCKS and all(".lora_" in k for k in saved)  # only what trains
        assert any(float(v.abs().sum()) > 0 for k, v in saved.items() if ".lora_B." in k)  # and it trained
    assert "ldifs" in timings[1]["losses"]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["trainable"] == {"kind": "lora", "r": 8, "alpha": 16.0, "targets": None}


class Interrupted(Finetune):
    """Ctrl-C while training the second task (tests/test_resilience.py's)."""

    def fit_task(self, model, task, *, step, trainer):
        if step == 2:
            raise KeyboardInterrupt
        return super().fit_task(model, task, step=step, trainer=trainer)


def test_a_lora_run_resumes_bit_for_bit(lora_run, tmp_path, monkeypatch):
    reference, path = lora_run
    out = tmp_path / "out"
    monkeypatch.setitem(CLASSES, "finetune", Interrupted)
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-tensorboard"]) == 130
    assert sorted(p.name for p in (out / "tiny" / "checkpoints" / "finetune").iterdir()) == ["step-1.pt"]
    monkeypatch.delitem(CLASSES, "finetune")
    assert main(["run", str(path), "--out", str(out), "--quiet", "--no-tensorboard", "--resume"]) == 0
    for method in ("finetune", "ldifs"):
        assert ((out / "tiny" / method / "accuracy_matrix.csv").read_bytes()
                == (reference / method / "accuracy_matrix.csv").read_bytes())
        ours, theirs = (torch.load(f / "checkpoints" / method / "step-2.pt", weights_only=True)
                        for f in (out / "tiny", reference))
        assert ours["backbone"].keys() == theirs["backbone"].keys()
        assert all(torch.equal(ours["backbone"][k], theirs["backbone"][k]) for k in theirs["backbone"])


def run_one_task(tmp_path: Path, trainable_, name: str) -> Path:
    """Fine-tuning on EfficientNet-Lite0 at 32 px, one task of two digit classes, with `model.trainable` (None: the
    key left out); the run folder."""
    model = {"family": "efficientnet_lite0", "image_size": 32, **({} if trainable_ is None else {"trainable": trainable_})}
    path = write(tmp_path, tiny_sequence(model=model, tasks=[digits("a", [0, 1])]), name=f"{name}.yaml")
    assert main(["run", str(path), "--out", str(tmp_path / name), "--quiet", "--no-tensorboard"]) == 0
    return tmp_path / name / "tiny"


def first_step(folder: Path) -> tuple[dict, dict]:
    """(metrics.json's step 1, the backbone its checkpoint holds)."""
    step = json.loads((folder / "finetune" / "metrics.json").read_text())["timings"][1]
    return step, torch.load(folder / "checkpoints" / "finetune" / "step-1.pt", weights_only=True)["backbone"]


HEAD_LITE0 = 1280 * 2 + 2  # EfficientNet-Lite0's 1280 features -> two classes


def test_full_is_the_run_without_the_key(tmp_path):
    without, full = run_one_task(tmp_path, None, "without"), run_one_task(tmp_path, "full", "full")
    (ours, ours_saved), (theirs, theirs_saved) = first_step(full), first_step(without)
    assert ours["first_losses"] == theirs["first_losses"] and ours["losses"] == theirs["losses"]
    # pinned (tolerantly: the first batch before any update) so that a change to the run without the key shows too
    assert theirs["first_losses"]["ce"] == pytest.approx(0.011824, abs=1e-4)
    assert (full / "finetune" / "accuracy_matrix.csv").read_bytes() == (without / "finetune" / "accuracy_matrix.csv").read_bytes()
    assert ours["trainable_parameters"] == 3_371_008 + HEAD_LITE0  # every weight of the backbone, and the head
    assert ours_saved.keys() == theirs_saved.keys() and all(torch.equal(ours_saved[k], theirs_saved[k]) for k in ours_saved)
    assert yaml.safe_load((full / "config.yaml").read_text())["model"]["trainable"] == {"kind": "full"}


@pytest.mark.parametrize("trainable_, count, kept", [
    # EfficientNet's convolutions have no bias (BatchNorm follows each): BitFit trains BatchNorm's β
    ("bias", 21_008, ("bias",)),
    ("frozen", 0, ()),
])
def test_bias_and_frozen_train_and_keep_what_they_say(tmp_path, trainable_, count, kept):
    step, saved = first_step(run_one_task(tmp_path, trainable_, trainable_))
    assert step["trainable_parameters"] == count + HEAD_LITE0
    assert saved and all(k.endswith((*kept, "running_mean", "running_var", "num_batches_tracked")) for k in saved)


# ---- refusals, before anything is written ---------------------------------------------------------------------

@pytest.mark.parametrize("model, methods_, key, said", [
    ({"trainable": {"kind": "lora", "targets": ["mlp.c_fc", "qkv"]}}, ["finetune"], "model.trainable.targets",
     "`qkv` names no module of open_clip (VisionTransformer)"),
    ({"trainable": {"kind": "lora", "targets": ["attn.out_proj"]}}, ["finetune"], "model.trainable.targets",
     "nn.MultiheadAttention's output projection"),
    ({"trainable": {"kind": "last_blocks", "n": 20}}, ["finetune"], "model.trainable.n",
     "20 is more than the 4 blocks of open_clip (VisionTransformer)"),
    ({"trainable": "lora"}, [{"wise_ft": {"anchor": "previous"}}], "methods[0].wise_ft.anchor",
     "previous cannot be used with model.trainable: lora"),
])
def test_what_the_model_cannot_do_is_refused_naming_the_key(tiny_clip, tmp_path, capsys, model, methods_, key, said):
    seq = tiny_clip_sequence(tiny_clip, model=tiny_clip_model(tiny_clip, **model), methods=methods_)
    assert main(["run", str(write(tmp_path, seq)), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{key}: " in err and said in err, err
    if "names no module" in said:
        assert "this model has conv1, attn, mlp.c_fc, mlp.c_proj)" in err  # what it could name
    assert not (tmp_path / "out" / "tiny").exists()


@pytest.mark.parametrize("trainable_, said", [
    ({"kind": "bias", "r": 4}, "model.trainable: `r` is an option of lora; kind bias takes no options"),
    ({"kind": "last_blocks"}, "model.trainable: kind last_blocks needs `n`"),
    ("lorra", "model.trainable.kind: must be 'full', 'lora', 'last_blocks', 'bias' or 'frozen', got 'lorra' "
              "(did you mean `lora`?)"),
    ({"kind": "lora", "r": 0}, "model.trainable.r: must be greater than 0"),
])
def test_the_schema_refuses_options_naming_the_key(tmp_path, capsys, trainable_, said):
    path = write(tmp_path, tiny_sequence(model={"family": "efficientnet_lite0", "trainable": trainable_}))
    assert main(["validate", str(path)]) == 2
    assert said in capsys.readouterr().err


def test_list_and_the_reference_show_the_modes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "model.trainable" in out and "  lora         r=8, alpha=16.0, targets=(the family's)" in out
    for kind in ("full", "last_blocks", "bias", "frozen"):
        assert f"\n  {kind:<12} " in out
    hooks = Path(__file__).parents[1] / "docs" / "hooks" / "reference.py"
    spec = importlib.util.spec_from_file_location("docs_reference", hooks)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    page = reference.sequence_reference()
    assert "## model.trainable" in page
    for key in ("kind", "r", "alpha", "targets", "n"):
        assert f"| `{key}` |" in page.split("## model.trainable")[1]
