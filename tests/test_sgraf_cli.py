"""SGR / SAF with VSL from the CLI on small generated precomp files: training, evaluation through the score
store, the SGRAF ensemble against numpy, folds sliced from a stored matrix, and unknown words counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_heads import _maxsim_by_loops, _random_features, _Split
from test_precomp import write_precomp
from vlret.cli import main
from vlret.evaluate.api import evaluate_with_head
from vlret.evaluate.encode import EncodedDataset, FeatureTable
from vlret.evaluate.protocols import Fold
from vlret.evaluate.ranking import rank_matrix
from vlret.evaluate.score_cache import ScoreMatrix
from vlret.models.heads import MaxSimHead
from vlret.train.logger import read_metrics

SMALL = [
    "model.options.embed_dim=16",
    "model.options.image_options={dim: 6}",
    "model.options.text_options={word_dim: 8, hidden: 16, dropout: 0.4, min_count: 1}",
    "model.head.embed_dim=16",
    "model.head.sim_dim=8",
    "model.head.n_regions=3",
    "train.batch_size=16",
    "train.max_steps=4",
    "train.log_every_steps=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sgraf")
    write_precomp(root / "data", "train", 40)
    write_precomp(root / "data", "val", 8, seed=1)
    _, test_lines = write_precomp(root / "data", "test", 8, seed=2)
    runs = {}
    for head in ("sgr", "saf"):
        out = root / head
        args = [f"data.path={root / 'data'}", f"output_dir={out}", f"model.head.name={head}", *SMALL]
        assert main(["train", "--recipe", "sgraf_synth_cpu", *args, "--quiet"]) == 0
        runs[head] = out
    return root, runs


def test_both_heads_train_with_vsl_from_the_cli(trained):
    _, runs = trained
    for head, out in runs.items():
        records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
        assert len(records) == 4 and all(np.isfinite(r["vsl"]) and np.isfinite(r["hinge"]) for r in records)
        assert all(0 <= r["vsl"] <= 10 for r in records)
        meta = json.loads((out / "checkpoints" / "best" / "model" / "vlret_model.json").read_text())
        assert meta["head"]["name"] == head


def _stored(result: dict) -> np.ndarray:
    return np.load(f"{result['features']['scores']}/scores.npy")


def _recalls_by_numpy(scores: np.ndarray, cap_item: np.ndarray) -> dict:
    """R@1/5/10 both ways from a [captions, items] matrix; a rank counts the wrong entries scoring >= the
    right one (vlret's tie rule); image-to-text takes the best of the image's captions."""
    own = scores[np.arange(len(cap_item)), cap_item]
    t2i = (scores >= own[:, None]).sum(1) - 1
    i2t = []
    for item in range(scores.shape[1]):
        column = scores[:, item]
        wrong = column[cap_item != item]
        i2t.append(min(int((wrong >= column[r]).sum()) for r in np.flatnonzero(cap_item == item)))
    i2t = np.array(i2t)
    out = {}
    for k in (1, 5, 10):
        out[f"t2i_r{k}"] = float((t2i < k).mean())
        out[f"i2t_r{k}"] = float((i2t < k).mean())
    return out


def test_eval_stores_scores_and_the_ensemble_averages_them(trained, tmp_path, capsys):
    root, runs = trained
    models = [str(runs[h] / "checkpoints" / "best" / "model") for h in ("sgr", "saf")]
    cache = ["--cache-dir", str(tmp_path / "f"), "--score-dir", str(tmp_path / "s")]
    data = ["--data", str(root / "data")]
    results = []
    for n, model in enumerate(models):
        out = tmp_path / f"{n}.json"
        assert main(["eval", "--model", model, *data, *cache, "--out", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    assert results[0]["vocabulary"]["words"] > 0
    matrices = [_stored(r) for r in results]
    assert all(m.shape == (40, 8) for m in matrices)
    stamp = [(tmp_path / "s").stat().st_mtime_ns]
    out = tmp_path / "ens.json"
    assert main(["eval", "--ensemble", *models, *data, *cache, "--out", str(out)]) == 0
    ensemble = json.loads(out.read_text())
    assert ensemble["model"]["name"] == "ensemble" and len(ensemble["model"]["members"]) == 2
    assert [(tmp_path / "s").stat().st_mtime_ns] == stamp  # nothing new stored: read, not recomputed
    expected = _recalls_by_numpy((matrices[0] + matrices[1]) / 2, np.repeat(np.arange(8), 5))
    for key, value in expected.items():
        assert ensemble["metrics"][key] == pytest.approx(value), key


def test_the_ensemble_needs_two_models(trained, capsys):
    root, runs = trained
    model = str(runs["sgr"] / "checkpoints" / "best" / "model")
    assert main(["eval", "--ensemble", model, "--data", str(root / "data")]) != 0
    assert "at least two" in capsys.readouterr().err


def test_folds_are_sliced_from_a_stored_full_matrix(tmp_path):
    n_items, per_item = 20, 2
    te, tt, tm = _random_features(n_items * per_item, 5, 8, 2)
    ie, it, im = _random_features(n_items, 6, 8, 3)
    cap_item = np.repeat(np.arange(n_items), per_item)
    encoded = EncodedDataset(FeatureTable(ie, it, im), FeatureTable(te, tt, tm))
    full_fold = [Fold(0, n_items, 0, len(cap_item))]
    folds = [Fold(5 * f, 5 * f + 5, 10 * f, 10 * f + 10) for f in range(4)]
    store = ScoreMatrix(tmp_path / "m", (len(cap_item), n_items))
    calls = []
    head = MaxSimHead()
    original = head.score
    head.score = lambda t, i: calls.append(len(t)) or original(t, i)
    ranks = evaluate_with_head(head, encoded, _Split(cap_item), full_fold, chunk=7, scores=store)[0]
    expected = rank_matrix(torch.from_numpy(_maxsim_by_loops(tt, tm, it, im)).float(), cap_item)
    np.testing.assert_array_equal(ranks.t2i, expected.t2i)
    scored = len(calls)
    reopened = ScoreMatrix(tmp_path / "m", (len(cap_item), n_items))  # as a later process would
    fold_ranks = evaluate_with_head(head, encoded, _Split(cap_item), folds, chunk=7, scores=reopened)
    assert len(calls) == scored  # every fold lies inside the stored matrix: nothing scored again
    full = _maxsim_by_loops(tt, tm, it, im)
    for f, got in zip(folds, fold_ranks, strict=True):
        block = torch.from_numpy(full[f.caption_start : f.caption_stop, f.item_start : f.item_stop]).float()
        want = rank_matrix(block, cap_item[f.caption_start : f.caption_stop] - f.item_start)
        np.testing.assert_array_equal(got.t2i, want.t2i)
        np.testing.assert_array_equal(got.i2t, want.i2t)


def test_a_killed_fill_resumes_with_the_missing_rows_only(tmp_path):
    store = ScoreMatrix(tmp_path / "m", (10, 3))
    done = []

    def compute(start, stop):
        if start >= 6:
            raise KeyboardInterrupt  # killed after two chunks
        done.append((start, stop))
        return torch.full((stop - start, 3), float(start))

    with pytest.raises(KeyboardInterrupt):
        store.fill((0, 10), (0, 3), compute, chunk=3)
    again = ScoreMatrix(tmp_path / "m", (10, 3))
    rest = []
    again.fill((0, 10), (0, 3), lambda a, b: rest.append((a, b)) or torch.full((b - a, 3), float(a)), chunk=3)
    assert done == [(0, 3), (3, 6)] and rest == [(6, 9), (9, 10)]
    assert again.block((0, 10), (0, 3))[:, 0].tolist() == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]


def test_unknown_words_are_counted(trained, tmp_path):
    from vlret.models import load_model

    root, runs = trained
    model = load_model(runs["sgr"] / "checkpoints" / "best" / "model")
    assert model.unknown_words(["red circle zzzunknown qqq"]) == (4, 2)
