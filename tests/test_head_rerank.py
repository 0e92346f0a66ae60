"""A similarity head as a re-ranker of a first stage's top-k (the ITM k_test path), both directions."""

import json

import numpy as np
import pytest
import torch

from vlret.cli import main
from vlret.data import load_dataset
from vlret.data.image_files import load_image
from vlret.errors import VlretError
from vlret.evaluate import evaluate_model
from vlret.evaluate.first_stage import ranks_within_topk
from vlret.evaluate.reranked import evaluate_reranked
from vlret.models import create_model
from vlret.models.heads import CosineHead


def test_ranks_within_the_top_k_by_hand():
    scores = np.array(
        [
            [0.2, 0.9, 0.5],  # answer at 0.5, one wrong candidate above: rank 1
            [0.5, 0.5, 0.1],  # a wrong candidate tied with the answer counts against it: rank 1
            [0.9, 0.95, 0.3],  # two right answers (image->text): the best (0.9) counts, one wrong above
            [0.4, 0.3, 0.2],  # no right answer among the candidates: the base rank stays
        ]
    )
    correct = np.array(
        [[False, False, True], [False, True, False], [True, False, True], [False, False, False]]
    )
    base = np.array([2, 0, 5, 17])
    assert ranks_within_topk(scores, correct, base).tolist() == [1, 1, 1, 17]


def test_a_non_finite_re_ranker_score_is_refused():
    with pytest.raises(VlretError, match="candidate 1 of query 0"):
        ranks_within_topk(np.array([[0.1, np.nan]]), np.array([[True, False]]), np.array([0]))


@pytest.fixture(scope="module")
def data(synth_data):
    return load_dataset(synth_data)


@pytest.fixture(scope="module")
def maxsim(data):
    captions = [c.text for c in data.split("train").captions]
    return create_model("tiny-cnn", captions=captions, head="maxsim", width=32, embed_dim=32, seed=7)


def _maxsim_matrix(t_tok, t_mask, v_tok) -> np.ndarray:
    """MaxSim of every text with every item, by loops over pairs (all item tokens are real)."""
    t = t_tok / np.linalg.norm(t_tok, axis=-1, keepdims=True)
    v = v_tok / np.linalg.norm(v_tok, axis=-1, keepdims=True)
    out = np.zeros((len(t), len(v)))
    for a in range(len(t)):
        words = t[a][t_mask[a]]
        for b in range(len(v)):
            out[a, b] = (words @ v[b].T).max(axis=1).mean()
    return out


