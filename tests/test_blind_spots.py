"""Tests for the kinds of bug a mutation probe found the suite let through: padding anywhere (leading, holes,
trailing) with junk under it, on both sides; samplers' distributions, not their shapes; evaluation that sets
its own mode; schedules against hand-computed values; which loss term reaches which parameter; and
non-finite embeddings a model emits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlret.models.base import Features

# ----- padding anywhere, junk under it ------------------------------------------------------------------

MASKS = {
    "trailing": [1, 1, 1, 0, 0],
    "leading": [0, 0, 1, 1, 1],
    "holes": [1, 0, 1, 0, 1],
}


def _padded(
    real: torch.Tensor, layout: list[int], junk_scale: float = 1e3
) -> tuple[torch.Tensor, torch.Tensor]:
    """``real [n, r, d]`` tokens placed at the 1s of ``layout``, large random junk at the 0s."""
    n, r, d = real.shape
    slots = torch.tensor(layout, dtype=torch.bool)
    assert int(slots.sum()) == r
    out = torch.randn(n, len(layout), d) * junk_scale
    out[:, slots] = real
    return out, slots.expand(n, -1).clone()


def _maxsim_by_hand(text: torch.Tensor, item: torch.Tensor) -> float:
    """Mean over the text's tokens of the best cosine with any item token (compact tokens, plain loops)."""
    best = []
    for w in text:
        best.append(max(float(F.cosine_similarity(w, v, dim=0)) for v in item))
    return sum(best) / len(best)


