"""Text queries without torch (issue 37, section 2): the numpy BERT forward pass and conse's text side equal
the torch towers', and a text search over a conse index never imports torch."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_tiny import make_bert
from vlret.cli import main
from vlret.data.sample_photos import write_sample_photos
from vlret.index import Searcher
from vlret.index.search import stable_top
from vlret.models import create_model, load_model
from vlret.models.backbones.bert_numpy import erf, open_sentence_encoder, supported
from vlret.models.backbones.minilm import SentenceTower
from vlret.models.backbones.packages import packaged_minilm_path
from vlret.models.files import MODEL_CONFIG_FILE
from vlret.models.text_queries import numpy_text_queries

TEXTS = [
    "a cat",
    "A photo of a red car on the street, at night! Ünïcödé façade",
    "tokens " * 100,  # past max_length: truncated alike
]
# float32 through six layers of matrix products in other kernels: differences of a few ulps per layer
ATOL = 1e-5


def test_erf_is_within_its_published_error_bound():
    x = np.linspace(-6, 6, 24001)
    exact = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - exact).max() < 1.5e-7
    assert erf(np.array([0.0]))[0] == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A two-layer BERT with random weights and a WordPiece vocabulary, saved as transformers does."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "##s", "on", "the"]
    with torch.random.fork_rng(devices=[]):
        return make_bert(tmp_path_factory.mktemp("tiny_bert"), words, layers=2, heads=4)


@pytest.mark.parametrize("max_length", [64, 4])
def test_a_tiny_bert_embeds_as_the_torch_tower_does(tiny_bert, max_length):
    texts = ["a red circle", "the blue circles on a red circle", "a"]  # padded: three lengths
    tower = SentenceTower(tiny_bert, max_length=max_length).eval()
    batch = tower.tokenize(texts)
    encoder = open_sentence_encoder(tiny_bert, max_length)
    ids, mask = encoder.tokenize(texts)
    np.testing.assert_array_equal(ids, batch["input_ids"].numpy())
    np.testing.assert_array_equal(mask, batch["attention_mask"].numpy())
    assert mask.sum(1).tolist() == ([5, 9, 3] if max_length == 64 else [4, 4, 3])
    with torch.no_grad():
        expected = tower(batch).embeds.numpy()
    np.testing.assert_allclose(encoder.embed(texts), expected, atol=ATOL)


def test_minilm_embeds_as_the_torch_tower_does():
    tower = SentenceTower(max_length=64).eval()
    encoder = open_sentence_encoder(packaged_minilm_path(), 64)
    batch = tower.tokenize(TEXTS)
    ids, mask = encoder.tokenize(TEXTS)
    np.testing.assert_array_equal(ids, batch["input_ids"].numpy())
    assert ids.shape == (3, 64)  # the long text cut at max_length, the others padded to it
    with torch.no_grad():
        expected = tower(batch).embeds.numpy()
    np.testing.assert_allclose(encoder.embed(TEXTS), expected, atol=ATOL)


def test_what_the_numpy_pass_does_not_compute_is_left_to_torch(tiny_bert, tmp_path):
    config = json.loads((tiny_bert / "config.json").read_text())
    assert supported(config)
    for change in (
        {"hidden_act": "gelu_new"},
        {"position_embedding_type": "relative_key"},
        {"model_type": "roberta"},
    ):
        assert not supported({**config, **change}), change
    folder = tmp_path / "other"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_bert / name).read_bytes())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert open_sentence_encoder(folder, 64) is None
    (folder / "config.json").write_text(json.dumps(config))
    assert open_sentence_encoder(folder, 64) is not None
    (folder / "tokenizer.json").unlink()  # a slow tokenizer's vocab.txt only: tokenizers cannot read it
    assert open_sentence_encoder(folder, 64) is None


@pytest.fixture(scope="module")
def conse_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conse")
    create_model("conse").save(folder)
    return folder


@pytest.mark.parametrize("centre", [True, False, None])  # None: a conse saved before centring existed
def test_conse_text_queries_equal_its_encode_texts(conse_folder, tmp_path, centre):
    folder = tmp_path / "conse"
    folder.mkdir()
    for f in conse_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    meta = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    if centre is None:
        del meta["config"]["centre"]
    else:
        meta["config"]["centre"] = centre
    (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta))
    model = load_model(folder)
    assert model.config.centre == bool(centre)
    with torch.no_grad():
        expected = model.encode_texts(model.tokenize(TEXTS)).embeds.numpy()
    got = numpy_text_queries(folder).embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == (3, 384)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_models_without_a_numpy_text_side_give_none(tmp_path):
    create_model("tiny-cnn", captions=["a cat"], seed=0).save(tmp_path / "tiny")
    assert numpy_text_queries(tmp_path / "tiny") is None
    assert numpy_text_queries(tmp_path / "missing") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MODEL_CONFIG_FILE).write_text("{not json")
    assert numpy_text_queries(tmp_path / "broken") is None


def test_stable_top_breaks_ties_by_position_also_at_the_kth_place():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5, 0.7], dtype=np.float32)
    # by hand: 0.9 at 1 and 4, then 0.7 at 6, then 0.5 at 0, 2, 5, then 0.1 at 3
    assert stable_top(scores, 1).tolist() == [1]
    assert stable_top(scores, 2).tolist() == [1, 4]
    assert stable_top(scores, 4).tolist() == [1, 4, 6, 0]
    assert stable_top(scores, 5).tolist() == [1, 4, 6, 0, 2]
    assert stable_top(scores, 7).tolist() == [1, 4, 6, 0, 2, 5, 3]
    assert stable_top(scores, 50).tolist() == [1, 4, 6, 0, 2, 5, 3]
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 5, 200).astype(np.float32)  # many ties
    reference = sorted(range(200), key=lambda i: (-grid[i], i))
    for k in (1, 7, 40, 199, 200):
        assert stable_top(grid, k).tolist() == reference[:k]


@pytest.fixture(scope="module")
def conse_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conse_index")
    write_sample_photos(folder / "photos")
    assert (
        main(
            [
                "index",
                "build",
                "--model",
                "conse",
                "--images",
                str(folder / "photos"),
                "--out",
                str(folder / "idx"),
            ]
        )
        == 0
    )
    return folder / "idx"


def test_a_text_search_over_a_conse_index_never_imports_torch(conse_index):
    queries = ["a cat", "a cup of coffee", "the moon"]
    code = (
        "import sys\n"
        "from vlret.cli import main\n"
        f"main(['search', {str(conse_index)!r}, *{queries!r}, '-k', '5', '--json'])\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    answer, torch_imported = done.stdout.rsplit("\n", 2)[:2]
    assert torch_imported == "False"
    # the same hits as the model itself gives, loaded from the index and passed to the searcher
    with_model = Searcher(conse_index, model=load_model(conse_index / "model"))
    assert with_model.numpy_texts is None
    for query, said in zip(queries, json.loads(answer), strict=True):
        expected = with_model.text_to_image(query, 5)
        assert said["query"] == query
        assert [h["id"] for h in said["hits"]] == [h.id for h in expected]
        np.testing.assert_allclose([h["score"] for h in said["hits"]], [h.score for h in expected], atol=ATOL)


def test_package_names_are_read_on_first_use():
    import vlret.evaluate
    import vlret.models

    assert vlret.models.load_model is load_model and callable(vlret.evaluate.results_table)
    with pytest.raises(AttributeError, match="'vlret.models' has no attribute 'nope'"):
        vlret.models.nope  # noqa: B018


def test_the_search_command_answers_from_numpy_and_images_still_load_the_model(conse_index, capsys):
    assert main(["search", str(conse_index), "a cat", "a flower", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["# a cat", out.splitlines()[1], "# a flower", out.splitlines()[3]]
    assert "cat.png" in out.splitlines()[1] and "flower.jpg" in out.splitlines()[3]
    searcher = Searcher(conse_index)
    assert searcher.numpy_texts is not None and searcher._model is None
    assert searcher.unknown_words("a zqxv") == []
    with pytest.raises(Exception, match="empty query text"):
        searcher.text_queries(["a cat", "  "])
    hits = searcher.image_to_image(
        conse_index.parent / "photos" / "cat.png", 1
    )  # the image tower, from torch
    assert hits[0].path == "cat.png" and searcher._model is not None
