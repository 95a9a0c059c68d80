"""A method of your own (issue #13), added exactly as the docs' "Adding a method" page says: its Python file
and its sequence are read out of docs/methods/adding.md and run through the CLI."""
import json
import re
from pathlib import Path

import pytest
import yaml

from continual.cli import main
from continual.config import ConfigError, load_sequence
from continual.methods import CLASSES, METHODS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "methods" / "adding.md"


def page_block(marker: str) -> str:
    """The fenced block of the docs' "Adding a method" page whose first line is `marker`."""
    blocks = re.findall(r"```\w*\n(.*?)```", PAGE.read_text(), re.S)
    return next(b for b in blocks if b.startswith(marker))


@pytest.fixture
def project(tmp_path):
    (tmp_path / "my_methods.py").write_text(page_block("# my_methods.py"))
    doc = yaml.safe_load(page_block("# my-sequence.yaml"))
    doc["download"] = False
    (tmp_path / "my-sequence.yaml").write_text(yaml.safe_dump(doc))
    yield tmp_path
    METHODS.pop("smooth_ft", None)  # as a new process would find it
    CLASSES.pop("smooth_ft", None)


def test_the_documented_method_runs_and_is_recorded(project, capsys):
    out = project / "out"
    assert main(["validate", str(project / "my-sequence.yaml")]) == 0
    assert main(["run", str(project / "my-sequence.yaml"), "--out", str(out), "--quiet"]) == 0
    folder = next(out.iterdir())
    metrics = {m: json.loads((folder / m / "metrics.json").read_text()) for m in ("finetune", "smooth_ft")}
    assert all(m["complete"] for m in metrics.values())
    # label smoothing: the cross-entropy to a smoothed target stays above plain cross-entropy's on the same batch
    assert metrics["smooth_ft"]["timings"][1]["first_losses"]["ce"] > metrics["finetune"]["timings"][1]["first_losses"]["ce"]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["plugins"] == [str(project / "my_methods.py")]  # recorded absolute: a resume finds it anywhere
    assert {"smooth_ft": {"smoothing": 0.2}} in config["methods"]
    assert main(["run", str(project / "my-sequence.yaml"), "--out", str(out), "--quiet", "--resume"]) == 0


def test_plugin_problems_name_the_key(project):
    doc = yaml.safe_load((project / "my-sequence.yaml").read_text())
    with pytest.raises(ConfigError, match=r"methods\[1\]: unknown method 'smooth_ft'"):
        load_sequence({**doc, "plugins": []})  # a method of your own exists once its file is named
    with pytest.raises(ConfigError, match=r"plugins\[0\]: .*no_such\.py.* not found"):
        load_sequence({**doc, "plugins": [str(project / "no_such.py")]})
    (project / "broken.py").write_text("raise RuntimeError('half written')\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\]: .*broken\.py.*RuntimeError: half written"):
        load_sequence({**doc, "plugins": [str(project / "broken.py")]})
    (project / "thief.py").write_text("from continual.methods import register\n"
                                      "from continual.methods.contract import Method\n"
                                      "from continual.methods.options import LDIFSOptions\n"
                                      "register(LDIFSOptions, Method)\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\]: .*'ldifs' is a built-in method"):
        load_sequence({**doc, "plugins": [str(project / "thief.py")]})
    (project / "custom.py").write_text(
        "from typing import Literal\n"
        "from pydantic import model_validator\n"
        "from pydantic_core import PydanticCustomError\n"
        "from continual.methods import register\n"
        "from continual.methods.options import Options\n"
        "class Picky(Options):\n"
        "    name: Literal['picky'] = 'picky'\n"
        "    size: int = 1\n"
        "    @model_validator(mode='after')\n"
        "    def _small(self):\n"
        "        if self.size > 2:\n"
        "            raise PydanticCustomError('too_big', 'size {size} is too big', {'size': self.size})\n"
        "        return self\n"
        "from continual.methods.contract import Method\n"
        "register(Picky, Method)\n")
    with pytest.raises(ConfigError, match=r"methods\[0\]\.picky: size 3 is too big"):  # its own error type
        load_sequence({**doc, "plugins": [str(project / "custom.py")], "methods": [{"picky": {"size": 3}}]})
    METHODS.pop("picky")
    CLASSES.pop("picky")
    with pytest.raises(ConfigError, match=r"methods\[1\]\.smooth_ft\.smoothing: must be less than 1, got 1.5"):
        load_sequence({**doc, "plugins": [str(project / "my_methods.py")],
                       "methods": ["finetune", {"smooth_ft": {"smoothing": 1.5}}]})
