import json
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic benchmark (60 images) shared by the tests that need real image files."""
    from vlret.data.synth import SynthConfig, write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("synth"), SynthConfig(images=60, seed=3))
