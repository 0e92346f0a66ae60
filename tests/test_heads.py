"""Similarity heads: values by hand, chunked evaluation against one straightforward pass, saving, training."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vlret.cli import main
from vlret.data import load_dataset
from vlret.errors import ConfigError
from vlret.evaluate import evaluate_model
from vlret.evaluate.api import evaluate_with_head
from vlret.evaluate.encode import EncodedDataset, FeatureTable, cache_key, encode_dataset
from vlret.evaluate.protocols import Fold, get_protocol, prepare
from vlret.evaluate.ranking import rank_embeddings, rank_matrix
from vlret.models import create_model, load_model
from vlret.models.base import Features
from vlret.models.heads import CosineHead, MaxSimHead, build_head
from vlret.train.distributed import DistInfo
from vlret.train.trainer import WeightedLoss, encode_batch


def _maxsim_by_loops(t_tok, t_mask, v_tok, v_mask) -> np.ndarray:
    """An independent MaxSim: plain loops over texts, items, words and regions."""
    out = np.zeros((len(t_tok), len(v_tok)))
    for a in range(len(t_tok)):
        for b in range(len(v_tok)):
            words = [w for w in range(t_tok.shape[1]) if t_mask[a, w]]
            total = 0.0
            for w in words:
                tw = t_tok[a, w] / np.linalg.norm(t_tok[a, w])
                best = -np.inf
                for r in range(v_tok.shape[1]):
                    if v_mask[b, r]:
                        best = max(best, float(tw @ (v_tok[b, r] / np.linalg.norm(v_tok[b, r]))))
                total += best
            out[a, b] = total / len(words)
    return out


def test_maxsim_hand_example():
    # words (1,0) and (0,1); regions (1,0) and (0.6,0.8): best matches 1 and 0.8, mean 0.9.
    # A padded word (masked) and a padded region pointing at the second word must not count.
    texts = Features(
        torch.zeros(1, 2),
        torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]),
        torch.tensor([[True, True, False]]),
    )
    items = Features(
        torch.zeros(1, 2),
        torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 5.0]]]),
        torch.tensor([[True, True, False]]),
    )
    assert MaxSimHead().score(texts, items).item() == pytest.approx(0.9, abs=1e-6)


def _random_features(n, length, dim, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(n, length, dim)).astype(np.float32)
    mask = rng.random((n, length)) < 0.7
    mask[:, 0] = True
    embeds = rng.normal(size=(n, dim)).astype(np.float32)
    return embeds / np.linalg.norm(embeds, axis=1, keepdims=True), tokens, mask


def test_maxsim_matches_loops_and_pairs():
    te, tt, tm = _random_features(5, 4, 3, 0)
    ie, it, im = _random_features(6, 3, 3, 1)
    texts = Features(torch.from_numpy(te), torch.from_numpy(tt), torch.from_numpy(tm))
    items = Features(torch.from_numpy(ie), torch.from_numpy(it), torch.from_numpy(im))
    head = MaxSimHead()
    expected = _maxsim_by_loops(tt, tm, it, im)
    np.testing.assert_allclose(head.score(texts, items).numpy(), expected, atol=1e-5)
    pairs = head.score_pairs(texts, items.rows(0, 5))
    np.testing.assert_allclose(pairs.numpy(), np.diag(expected[:, :5]), atol=1e-5)


class _Split:
    """Just what evaluate_with_head reads of a dataset: which item each caption describes, and the items'
    files (images here: their item->text ranks count captions)."""

    def __init__(self, caption_to_item):
        self.caption_to_item = np.asarray(caption_to_item)
        self.items = [SimpleNamespace(path=f"{n}.jpg") for n in range(int(self.caption_to_item.max()) + 1)]


def test_chunked_head_evaluation_equals_one_full_pass():
    n_items, per_item = 40, 3
    te, tt, tm = _random_features(n_items * per_item, 5, 8, 2)
    ie, it, im = _random_features(n_items, 6, 8, 3)
    cap_item = np.repeat(np.arange(n_items), per_item)
    encoded = EncodedDataset(FeatureTable(ie, it, im), FeatureTable(te, tt, tm))
    fold = Fold(0, n_items, 0, len(cap_item))
    full = torch.from_numpy(_maxsim_by_loops(tt, tm, it, im)).float()
    expected = rank_matrix(full, cap_item)
    # A budget of 200 elements forces blocks of a few items; chunk 7 splits the texts unevenly.
    ranks = evaluate_with_head(MaxSimHead(), encoded, _Split(cap_item), [fold], chunk=7, budget=200)[0]
    np.testing.assert_array_equal(ranks.t2i, expected.t2i)
    np.testing.assert_array_equal(ranks.i2t, expected.i2t)


def test_cosine_head_takes_the_embedding_path():
    te, _, _ = _random_features(30, 1, 8, 4)
    ie, _, _ = _random_features(10, 1, 8, 5)
    cap_item = np.repeat(np.arange(10), 3)
    fold = Fold(0, 10, 0, 30)
    encoded = EncodedDataset(FeatureTable(ie), FeatureTable(te))
    ranks = evaluate_with_head(CosineHead(), encoded, _Split(cap_item), [fold])[0]
    expected = rank_embeddings(torch.from_numpy(te), torch.from_numpy(ie), cap_item)
    np.testing.assert_array_equal(ranks.t2i, expected.t2i)
    np.testing.assert_array_equal(ranks.i2t, expected.i2t)


def test_build_head_errors():
    assert isinstance(build_head(None), CosineHead)
    assert isinstance(build_head({"name": "maxsim"}), MaxSimHead)
    with pytest.raises(ConfigError, match="unknown similarity head 'bogus'.*cosine.*maxsim"):
        build_head("bogus")
    with pytest.raises(ConfigError, match="head 'maxsim'"):
        build_head({"name": "maxsim", "temperature": 2})


def _tiny(synth_data, head=None):
    data = load_dataset(synth_data)
    captions = [c.text for c in data.split("train").captions]
    return data, create_model("tiny-cnn", captions=captions, head=head, width=32, embed_dim=32)


def test_saved_model_keeps_its_head_and_cache_keys_differ(synth_data, tmp_path):
    data, model = _tiny(synth_data, head="maxsim")
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "vlret_model.json").read_text())
    assert meta["head"] == {"name": "maxsim"}
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded.head, MaxSimHead)
    assert loaded.identity()["head"] == {"name": "maxsim"}
    _, cosine = _tiny(synth_data)
    assert "head" not in cosine.identity()  # cosine models keep their old identity and cache keys
    split = data.split("test")
    assert cache_key(loaded, split, "float32") != cache_key(loaded, split, "float16")


def test_token_head_evaluates_from_the_cache_memory_mapped(synth_data, tmp_path):
    data, model = _tiny(synth_data, head="maxsim")
    first = evaluate_model(
        model, data, split="test", cache_dir=tmp_path, progress=False, token_dtype="float16"
    )
    second = evaluate_model(
        model, data, split="test", cache_dir=tmp_path, progress=False, token_dtype="float16"
    )
    assert not first["features"]["from_cache"] and second["features"]["from_cache"]
    assert first["metrics"] == second["metrics"]
    assert second["features"]["head"] == {"name": "maxsim"}
    encoded = encode_dataset(
        model, data.split("test"), cache_dir=tmp_path, progress=False, token_dtype="float16"
    )
    assert isinstance(encoded.items.tokens, np.memmap) and encoded.items.tokens.dtype == np.float16
    # The cached scores are those of one direct pass over the same (fp16-rounded) tokens.
    selected, _, folds = prepare(data.split("test"), get_protocol("generic"))
    full = MaxSimHead().score(
        encoded.texts.rows(0, len(encoded.texts)), encoded.items.rows(0, len(encoded.items))
    )
    expected = rank_matrix(full, selected.caption_to_item)
    got = evaluate_with_head(MaxSimHead(), encoded, selected, folds)[0]
    np.testing.assert_array_equal(got.t2i, expected.t2i)


def test_training_step_computes_only_what_the_losses_need(synth_data):
    _, model = _tiny(synth_data)
    batch = {
        "pixels": torch.randn(4, 3, 64, 64),
        "text": model.tokenize(["a red circle", "a blue square", "two stars", "a green triangle"]),
        "item_ids": torch.arange(4),
        "caption_ids": torch.arange(4),
    }
    info, cpu = DistInfo(0, 1, 0), torch.device("cpu")
    plain = encode_batch(model, batch, info, cpu, frozenset({"scores"}))
    assert "scores" not in plain and "text_tokens" not in plain  # cosine: the losses take the dot product
    model.set_head(MaxSimHead())
    heavy = encode_batch(model, batch, info, cpu, frozenset({"scores"}))
    assert heavy["scores"].shape == (4, 4) and "image_tokens" in heavy
    texts = Features(heavy["text_embeds"], heavy["text_tokens"], heavy["text_mask"])
    items = Features(heavy["image_embeds"], heavy["image_tokens"], heavy["image_mask"])
    torch.testing.assert_close(heavy["scores"], MaxSimHead().score(texts, items).T)
    loss = WeightedLoss.from_recipe({"hinge": {"weight": 1.0}})
    assert loss.needs == frozenset({"scores"})
    total, _ = loss(heavy, {"epoch": 0})
    total.backward()  # the head's scores carry gradients back to both towers' tokens
    assert model.image_encoder.token_proj.weight.grad is not None


def test_token_head_trains_and_evaluates_from_the_cli(synth_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--quiet",
            f"data.path={synth_data}",
            f"output_dir={out}",
            "train.epochs=1",
            "train.batch_size=8",
            "model.options={width: 32, embed_dim: 32}",
            "model.head={name: maxsim}",
            "losses={hinge: {weight: 1.0}}",
        ]
    )
    assert code == 0
    best = out / "checkpoints" / "best" / "model"
    assert json.loads((best / "vlret_model.json").read_text())["head"] == {"name": "maxsim"}
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(best),
                "--data",
                str(synth_data),
                "--no-cache",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["features"]["head"] == {"name": "maxsim"}
    test = load_dataset(synth_data).split("test")
    assert result["counts"]["pairs_scored"] == len(test.items) * len(test.captions)


def test_recipe_rejects_an_unknown_head(synth_data, tmp_path, capsys):
    code = main(["train", f"data.path={synth_data}", f"output_dir={tmp_path}", "model.head={name: nope}"])
    assert code == 2
    assert "model.head" in capsys.readouterr().err