def _expected_ranks(first: np.ndarray, head: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
    """Re-ranked ranks of each query (rows) by brute force: top-k of ``first`` (ties to the lower index),
    then by ``head`` inside it; outside it the number of wrong entries at or above the best right one."""
    ranks = []
    for q in range(len(first)):
        order = sorted(range(first.shape[1]), key=lambda j: (-first[q, j], j))[:k]
        right = [j for j in order if correct[q, j]]
        if right:
            best = max(head[q, j] for j in right)
            ranks.append(sum(1 for j in order if not correct[q, j] and head[q, j] >= best))
        else:
            best = max(first[q, j] for j in range(first.shape[1]) if correct[q, j])
            ranks.append(sum(1 for j in range(first.shape[1]) if not correct[q, j] and first[q, j] >= best))
    return np.array(ranks)


def _recalls(ranks: np.ndarray, prefix: str) -> dict:
    return {f"{prefix}_r{k}": float(np.mean(ranks < k)) for k in (1, 5, 10)}


@pytest.mark.parametrize("k", [2, 4])
def test_re_ranked_recalls_match_a_brute_force_computation(maxsim, data, k):
    test = data.split("test")
    with torch.no_grad():
        pixels = torch.stack(
            [torch.from_numpy(maxsim.image_transform(load_image(test.media_path(it)))) for it in test.items]
        )
        items = maxsim.encode_images(pixels)
        texts = maxsim.encode_texts(maxsim.tokenize([c.text for c in test.captions]))
    normal = torch.nn.functional.normalize
    cosine = (normal(texts.embeds, dim=-1) @ normal(items.embeds, dim=-1).T).numpy()
    head = _maxsim_matrix(texts.tokens.numpy(), texts.mask.numpy(), items.tokens.numpy())
    cap_item = test.caption_to_item
    correct = cap_item[:, None] == np.arange(len(test.items))[None]
    t2i = _expected_ranks(cosine, head, correct, k)
    i2t = _expected_ranks(cosine.T, head.T, correct.T, k)
    result = evaluate_reranked(maxsim, data, k=k, use_cache=False, progress=False)
    for key, value in {**_recalls(t2i, "t2i"), **_recalls(i2t, "i2t")}.items():
        assert result["metrics"][key] == pytest.approx(value), key
    first_t2i = _expected_ranks(cosine, cosine, correct, len(test.items))
    assert result["first_stage"]["metrics"]["t2i_r1"] == pytest.approx(float(np.mean(first_t2i < 1)))
    assert result["rerank"] == {"head": {"name": "maxsim"}, "k": k, "tie_rule": result["rerank"]["tie_rule"]}


def test_k_covering_the_gallery_equals_the_head_and_k_one_the_first_stage(maxsim, data):
    n_items = len(data.split("test").items)
    whole = evaluate_reranked(maxsim, data, k=n_items, use_cache=False, progress=False)
    full_head = evaluate_model(maxsim, data, use_cache=False, progress=False)
    for key in ("t2i_r1", "t2i_r5", "t2i_r10", "t2i_meanr"):
        assert whole["metrics"][key] == pytest.approx(full_head["metrics"][key]), key
    # image->text re-scores the top-k texts: with k >= all captions it is the full head ranking too
    n_captions = len(data.split("test").captions)
    both = evaluate_reranked(maxsim, data, k=n_captions, use_cache=False, progress=False)
    assert both["metrics"]["rsum"] == pytest.approx(full_head["metrics"]["rsum"])
    one = evaluate_reranked(maxsim, data, k=1, use_cache=False, progress=False)
    cosine = create_model(
        "tiny-cnn", captions=[c.text for c in data.split("train").captions], width=32, embed_dim=32, seed=7
    )
    cosine.set_head(CosineHead())
    plain = evaluate_model(cosine, data, use_cache=False, progress=False)
    assert one["metrics"]["rsum"] == pytest.approx(plain["metrics"]["rsum"])
    assert one["first_stage"]["metrics"]["rsum"] == pytest.approx(plain["metrics"]["rsum"])


def test_cli_with_a_score_matrix_or_a_first_stage_model(maxsim, data, synth_data, tmp_path, capsys):
    maxsim.save(tmp_path / "m")
    cosine = create_model("tiny-cnn", captions=[c.text for c in data.split("train").captions], seed=2)
    cosine.save(tmp_path / "c")
    common = [
        "rerank",
        "head",
        "--model",
        str(tmp_path / "m"),
        "--data",
        str(synth_data),
        "-k",
        "3",
        "--no-cache",
    ]
    assert main([*common, "--first-stage", str(tmp_path / "c"), "--out", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "| first stage |" in out and "| re-ranked by maxsim (top 3) |" in out
    by_model = json.loads((tmp_path / "a.json").read_text())
    # the same first stage as a score matrix gives the same result
    test = data.split("test")
    from vlret.evaluate.encode import encode_dataset

    encoded = encode_dataset(cosine, test, use_cache=False, progress=False)
    np.save(tmp_path / "s.npy", encoded.text_embeds @ encoded.item_embeds.T)
    assert main([*common, "--scores", str(tmp_path / "s.npy"), "--out", str(tmp_path / "b.json")]) == 0
    by_scores = json.loads((tmp_path / "b.json").read_text())
    assert by_scores["metrics"] == pytest.approx(by_model["metrics"])
    assert by_scores["first_stage"]["metrics"] == pytest.approx(by_model["first_stage"]["metrics"])
    assert by_scores["first_stage"]["source"]["scores"].endswith("s.npy")


def test_cli_refuses_a_cosine_model_and_a_wrong_shape(data, synth_data, tmp_path, capsys):
    cosine = create_model("tiny-cnn", captions=[c.text for c in data.split("train").captions], seed=2)
    cosine.save(tmp_path / "c")
    assert main(["rerank", "head", "--model", str(tmp_path / "c"), "--data", str(synth_data)]) == 2
    assert "needs a head that is not a dot product" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((3, 4), np.float32))
    create_model("tiny-cnn", captions=["a b"], head="maxsim").save(tmp_path / "m")
    args = ["rerank", "head", "--model", str(tmp_path / "m"), "--data", str(synth_data), "--scores"]
    assert main([*args, str(tmp_path / "bad.npy")]) == 2
    assert "bad.npy: score matrix has shape (3, 4)" in capsys.readouterr().err
