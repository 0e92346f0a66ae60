import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

import vlret.cli

# Two threads unless OMP_NUM_THREADS says otherwise (`make test-matrix` runs the suite on one thread too).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
# Feature and frame caches of the tests go to a folder of their own, never the user's ~/.cache/vlret; a
# folder made here is removed when the session ends (one given in $VLRET_CACHE is the caller's to keep).
_OWN_CACHE = None if "VLRET_CACHE" in os.environ else tempfile.mkdtemp(prefix="vlret-test-cache-")
if _OWN_CACHE:
    os.environ["VLRET_CACHE"] = _OWN_CACHE


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Every command line a test runs, `main([...])` or a `vlret` process, for the option-coverage test
# (tests/test_zz_cli_options.py): the argument lists, in the order they ran.
CLI_CALLS: list[list[str]] = []
_main = vlret.cli.main


def _recording_main(argv: list[str] | None = None) -> int:
    CLI_CALLS.append([str(word) for word in argv or []])
    return _main(argv)


vlret.cli.main = _recording_main  # test modules import main after this file: they get the recording one
_popen_init = subprocess.Popen.__init__


def _recording_popen_init(self, args, *rest, **options):
    words = [str(w) for w in args] if isinstance(args, (list, tuple)) else shlex.split(str(args))
    if "vlret.cli" in words:
        CLI_CALLS.append(words[words.index("vlret.cli") + 1 :])
    elif words and Path(words[0]).name == "vlret":
        CLI_CALLS.append(words[1:])
    _popen_init(self, args, *rest, **options)


subprocess.Popen.__init__ = _recording_popen_init


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("VLRET_CLI_CALLS"):  # where to write the recorded runs (for a look at them)
        Path(os.environ["VLRET_CLI_CALLS"]).write_text("\n".join(shlex.join(c) for c in CLI_CALLS) + "\n")


@pytest.fixture(scope="session")
def cli_calls() -> list[list[str]]:
    """The argument lists of every `vlret` command the session's tests have run so far."""
    return CLI_CALLS


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic benchmark (60 images) shared by the tests that need real image files."""
    from vlret.data.synth import SynthConfig, write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("synth"), SynthConfig(images=60, seed=3))


@pytest.fixture(scope="session")
def captioned_index(synth_data, tmp_path_factory):
    """An index built from the synthetic test split, so its captions are indexed too: ``(index path, the
    saved tiny-cnn's folder, the test split)``."""
    from vlret.data import load_dataset
    from vlret.index import build_index
    from vlret.models import create_model

    root = tmp_path_factory.mktemp("captioned_index")
    data = load_dataset(synth_data)
    create_model("tiny-cnn", captions=[c.text for c in data.captions], seed=0).save(root / "model")
    index = build_index(str(root / "model"), root / "idx", dataset=data.split("test"), progress=False)
    return index, root / "model", data.split("test")


@pytest.fixture(scope="session")
def class_bench(tmp_path_factory):
    """A small synthetic class benchmark (24 classes; 4 / 2 / 2 images each) and an untrained tiny-vit dual
    encoder saved as its frozen "CLIP": ``(class data, model folder)``."""
    from vlret.data.classes import read_split_zhou
    from vlret.data.synth_classes import ClassBenchConfig, write_class_benchmark
    from vlret.models import create_model

    root = tmp_path_factory.mktemp("classes")
    split = write_class_benchmark(root, ClassBenchConfig(per_class={"train": 4, "val": 2, "test": 2}))
    data = read_split_zhou(split, root / "images")
    torch.manual_seed(0)
    model = create_model("tiny-vit", captions=["a photo of a " + n + "." for n in data.classnames])
    model.save(root / "clip")
    return data, root / "clip"


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory):
    """A one-block ViT (32 px, patches of 8: a 4 x 4 grid) saved with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("vit")
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def swin_dir(tmp_path_factory):
    """A two-stage Swin (32 px: a 4 x 4 final grid) saved with an image processor."""
    from transformers import SwinConfig, SwinModel, ViTImageProcessor

    folder = tmp_path_factory.mktemp("swin")
    config = SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
    )
    torch.manual_seed(0)
    SwinModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A one-layer BERT with a 12-word WordPiece vocabulary."""
    from hf_tiny import make_bert

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "red",
        "blue",
        "circle",
        "square",
        "on",
        "the",
    ]
    return make_bert(tmp_path_factory.mktemp("bert"), words)
