"""Mutated shipped sequences against the bad-input contract (issue #11), with hypothesis.

Each example is a file of sequences/ with one to three mutations: a value replaced (wrong types, odd
names, odd numbers, huge strings, values of other keys), a key deleted or added. The contract:
`continual validate` answers 0 or 2, never raises, and every line it prints names the file; what it
refuses, `continual run` refuses too, with the same message, before writing anything anywhere; and what
it accepts, `run` accepts up to training (checked on a few efficientnet mutants: CLIP needs hub weights).
Seeded (derandomize), so a CI run sees the same few hundred files each time.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from continual.cli import main
from continual.config import ConfigWarning
from continual.datasets import DATASETS
from helpers import ODD_NAMES, ODD_NUMBERS, everything_under, inside, leaves, paths

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {p.name: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "sequences").glob("*.yaml"))}
LITE0 = "mnist-fashion-animals.yaml"  # the shipped efficientnet sequence: runs offline

ODD_VALUES = [None, [], {}, [None], {"a": 1}, "x" * 10_000, "3", [3], [3, 3], [-1, 2], ["cat"], "imagefolder",
              "cifar100", "digits", "resisc45", "open_clip", "efficientnet_lite0", "ViT-B-32", "ViT-Nope",
              "imagenet", "openai", "/nonexistent/w.pt", "online", "cuda", "ldifs", {"ewc": {"mode": "online"}}]


@st.composite
def mutants(draw, docs: dict[str, dict]) -> dict:
    """One of `docs` (file name -> document), mutated one to three times."""
    name = draw(st.sampled_from(sorted(docs)))
    doc = copy.deepcopy(docs[name])
    # copied: a list or mapping put in one place and then edited must not edit the constants above
    values = st.sampled_from(ODD_NAMES + ODD_NUMBERS + ODD_VALUES + leaves(docs[name])).map(copy.deepcopy)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc) or [()]))
        *parents, last = where or (None,)
        node = doc
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if action == "delete" and last is not None:
            del node[last]
        elif action == "add":
            target = node[last] if last is not None and isinstance(node[last], dict) else doc
            target[draw(st.sampled_from(ODD_NAMES + ["seed", "classes", "path", "lambda", "arch", "decay"]))] = \
                draw(values)
        elif last is not None:
            node[last] = draw(values)
    return doc


def call(argv: list[str]) -> tuple[int, str, list[warnings.WarningMessage]]:
    """main(argv) in this process: (status, stdout + stderr, warnings given)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            warnings.catch_warnings(record=True) as given_warnings:
        warnings.simplefilter("always")
        status = main(argv)
    return status, out.getvalue(), given_warnings


def write_mutant(folder: Path, doc: dict) -> Path:
    path = folder / "seq.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutants(SHIPPED))
def test_validate_answers_every_mutant_and_run_refuses_what_it_refuses(doc):
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)):
        tmp = Path(tmp)
        path = write_mutant(tmp, doc)
        status, said, given_warnings = call(["validate", str(path)])
        assert status in (0, 2), said
        assert "Traceback" not in said, said
        for line in said.splitlines():  # errors, warnings (a probe that is trained on), `ok`
            assert line.startswith((f"error: {path}: ", f"warning: {path}: ", f"{path}: ")), \
                f"a line that names no file: {line!r}\n{said}"
        for w in given_warnings:  # where the CLI leaves warnings to Python
            assert issubclass(w.category, ConfigWarning) and str(w.message).startswith(f"{path}: "), str(w.message)
        event(f"validate {'accepted' if status == 0 else 'refused'}")
        if status == 0:
            return
        out = tmp / "out"
        ran, run_said, _ = call(["run", str(path), "--out", str(out), "--quiet"])
        assert (ran, run_said) == (2, said), "run refused otherwise than validate"
        assert everything_under(tmp) == {"seq.yaml"}, "something was written"


def small(doc: dict) -> dict:
    """The efficientnet sequence at 32 px with 4 + 2 images per class, so that loading it costs little."""
    doc = copy.deepcopy(doc)
    doc["model"]["image_size"] = 32
    for spec in doc["tasks"] + doc["probes"]:
        spec.update(train_per_class=4, test_per_class=2)
    return doc


def cheap_to_load(doc: dict) -> bool:
    """Offline (embedded data, efficientnet's shipped weights, a CPU) and still small (at most 8 images
    per class, at most 128 px or the model's own 224), so that a run is past its checks in about a second."""
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    training = doc.get("training") if isinstance(doc.get("training"), dict) else {}
    specs = [s for group in ("tasks", "probes") for s in (doc.get(group) if isinstance(doc.get(group), list) else [])
             if isinstance(s, dict)]
    size = model.get("image_size", 224)
    return (model.get("family", "efficientnet_lite0") == "efficientnet_lite0"
            and (size is None or isinstance(size, int) and size <= 128)
            and training.get("device", "auto") in ("auto", "cpu")
            and all(DATASETS[s["dataset"]].embedded for s in specs if isinstance(s.get("dataset"), str)
                    and s["dataset"] in DATASETS)
            and all(isinstance(s.get(k), int) and s[k] <= 8 for s in specs
                    for k in ("train_per_class", "test_per_class")))


class PastTheChecks(Exception):
    """Raised where the run would start measuring step 0: everything `run` checks is behind it."""


@pytest.fixture(scope="module")
def no_training():
    """Step 0 (evaluating the pre-trained model) and training raise PastTheChecks instead; and a model
    config built once is copied after (building EfficientNet-Lite0 and checking its weights took 2.7 s of
    the 2.8 s a run needed to get past its checks, on 2 shared cores)."""
    from continual import models, runner

    def stop(*args, **kwargs):
        raise PastTheChecks

    built = {}

    def build_once(model_cfg):
        key = model_cfg.model_dump_json()
        if key not in built:
            built[key] = build(model_cfg)  # a ModelError is not kept: it is raised again next time
        return copy.deepcopy(built[key])

    build = models.build_backbone
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner.Start, "measure", stop)
        patch.setattr(runner, "run_method", stop)
        patch.setattr(models, "build_backbone", build_once)
        yield


@settings(max_examples=10, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mutants({LITE0: small(SHIPPED[LITE0])}))
def test_run_accepts_what_validate_accepts(no_training, doc):
    assume(cheap_to_load(doc))
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)):
        tmp = Path(tmp)
        path = write_mutant(tmp, doc)
        status, said, _ = call(["validate", str(path)])
        assume(status == 0)
        with pytest.raises(PastTheChecks):
            status, said, _ = call(["run", str(path), "--out", str(tmp / "out"), "--quiet"])
            pytest.fail(f"validate accepted, run answered {status}:\n{said}")
        assert {Path(p).parts[0] for p in everything_under(tmp)} <= {"seq.yaml", "out"}, "written outside --out"
