"""CLIP zero-shot prompts: class names and templates per dataset (continual/datasets/prompts.py, the data file
copied from clip-benchmark), the `templates:` key of a task or probe, and the heads the runner builds."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from continual.cli import main
from continual.config import ConfigError, ModelConfig, load_sequence
from continual.datasets import DATASETS, prompts, resolve_classes
from helpers import tiny_clip_model

DATA = json.loads((Path(prompts.__file__).parent / "zeroshot.json").read_text())
# Datasets with no templates in the literature: ours, the user's folders, and two clip-benchmark lacks.
GENERIC_ONLY = {"fashion_mnist", "animal_mnist", "digits", "imagefolder", "tiny_imagenet", "cub200"}
# Those of #12 not in the catalog yet when this was written; their entries must be ready for them.
COMING = {"fgvc_aircraft", "caltech101", "oxford_pets", "sun397", "imagenet", "imagenet_r", "tiny_imagenet", "cub200"}


# ------------------------------------------------------------------ the data file


def test_data_file_cites_its_source_and_licence():
    assert DATA["source"].startswith("clip-benchmark 1.6.2")
    assert DATA["license"][0] == "MIT License" and "Copyright (c) 2022, Mehdi Cherti" in DATA["license"]


def test_every_dataset_is_mapped_to_an_entry_of_the_file():
    for dataset in DATASETS:  # a new dataset must choose: the literature's templates, or the generic ones
        assert (dataset in prompts.TEMPLATES_FROM) != (dataset in GENERIC_ONLY), dataset
    for dataset in {**prompts.NAMES_FROM, **prompts.TEMPLATES_FROM}:
        assert dataset in DATASETS or dataset in COMING, dataset
    assert set(prompts.NAMES_FROM.values()) == set(DATA["classnames"])
    assert set(prompts.TEMPLATES_FROM.values()) == set(DATA["templates"])


def test_own_name_lists_pair_with_clip_benchmarks_in_order():
    wnids, folders = DATA["dataset_names"]["imagenet1k"], DATA["dataset_names"]["caltech101"]
    assert len(wnids) == len(set(wnids)) == len(DATA["classnames"]["imagenet1k"]) == 1000
    assert wnids == sorted(wnids)  # ImageFolder's label order, and torchvision ImageNet's
    # clip-benchmark labels Caltech 101 by sorted(os.listdir(...)), BACKGROUND_Google included
    assert folders == sorted(folders) and len(folders) == len(DATA["classnames"]["caltech101"]) == 102
    pairs = dict(zip(folders, DATA["classnames"]["caltech101"]))
    assert pairs["BACKGROUND_Google"] == "background" and pairs["Faces_easy"] == "centered face"
    assert pairs["car_side"] == "side of a car" and pairs["yin_yang"] == "yin and yang symbol"


def test_gtsrb_and_flowers_have_readable_class_names_in_the_catalog():
    gtsrb, flowers = DATASETS["gtsrb"].class_names, DATASETS["flowers102"].class_names
    assert len(gtsrb) == len(set(gtsrb)) == 43 and len(flowers) == len(set(flowers)) == 102  # selectable by name
    assert gtsrb[0] == "red and white circle 20 kph speed limit" and gtsrb[14] == "stop"
    assert flowers[0] == "pink primrose" and flowers[101] == "blackberry lily"
    assert resolve_classes(["stop", 0], gtsrb, dataset="gtsrb") == [14, 0]
    assert prompts.readable_names("gtsrb", ["stop"]) == ["stop"]


def test_a_yaml_selects_flowers_by_name(tmp_path):
    seq = load_sequence({"name": "f", "tasks": [{"name": "a", "dataset": "flowers102",
                                                 "classes": ["pink primrose", "petunia"]}],
                         "methods": ["finetune"], "data_root": str(tmp_path)})
    assert seq.tasks[0].classes == ["pink primrose", "petunia"]


# ------------------------------------------------------------------ readable names


def test_subsets_map_by_name_not_position():
    assert prompts.readable_names("svhn", ["7", "2"]) == ["seven", "two"]
    assert prompts.readable_names("eurosat", ["SeaLake", "AnnualCrop", "Residential"]) == [
        "lake or sea", "annual crop land", "residential buildings or homes or apartments"]
    assert prompts.readable_names("mnist", ["3"]) == ["3"]  # clip-benchmark writes MNIST's as digits
    # torchvision's Caltech101 drops BACKGROUND_Google: its label i is clip-benchmark's i + 1, by name
    assert prompts.readable_names("caltech101", ["Faces", "airplanes", "yin_yang"]) == [
        "off-center face", "airplane", "yin and yang symbol"]


def test_imagenet_family_maps_wordnet_ids():
    # OpenAI's names (as CLIP's ImageNet notebook refined them), not WordNet's first lemma ("wing")
    assert prompts.readable_names("imagenet", ["n01440764", "n04592741"]) == ["tench", "airplane wing"]
    assert prompts.readable_names("imagenet_r", ["n01443537", "n12267677"]) == ["goldfish", "acorn"]
    assert prompts.readable_names("tiny_imagenet", ["n02814533"]) == ["station wagon"]


def test_cifar100_names_have_spaces():
    names = "apple aquarium_fish maple_tree sweet_pepper willow_tree".split()
    assert prompts.readable_names("cifar100", names) == ["apple", "aquarium fish", "maple tree", "sweet pepper",
                                                          "willow tree"]
    if DATASETS["cifar100"].class_names is not None:  # once the catalog lists them
        readable = prompts.readable_names("cifar100", DATASETS["cifar100"].class_names)
        assert len(readable) == 100 and "_" not in "".join(readable)


def test_pets_names_are_torchvisions_as_it_writes_them():
    # torchvision's OxfordIIITPet: " ".join(part.title() for part in "american_pit_bull_terrier".split("_"))
    for name in DATA["classnames"]["pets"]:
        raw = name.lower().replace(" ", "_")
        assert " ".join(part.title() for part in raw.split("_")) == name
    assert prompts.readable_names("oxford_pets", ["Abyssinian", "Yorkshire Terrier"]) == ["Abyssinian",
                                                                                         "Yorkshire Terrier"]


def test_folder_and_other_names_made_readable():
    assert prompts.readable_names("imagefolder", ["bare_land", "T-shirt", "sea__lake_"]) == [
        "bare land", "T-shirt", "sea lake"]
    assert prompts.readable_names("resisc45", ["baseball_diamond"]) == ["baseball diamond"]
    assert prompts.readable_names("food101", ["apple_pie"]) == ["apple pie"]
    assert prompts.readable_names("sun397", ["apartment_building/outdoor"]) == ["apartment building outdoor"]
    assert prompts.readable_names("fgvc_aircraft", ["F-16A/B"]) == ["F-16A/B"]
    assert prompts.readable_names("cub200", ["001.Black_footed_Albatross"]) == ["Black footed Albatross"]
    assert prompts.readable_names("fashion_mnist", DATASETS["fashion_mnist"].class_names)[0] == "T-shirt/top"


# ------------------------------------------------------------------ templates


def test_templates_per_dataset():
    assert prompts.templates("food101") == ["a photo of {}, a type of food."]
    assert prompts.templates("flowers102") == ["a photo of a {}, a type of flower."]
    assert prompts.templates("gtsrb")[0] == 'a zoomed in photo of a "{}" traffic sign.'
    assert len(prompts.templates("cifar10")) == len(prompts.templates("cifar100")) == 18
    assert len(prompts.templates("imagenet")) == 80 and prompts.templates("imagenet_r") == prompts.templates("imagenet")
    assert prompts.templates("stanford_cars")[0] == "a photo of a {}."
    assert prompts.templates("digits") == prompts.templates("imagefolder") == list(prompts.GENERIC)


def test_every_template_is_valid():
    for dataset in [*DATASETS, *COMING]:
        for template in prompts.templates(dataset):
            assert prompts.template_problem(template) is None, (dataset, template)


def test_generic_templates_are_open_clips():
    import open_clip

    assert [t.format("x") for t in prompts.GENERIC] == [t("x") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES]


@pytest.mark.parametrize("template, words", [
    ("a photo of a {c}.", "{c} is clip-benchmark's spelling"),
    ("a photo", "needs {}"),
    ("{} and {}", "exactly once"),
    ("{0}", "exactly once"),
    ("a {} }", "unmatched brace"),
])
def test_bad_templates(template, words):
    assert words in prompts.template_problem(template)


def test_literal_braces_are_fine():
    assert prompts.template_problem("{{a}} {}") is None


# ------------------------------------------------------------------ the `templates:` key

SEQ = {"name": "t", "model": {"family": "open_clip", "arch": "ViT-B-32"},
       "tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1]}], "methods": ["finetune"]}


def test_templates_without_a_text_encoder_are_refused():
    doc = yaml.safe_load(yaml.safe_dump(SEQ))
    doc["model"] = {"family": "efficientnet_lite0"}
    doc["tasks"][0]["templates"] = ["a photo of {}."]
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.templates: templates are for CLIP zero-shot heads"):
        load_sequence(doc)


def test_yaml_templates_are_read():
    doc = yaml.safe_load(yaml.safe_dump(SEQ))
    doc["tasks"][0]["templates"] = ["a photo of the digit {}.", "a handwritten {}"]
    assert load_sequence(doc).tasks[0].templates == ["a photo of the digit {}.", "a handwritten {}"]
    assert load_sequence(SEQ).tasks[0].templates is None


@pytest.mark.parametrize("templates, key, words", [
    (["a {}", "a {c}"], "tasks[0].templates[1]", "{c} is clip-benchmark's spelling: write {} where the class name"),
    (["no name"], "tasks[0].templates[0]", "needs {} where the class name goes"),
    ([], "tasks[0].templates", "at least 1"),
    ("a {}", "tasks[0].templates", "expected a list"),
])
def test_bad_yaml_templates_are_refused_naming_the_key(tmp_path, capsys, templates, key, words):
    doc = yaml.safe_load(yaml.safe_dump(SEQ))
    doc["tasks"][0]["templates"] = templates
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {key}: " in err and words in err, err
    with pytest.raises(ConfigError):
        load_sequence(doc)


# ------------------------------------------------------------------ heads


def test_zero_shot_head_with_templates_differs_from_default(tiny_clip):
    from continual.models import build_backbone, zero_shot_head

    arch, checkpoint = tiny_clip
    backbone = build_backbone(ModelConfig(family="open_clip", arch=arch, pretrained=str(checkpoint)))
    default = zero_shot_head(backbone, ["seven", "two"]).linear.weight
    assert torch.equal(zero_shot_head(backbone, ["seven", "two"], templates=prompts.GENERIC).linear.weight, default)
    svhn = zero_shot_head(backbone, ["seven", "two"], templates=prompts.templates("svhn")).linear.weight
    assert svhn.shape == default.shape and not torch.allclose(svhn, default, atol=1e-3)


def test_run_builds_heads_from_readable_names_and_templates(tmp_path, tiny_clip):
    """Step 0 of a run (runner.Start.measure): a task's zero-shot head takes its spec's templates, a task
    without them its dataset's; a probe's zero-shot head likewise."""
    from continual import runner
    from continual.models import build_backbone, zero_shot_head

    caps = {"train_per_class": 4, "test_per_class": 3}
    seq = load_sequence({
        "name": "zs", "model": tiny_clip_model(tiny_clip, head_init="zero_shot"),
        "tasks": [{"name": "own", "dataset": "digits", "classes": [0, 1], "templates": ["a {} digit."], **caps},
                  {"name": "lit", "dataset": "mnist", "classes": [2, 3], **caps}],
        "probes": [{"name": "p", "dataset": "mnist", "classes": [4, 5], "templates": ["the number {}"], **caps}],
        "methods": ["finetune"], "download": False, "data_root": str(tmp_path)})
    cpu = torch.device("cpu")
    start = runner.Start.measure(seq, runner.load_inputs(seq, source="<dict>", device=cpu), device=cpu)

    backbone = build_backbone(seq.model)
    expected = {"own": zero_shot_head(backbone, ["0", "1"], templates=["a {} digit."]),
                "lit": zero_shot_head(backbone, ["2", "3"], templates=['a photo of the number: "{}".']),
                "p": zero_shot_head(backbone, ["4", "5"], templates=["the number {}"])}
    heads = {**start.model.heads, **start.zero_shot_probes}
    for name, head in expected.items():
        torch.testing.assert_close(heads[name].linear.weight, head.linear.weight, msg=name)
    generic = zero_shot_head(backbone, ["4", "5"]).linear.weight
    assert not torch.allclose(heads["p"].linear.weight, generic, atol=1e-3)
