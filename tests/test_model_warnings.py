"""What a search means (issue 29, section 1): words a word-level model does not know are reported, and an
index over a model whose projections were never trained says so when it is built, searched and served."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from vlret.cli import main
from vlret.index import Searcher, build_index
from vlret.models import create_model
from vlret.models.word_tokenizer import train_word_tokenizer, words_outside
from vlret.serve import create_app


def test_words_outside_a_vocabulary_are_found_as_the_tokenizer_reads_them():
    tokenizer = train_word_tokenizer(["a red circle", "two blue squares"])
    # lower-cased and split at punctuation as the tokenizer does; each unknown word once, in order; no
    # punctuation
    assert words_outside(tokenizer, "A RED zebra, two zebras; a zebra!") == ["zebra", "zebras"]
    assert words_outside(tokenizer, "Two blue circle") == []


@pytest.fixture(scope="module")
def tiny_index(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("warnings")
    create_model("tiny-cnn", captions=["a red circle", "two blue squares"]).save(root / "model")
    return build_index(
        str(root / "model"), root / "idx", images=synth_data.parent / "images" / "test", progress=False
    )


def test_unknown_query_words_are_reported_by_the_api_the_cli_and_the_page(tiny_index, capsys):
    searcher = Searcher(tiny_index)
    assert searcher.unknown_words("a red zebra") == ["zebra"]
    assert searcher.unknown_words("a red circle") == []
    client = TestClient(create_app(tiny_index))
    body = client.get("/api/search", params={"q": "a red zebra", "k": 2}).json()
    assert body["unknown_words"] == ["zebra"]
    assert "unknown_words" not in client.get("/api/search", params={"q": "a red circle"}).json()
    assert "words the model does not know" in client.get("/").text  # the page shows them
    assert main(["search", str(tiny_index), "a red zebra", "-k", "1"]) == 0
    assert "does not know zebra" in capsys.readouterr().err


def test_an_untrained_composed_model_is_flagged_wherever_its_index_is_used(synth_data, tmp_path, capsys):
    images = synth_data.parent / "images" / "test"
    args = ["index", "build", "--model", "composed:efficientnet-lite0+minilm", "--images", str(images)]
    assert main([*args, "--out", str(tmp_path / "idx")]) == 0
    assert "never trained" in capsys.readouterr().err
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert len(meta["warnings"]) == 1 and "conse" in meta["warnings"][0]
    client = TestClient(create_app(tmp_path / "idx"))
    assert client.get("/health").json()["warnings"] == meta["warnings"]
    assert client.get("/api/search", params={"q": "a cat"}).json()["model_warning"] == meta["warnings"][0]
    assert main(["search", str(tmp_path / "idx"), "a cat", "-k", "1"]) == 0
    assert "never trained" in capsys.readouterr().err
    # a trained or training-free model's index carries none
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["warnings"]
    photos = build_index("conse", tmp_path / "photos", images=images, progress=False)
    assert json.loads((photos / "index.json").read_text())["warnings"] == []
