"""Two-stage indexes: a shortlist by cosine, then the model's head re-scores it (search, CLI, HTTP, resume)."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import vlret.index.build as build_module
from vlret.cli import main
from vlret.data import load_dataset
from vlret.data.image_files import load_image
from vlret.errors import ConfigError, DataError
from vlret.index import Searcher, build_index
from vlret.models import create_model
from vlret.serve import create_app

QUERY = "a red circle"


def _maxsim(t_tok, t_mask, v_tok, v_mask) -> float:
    """MaxSim of one text and one item by plain loops (independent of the head's einsum)."""
    total, words = 0.0, 0
    for w in range(len(t_tok)):
        if not t_mask[w]:
            continue
        tw = t_tok[w] / np.linalg.norm(t_tok[w])
        total += max(
            float(tw @ (v_tok[r] / np.linalg.norm(v_tok[r]))) for r in range(len(v_tok)) if v_mask[r]
        )
        words += 1
    return total / words


@pytest.fixture(scope="module")
def test_split(synth_data):
    return load_dataset(synth_data).split("test")


@pytest.fixture(scope="module")
def maxsim_dir(synth_data, tmp_path_factory):
    captions = [c.text for c in load_dataset(synth_data).split("train").captions]
    folder = tmp_path_factory.mktemp("maxsim") / "m"
    create_model("tiny-cnn", captions=captions, head="maxsim", width=32, embed_dim=32, seed=3).save(folder)
    return folder


@pytest.fixture(scope="module")
def cosine_dir(synth_data, tmp_path_factory):
    captions = [c.text for c in load_dataset(synth_data).split("train").captions]
    folder = tmp_path_factory.mktemp("cosine") / "m"
    create_model("tiny-cnn", captions=captions, width=32, embed_dim=16, seed=5).save(folder)
    return folder


@pytest.fixture(scope="module")
def index(maxsim_dir, test_split, tmp_path_factory):
    return build_index(
        str(maxsim_dir), tmp_path_factory.mktemp("idx") / "idx", dataset=test_split, progress=False
    )


def _image_features(model, dataset):
    with torch.no_grad():
        pixels = torch.stack(
            [
                torch.from_numpy(model.image_transform(load_image(dataset.media_path(it))))
                for it in dataset.items
            ]
        )
        return model.encode_images(pixels)


def _text_features(model, texts):
    with torch.no_grad():
        return model.encode_texts(model.tokenize(texts))


def _head_scores_by_loops(model, dataset, text):
    items, query = _image_features(model, dataset), _text_features(model, [text])
    v_mask = torch.ones(items.tokens.shape[:2], dtype=torch.bool) if items.mask is None else items.mask
    return np.array(
        [
            _maxsim(
                query.tokens[0].numpy(), query.mask[0].numpy(), items.tokens[b].numpy(), v_mask[b].numpy()
            )
            for b in range(len(items.embeds))
        ]
    )


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return (a @ b.T).numpy()


def test_text_search_ranks_by_the_head_score(index, maxsim_dir, test_split):
    searcher = Searcher(index)
    assert searcher.two_stage["head"] == {"name": "maxsim"} and searcher.shortlist == 100
    hits = searcher.text_to_image(QUERY, k=len(test_split.items))
    expected = _head_scores_by_loops(searcher.model, test_split, QUERY)
    order = sorted(range(len(expected)), key=lambda b: (-expected[b], b))
    assert [h.id for h in hits] == [test_split.items[b].id for b in order]
    np.testing.assert_allclose([h.score for h in hits], expected[order], rtol=1e-5, atol=1e-6)
    # the first stage's score is the cosine of the model's own global embeddings
    model = searcher.model
    cosines = _cosines(_text_features(model, [QUERY]).embeds, _image_features(model, test_split).embeds)[0]
    np.testing.assert_allclose([h.first_stage_score for h in hits], cosines[order], rtol=1e-5, atol=1e-6)


def test_a_short_shortlist_reorders_only_the_cosine_top(index, test_split):
    searcher = Searcher(index, shortlist=2)
    hits = searcher.text_to_image(QUERY, k=2)
    cosine_top = {
        h.id
        for h in sorted(Searcher(index).text_to_image(QUERY, k=6), key=lambda h: -h.first_stage_score)[:2]
    }
    assert {h.id for h in hits} == cosine_top
    assert hits[0].score >= hits[1].score
    # k above the shortlist widens it: every item can come back
    assert len(searcher.text_to_image(QUERY, k=6)) == 6


def test_image_to_text_scores_each_caption_against_the_image(index, test_split):
    searcher = Searcher(index)
    image = test_split.media_path(test_split.items[1])
    hits = searcher.image_to_text(image, k=5)
    model = searcher.model
    item = _image_features(model, test_split)
    texts = [c.text for c in test_split.captions]
    captions = _text_features(model, texts)
    expected = np.array(
        [
            _maxsim(
                captions.tokens[a].numpy(),
                captions.mask[a].numpy(),
                item.tokens[1].numpy(),
                np.ones(item.tokens.shape[1], bool),
            )
            for a in range(len(texts))
        ]
    )
    top = sorted(range(len(texts)), key=lambda a: (-expected[a], a))[:5]
    assert [h.text for h in hits] == [texts[a] for a in top]
    np.testing.assert_allclose([h.score for h in hits], expected[top], rtol=1e-5, atol=1e-6)


def test_image_to_image_and_text_to_text_rank_by_cosine(index, test_split):
    searcher = Searcher(index)
    image = test_split.media_path(test_split.items[0])
    hit = searcher.image_to_image(image, k=1)[0]
    assert hit.id == test_split.items[0].id and hit.first_stage_score is None
    assert hit.score == pytest.approx(1.0, abs=1e-5)  # an image's cosine with itself
    caption = test_split.captions[4].text
    assert searcher.text_to_text(caption, k=1)[0].text == caption


def test_a_bare_embedding_is_refused_by_a_two_stage_index(index):
    searcher = Searcher(index)
    with pytest.raises(ConfigError, match="two-stage index"):
        searcher.image_hits(searcher.embed_text(QUERY), 3)


def test_a_first_stage_model_gives_the_shortlist(maxsim_dir, cosine_dir, test_split, tmp_path):
    index = build_index(
        str(maxsim_dir),
        tmp_path / "idx",
        dataset=test_split,
        first_stage=str(cosine_dir),
        shortlist=3,
        progress=False,
    )
    searcher = Searcher(index)
    first = searcher.first_stage_model
    assert first is not searcher.model and searcher.meta["dim"] == 16  # the first stage's embedding size
    cosines = _cosines(_text_features(first, [QUERY]).embeds, _image_features(first, test_split).embeds)[0]
    shortlisted = set(np.argsort(-cosines, kind="stable")[:3])
    hits = searcher.text_to_image(QUERY, k=3)
    assert {h.id for h in hits} == {test_split.items[b].id for b in shortlisted}
    expected = _head_scores_by_loops(searcher.model, test_split, QUERY)
    numbers = [searcher.item_number(h.id) for h in hits]
    np.testing.assert_allclose([h.score for h in hits], expected[numbers], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h.first_stage_score for h in hits], cosines[numbers], rtol=1e-5, atol=1e-6)


