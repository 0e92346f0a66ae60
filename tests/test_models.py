"""The model factory: tiny models, and transformers CLIP / SigLIP checked against transformers' own outputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_tiny import WORDS, make_clip, make_siglip
from vlret.errors import ConfigError
from vlret.models import create_model, load_model


@pytest.fixture(scope="module")
def photo():
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


def test_word_tokenizer_ids_by_hand():
    model = create_model("tiny-cnn", captions=["a red circle", "a red square", "a blue circle"])
    batch = model.tokenize(["A red star", "a circle"])
    tok = model.tokenizer
    words = [[tok.id_to_token(i) for i in row] for row in batch["input_ids"].tolist()]
    assert words == [["[CLS]", "a", "red", "[UNK]", "[SEP]"], ["[CLS]", "a", "circle", "[SEP]", "[PAD]"]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


@pytest.mark.parametrize("arch, n_tokens", [("tiny-cnn", 16), ("tiny-vit", 64)])
def test_tiny_shapes_and_save_load(tmp_path, arch, n_tokens):
    model = create_model(arch, captions=WORDS, seed=1).eval()
    pixels = torch.randn(3, 3, 64, 64)
    batch = model.tokenize(WORDS[:3])
    with torch.no_grad():
        img, txt = model.encode_images(pixels), model.encode_texts(batch)
    assert img.embeds.shape == (3, 128) and img.tokens.shape == (3, n_tokens, 128)
    assert txt.embeds.shape == (3, 128) and txt.mask.shape == txt.tokens.shape[:2]
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "vlret_model.json",
        "model.safetensors",
        "tokenizer.json",
    }
    again = create_model(str(tmp_path / "m")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(pixels).embeds, img.embeds)
        torch.testing.assert_close(again.encode_texts(again.tokenize(WORDS[:3])).embeds, txt.embeds)


def test_seed_fixes_init_and_differs_across_seeds():
    a = create_model("tiny-cnn", captions=WORDS, seed=5)
    b = create_model("tiny-cnn", captions=WORDS, seed=5)
    c = create_model("tiny-cnn", captions=WORDS, seed=6)
    pa, pb, pc = (next(m.image_encoder.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_name():
    with pytest.raises(ConfigError, match="tiny-cnn, tiny-vit, conse, composed.*hf:"):
        create_model("resnet-9000")
    with pytest.raises(ValueError, match="vocabulary"):
        create_model("tiny-cnn")


def test_hf_clip_matches_transformers(tmp_path, photo):
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    folder = make_clip(tmp_path / "clip")
    ours = create_model(f"hf:{folder}")
    ref = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessorPil.from_pretrained(folder)
    # An image whose crop margin is even, so HF's crop and torchvision's agree.
    image = photo.resize((48, 32))
    pixels = torch.from_numpy(ours.image_transform(image))[None]
    torch.testing.assert_close(
        pixels, processor(images=image, return_tensors="pt")["pixel_values"], atol=1e-5, rtol=0
    )
    with torch.no_grad():
        feats = ours.encode_images(pixels)
        torch.testing.assert_close(feats.embeds, ref.get_image_features(pixel_values=pixels).pooler_output)
        hidden = ref.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(
            feats.tokens, ref.visual_projection(ref.vision_model.post_layernorm(hidden[:, 1:]))
        )
        tok = AutoTokenizer.from_pretrained(folder)(WORDS, padding=True, return_tensors="pt")
        txt = ours.encode_texts(ours.tokenize(WORDS))
        expected = ref.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).pooler_output
        torch.testing.assert_close(txt.embeds, expected)
    assert feats.embeds.shape == (1, 24) and feats.tokens.shape == (1, 16, 24)


def test_hf_siglip_matches_transformers(tmp_path, photo):
    from transformers import AutoTokenizer, SiglipImageProcessorPil, SiglipModel

    folder = make_siglip(tmp_path / "siglip")
    ours = create_model(f"hf:{folder}")
    ref = SiglipModel.from_pretrained(folder).eval()
    processor = SiglipImageProcessorPil.from_pretrained(folder)
    pixels = torch.from_numpy(ours.image_transform(photo))[None]
    torch.testing.assert_close(
        pixels, processor(images=photo, return_tensors="pt")["pixel_values"], atol=1e-5, rtol=0
    )
    with torch.no_grad():
        torch.testing.assert_close(
            ours.encode_images(pixels).embeds, ref.get_image_features(pixel_values=pixels).pooler_output
        )
        tok = AutoTokenizer.from_pretrained(folder)(
            WORDS, padding="max_length", max_length=16, return_tensors="pt"
        )
        batch = ours.tokenize(WORDS)
        assert batch["input_ids"].shape == (4, 16)  # SigLIP pads to the full length
        expected = ref.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).pooler_output
        torch.testing.assert_close(ours.encode_texts(batch).embeds, expected)


def test_hf_model_saves_as_vlret_folder(tmp_path):
    ours = create_model(f"hf:{make_clip(tmp_path / 'clip')}")
    ours.save(tmp_path / "saved")
    again = load_model(tmp_path / "saved")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(pixels).embeds, ours.encode_images(pixels).embeds)
    assert again.image_transform == ours.image_transform
    assert np.isclose(again.logit_scale.item(), ours.logit_scale.item())


def test_origin_says_where_the_weights_came_from(tmp_path):
    fresh = create_model("tiny-cnn", captions=WORDS)
    assert fresh.identity()["origin"] == "initialised"
    fresh.save(tmp_path / "m")
    assert load_model(tmp_path / "m").identity()["origin"] == f"folder:{(tmp_path / 'm').resolve()}"
    clip = create_model(f"hf:{make_clip(tmp_path / 'clip')}")
    assert clip.identity()["origin"] == f"pretrained:{tmp_path / 'clip'}"
