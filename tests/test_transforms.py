"""CLIP preprocessing without torchvision: geometry by hand, pixels against hand-computed values and HF's PIL processor."""

import numpy as np
import pytest
from PIL import Image

from vlret.data.transforms import CLIP_MEAN, CLIP_STD, ImageTransform, center_crop_box, resized_shortest_side


def test_resized_size_truncates_like_torchvision():
    # 224 * 640 / 427 = 335.74 -> 335; portrait the other way round
    assert resized_shortest_side(640, 427, 224) == (335, 224)
    assert resized_shortest_side(427, 640, 224) == (224, 335)
    assert resized_shortest_side(500, 500, 224) == (224, 224)


def test_crop_box_rounds_half_to_even_like_torchvision():
    assert center_crop_box(300, 224, 224) == (38, 0, 262, 224)
    assert center_crop_box(225, 224, 224) == (0, 0, 224, 224)  # round(0.5) = 0
    assert center_crop_box(227, 224, 224) == (2, 0, 226, 224)  # round(1.5) = 2
    assert center_crop_box(224, 335, 224) == (0, 56, 224, 280)  # round(55.5) = 56


def test_normalised_pixels_hand_computed():
    # No resize (shortest side is already 224): output = crop then (x/255 - mean) / std.
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(224, 300, 3), dtype=np.uint8)
    out = ImageTransform()(Image.fromarray(raw))
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    for y, x, c in [(0, 0, 0), (10, 100, 1), (223, 223, 2)]:
        expected = (raw[y, x + 38, c] / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert out[c, y, x] == pytest.approx(expected, abs=1e-6)


def test_real_photo_matches_hf_pil_processor():
    from sklearn.datasets import load_sample_image
    from transformers import CLIPImageProcessorPil

    photo = Image.fromarray(load_sample_image("china.jpg"))  # 640 x 427
    ours = ImageTransform()(photo)
    hf = CLIPImageProcessorPil(size={"shortest_edge": 224}, do_center_crop=False)
    resized = hf(images=photo, return_tensors="np")["pixel_values"][0]  # [3, 224, 335], not cropped
    assert resized.shape == (3, 224, 335)
    # torchvision's crop starts at round((335 - 224) / 2) = 56 (HF's own crop would start at 55).
    np.testing.assert_allclose(ours, resized[:, :, 56:280], atol=1e-5)


def test_grayscale_becomes_three_channels_and_squash_mode():
    gray = Image.fromarray(np.full((40, 80), 128, dtype=np.uint8), mode="L")
    out = ImageTransform(size=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")(gray)
    assert out.shape == (3, 32, 32)
    np.testing.assert_allclose(out, (128 / 255 - 0.5) / 0.5, atol=1e-6)


def test_bad_settings():
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(size=100, crop=200)
    with pytest.raises(ValueError, match="resample"):
        ImageTransform(resample="cubic")
