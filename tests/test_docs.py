"""The documentation (issue #25): README's links lead somewhere, every page is in the site's navigation and
every page's links to the repository exist, and the reference pages generated from the schema list every
key it has. The site itself is built with warnings as errors by `make docs` (in .ci/run), not here: these
tests need no mkdocs."""
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from continual.config import schema
from continual.methods import METHODS
from continual.sweeps.spec import SweepFile

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# [text](target) and ![alt](target), outside fenced code blocks; a target with a scheme is a URL
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def load_reference():
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_reference()


def links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file, anchors dropped; links inside ``` blocks are code."""
    prose = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    targets = [m.group(1).split("#", 1)[0] for m in LINK.finditer(prose)]
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def test_every_relative_link_of_the_readme_exists():
    found = links(ROOT / "README.md")
    assert any(t.startswith("docs/") for t in found)  # the README leads into the docs
    missing = [t for t in found if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_every_link_of_every_page_exists():
    generated = {DOCS / path for path in reference.PAGES}
    missing = [(str(page.relative_to(ROOT)), t) for page in pages() for t in links(page)
               if not ((page.parent / t).exists() or (page.parent / t).resolve() in generated)]
    assert not missing, f"links to nothing: {missing}"


def nav_paths(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in nav_paths(value)]
    return [p for item in nav for p in nav_paths(item)]


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    nav = set(nav_paths(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in pages()}
    assert nav - on_disk == set(reference.PAGES), "nav names pages that are neither written nor generated"
    assert on_disk <= nav, f"pages missing from mkdocs.yml's nav: {sorted(on_disk - nav)}"


def keys_in(page: str, model) -> set[str]:
    """The keys of `model` that the generated page does not show as a table row."""
    return {field.alias or name for name, field in model.model_fields.items()} - set(
        re.findall(r"^\| `([\w]+)` \|", page, re.M))


def test_the_sequence_reference_lists_every_key_of_the_schema():
    page = reference.sequence_reference()
    assert page.startswith("# Sequence file reference")
    for model in (schema.Sequence, schema.ModelConfig, schema.DataSpec, schema.TrainingConfig, schema.RandomSplit):
        assert not keys_in(page, model), (model.__name__, keys_in(page, model))
    assert "| `lambda` | float (≥ 0) | `10.0` |" in page  # ldifs' λ, by its YAML name, with its default
    assert "| `seed` | int (≥ 0) | `0` |" in page
    assert "2\\*\\*63" in page  # the seed's comment, read from the source, its Markdown escaped


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_has_a_page_with_its_options(name):
    page = DOCS / "methods" / f"{name}.md"
    assert page.is_file(), f"method {name} has no page under docs/methods/"
    text = page.read_text()
    assert f"<!-- options: {name} -->" in text
    options = reference.with_options(text)
    cls = reference.options_class(name)
    assert not keys_in(options, cls) - {"name", "label"}, keys_in(options, cls)


def test_the_sweep_reference_lists_every_key_of_the_sweep_file():
    page = reference.sweep_reference()
    for model in (SweepFile, *reference.nested(SweepFile.model_fields["resources"].annotation)):
        assert not keys_in(page, model), keys_in(page, model)
    assert "| `max_cells` | int (> 0) | `1000` |" in page


def test_field_comments_are_read_from_the_source():
    comments = reference.field_comments(schema.TrainingConfig)
    assert comments["grad_clip"] == "max gradient norm; None = no clipping"  # the comment at the end of its line
    assert comments["batchnorm"].startswith("BatchNorm running statistics stay as pre-trained")  # the lines above
    assert "weight_decay" not in comments  # none: no comment borrowed from a neighbour


def test_the_readme_sequence_is_the_shipped_default():
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "name: mnist-fashion-animals" in b)
    assert yaml.safe_load(block) == yaml.safe_load((ROOT / "sequences" / "mnist-fashion-animals.yaml").read_text())