@pytest.mark.parametrize("text_layout", list(MASKS))
@pytest.mark.parametrize("item_layout", list(MASKS))
def test_maxsim_ignores_padding_wherever_it_is_on_both_sides(text_layout, item_layout):
    from vlret.models.heads import MaxSimHead

    torch.manual_seed(0)
    texts_real, items_real = torch.randn(3, 3, 8), torch.randn(4, 3, 8)
    t_tokens, t_mask = _padded(texts_real, MASKS[text_layout])
    v_tokens, v_mask = _padded(items_real, MASKS[item_layout])
    texts = Features(torch.randn(3, 8), t_tokens, t_mask)
    items = Features(torch.randn(4, 8), v_tokens, v_mask)
    scores = MaxSimHead().score(texts, items)
    expected = torch.tensor([[_maxsim_by_hand(t, v) for v in items_real] for t in texts_real])
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    pairs = MaxSimHead().score_pairs(texts.rows(0, 3), items.rows(0, 3))
    torch.testing.assert_close(pairs, expected.diagonal()[:3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", list(MASKS))
def test_gpo_pools_only_the_real_tokens_wherever_the_padding_is(layout):
    from vlret.models.pooling import GPO

    torch.manual_seed(0)
    gpo = GPO().eval()
    real = torch.randn(2, 3, 6)
    padded, mask = _padded(real, MASKS[layout])
    torch.testing.assert_close(gpo(padded, mask), gpo(real), atol=1e-6, rtol=0)


# ----- samplers: what they draw, over many draws ------------------------------------------------------------


def test_multinomial_views_favour_patches_near_the_centre():
    """exp(-alpha * distance) weights: over many draws, the share of draws a patch gets falls with its
    distance from the centre, shell by shell, and matches sampling without replacement from those weights."""
    from vlret.models.avse import RadialBiasSampler, grid_distances

    side, k, draws = 6, 8, 4000
    sampler = RadialBiasSampler(count=1, select="multinomial", alpha=1.0, rate_train=k / (side * side))
    torch.manual_seed(0)
    pixels = torch.zeros(draws, 3, 4, 4)
    with torch.no_grad():
        centres = sampler.centres(pixels, side * side, None)[0]  # the same generator calls as a draw
    torch.manual_seed(0)
    picked = sampler.select_patches(pixels, side, has_cls=False, training=True)[0]  # [draws, k]
    assert picked.shape == (draws, sampler.keep_count(side * side, False, True))
    distances = grid_distances(side)
    picked_distance = torch.stack([distances[c, p] for c, p in zip(centres, picked, strict=True)])
    share = [float((picked_distance.round() == d).float().mean()) for d in range(4)]
    per_cell = [
        share[d] / float((distances[centres].round() == d).float().mean()) for d in range(4)
    ]  # draws per available cell at that distance
    assert per_cell[0] > per_cell[1] > per_cell[2] > per_cell[3]
    # the centre is drawn first almost always (weight 1 against e^-1 and less): at least once per draw
    assert float((picked_distance == 0).any(dim=1).float().mean()) > 0.9


def test_random_centres_are_uniform_over_the_cells():
    from vlret.models.avse import RadialBiasSampler

    sampler, cells, draws = RadialBiasSampler(count=2), 16, 16000
    torch.manual_seed(1)
    centres = sampler.centres(torch.zeros(draws // 2, 3, 4, 4), cells, None).flatten()
    counts = torch.bincount(centres, minlength=cells).float()
    expected = draws / cells
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 45  # 15 degrees of freedom: p < 1e-4 above this


def test_topk_views_keep_exactly_the_nearest_cells_ties_to_the_lower_index():
    from vlret.models.avse import RadialBiasSampler, grid_distances

    side = 5
    sampler = RadialBiasSampler(count=3, rate_train=0.4)
    torch.manual_seed(2)
    pixels = torch.zeros(7, 3, 4, 4)
    with torch.no_grad():
        centres = sampler.centres(pixels, side * side, None)
    torch.manual_seed(2)
    picked = sampler.select_patches(pixels, side, has_cls=False, training=True)
    k = picked.shape[-1]
    distances = grid_distances(side)
    for v in range(3):
        for b in range(7):
            row = distances[centres[v, b]].tolist()
            nearest = sorted(range(side * side), key=lambda j: (row[j], j))[:k]
            assert picked[v, b].tolist() == nearest


def test_token_drop_drops_the_expected_share_and_spares_a_fifth_of_the_images():
    """u ~ U(0, 1); an image is augmented when u > 0.2 and then drops each token with probability
    max_rate * u: the expected share is max_rate * (1 - 0.2^2) / 2 = 0.48 max_rate."""
    from vlret.models.avse import drop_tokens

    torch.manual_seed(3)
    mask = torch.ones(20000, 50, dtype=torch.bool)
    kept = drop_tokens(mask, max_rate=0.5)
    dropped = 1 - kept.float().mean()
    assert abs(float(dropped) - 0.48 * 0.5) < 0.005
    untouched = float(kept.all(dim=1).float().mean())
    assert 0.2 <= untouched < 0.2 + 0.02  # u <= 0.2, plus the rare augmented row that lost nothing


# ----- evaluation sets its own mode -------------------------------------------------------------------------


def test_evaluation_of_a_model_left_in_training_mode_is_that_of_evaluation_mode(synth_data):
    """Dropout 0.5 makes training-mode embeddings random: evaluate_model must switch the model to evaluation
    itself (and give it back as it found it)."""
    from vlret.data import load_dataset
    from vlret.evaluate import evaluate_model
    from vlret.models import create_model

    data = load_dataset(synth_data)
    captions = [c.text for c in data.captions]
    model = create_model("tiny-cnn", captions=captions, seed=0, width=16, embed_dim=16, dropout=0.5)
    expected = evaluate_model(model.eval(), data, split="test", use_cache=False, progress=False)["metrics"]
    model.train()
    for _ in range(2):
        got = evaluate_model(model, data, split="test", use_cache=False, progress=False)["metrics"]
        assert got == expected
    assert model.training


def test_check_head_fits_scores_in_evaluation_mode_and_restores_the_mode(synth_data):
    from vlret.data import load_dataset
    from vlret.evaluate.encode import check_head_fits
    from vlret.models import create_model

    data = load_dataset(synth_data).split("train")
    model = create_model("tiny-cnn", captions=[c.text for c in data.captions], head="maxsim", dropout=0.5)
    seen = []
    real = model.head.score
    model.head.score = lambda texts, items: seen.append(model.training) or real(texts, items)
    model.train()
    state = torch.get_rng_state()
    check_head_fits(model, data)
    assert seen == [False] and model.training
    assert torch.equal(torch.get_rng_state(), state)  # the check draws nothing from the run's generator


# ----- schedules by hand ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, step, expected",
    [
        # 4 warm-up steps of a 24-step run: (step + 1) / 4
        ("cosine", 0, 0.25),
        ("cosine", 3, 1.0),
        # then cosine over the 20 steps left, down to min_lr_ratio 0.1: 0.1 + 0.9 * (1 + cos(pi p)) / 2
        ("cosine", 4, 1.0),
        ("cosine", 14, 0.1 + 0.9 * 0.5),  # p = 10 / 20: half-way
        ("cosine", 9, 0.1 + 0.9 * (1 + math.cos(math.pi * 0.25)) / 2),
        ("cosine", 24, 0.1),
        ("linear", 14, 0.1 + 0.9 * 0.5),
        ("linear", 19, 0.1 + 0.9 * 0.25),
        # step: epochs of 6 steps, x0.5 from epoch 2 and again from epoch 3 (warm-up first)
        ("step", 11, 1.0),
        ("step", 12, 0.5),
        ("step", 18, 0.25),
        ("constant", 20, 1.0),
    ],
)
def test_schedules_against_hand_computed_values(name, step, expected):
    from vlret.train.recipe import ScheduleSection
    from vlret.train.schedule import lr_multiplier

    section = ScheduleSection(name=name, warmup_steps=4, min_lr_ratio=0.1, step_epochs=[2, 3], gamma=0.5)
    assert lr_multiplier(section, 24, 6)(step) == pytest.approx(expected, abs=1e-12)


def test_the_trainers_learning_rate_follows_the_schedule_step_by_step(synth_data, tmp_path):
    """The optimiser's rate after each step, as the trainer steps it, against the hand-computed factor."""
    from vlret.train import Trainer, load_recipe

    recipe = load_recipe(
        None,
        [
            f"data.path={synth_data}",
            f"output_dir={tmp_path / 'run'}",
            "train.epochs=1",
            "train.batch_size=48",
            "train.max_steps=4",
            "optim.lr=0.01",
            "schedule={name: linear, warmup_steps: 2, min_lr_ratio: 0.0}",
            "model.options={width: 16, embed_dim: 16}",
        ],
    )
    trainer = Trainer(recipe, progress=False)
    total = trainer.steps_per_epoch  # 240 pairs / 48 = 5 steps in the epoch; the schedule spans it
    assert total == 5
    batches = __import__("vlret.train.data", fromlist=["EpochBatches"]).EpochBatches(
        trainer.source, trainer.model.tokenize, 48, 0, 0, trainer.info
    )
    rates = []
    for n in range(4):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step([batches[n]], 0)
    # warm-up (s + 1) / 2 for s = 0, 1; then linear over the 3 steps left: 1 - (s - 2) / 3
    assert rates == pytest.approx([0.005, 0.01, 0.01, 0.01 * 2 / 3])


# ----- which loss term reaches which parameter --------------------------------------------------------------


def _grads(model, loss_spec, synth_data, tmp_path):
    from vlret.train import Trainer, load_recipe
    from vlret.train.trainer import encode_batch

    recipe = load_recipe(
        None,
        [
            f"data.path={synth_data}",
            f"output_dir={tmp_path / 'run'}",
            "train.batch_size=8",
            f"losses={loss_spec}",
            "model.options={width: 16, embed_dim: 16}",
            "model.head={name: itm, dim: 16, layers: 1, heads: 2, k_test: 4}",
        ],
    )
    trainer = Trainer(recipe, progress=False, overwrite=True)
    from vlret.train.data import EpochBatches

    batch = EpochBatches(trainer.source, trainer.model.tokenize, 8, 0, 0, trainer.info)[0]
    outputs = encode_batch(trainer.model, batch, trainer.info, trainer.device, trainer.loss.needs)
    total, _ = trainer.loss(outputs, {"epoch": 0})
    total.backward()
    touched = {
        name.split(".")[0] if not name.startswith("head.") else "head"
        for name, p in trainer.model.named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    return touched


@pytest.mark.parametrize(
    "loss_spec, reaches, spares",
    [
        ("{infonce: {weight: 1.0}}", {"logit_scale", "image_encoder", "text_encoder"}, {"head"}),
        ("{hinge: {weight: 1.0}}", {"image_encoder", "text_encoder"}, {"head", "logit_scale"}),
        ("{itm: {weight: 1.0}}", {"head"}, {"logit_scale"}),
    ],
)
def test_each_loss_term_reaches_only_its_parameters(loss_spec, reaches, spares, synth_data, tmp_path):
    """ITC (InfoNCE) trains the towers and the temperature, not the ITM head; the hinge has no temperature;
    ITM trains the fusion head (and, through it, the towers' features), never the temperature."""
    touched = _grads(None, loss_spec, synth_data, tmp_path)
    assert reaches <= touched, touched
    assert not (spares & touched), touched


# ----- non-finite embeddings a model emits ------------------------------------------------------------------


def test_a_model_that_emits_a_nan_embedding_is_refused_naming_the_caption(synth_data, monkeypatch):
    from vlret.data import load_dataset
    from vlret.errors import VlretError
    from vlret.evaluate import evaluate_model
    from vlret.models import create_model

    data = load_dataset(synth_data)
    model = create_model("tiny-cnn", captions=[c.text for c in data.captions], seed=0, width=16, embed_dim=16)
    real = model.encode_texts

    def poisoned(batch):
        out = real(batch)
        embeds = out.embeds.clone()
        embeds[-1, 0] = float("nan")
        return Features(embeds, out.tokens, out.mask)

    monkeypatch.setattr(model, "encode_texts", poisoned)
    with pytest.raises(VlretError, match="embedding of caption .* is not finite"):
        evaluate_model(model, data, split="test", use_cache=False, progress=False)


def test_a_query_whose_embedding_is_not_finite_is_refused(synth_data, tmp_path, monkeypatch):
    from vlret.data import load_dataset
    from vlret.errors import VlretError
    from vlret.index import Searcher, build_index
    from vlret.models import create_model

    data = load_dataset(synth_data)
    create_model("tiny-cnn", captions=[c.text for c in data.captions], seed=0).save(tmp_path / "m")
    index = build_index(str(tmp_path / "m"), tmp_path / "idx", dataset=data.split("test"), progress=False)
    searcher = Searcher(index)
    real = searcher.model.encode_texts
    monkeypatch.setattr(
        searcher.model, "encode_texts", lambda b: Features(real(b).embeds * float("inf"), None, None)
    )
    with pytest.raises(VlretError, match="non-finite embedding for this query"):
        searcher.text_to_image("a red circle", k=3)
    assert np.isfinite(np.load(index / "embeddings.npy")).all()


# ----- constraints on both axes, as equalities --------------------------------------------------------------


def test_sinkhorn_plan_is_the_transport_plan_of_both_marginals():
    """An independent Sinkhorn (plain scaling in float64) on the same couplings, dustbins included: its rows
    carry 1/(P+Q) each and the row dustbin Q/(P+Q), its columns 1/(P+Q) and P/(P+Q), as equalities; and the
    head's log-domain plan, without the dustbins, is that plan element by element."""
    from vlret.models.heads.aeom import log_optimal_transport

    p, q, bin_score = 6, 4, 0.3
    scores = torch.randn(2, p, q, dtype=torch.float64)
    plan = log_optimal_transport(scores, torch.tensor(bin_score, dtype=torch.float64), 500).exp() / (p + q)
    for b in range(2):
        couplings = np.full((p + 1, q + 1), bin_score)
        couplings[:p, :q] = scores[b].numpy()
        kernel = np.exp(couplings)
        mu = np.append(np.full(p, 1 / (p + q)), q / (p + q))
        nu = np.append(np.full(q, 1 / (p + q)), p / (p + q))
        a, c = np.ones(p + 1), np.ones(q + 1)
        for _ in range(5000):
            a = mu / (kernel @ c)
            c = nu / (kernel.T @ a)
        full = a[:, None] * kernel * c[None, :]
        np.testing.assert_allclose(full.sum(1), mu, atol=1e-10)
        np.testing.assert_allclose(full.sum(0), nu, atol=1e-10)
        np.testing.assert_allclose(plan[b].numpy(), full[:p, :q], atol=1e-8)


# ----- cache keys: every keyed field misses ------------------------------------------------------------------


def test_the_feature_cache_key_changes_with_every_field_it_keys(synth_data, tmp_path):
    from vlret.data import load_dataset
    from vlret.evaluate.encode import cache_key
    from vlret.models import create_model

    data = load_dataset(synth_data).split("test")
    model = create_model("tiny-cnn", captions=[c.text for c in data.captions], seed=0, width=16, embed_dim=16)
    base = cache_key(model, data)
    assert cache_key(model, data) == base
    other_weights = create_model(
        "tiny-cnn", captions=[c.text for c in data.captions], seed=0, width=16, embed_dim=16
    )
    with torch.no_grad():
        other_weights.logit_scale.add_(1e-3)
    other_model = create_model(
        "tiny-cnn", captions=[c.text for c in data.captions], seed=0, width=16, embed_dim=32
    )
    edited = load_dataset(synth_data).split("test")
    edited.captions[3] = type(edited.captions[3])("a caption that changed", edited.captions[3].item_id)
    moved = load_dataset(synth_data, media_root=tmp_path).split("test")
    keys = {
        "weights": cache_key(other_weights, data),
        "model": cache_key(other_model, data),
        "captions": cache_key(model, edited),
        "media_root": cache_key(model, moved),
        "tokens float32": cache_key(model, data, "float32"),
        "tokens float16": cache_key(model, data, "float16"),
    }
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys
