"""AVSE (spec avse.md section 14): the AEOM head, radial-bias views, the losses and the schedule.

Expected values come from hand computation or from independent formulations written here (a per-pair
Python loop for AEOM, numpy for the regulariser, grid distances computed point by point).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlret.evaluate.encode import FeatureTable
from vlret.evaluate.scoring import score_block
from vlret.losses import HingeLoss, ViewDecorrelationLoss
from vlret.models import create_model
from vlret.models.avse import RadialBiasSampler, drop_tokens, encode_views
from vlret.models.base import Features
from vlret.models.heads import build_head

D, CHUNK = 16, 4


def aeom(head_chunks, x, t):
    return build_head({"name": "aeom", "chunk_sizes": head_chunks}).score(Features(t), Features(x))


def loop_score(x: np.ndarray, t: np.ndarray, d: int) -> float:
    """One pair, written out: every text chunk's best cosine over the item's chunks, summed."""
    total = 0.0
    for q in range(len(t) // d):
        w = t[q * d : (q + 1) * d]
        best = -np.inf
        for p in range(len(x) // d):
            u = x[p * d : (p + 1) * d]
            best = max(best, float(u @ w / ((np.linalg.norm(u) + 1e-8) * (np.linalg.norm(w) + 1e-8))))
        total += best
    return total


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, 2 * D, generator=g), torch.randn(7, D, generator=g)  # 2 views, 5 items, 7 texts


def test_shapes_and_batched_equals_a_per_pair_loop(pairs):
    x, t = pairs
    s = aeom([CHUNK], x, t)
    assert s.shape == (7, 5)
    expected = np.array([[loop_score(xi.numpy(), tj.numpy(), CHUNK) for xi in x] for tj in t])
    np.testing.assert_allclose(s.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("item_chunk,text_chunk", [(1, 1), (7, 3), (256, 256)])
def test_any_sharding_gives_the_full_matrix(pairs, item_chunk, text_chunk):
    x, t = pairs
    head = build_head({"name": "aeom", "chunk_sizes": [CHUNK]})
    table = FeatureTable(F.normalize(x).numpy())
    sharded = score_block(head, Features(t), table, item_chunk, text_chunk=text_chunk)
    torch.testing.assert_close(sharded, head.score(Features(t), Features(x)), atol=1e-5, rtol=0)


def test_one_view_with_chunk_d_is_the_cosine(pairs):
    x, t = pairs
    torch.testing.assert_close(
        aeom([D], x[:, :D], t), F.normalize(t) @ F.normalize(x[:, :D]).T, atol=1e-6, rtol=0
    )


def test_bounds(pairs):
    x, t = pairs
    q = D // CHUNK
    s = aeom([CHUNK], x, t)
    assert (s <= q + 1e-6).all() and (s >= -q - 1e-6).all()
    torch.testing.assert_close(aeom([CHUNK], 3.0 * t, t).diagonal(), torch.full((7,), float(q)))
    one_view = x[:3, :D]
    aligned = torch.stack(
        [
            torch.stack(
                [F.cosine_similarity(u.view(q, CHUNK), w.view(q, CHUNK), dim=1).sum() for u in one_view]
            )
            for w in t
        ]
    )
    assert (aeom([CHUNK], one_view, t) >= aligned - 1e-6).all()


def test_invariances(pairs):
    x, t = pairs
    s = aeom([CHUNK], x, t)
    chunks = x.view(5, -1, CHUNK)
    permuted = chunks[:, torch.randperm(chunks.shape[1])].reshape(5, -1)
    swapped = torch.cat([x[:, D:], x[:, :D]], dim=1)
    text_permuted = t.view(7, -1, CHUNK)[:, torch.randperm(D // CHUNK)].reshape(7, -1)
    scaled = x.clone()
    scaled[:, CHUNK : 2 * CHUNK] *= 5.0
    for variant_x, variant_t in (
        (permuted, t),
        (swapped, t),
        (x, text_permuted),
        (scaled, t),
        (F.normalize(x), 2 * t),
    ):
        torch.testing.assert_close(aeom([CHUNK], variant_x, variant_t), s, atol=1e-5, rtol=0)


def test_appending_a_view_never_lowers_the_score(pairs):
    x, t = pairs
    more = torch.cat([x, torch.randn(5, D)], dim=1)
    assert (aeom([CHUNK], more, t) >= aeom([CHUNK], x, t) - 1e-6).all()


def test_several_chunk_sizes_sum(pairs):
    x, t = pairs
    torch.testing.assert_close(aeom([4, 8], x, t), aeom([4], x, t) + aeom([8], x, t))


def test_sinkhorn_matching_is_a_transport_plan(pairs):
    """With the plan's scale removed, each item chunk's row of the plan sums to 1/(P+Q) (its mass)."""
    from vlret.models.heads.aeom import log_optimal_transport

    scores = torch.randn(3, 8, 4)
    plan = log_optimal_transport(scores, torch.tensor(0.0), 200)
    p, q = 8, 4
    # rows of the full plan (with the dustbin column) carry 1/(P+Q); the kept part carries at most that
    assert (plan.exp().sum(-1) / (p + q) <= 1 / (p + q) + 1e-4).all()
    head = build_head({"name": "aeom", "chunk_sizes": [CHUNK], "matching": "sinkhorn"})
    x, t = pairs
    s = head.score(Features(t), Features(x))
    assert s.shape == (7, 5) and torch.isfinite(s).all()
    s.sum().backward()
    assert head.bin_score.grad is not None


# ----- radial-bias sampling --------------------------------------------------------------------------


def test_keep_count_counts_cls_as_the_released_code():
    sampler = RadialBiasSampler()
    assert [sampler.keep_count(n, True, True) for n in (196, 256, 576)] == [157, 205, 461]
    assert [sampler.keep_count(n, True, False) for n in (196, 256, 576)] == [177, 231, 519]
    assert sampler.keep_count(64, False, True) == math.floor(0.8 * 64)


@pytest.mark.parametrize("select", ["topk", "multinomial"])
def test_views_keep_unique_patches_and_topk_keeps_the_nearest(select):
    side = 6
    sampler = RadialBiasSampler(count=3, select=select)
    pixels = torch.randn(4, 3, 8, 8)
    torch.manual_seed(1)
    chosen = sampler.select_patches(pixels, side, has_cls=True, training=True)
    k = math.floor(0.8 * (side * side + 1))
    assert chosen.shape == (3, 4, k)
    for view in chosen:
        for row in view:
            assert len(set(row.tolist())) == k
    if select == "topk":
        for view in chosen:
            for row in view:
                cells = [(i // side, i % side) for i in range(side * side)]
                # some cell is the centre: the kept cells are the k nearest to it
                ok = False
                for centre in cells:
                    dist = [math.dist(c, centre) for c in cells]
                    kept = max(dist[i] for i in row.tolist())
                    dropped = min(dist[i] for i in range(side * side) if i not in set(row.tolist()))
                    ok |= kept <= dropped + 1e-9
                assert ok


def test_views_are_independent_and_seeded():
    sampler = RadialBiasSampler(count=2)
    pixels = torch.randn(16, 3, 8, 8)
    torch.manual_seed(3)
    first = sampler.select_patches(pixels, 8, True, training=True)
    torch.manual_seed(3)
    again = sampler.select_patches(pixels, 8, True, training=True)
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])  # two views of one image differ (16 images: not by chance)
    fixed = sampler.select_patches(pixels, 8, True, training=False)
    torch.manual_seed(99)
    assert torch.equal(sampler.select_patches(pixels, 8, True, training=False), fixed)
    order = torch.randperm(16)
    assert torch.equal(sampler.select_patches(pixels[order], 8, True, training=False), fixed[:, order])


def test_drop_tokens_keeps_at_least_one_and_never_adds():
    mask = torch.tensor([[True] * 5 + [False] * 3] * 200)
    torch.manual_seed(0)
    kept = drop_tokens(mask, 0.9)
    assert (kept <= mask).all() and kept.any(1).all()
    assert 0.5 < (kept.sum(1) < 5).float().mean() < 0.95  # about 80% of the rows drop something


# ----- the composed AVSE model -----------------------------------------------------------------------


def _avse_model(tower: str = "tiny-vit", options: dict | None = None, views: dict | None = None):
    return create_model(
        "composed",
        captions=["a red circle", "a blue square on the left"] * 3,
        head={"name": "aeom", "chunk_sizes": [8]},
        image_tower=tower,
        text_tower="bigru",
        embed_dim=16,
        pooling="gpo",
        image_options=options or {"image_size": 32, "patch_size": 8, "width": 16, "layers": 1, "heads": 2},
        text_options={"word_dim": 8, "hidden": 16, "min_count": 1},
        text_projection="mlp_bn",
        text_norm="layernorm",
        text_dropout=0.2,
        image_token_drop=0.2,
        views=views or {"count": 2},
    )


def test_avse_embeddings_are_unit_norm_views_and_fixed_at_evaluation():
    model = _avse_model().eval()
    pixels = torch.randn(6, 3, 32, 32)
    image = model.encode_images(pixels)
    text = model.encode_texts(model.tokenize(["a red circle", "a blue square"]))
    assert image.embeds.shape == (6, 32) and text.embeds.shape == (2, 16)
    torch.testing.assert_close(image.embeds.view(6, 2, 16).norm(dim=-1), torch.ones(6, 2))
    # tokens: each view keeps [CLS] + floor(0.9 * 17) patches at evaluation
    assert image.tokens.shape[1] == 2 * (1 + math.floor(0.9 * 17))
    order = torch.randperm(6)
    again = model.encode_images(pixels[order])
    torch.testing.assert_close(again.embeds, image.embeds[order])


def test_vit_views_run_blocks_on_sampled_input_tokens(vit_dir):
    from vlret.models.backbones.hf_vision import HFVisionTower

    tower = HFVisionTower(vit_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    sampler = RadialBiasSampler(count=2, rate_eval=1.0, count_includes_cls=False)
    views = encode_views(tower, pixels, sampler, training=False)
    # rate 1: every patch is kept, so a view is the full forward pass without the final LayerNorm
    # (the tokens come in a different order, which a ViT is equivariant to; GPO sorts)
    inputs = tower.encoder.embeddings(pixels, interpolate_pos_encoding=True)
    full = tower.run_blocks(inputs).tokens
    for view in views:
        assert view.tokens.shape == full.shape
        torch.testing.assert_close(view.tokens[:, 0], full[:, 0], atol=1e-5, rtol=0)  # [CLS] is kept first
        torch.testing.assert_close(view.tokens.sort(1).values, full.sort(1).values, atol=1e-5, rtol=0)


def test_a_vit_fed_another_input_size_interpolates_its_positions(vit_dir):
    from vlret.models.backbones.hf_vision import HFVisionTower

    tower = HFVisionTower(vit_dir, image_size=48).eval()  # trained at 32 px: a 6 x 6 grid instead of 4 x 4
    assert tower.transform.size == 48 and tower.describe()["image_size"] == 48
    assert tower(torch.randn(1, 3, 48, 48)).tokens.shape[1] == 1 + 36
    views = encode_views(tower, torch.randn(1, 3, 48, 48), RadialBiasSampler(count=2), training=True)
    assert [v.tokens.shape[1] for v in views] == [1 + math.floor(0.8 * 37)] * 2


def test_swin_views_sample_the_final_grid(swin_dir):
    from vlret.models.backbones.hf_vision import HFVisionTower

    tower = HFVisionTower(swin_dir).eval()
    pixels = torch.randn(2, 3, 32, 32)
    views = encode_views(tower, pixels, RadialBiasSampler(count=2), training=False)
    grid = tower(pixels).tokens  # 4 x 4 final grid, no [CLS]
    assert len(views) == 2 and views[0].tokens.shape == (2, math.floor(0.9 * 16), grid.shape[2])
    for view in views:  # every kept token is a token of the full grid
        for b in range(2):
            distances = torch.cdist(view.tokens[b], grid[b])
            assert (distances.min(1).values < 1e-5).all()


def test_a_tower_without_a_square_grid_is_refused():
    model = _avse_model("regions", {"dim": 8})
    with pytest.raises(ValueError, match="square token grid"):
        model.eval().encode_images(torch.randn(2, 3, 8))


# ----- losses and the schedule -----------------------------------------------------------------------

S = torch.tensor([[0.5, 0.6, 0.4], [0.2, 0.4, 0.5], [0.3, 0.2, 0.6]])


def test_hinge_by_hand_warm_up_then_hardest():
    # c_s rows (images): [.3, .1] in row 0, [.3] in row 1; c_im columns: [.4] in column 1, [.1] in column 2
    loss = HingeLoss(margin=0.2, max_violation=True, warmup_epochs=1)
    warm = loss({"scores": S}, {"epoch": 0})["hinge"]
    hard = loss({"scores": S}, {"epoch": 1})["hinge"]
    assert warm.item() == pytest.approx(1.2) and hard.item() == pytest.approx(1.1)
    scores = S.clone().requires_grad_(True)
    loss({"scores": scores}, {"epoch": 1})["hinge"].backward()
    touched = {tuple(i) for i in (scores.grad != 0).nonzero().tolist()}
    assert touched == {(0, 1), (1, 2), (0, 0), (1, 1), (2, 2)}  # hardest negatives and their positives
    easy = torch.eye(3)
    assert loss({"scores": easy}, {"epoch": 0})["hinge"].item() == 0


def test_view_decorrelation_values():
    b, d = 4, 2
    e1 = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    e2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 1.0], [-1.0, 5.0]])
    loss = ViewDecorrelationLoss(offdiag=0.0051)
    out = loss({"image_embeds": torch.cat([e1, e2], 1), "text_embeds": torch.zeros(b, d)}, {})
    assert out["view_decorrelation"].item() == pytest.approx(d)  # C = 0
    e = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    cols = e.numpy() / np.linalg.norm(e.numpy(), axis=0)
    c = cols.T @ cols / 8
    expected = 5 * (1 - 1 / 8) ** 2 + 0.0051 * (np.sum(c**2) - np.sum(np.diag(c) ** 2))
    same = loss({"image_embeds": torch.cat([e, e], 1), "text_embeds": torch.zeros(8, 5)}, {})
    assert same["view_decorrelation"].item() == pytest.approx(expected, rel=1e-5)
    barlow = ViewDecorrelationLoss(offdiag=0.0, norm="barlow")
    assert barlow({"image_embeds": torch.cat([e, e], 1), "text_embeds": torch.zeros(8, 5)}, {})[
        "view_decorrelation"
    ].item() == pytest.approx(0.0, abs=1e-4)
    # a shared positive scale (the trainer's whole-vector normalisation) changes nothing
    scaled = loss({"image_embeds": 0.5 * torch.cat([e, e], 1), "text_embeds": torch.zeros(8, 5)}, {})
    assert scaled["view_decorrelation"].item() == pytest.approx(expected, rel=1e-5)


def test_view_decorrelation_refuses_a_single_view():
    with pytest.raises(ValueError, match="several views"):
        ViewDecorrelationLoss()({"image_embeds": torch.randn(4, 8), "text_embeds": torch.randn(4, 8)}, {})


def test_step_schedule_of_the_recipe():
    from vlret.train.recipe import ScheduleSection
    from vlret.train.schedule import lr_multiplier

    section = ScheduleSection(name="step", step_epochs=[9, 15, 20, 25], gamma=0.3)
    factor = lr_multiplier(section, total_steps=300, steps_per_epoch=10)
    got = [factor(epoch * 10) for epoch in (0, 9, 15, 20, 25)]
    np.testing.assert_allclose(got, [1, 0.3, 0.09, 0.027, 0.0081], rtol=1e-9)


# ----- from the command line -------------------------------------------------------------------------

SMALL = [
    "train.max_steps=4",
    "train.batch_size=16",
    "train.epochs=1",
    "train.log_every_steps=1",
    "model.options.image_options.width=32",
    "model.options.image_options.layers=1",
    "model.options.embed_dim=32",
    "model.head.chunk_sizes=[8]",
]


def test_avse_trains_and_evaluates_from_the_cli(synth_data, tmp_path):
    import json

    from vlret.cli import main
    from vlret.train.logger import read_metrics

    out = tmp_path / "avse"
    args = [f"data.path={synth_data}", f"output_dir={out}", *SMALL, "--quiet"]
    assert main(["train", "--recipe", "avse_synth_cpu", *args]) == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(records) == 4 and all(np.isfinite(r["hinge"]) and r["view_decorrelation"] > 0 for r in records)
    model_dir = out / "checkpoints" / "best" / "model"
    result_file = tmp_path / "result.json"
    assert (
        main(["eval", "--model", str(model_dir), "--data", str(synth_data), "--out", str(result_file)]) == 0
    )
    result = json.loads(result_file.read_text())
    assert 0 <= result["metrics"]["rsum"] <= 600
    # the one-view cosine baseline of the documentation's AVSE table; a weight-0 term is not computed at all
    base = tmp_path / "base"
    baseline = ["model.options.views.count=1", "model.head=null", "losses.view_decorrelation.weight=0"]
    assert (
        main(
            [
                "train",
                "--recipe",
                "avse_synth_cpu",
                *args[:1],
                f"output_dir={base}",
                *SMALL,
                *baseline,
                "--quiet",
            ]
        )
        == 0
    )
    records = [r for r in read_metrics(base / "metrics.jsonl") if r["kind"] == "train"]
    assert records and all("view_decorrelation" not in r for r in records)


@pytest.mark.parametrize("compat", [False, True])
def test_compat_amp_clip_clips_the_still_scaled_gradients(synth_data, tmp_path, compat):
    """fp16 with a gradient scale of 256 and a clip at 1e-3 (it fires either way): standard AMP hands the
    optimiser gradients of norm 1e-3; the released AVSE order clips the scaled ones, so 1e-3 / 256."""
    from vlret.train import Trainer, load_recipe

    overrides = [
        f"data.path={synth_data}",
        f"output_dir={tmp_path / 'run'}",
        "train.max_steps=1",
        "train.batch_size=8",
        "train.amp=fp16",
        "optim.clip_grad_norm=1e-3",
        f"optim.compat_amp_clip={str(compat).lower()}",
        "model.options={width: 16, embed_dim: 16}",
    ]
    trainer = Trainer(load_recipe(None, overrides), progress=False)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    seen = []

    def record(optimizer, args, kwargs) -> None:  # the gradients the optimiser is about to apply
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(
            float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        )

    trainer.optimizer.register_step_pre_hook(record)
    trainer.fit()
    assert seen == [pytest.approx(1e-3 / 256 if compat else 1e-3, rel=1e-4)]
