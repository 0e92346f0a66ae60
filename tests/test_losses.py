"""Loss values against hand computation: InfoNCE (with the multi-positive mask) and the VSE++ hinge."""

import math

import pytest
import torch

from vlret.losses import HingeLoss, InfoNCELoss


def _outputs(image, text, item_ids, logit_scale=0.0):
    return {
        "image_embeds": torch.tensor(image, dtype=torch.float64),
        "text_embeds": torch.tensor(text, dtype=torch.float64),
        "item_ids": torch.tensor(item_ids),
        "logit_scale": torch.tensor(logit_scale, dtype=torch.float64),
    }


def test_infonce_two_pairs_by_hand():
    # logits = identity; each row: -log(e / (e + 1)) = ln(1 + e) - 1
    out = InfoNCELoss()(_outputs([[1, 0], [0, 1]], [[1, 0], [0, 1]], [0, 1]), {})
    assert out["infonce"].item() == pytest.approx(math.log(1 + math.e) - 1, abs=1e-9)


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def test_infonce_multi_positive_by_hand():
    # images 0 and 1 are the same item. v = (1,0), (.8,.6), (0,1); t = (1,0), (.6,.8), (0,1); scale 1.
    #   image rows: [1, .6, 0], [.8, .96, .6], [0, .8, 1]; text rows: [1, .8, 0], [.6, .96, .8], [0, .6, 1]
    #   targets for rows 0 and 1 (either side): [.5, .5, 0]; row 2: [0, 0, 1]
    i2t = ((_lse(1, 0.6, 0) - 0.8) + (_lse(0.8, 0.96, 0.6) - 0.88) + (_lse(0, 0.8, 1) - 1)) / 3
    t2i = ((_lse(1, 0.8, 0) - 0.9) + (_lse(0.6, 0.96, 0.8) - 0.78) + (_lse(0, 0.6, 1) - 1)) / 3
    outputs = _outputs([[1, 0], [0.8, 0.6], [0, 1]], [[1, 0], [0.6, 0.8], [0, 1]], [0, 0, 1])
    assert InfoNCELoss()(outputs, {})["infonce"].item() == pytest.approx((i2t + t2i) / 2, abs=1e-9)
    # without the mask only the diagonal is positive
    i2t_plain = ((_lse(1, 0.6, 0) - 1) + (_lse(0.8, 0.96, 0.6) - 0.96) + (_lse(0, 0.8, 1) - 1)) / 3
    t2i_plain = ((_lse(1, 0.8, 0) - 1) + (_lse(0.6, 0.96, 0.8) - 0.96) + (_lse(0, 0.6, 1) - 1)) / 3
    plain = InfoNCELoss(multi_positive=False)(outputs, {})["infonce"].item()
    assert plain == pytest.approx((i2t_plain + t2i_plain) / 2, abs=1e-9)


def test_infonce_counts_both_directions_on_an_asymmetric_batch():
    # v = (1,0), (0,1); t = (1,0), (1,0); scale 1 -> logits [[1, 1], [0, 0]] (not symmetric).
    #   image->text rows: lse(1,1) - 1 = ln 2 and lse(0,0) - 0 = ln 2            -> mean ln 2
    #   text->image rows (columns): lse(1,0) - 1 and lse(1,0) - 0                -> mean ln(1+e) - 1/2
    # Either direction alone (ln 2 = .693, or .813) differs from the symmetric loss (.753).
    outputs = _outputs([[1, 0], [0, 1]], [[1, 0], [1, 0]], [0, 1])
    expected = (math.log(2) + math.log(1 + math.e) - 0.5) / 2
    assert InfoNCELoss()(outputs, {})["infonce"].item() == pytest.approx(expected, abs=1e-12)


def test_infonce_temperature_is_clamped():
    outputs = _outputs([[1, 0], [0, 1]], [[1, 0], [0, 1]], [0, 1], logit_scale=10.0)  # exp(10) > 100
    value = InfoNCELoss(max_logit_scale=100.0)(outputs, {})["infonce"].item()
    assert value == pytest.approx(math.log(1 + math.exp(-100)), abs=1e-12)  # scale 100: -log(e^100/(e^100+1))


S = torch.tensor([[0.9, 0.5, 0.2], [0.7, 0.6, 0.1], [0.3, 0.65, 0.4]], dtype=torch.float64)
# margin 0.2, diagonal [.9, .6, .4]
# caption costs: row 0 none; row 1: j0 .3; row 2: j0 .1, j1 .45   -> max-sum .75, sum .85
# image costs:   col 0 none; col 1: i0 .1, i2 .25; col 2 none      -> max-sum .25, sum .35


def _hinge(loss, item_ids=(0, 1, 2), epoch=0):
    return loss({"scores": S, "item_ids": torch.tensor(item_ids)}, {"epoch": epoch})["hinge"].item()


def test_hinge_hardest_negative_by_hand():
    assert _hinge(HingeLoss()) == pytest.approx(1.0)
    assert _hinge(HingeLoss(reduction="mean")) == pytest.approx(1.0 / 3)


def test_hinge_all_negatives_and_warmup():
    assert _hinge(HingeLoss(max_violation=False)) == pytest.approx(1.2)
    warm = HingeLoss(warmup_epochs=1)
    assert _hinge(warm, epoch=0) == pytest.approx(1.2) and _hinge(warm, epoch=1) == pytest.approx(1.0)


def test_hinge_same_image_mask():
    # items [0, 0, 1]: the pair (image 1, caption 0) is no longer a negative -> row 1 cost .3 disappears
    assert _hinge(HingeLoss(mask_same_image=True), item_ids=(0, 0, 1)) == pytest.approx(0.70)
    assert _hinge(HingeLoss(mask_same_image=False), item_ids=(0, 0, 1)) == pytest.approx(1.0)


def test_hinge_cosine_path_equals_given_similarity():
    image = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=1)
    ids = torch.arange(4)
    a = HingeLoss()({"image_embeds": image, "text_embeds": text, "item_ids": ids}, {})["hinge"]
    b = HingeLoss()({"scores": image @ text.T, "item_ids": ids}, {})["hinge"]
    assert a.item() == pytest.approx(b.item())
