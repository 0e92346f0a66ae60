"""The short Python API (issue 29, section 3b): strings and pictures in, arrays out, on every model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlret.data.image_files import load_image
from vlret.data.sample_photos import write_sample_photos
from vlret.errors import ConfigError
from vlret.models import create_model, similarity


@pytest.fixture(scope="module")
def tiny():
    return create_model("tiny-cnn", captions=["a red circle", "two blue squares"])


def test_encode_text_equals_the_model_calls_it_stands_for(tiny):
    texts = ["a red circle", "two blue squares", "a red square"]
    with torch.no_grad():
        direct = F.normalize(tiny.encode_texts(tiny.tokenize(texts)).embeds, dim=-1).numpy()
    got = tiny.encode_text(texts, batch_size=2)  # batches of 2 and 1
    assert isinstance(got, np.ndarray) and got.shape == direct.shape
    np.testing.assert_allclose(got, direct, atol=1e-6)
    np.testing.assert_allclose(tiny.encode_text("a red circle"), direct[0], atol=1e-6)  # one text: [D]
    raw = tiny.encode_text(texts, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)


def test_encode_image_takes_pictures_and_files(tiny, synth_data):
    files = sorted((synth_data.parent / "images" / "test").glob("*.png"))[:3]
    pictures = [load_image(f) for f in files]
    pixels = torch.from_numpy(np.stack([tiny.image_transform(p) for p in pictures]))
    with torch.no_grad():
        direct = F.normalize(tiny.encode_images(pixels).embeds, dim=-1).numpy()
    np.testing.assert_allclose(tiny.encode_image(files), direct, atol=1e-6)
    np.testing.assert_allclose(tiny.encode_image(pictures, batch_size=1), direct, atol=1e-6)
    np.testing.assert_allclose(tiny.encode_image(str(files[0])), direct[0], atol=1e-6)
    grey = Image.open(files[0]).convert("L")  # any mode: converted as the model needs
    assert tiny.encode_image(grey).shape == direct[0].shape


def test_training_mode_is_kept_and_eval_is_used(tiny):
    from PIL import Image

    grey = Image.new("RGB", (40, 30), (128, 128, 128))
    tiny.train()
    first = tiny.encode_text(["a red circle"])
    assert tiny.training and all(m.training for m in tiny.modules())
    np.testing.assert_allclose(first, tiny.encode_text(["a red circle"]))  # no dropout noise
    tiny.encode_image(grey)
    assert all(m.training for m in tiny.modules())
    tiny.eval()  # a model that was in eval mode stays there, every module of it
    tiny.encode_text(["a red circle"])
    tiny.encode_image(grey)
    assert not any(m.training for m in tiny.modules())


def test_similarity_is_the_cosine_with_single_axes_dropped():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    expected = np.array([[0.8, 7 / (5 * np.sqrt(2)), -0.6], [0.0, 1 / np.sqrt(2), -1.0]])
    np.testing.assert_allclose(similarity(a, b), expected, rtol=1e-6)
    assert similarity(a[0], b).shape == (3,) and similarity(a, b[0]).shape == (2,)
    assert np.isclose(similarity(a[0], b[0]), 0.8)
    with pytest.raises(ConfigError, match="2 and 3 dimensions"):
        similarity(a, np.ones((1, 3)))


def test_bad_inputs_are_named(tiny):
    with pytest.raises(ConfigError, match="at least one input"):
        tiny.encode_text([])
    with pytest.raises(ConfigError, match="batch_size"):
        tiny.encode_text(["x"], batch_size=0)
    refused = [
        (lambda: tiny.encode_text(None), "texts: expected a string or a list of strings, not None"),
        (lambda: tiny.encode_text([None]), r"texts\[0\] is None, not a string"),
        (lambda: tiny.encode_text(["a", 3]), r"texts\[1\] is a int, not a string"),
        (
            lambda: tiny.encode_image(None),
            "images: expected a PIL image, a file path or a list of them, not None",
        ),
        (lambda: tiny.encode_image([None]), r"images\[0\] is None, not a PIL image or a file path"),
        (
            lambda: tiny.encode_image(np.zeros((8, 8, 3), np.uint8)),
            r"images is a numpy array of shape \(8, 8, 3\): give PIL images \(Image.fromarray",
        ),
        (lambda: tiny.encode_image([np.zeros((8, 8, 3))]), r"images\[0\] is a numpy array.*Image.fromarray"),
        (lambda: similarity(None, np.ones(3)), "similarity: a must be embeddings"),
        (lambda: similarity(np.ones(3), np.ones((1, 1, 3))), "similarity: b must be embeddings"),
    ]
    for call, says in refused:
        with pytest.raises(ConfigError, match=says):
            call()
    np.testing.assert_allclose(
        tiny.encode_text(np.array(["a red circle"])), tiny.encode_text(["a red circle"])
    )


def test_similarity_refuses_non_finite_embeddings_as_ranking_does():
    from vlret.errors import NonFiniteScoreError

    a = np.ones((2, 3))
    a[1, 2] = np.nan
    with pytest.raises(NonFiniteScoreError, match="non-finite score nan at row 1, column 2"):
        similarity(a, np.ones((4, 3)))
    with pytest.raises(NonFiniteScoreError, match="inf at row 0, column 0"):
        similarity(np.ones(3), np.array([np.inf, 1.0, 1.0]))


@pytest.mark.parametrize(
    "size, refused",
    [((2_000, 40), False), ((2_000, 39), True), ((7_071, 7_071), False), ((7_072, 7_072), True)],
)
def test_a_pil_image_has_the_limits_of_every_image(tiny, size, refused):
    """Both sides of the aspect cap (50:1) and the pixel cap (50 million): a 20,000 x 1 image once took
    4.5 GB through a CLIP's encode_image."""
    picture = Image.new("RGB", size)
    if refused:
        with pytest.raises(ConfigError, match=r"images\[0\]: the image"):
            tiny.encode_image(picture)
    else:
        assert tiny.encode_image(picture).shape == (128,)


