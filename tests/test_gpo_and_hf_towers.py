"""GPO pooling's properties, and transformers ViT / Swin / BERT towers built from tiny local checkpoints."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlret.models import create_model, load_model
from vlret.models.pooling import GPO


@pytest.fixture(scope="module")
def gpo():
    torch.manual_seed(0)
    return GPO().eval()


def test_gpo_weights_sum_to_one_and_ignore_padding(gpo):
    w = gpo.weights(torch.tensor([3, 5]), 6)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    assert (w[0, 3:] < 1e-30).all() and (w[1, 5:] < 1e-30).all()


def test_gpo_is_permutation_invariant_and_padding_does_not_count(gpo):
    tokens = torch.randn(1, 5, 8)
    pooled = gpo(tokens)
    torch.testing.assert_close(gpo(tokens[:, torch.randperm(5)]), pooled)
    padded = torch.cat([tokens, 100 * torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    torch.testing.assert_close(gpo(padded, mask), pooled)


def test_gpo_by_an_independent_formula(gpo):
    tokens = torch.randn(2, 4, 3)
    w = gpo.weights(torch.tensor([4, 4]), 4)
    # each channel's values sorted high to low, weighted by place
    expected = torch.stack(
        [
            torch.stack(
                [(w[b] * torch.sort(tokens[b, :, c], descending=True).values).sum() for c in range(3)]
            )
            for b in range(2)
        ]
    )
    torch.testing.assert_close(gpo(tokens), expected)
    one = torch.randn(1, 1, 3)
    torch.testing.assert_close(gpo(one), one[:, 0])  # a single token is its own pool
    same = torch.ones(1, 4, 3) * torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(gpo(same), same[:, 0])  # equal tokens pool to themselves


def _image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8))


@pytest.mark.parametrize("which", ["vit", "swin"])
def test_hf_vision_towers_match_transformers_on_its_own_preprocessing(which, vit_dir, swin_dir):
    from transformers import AutoImageProcessor, AutoModel

    folder = vit_dir if which == "vit" else swin_dir
    from vlret.models.backbones.hf_vision import HFVisionTower

    tower = HFVisionTower(folder).eval()
    image = _image()
    ours = torch.from_numpy(tower.transform(image))[None]
    theirs = AutoImageProcessor.from_pretrained(str(folder), use_fast=False)(image, return_tensors="pt")[
        "pixel_values"
    ]
    torch.testing.assert_close(
        ours, theirs, atol=2e-2, rtol=0
    )  # both resize with PIL; rounding differs slightly
    reference = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        features = tower(theirs)
        out = reference(pixel_values=theirs)
    torch.testing.assert_close(features.tokens, out.last_hidden_state)
    expected = out.last_hidden_state[:, 0] if which == "vit" else out.pooler_output
    torch.testing.assert_close(features.embeds, expected)


def test_hf_text_tower_cls_pooling_matches_transformers(bert_dir):
    from transformers import AutoModel, AutoTokenizer

    from vlret.models.backbones.minilm import HFTextTower

    tower = HFTextTower(bert_dir, pooling="cls").eval()
    batch = tower.tokenize(["a red circle", "the blue square on a red circle"])
    reference = AutoModel.from_pretrained(str(bert_dir)).eval()
    theirs = AutoTokenizer.from_pretrained(str(bert_dir))(
        ["a red circle", "the blue square on a red circle"], padding=True, return_tensors="pt"
    )
    assert batch["input_ids"].tolist() == theirs["input_ids"].tolist()
    with torch.no_grad():
        features = tower(batch)
        hidden = reference(**theirs).last_hidden_state
    torch.testing.assert_close(features.embeds, hidden[:, 0])
    assert features.mask.tolist() == theirs["attention_mask"].bool().tolist()


def test_composed_hf_towers_with_gpo_save_and_load(vit_dir, bert_dir, tmp_path):
    model = create_model(
        "composed",
        seed=0,
        image_tower="hf-vision",
        text_tower="hf-text",
        image_options={"source": str(vit_dir)},
        text_options={"source": str(bert_dir)},
        embed_dim=8,
        pooling="gpo",
    ).eval()
    assert model.origin == "pretrained:hf-vision+hf-text"
    pixels = torch.from_numpy(model.image_transform(_image()))[None]
    batch = model.tokenize(["a red circle", "blue"])
    with torch.no_grad():
        image = model.encode_images(pixels)
        text = model.encode_texts(batch)
        # the global vector is GPO over the projected tokens
        torch.testing.assert_close(
            image.embeds, model.image_pool(model.image_proj(model.image_tower(pixels).tokens))
        )
    assert text.embeds.shape == (2, 8) and image.tokens.shape[-1] == 8
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "image_tower" / "config.json").is_file()
    meta = json.loads((tmp_path / "m" / "vlret_model.json").read_text())
    assert meta["config"]["pooling"] == "gpo"
    loaded = load_model(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels).embeds, image.embeds)
        torch.testing.assert_close(loaded.encode_texts(batch).embeds, text.embeds)


def test_a_tower_without_a_source_is_a_clear_error():
    from vlret.errors import ConfigError

    with pytest.raises(ConfigError, match="image_options.source"):
        create_model(
            "composed",
            image_tower="hf-vision",
            text_tower="bigru",
            text_options={"min_count": 1},
            captions=["a"],
        )
