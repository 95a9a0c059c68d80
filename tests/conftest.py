import json
import os

import pytest
from helpers import TINY_CLIP_ARCH, TINY_CLIP_CONFIG

if os.environ.get("PYTEST_XDIST_WORKER"):  # tests in two processes: one thread each, their subprocesses too
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Fixtures and pytest hooks here; the constants and plain functions test files share are in helpers.py.


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(arch, checkpoint path): the tiny config registered with open_clip, random weights (seed 0) saved
    as a plain state dict, as a user's local checkpoint would be."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY_CLIP_ARCH}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_CLIP_ARCH}.json")
    torch.manual_seed(0)
    checkpoint = folder / "tiny-clip.pt"
    torch.save(open_clip.create_model(TINY_CLIP_ARCH).state_dict(), checkpoint)
    return TINY_CLIP_ARCH, checkpoint


# Files whose tests start clusters, runs in subprocesses or torchrun ranks: scheduled first, so that under
# `pytest -n` (make test) the short files fill the workers' ends instead of one long file running alone.
SLOW_FIRST = ("test_clusters.py", "test_resume.py", "test_sweep.py", "test_ddp.py", "test_avalanche.py",
              "test_every_method.py", "test_trackers.py", "test_export.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