def test_the_five_line_example_of_the_readme_finds_the_cat(tmp_path):
    photos = write_sample_photos(tmp_path)
    model = create_model("conse")
    images = model.encode_image(photos)
    query = model.encode_text("a cat")
    assert photos[int(similarity(query, images).argmax())].name == "cat.png"


def test_on_a_transformers_clip_it_equals_transformers_own_features(tmp_path, synth_data):
    """The plain API on an architecture-true stand-in (a tiny CLIP saved as a hub download): texts through
    transformers' own tokenizer and get_text_features, images through get_image_features of the pixels."""
    from transformers import AutoTokenizer, CLIPModel

    from hf_tiny import make_clip

    folder = make_clip(tmp_path / "clip")
    model = create_model(f"hf:{folder}")
    reference = CLIPModel.from_pretrained(str(folder)).eval()
    texts = ["a red circle", "two blue squares on the left"]  # different lengths: padding in the batch
    batch = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    files = sorted((synth_data.parent / "images" / "test").glob("*.png"))[:2]
    pixels = torch.from_numpy(np.stack([model.image_transform(load_image(f)) for f in files]))

    def vectors(out):  # transformers 5 answers an output object whose pooler_output is the projection
        return F.normalize(out if torch.is_tensor(out) else out.pooler_output, dim=-1).numpy()

    with torch.no_grad():
        text_direct = vectors(reference.get_text_features(**batch))
        image_direct = vectors(reference.get_image_features(pixel_values=pixels))
    np.testing.assert_allclose(model.encode_text(texts, batch_size=1), text_direct, atol=1e-5)
    np.testing.assert_allclose(model.encode_image(files), image_direct, atol=1e-5)
    assert similarity(model.encode_text(texts[0]), model.encode_image(files)).shape == (2,)
