"""RVLR: the spec's worked values and testable properties (spec section 10), the ITM head as a re-ranker,
teachers, and both stages from the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlret.evaluate.ndcg import mixed_ndcg, ndcg_at_k, single_modal_ndcg
from vlret.evaluate.relevance import lcs_length, relevance_rows, rouge_l
from vlret.losses import InfoNCELoss, ITMLoss, RepresentationDistillation, StructureDistillation
from vlret.losses.base import LossContext
from vlret.losses.itm import sample_negatives
from vlret.losses.structure_distill import relation_distance, relations
from vlret.models.base import Features
from vlret.models.heads import build_head

R2 = 1 / math.sqrt(2)

# ----- ITC and representation distillation ----------------------------------------------------------------


def _itc(v, t, ids, logit_scale=0.0):
    out = {
        "image_embeds": v,
        "text_embeds": t,
        "item_ids": torch.tensor(ids),
        "logit_scale": torch.tensor(logit_scale),
    }
    return float(InfoNCELoss()(out, {})["infonce"])


def test_itc_worked_values():
    eye = torch.eye(2)
    assert _itc(eye, eye, [0, 1]) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)  # 0.313262
    assert _itc(eye, eye, [0, 0]) == pytest.approx(0.813262, abs=1e-6)


def test_itc_is_invariant_to_a_joint_permutation():
    torch.manual_seed(0)
    v, t = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    ids = [0, 0, 1, 2, 2]
    order = [3, 1, 4, 0, 2]
    assert _itc(v, t, ids) == pytest.approx(_itc(v[order], t[order], [ids[i] for i in order]), abs=1e-6)


def _distiller(embed_dim=4, dims=(3, 5)):
    loss = RepresentationDistillation(max_logit_scale=1e9)
    loss.prepare(LossContext(embed_dim, dims))
    return loss


def test_iic_vanishes_when_the_projected_teacher_is_the_student_and_tau_goes_to_zero():
    torch.manual_seed(0)
    loss = _distiller(4, (4, 4))
    with torch.no_grad():  # identity projections: z = v
        for proj in (loss.image_proj, loss.text_proj):
            proj.weight.copy_(torch.eye(4))
            proj.bias.zero_()
    v = F.normalize(torch.randn(6, 4), dim=1)
    out = {
        "image_embeds": v,
        "text_embeds": v,
        "teacher_image": v,
        "teacher_text": v,
        "item_ids": torch.arange(6),
    }
    small = loss({**out, "logit_scale": torch.tensor(math.log(1e4))}, {})
    large = loss({**out, "logit_scale": torch.tensor(0.0)}, {})
    assert float(small["iic"].detach()) < 1e-6 < float(large["iic"].detach())


def test_iic_uses_the_student_rows_only():
    from vlret.losses.representation_distill import soft_contrastive

    torch.manual_seed(1)
    a, b = F.normalize(torch.randn(4, 3), dim=1), F.normalize(torch.randn(4, 3), dim=1)
    ids = torch.arange(4)
    assert float(soft_contrastive(a, b, ids, 1.0)) != pytest.approx(float(soft_contrastive(b, a, ids, 1.0)))
    # by hand: -1/B sum_i log softmax_j(a_i . b_j)_i
    expected = -torch.log_softmax(a @ b.T, dim=1).diagonal().mean()
    assert float(soft_contrastive(a, b, ids, 1.0)) == pytest.approx(float(expected), abs=1e-6)


# ----- structure-aware distillation -----------------------------------------------------------------------

H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [R2, R2]])
XT = torch.tensor([[1.0, 0.0], [R2, R2], [0.0, 1.0]])
XI = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _structure(distance="mae", lam=0.5, tau2=0.5, h=H, xt=XT, xi=XI):
    loss = StructureDistillation(distance=distance, lambda_init=lam, tau2=tau2, learn_lambda=False)
    out = loss({"fused": h, "teacher_text": xt, "teacher_image": xi}, {})
    return {k: float(v) for k, v in out.items()}


def test_structure_worked_values():
    mae = _structure("mae")
    assert mae["kd"] == pytest.approx(1.276142, abs=1e-6)
    assert mae["kdi"] == pytest.approx(1 / 3, abs=1e-6) and mae["kdt"] == pytest.approx(1 / 3, abs=1e-6)
    assert _structure("mse")["kd"] == pytest.approx(1.804738, abs=1e-6)
    assert _structure("cdf")["kd"] == pytest.approx(1.040440, abs=1e-6)


def test_the_worked_relation_matrices():
    off = ~torch.eye(3, dtype=torch.bool)
    r = math.sqrt(2)
    torch.testing.assert_close(relations(H, 0.5)[off], torch.tensor([0, r, 0, r, r, r]), atol=1e-6, rtol=0)
    torch.testing.assert_close(relations(XT, 0.5)[off], torch.tensor([r, 0, r, r, 0, r]), atol=1e-6, rtol=0)
    torch.testing.assert_close(relations(XI, 0.5)[off], torch.tensor([2.0, 0, 2, 0, 0, 0]), atol=1e-6, rtol=0)


def test_structure_zero_cases_and_invariances():
    assert _structure(lam=1.0, h=XT)["kd"] == pytest.approx(0.0, abs=1e-6)
    assert _structure(lam=0.0, h=XI[:, [0, 2]])["kd"] == pytest.approx(0.0, abs=1e-6)
    same = _structure(xi=torch.cat([XT, torch.zeros(3, 1)], dim=1))
    assert same["kdi"] == pytest.approx(0.0, abs=1e-6) and same["kdt"] == pytest.approx(0.0, abs=1e-6)
    rotation = torch.tensor([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    base = _structure()["kd"]
    assert _structure(h=H @ rotation, xt=XT @ rotation)["kd"] == pytest.approx(base, abs=1e-6)
    assert _structure(h=H * torch.tensor([[2.0], [0.5], [3.0]]))["kd"] == pytest.approx(base, abs=1e-6)


def test_structure_terms_are_linear_in_one_over_tau2():
    a, b = _structure(tau2=0.5), _structure(tau2=1.0)
    for key in ("kd", "kdi", "kdt"):
        assert b[key] == pytest.approx(a[key] / 2, abs=1e-6)


@pytest.mark.parametrize("lam", [-0.5, 0.0, 0.3, 1.0, 1.7])
def test_lambda_barrier(lam):
    m = float((relations(XI, 0.5) - relations(XT, 0.5)).abs()[~torch.eye(3, dtype=torch.bool)].mean())
    out = _structure(lam=lam)
    assert out["kdi"] + out["kdt"] == pytest.approx((abs(lam) + abs(1 - lam)) * m, abs=1e-6)


def test_the_diagonal_never_counts():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    for distance in ("mae", "mse", "cdf"):
        moved = relation_distance(a + 5 * torch.eye(4), b - 3 * torch.eye(4), distance)
        assert float(moved) == pytest.approx(float(relation_distance(a, b, distance)), abs=1e-6)


def test_learnable_lambda_and_tau2_get_gradients_and_are_logged():
    loss = StructureDistillation(tau2=0.5, compat=True)
    out = loss({"fused": H, "teacher_text": XT, "teacher_image": XI}, {})
    (2 * out["kd"] + out["kdi"] + out["kdt"]).backward()
    assert loss.mix.grad is not None and loss.temperature.grad is not None
    assert float(loss.temperature.grad) < 0  # every term falls as tau_2 grows: the released drift
    assert loss.monitor() == {"lambda": 0.5, "tau2": 0.5}


# ----- ITM ------------------------------------------------------------------------------------------------


def test_itm_negatives_never_share_the_anchor_item():
    torch.manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    same = ids[:, None] == ids[None, :]
    weights = torch.softmax(torch.randn(6, 6), dim=1)
    for _ in range(50):
        picks = sample_negatives(weights, same)
        assert not same[torch.arange(6), picks].any()
    two = sample_negatives(torch.full((2, 2), 0.5), torch.eye(2, dtype=torch.bool))
    assert two.tolist() == [1, 0]
    assert sample_negatives(torch.full((2, 2), 0.5), torch.ones(2, 2, dtype=torch.bool)).tolist() == [-1, -1]


def _pairs(n=5, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = Features(
        F.normalize(torch.randn(n, width, generator=g), dim=1),
        torch.randn(n, 6, width, generator=g),
        torch.tensor([[True] * (3 + i % 3) + [False] * (3 - i % 3) for i in range(n)]),
    )
    items = Features(
        F.normalize(torch.randn(n, width, generator=g), dim=1), torch.randn(n, 4, width, generator=g)
    )
    return texts, items


def test_itm_head_scores_pairs_independently_and_ignores_padding():
    torch.manual_seed(0)
    head = build_head({"name": "itm", "dim": 8, "layers": 2, "heads": 2}).eval()
    texts, items = _pairs()
    full = head.score(texts, items).detach()
    assert full.shape == (5, 5)
    torch.testing.assert_close(head.score_pairs(texts, items), full.diagonal(), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        head.score(texts.rows(2, 4), items.rows(1, 3)), full[2:4, 1:3], atol=1e-5, rtol=0
    )
    noisy = Features(texts.embeds, texts.tokens.masked_fill(~texts.mask[..., None], 1e3), texts.mask)
    torch.testing.assert_close(head.score(noisy, items), full, atol=1e-4, rtol=0)
    # the score is the raw match logit
    fused = head.fuse(texts.rows(0, 1), items.rows(0, 1))
    assert float(full[0, 0]) == pytest.approx(float(head.match_logits(fused)[0, 1].detach()), abs=1e-5)


def test_itm_loss_by_hand():
    torch.manual_seed(0)
    head = build_head({"name": "itm", "dim": 8, "layers": 1, "heads": 2, "dropout": 0.0})
    texts, items = _pairs(2)
    outputs = {
        "head": head,
        "image_embeds": items.embeds,
        "text_embeds": texts.embeds,
        "image_tokens": items.tokens,
        "image_mask": torch.ones(2, 4, dtype=torch.bool),
        "text_tokens": texts.tokens,
        "text_mask": texts.mask,
        "item_ids": torch.tensor([0, 1]),
        "logit_scale": torch.tensor(0.0),
        "fused": head.fuse(texts, items),
    }
    loss = float(ITMLoss()(outputs, {})["itm"].detach())
    # with two distinct items each negative is the other sample: positives (0,0), (1,1); negatives
    # text 0 with image 1, text 1 with image 0, and text 1 with image 0, text 0 with image 1
    text_rows, item_rows = torch.tensor([0, 1, 0, 1, 1, 0]), torch.tensor([0, 1, 1, 0, 0, 1])
    logits = head.match_logits(head.fuse(texts.select(text_rows), items.select(item_rows)))
    expected = F.cross_entropy(logits, torch.tensor([1, 1, 0, 0, 0, 0]))
    assert loss == pytest.approx(float(expected.detach()), abs=1e-5)


# ----- relevance and NDCG ---------------------------------------------------------------------------------


def test_rouge_l_worked_values():
    assert rouge_l("a dog runs", ["a black dog runs fast"]) == pytest.approx(0.717647, abs=1e-6)
    assert rouge_l("a black dog runs fast", ["a dog runs"]) == pytest.approx(0.785408, abs=1e-6)
    assert rouge_l("a cat sits", ["two dogs", "a cat sits", "x"]) == pytest.approx(1.0)
    base = rouge_l("a red ball", ["the red ball is big"])
    assert rouge_l("a red ball", ["the red ball is big", "zebra"]) >= base
    assert lcs_length(["a", "b", "c", "d"], ["b", "d", "a", "c"]) == 2


def test_the_bit_parallel_matrix_equals_the_dynamic_programme():
    rng = np.random.default_rng(0)
    words = ["a", "the", "dog", "cat", "runs", "red", "blue", "on", "of", "sits"]
    captions = [" ".join(rng.choice(words, rng.integers(1, 14))) for _ in range(40)]
    captions.append(" ".join(rng.choice(words, 70)))  # longer than one 64-bit word: the fallback
    captions += ["Dog  runs", "a"]  # case folded, double space kept as an empty token
    starts = np.array([0, 3, 10, 11, 20, 33, 41])
    ends = list(starts[1:]) + [len(captions)]
    matrix = relevance_rows(captions, captions, starts)
    expected = [[rouge_l(c, captions[s:e]) for s, e in zip(starts, ends, strict=True)] for c in captions]
    np.testing.assert_allclose(matrix, expected, atol=1e-6)


def test_ndcg_worked_values_and_properties():
    scores, rel = np.array([[0.9, 0.3, 0.8, 0.1]]), np.array([[0.2, 1.0, 0.5, 0.0]])
    assert ndcg_at_k(scores, rel, 2)[0] == pytest.approx(0.391850, abs=1e-6)
    assert ndcg_at_k(scores, rel, 4)[0] == pytest.approx(0.717407, abs=1e-6)
    assert ndcg_at_k(rel, rel, 4)[0] == pytest.approx(1.0)
    assert ndcg_at_k(scores, np.zeros_like(rel), 4)[0] == 0.0
    assert ndcg_at_k(np.exp(5 * scores), rel, 4)[0] == pytest.approx(0.717407, abs=1e-6)


def test_ndcg_ties_go_to_the_lower_gallery_index_images_before_captions():
    # equal scores: index 0 (relevance 0) is placed before index 1 (relevance 1)
    assert ndcg_at_k(np.array([[1.0, 1.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]), 1)[0] == 0.0
    assert ndcg_at_k(np.array([[1.0, 1.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]), 2)[0] == pytest.approx(
        1 / np.log2(3)
    )
    # a mixed gallery [image 0, image 1, caption 0, caption 1] where every entry ties (identical images,
    # cross scores all 1): each query's first place is image 0. Relevance R = I: image 0 is relevant to
    # item 0's query (NDCG@1 = 1) and not to item 1's (0), so the mean is 50; captions first would differ
    images = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    texts = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    ones = lambda rows: np.ones((len(rows), 2), np.float32)  # noqa: E731
    out = mixed_ndcg(images, texts, ones, ones, np.eye(2, dtype=np.float32), np.array([0, 1]), ks=(1,))
    assert out["i2it_ndcg@1"] == pytest.approx(50.0)


def test_single_modal_gives_the_query_itself_no_gain():
    # two items, two captions each; relevance by hand
    images = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]], np.float32)
    rel = np.array([[1.0, 0.2], [1.0, 0.4], [0.3, 1.0], [0.5, 1.0]], np.float32)
    caption_item = np.array([0, 0, 1, 1])
    out = single_modal_ndcg(images, texts, rel, caption_item, ks=(1, 10))
    # I2I: the only other image is relevant (R[0,1] = 0.2, R[2,0] = 0.3): NDCG 1
    assert out["i2i_ndcg@1"] == pytest.approx(100.0)
    # T2T from caption 0: scores (self 0, 0, 0.8, 0.6), relevances (self 0, 1, 0.3, 0.5): @1 picks 0.3 of 1
    # from caption 2: scores (0.8, 0.6, self 0, 0.96), relevances (0.2, 0.4, 0, 1): @1 picks 1 of 1
    assert out["t2t_ndcg@1"] == pytest.approx(100 * (0.3 + 1.0) / 2, abs=1e-4)


def test_mixed_compat_keeps_the_query_image_and_transposes_the_image_block():
    images = np.eye(2, dtype=np.float32)
    texts = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    rel = np.array([[1.0, 0.1], [0.2, 1.0]], np.float32)
    caption_item = np.array([0, 1])
    cross = np.array([[0.9, 0.1], [0.4, 0.7]], np.float32)  # S_t2i [captions, items]
    kwargs = {"ks": (1,)}
    clean = mixed_ndcg(
        images, texts, lambda i: cross.T[i], lambda c: cross[c], rel, caption_item, "clean", **kwargs
    )
    compat = mixed_ndcg(
        images, texts, lambda i: cross.T[i], lambda c: cross[c], rel, caption_item, "compat", **kwargs
    )
    assert clean["i2it_ndcg@1"] == pytest.approx(100.0)  # the query image itself ranks first with relevance 1
    # T2IT from caption 1: clean image scores S(1, .) = (0.4, 0.7); compat S(first(j), 1) = (0.1, 0.7)
    assert clean["t2it_ndcg@1"] == compat["t2it_ndcg@1"] == pytest.approx(100.0)
    assert set(compat) == set(clean)
    # @3 they differ. Gallery [image 0, image 1, caption 0, caption 1]; from caption 0: clean scores
    # (.9, .1 | 1, 0) with relevances (1, .1 | 1, .2): caption 0, image 0, then image 1 (gain .1 of an ideal
    # .2); compat scores (.9, .4 | ...) with relevances (1, .2 | ...): image 1 third with gain .2, ideal.
    # From caption 1 both rank ideally (clean: image 0 third, .2 of .2; compat: image 0, .1 of .1).
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    clean_row0 = (1 + d2 + 0.1 * d3) / (1 + d2 + 0.2 * d3)
    three = {"ks": (3,)}
    clean = mixed_ndcg(
        images, texts, lambda i: cross.T[i], lambda c: cross[c], rel, caption_item, "clean", **three
    )
    compat = mixed_ndcg(
        images, texts, lambda i: cross.T[i], lambda c: cross[c], rel, caption_item, "compat", **three
    )
    assert clean["t2it_ndcg@3"] == pytest.approx(100 * (clean_row0 + 1) / 2)
    assert compat["t2it_ndcg@3"] == pytest.approx(100.0)


# ----- the re-rank hook, teachers and the CLI -------------------------------------------------------------


def _run(*args: str, capsys=None) -> tuple[int, str, str]:
    """``vlret ARGS`` in this process: (exit code, stdout, stderr)."""
    from vlret.cli import main

    code = main(list(args))
    out = capsys.readouterr() if capsys is not None else None
    return code, (out.out if out else ""), (out.err if out else "")


STAGE1 = [
    "train.epochs=1",
    "train.max_steps=4",
    "train.batch_size=16",
    "model.options.image_options.layers=1",
    "model.options.image_options.width=32",
    "model.options.image_options.heads=2",
    "model.options.text_options.hidden=32",
    "model.options.text_options.word_dim=16",
    "model.options.embed_dim=32",
    "model.head.dim=32",
    "model.head.heads=2",
    "model.head.k_test=4",
]


def test_both_stages_train_and_the_itm_head_evaluates_through_the_rerank_hook(synth_data, tmp_path, capsys):
    stage1 = tmp_path / "s1"
    assert (
        _run(
            "train",
            "--recipe",
            "rvlr_stage1_synth_cpu",
            f"data.path={synth_data}",
            f"output_dir={stage1}",
            *STAGE1,
        )[0]
        == 0
    )
    model = stage1 / "checkpoints" / "last" / "model"
    teacher = tmp_path / "teacher"
    code, _, _ = _run(
        "features", "teacher", "--data", str(synth_data), "--out", str(teacher), "--chunk-size", "64"
    )
    assert code == 0
    meta = json.loads((teacher / "teacher.json").read_text())
    assert meta["complete"] and meta["dims"] == [1280, 384]
    rows = np.load(teacher / "train_image_embed_regu.npy")
    assert rows.shape[0] == meta["pairs"] and np.isfinite(rows).all()

    stage2 = tmp_path / "s2"
    code, _, _ = _run(
        "train",
        "--recipe",
        "rvlr_synth_cpu",
        f"data.path={synth_data}",
        f"model.name={model}",
        f"teacher.cache={teacher}",
        f"output_dir={stage2}",
        "train.max_steps=3",
        "train.batch_size=16",
    )
    assert code == 0
    logged = [json.loads(line) for line in (stage2 / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in logged if r["kind"] == "train"]
    assert {"infonce", "itm", "iic", "ttc", "kd", "kdi", "kdt", "lambda", "tau2"} <= set(train_rows[-1])

    out = tmp_path / "result.json"
    code, _, _ = _run(
        "eval",
        "--model",
        str(stage2 / "checkpoints" / "last" / "model"),
        "--data",
        str(synth_data),
        "--split",
        "test",
        "--relevance",
        "rouge-l",
        "--out",
        str(out),
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["rerank"]["k"] == 4 and "metrics" in result["first_stage"]
    assert {"i2i_ndcg@10", "t2t_ndcg@10"} <= set(result["single_modal"])
    assert {"i2it_ndcg@10", "t2it_ndcg@10"} <= set(result["mixed"])
    capsys.readouterr()
    table = _run("results", "table", str(out), capsys=capsys)[1]
    assert "T→T NDCG@10" in table


def test_reranked_ranks_equal_the_heads_own_ranking_when_k_covers_both_galleries(synth_data):
    from vlret.data import load_dataset
    from vlret.evaluate.api import evaluate_model
    from vlret.evaluate.metrics import retrieval_metrics
    from vlret.models import create_model

    torch.manual_seed(0)
    data = load_dataset(synth_data)
    test = data.split("test")
    model = create_model(
        "composed",
        captions=[c.text for c in data.captions],
        image_tower="tiny-vit",
        image_options={"image_size": 32, "patch_size": 8, "width": 16, "layers": 1, "heads": 2},
        text_tower="bigru",
        text_options={"word_dim": 8, "hidden": 16, "min_count": 1},
        embed_dim=16,
        head={"name": "itm", "dim": 16, "layers": 1, "heads": 2, "k_test": len(test.captions)},
    ).eval()
    result = evaluate_model(model, data, split="test", use_cache=False, progress=False)
    # independently: the head's full matrix, ranked by hand
    from vlret.evaluate.encode import encode_dataset

    encoded = encode_dataset(model, test, use_cache=False, progress=False)
    with torch.no_grad():
        full = model.head.score(
            encoded.texts.rows(0, len(encoded.texts)), encoded.items.rows(0, len(test.items))
        )
    truth = torch.from_numpy(test.caption_to_item)
    positive = full[torch.arange(len(full)), truth]
    t2i = (full > positive[:, None]).sum(1).numpy()
    i2t = []
    for item, caps in enumerate(test.item_to_captions):
        column = full[:, item]
        i2t.append(min(int((column > column[c]).sum()) for c in caps))
    expected = retrieval_metrics(t2i, np.array(i2t))
    for key in ("t2i_r1", "t2i_r5", "i2t_r1", "i2t_r5"):
        assert result["metrics"][key] == pytest.approx(expected[key]), key


def test_a_teacher_cache_of_the_wrong_size_is_refused(synth_data, tmp_path):
    from vlret.data import load_dataset
    from vlret.errors import DataError
    from vlret.train.teacher import MANIFEST, Teacher, captions_fingerprint

    train = load_dataset(synth_data).split("train")
    np.save(tmp_path / "train_image_embed_regu.npy", np.zeros((3, 4), np.float32))
    np.save(tmp_path / "train_text_embed_regu.npy", np.zeros((3, 4), np.float32))
    manifest = {"complete": True, "captions": captions_fingerprint(train)}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="one row per training pair"):
        Teacher.from_cache(tmp_path, train, "train")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no manifest", r"teacher.json: not found: it records which captions"),
        ("malformed manifest", r"teacher.json: line 1 column \d+: malformed JSON"),
        ("a list manifest", r"teacher.json: expected a JSON object"),
        ("truncated array", r"train_text_embed_regu.npy: not a readable .npy array"),
        ("unfinished", r"the features are not complete"),
        ("other captions", r"written for other captions"),
    ],
)
def test_damaged_teacher_features_are_refused_naming_the_file(synth_data, tmp_path, damage, message):
    from vlret.data import load_dataset
    from vlret.errors import DataError
    from vlret.train.teacher import MANIFEST, Teacher, captions_fingerprint

    train = load_dataset(synth_data).split("train")
    pairs = len(train.captions)
    np.save(tmp_path / "train_image_embed_regu.npy", np.zeros((pairs, 4), np.float32))
    np.save(tmp_path / "train_text_embed_regu.npy", np.zeros((pairs, 4), np.float32))
    manifest = {"complete": True, "captions": captions_fingerprint(train)}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert Teacher.from_cache(tmp_path, train, "train").dims == (4, 4)  # whole, it loads
    if damage == "no manifest":
        (tmp_path / MANIFEST).unlink()
    elif damage == "malformed manifest":
        (tmp_path / MANIFEST).write_text('{"complete": true,')
    elif damage == "a list manifest":
        (tmp_path / MANIFEST).write_text("[]")
    elif damage == "truncated array":
        text = tmp_path / "train_text_embed_regu.npy"
        text.write_bytes(text.read_bytes()[: 128 + 8])
    elif damage == "unfinished":
        (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    else:
        (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "captions": "0" * 24}))
    with pytest.raises(DataError, match=message):
        Teacher.from_cache(tmp_path, train, "train")


def test_the_suite_resumes_a_killed_teacher_write(synth_data, tmp_path, monkeypatch):
    """Both arrays exist from the first chunk on: the manifest, not the files, says whether it finished."""
    from vlret.data import load_dataset
    from vlret.suite import run as suite_run
    from vlret.train import teacher as teacher_module

    dataset = load_dataset(synth_data)
    out = tmp_path / "teacher"
    real = teacher_module.TeacherTowers.pair_features
    calls = []

    def dies_after_one_chunk(self, data, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill after the first chunk was written
        return real(self, data, rows)

    monkeypatch.setattr(teacher_module.TeacherTowers, "pair_features", dies_after_one_chunk)
    monkeypatch.setattr(teacher_module, "write_teacher_features", _small_chunks(teacher_module))
    with pytest.raises(KeyboardInterrupt):
        suite_run._teacher_features(dataset, out, progress=False)
    assert (out / "train_image_embed_regu.npy").is_file() and not teacher_module.features_complete(out)
    monkeypatch.setattr(teacher_module.TeacherTowers, "pair_features", real)
    suite_run._teacher_features(dataset, out, progress=False)
    assert teacher_module.features_complete(out)
    teacher_module.Teacher.from_cache(out, dataset.split("train"), "train")


def _small_chunks(teacher_module):
    write = teacher_module.write_teacher_features

    def small(*args, **kwargs):
        return write(*args, **{**kwargs, "chunk": 64})

    return small


def test_a_fused_student_needs_an_itm_head(synth_data, tmp_path, capsys):
    code, _, err = _run(
        "train",
        "--recipe",
        "rvlr_synth_cpu",
        f"data.path={synth_data}",
        "model.name=tiny-vit",
        "losses.itm.weight=0",
        f"teacher.cache={tmp_path}",
        f"output_dir={tmp_path / 'run'}",
        capsys=capsys,
    )
    assert code == 2 and "structure_distill" in err and "fusion" in err


@pytest.mark.parametrize("data", ["coco", "f30k", "vizwiz", "synth_cpu"])
def test_the_rvlr_recipes_are_valid(data, tmp_path):
    from vlret.models import create_model
    from vlret.train.recipe import load_recipe, resolve_recipe

    stage1 = load_recipe(resolve_recipe(f"rvlr_stage1_{data}"))
    assert stage1.losses == {"infonce": {"weight": 1.0}, "itm": {"weight": 2.0}}
    assert stage1.model.head["name"] == "itm" and stage1.data.val_split == "val"
    saved = tmp_path / "stage1"
    create_model("tiny-vit", captions=["a red circle"]).save(saved)  # stage 2 starts from a saved model
    stage2 = load_recipe(resolve_recipe(f"rvlr_{data}"), [f"model.name={saved}"])
    weights = {name: spec["weight"] for name, spec in stage2.losses.items()}
    assert weights == {"infonce": 1.0, "itm": 2.0, "representation_distill": 1.0, "structure_distill": 1.0}
    rd, sd = stage2.losses["representation_distill"], stage2.losses["structure_distill"]
    # the released weights a..g = 1, 2, 1, 2, 2, 1, 1
    assert (rd["iic_weight"], rd["ttc_weight"]) == (1.0, 2.0)
    assert (sd["kd_weight"], sd["kdi_weight"], sd["kdt_weight"], sd["tau2"]) == (2.0, 1.0, 1.0, 0.07)


def test_linear_schedule_warms_up_then_falls_to_zero():
    from vlret.train.recipe import ScheduleSection
    from vlret.train.schedule import lr_multiplier

    factor = lr_multiplier(ScheduleSection(name="linear", warmup_fraction=0.1), 100, 10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5) and factor(100) == 0.0


def test_teacher_features_resume_after_a_kill(synth_data, tmp_path):
    from vlret.data import load_dataset
    from vlret.train.teacher import MANIFEST, Teacher, TeacherTowers, write_teacher_features

    train = load_dataset(synth_data).split("train")
    out = tmp_path / "teacher"
    write_teacher_features(train, "train", out, TeacherTowers(batch_size=32), chunk=64, progress=False)
    image = np.load(out / "train_image_embed_regu.npy").copy()
    text = np.load(out / "train_text_embed_regu.npy").copy()
    # what a kill after the first chunk leaves: the manifest says 64 rows, the rest is whatever was there
    meta = json.loads((out / MANIFEST).read_text())
    meta.update(rows_done=64, complete=False)
    (out / MANIFEST).write_text(json.dumps(meta))
    stale = np.load(out / "train_image_embed_regu.npy", mmap_mode="r+")
    stale[64:] = 0.0
    stale.flush()
    with pytest.raises(Exception, match="not complete"):
        Teacher.from_cache(out, train, "train")
    write_teacher_features(train, "train", out, TeacherTowers(batch_size=32), chunk=64, progress=False)
    np.testing.assert_allclose(np.load(out / "train_image_embed_regu.npy"), image, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "train_text_embed_regu.npy"), text, atol=1e-5)
    teacher = Teacher.from_cache(out, train, "train")
    first = train.caption_to_item[0]
    siblings = [c for c in range(len(train.captions)) if train.caption_to_item[c] == first]
    rows, _ = teacher.features(torch.tensor(siblings), torch.device("cpu"))
    assert torch.equal(rows[0], rows[-1])  # an image's features repeat for each of its captions