def test_a_first_stage_for_a_dot_product_model_is_refused(cosine_dir, test_split, tmp_path):
    with pytest.raises(ConfigError, match="only for heads that re-score"):
        build_index(str(cosine_dir), tmp_path / "idx", dataset=test_split, first_stage=str(cosine_dir))


def test_killed_two_stage_build_resumes_to_the_same_index(maxsim_dir, test_split, tmp_path, monkeypatch):
    real = build_module.load_image
    calls = []

    def failing(path, record=None):
        calls.append(path)
        if len(calls) == 3:
            raise DataError(path, None, "cannot decode (simulated kill)")
        return real(path, record)

    monkeypatch.setattr(build_module, "load_image", failing)
    with pytest.raises(DataError, match="simulated"):
        build_index(str(maxsim_dir), tmp_path / "idx", dataset=test_split, chunk_size=2, progress=False)
    assert [p.name for p in (tmp_path / "idx.building" / "chunks").iterdir()] == ["00000"]
    calls.clear()
    monkeypatch.setattr(build_module, "load_image", real)
    resumed = build_index(str(maxsim_dir), tmp_path / "idx", dataset=test_split, chunk_size=2, progress=False)
    fresh = build_index(str(maxsim_dir), tmp_path / "fresh", dataset=test_split, chunk_size=2, progress=False)
    for name in ("embeddings.npy", "head_items.embeds.npy", "head_items.tokens.npy", "head_items.mask.npy"):
        np.testing.assert_array_equal(np.load(resumed / name), np.load(fresh / name))


def test_float16_tokens_halve_the_files_and_keep_the_ranking(maxsim_dir, index, test_split, tmp_path):
    half = build_index(
        str(maxsim_dir), tmp_path / "idx", dataset=test_split, token_dtype="float16", progress=False
    )
    assert np.load(half / "head_items.tokens.npy").dtype == np.float16
    assert (half / "head_items.tokens.npy").stat().st_size < 0.6 * (
        index / "head_items.tokens.npy"
    ).stat().st_size
    full_hits, half_hits = Searcher(index).text_to_image(QUERY, 6), Searcher(half).text_to_image(QUERY, 6)
    np.testing.assert_allclose([h.score for h in half_hits], [h.score for h in full_hits], atol=2e-3)


def test_missing_head_features_give_a_clear_error(maxsim_dir, test_split, tmp_path):
    index = build_index(str(maxsim_dir), tmp_path / "idx", dataset=test_split, progress=False)
    (index / "head_items.embeds.npy").unlink()
    with pytest.raises(ConfigError, match="damaged index .head_items.embeds.npy"):
        Searcher(index)


def test_cli_builds_and_searches_a_two_stage_index(maxsim_dir, synth_data, tmp_path, capsys):
    out = tmp_path / "idx"
    args = ["index", "build", "--model", str(maxsim_dir), "--data", str(synth_data), "--split", "test"]
    assert main([*args, "--out", str(out), "--shortlist", "4"]) == 0
    assert "two-stage: 4 candidates by cosine, re-scored by the maxsim head" in capsys.readouterr().out
    assert main(["search", str(out), QUERY, "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all("first_stage_score" in h for h in hits)
    expected = Searcher(out).text_to_image(QUERY, 3)
    assert [h["id"] for h in hits] == [h.id for h in expected]


def test_serve_answers_with_the_head_scores(index):
    client = TestClient(create_app(index))
    health = client.get("/health").json()
    assert health["head"] == "maxsim" and health["shortlist"] == 100
    body = client.get("/api/search", params={"q": QUERY, "k": 3}).json()
    expected = Searcher(index).text_to_image(QUERY, 3)
    assert [r["id"] for r in body["results"]] == [h.id for h in expected]
    np.testing.assert_allclose([r["score"] for r in body["results"]], [h.score for h in expected], rtol=1e-6)
    assert all("first_stage_score" in r for r in body["results"])
