"""ConSE (issue 29, section 1): real photos searched by text offline with the pretrained towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlret.cli import main
from vlret.data.image_files import load_image
from vlret.data.sample_photos import write_sample_photos
from vlret.index import Searcher
from vlret.models import create_model
from vlret.models.conse import imagenet_classes


@pytest.fixture(scope="module")
def conse():
    return create_model("conse")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    written = write_sample_photos(folder)
    assert {p.name for p in written} >= {"cat.png", "coffee.png", "flower.jpg", "rocket.jpg", "china.jpg"}
    return folder


def test_the_class_names_are_imagenets_in_the_classifiers_order():
    names = imagenet_classes()
    assert len(names) == 1000
    # a few well-known positions of the ImageNet-1k label order
    assert (names[0], names[1], names[281], names[504], names[985], names[999]) == (
        "tench", "goldfish", "tabby", "coffee mug", "daisy", "toilet tissue"
    )  # fmt: skip


def test_an_image_embedding_is_the_weighted_mean_of_its_top_classes_texts(conse, photos):
    """An independent formulation: the classifier's probabilities, the top 10 renormalised, the MiniLM
    embeddings of 'a photo of a <name>' for those ten, averaged with those weights."""
    image = load_image(photos / "coffee.png")
    pixels = torch.from_numpy(conse.image_transform(image))[None]
    with torch.no_grad():
        probabilities = conse.classifier(pixels).softmax(-1)[0].numpy()
        top = np.argsort(-probabilities)[:10]
        texts = [f"a photo of a {imagenet_classes()[i]}" for i in top]
        sentence = F.normalize(conse.text_tower(conse.text_tower.tokenize(texts)).embeds, dim=-1).numpy()
        expected = (probabilities[top, None] / probabilities[top].sum() * sentence).sum(0)
        got = conse.encode_images(pixels).embeds[0].numpy()
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-5)
    assert imagenet_classes()[top[0]] == "espresso"  # the classifier reads the photo
    with torch.no_grad():  # a query is its sentence embedding, normalised
        query = conse.encode_texts(conse.tokenize(["a cup of coffee"])).embeds[0]
        direct = F.normalize(conse.text_tower(conse.text_tower.tokenize(["a cup of coffee"])).embeds, dim=-1)[
            0
        ]
    torch.testing.assert_close(query, direct)


def test_simple_queries_find_their_photo(photos, tmp_path, capsys):
    assert (
        main(["index", "build", "--model", "conse", "--images", str(photos), "--out", str(tmp_path / "idx")])
        == 0
    )
    searcher = Searcher(tmp_path / "idx")
    for query, photo in [
        ("a cat", "cat.png"),
        ("a cup of coffee", "coffee.png"),
        ("a flower", "flower.jpg"),
        ("an astronaut", "astronaut.png"),
        ("a motorcycle", "motorcycle.png"),
        ("a temple", "china.jpg"),
    ]:
        assert searcher.text_to_image(query, 1)[0].path == photo, query
    # ImageNet has no rocket: the classifier sees a drilling platform (and a missile): near the top, not first
    ranked = [h.path for h in searcher.text_to_image("a rocket", 7)]
    assert ranked.index("rocket.jpg") < 3
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "a cat", "-k", "1"]) == 0
    said = capsys.readouterr()
    assert "cat.png" in said.out
    assert "Loading weights" not in said.err  # transformers' bars are silenced unless --verbose


def test_saved_and_loaded_it_embeds_alike(conse, photos, tmp_path):
    conse.save(tmp_path / "conse")
    loaded = create_model(str(tmp_path / "conse"))
    assert loaded.identity()["conse"] == conse.identity()["conse"]
    pixels = torch.from_numpy(conse.image_transform(load_image(photos / "cat.png")))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels).embeds, conse.encode_images(pixels).embeds)
    other = create_model("conse", top=3)
    with torch.no_grad():
        assert not torch.allclose(other.encode_images(pixels).embeds, conse.encode_images(pixels).embeds)
    with pytest.raises(Exception, match="top must be between"):
        create_model("conse", top=0)


def test_backbone_predict_names_the_classes(photos, capsys):
    assert main(["backbone", "predict", "efficientnet-lite0", str(photos / "cat.png"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "cat" in out.splitlines()[1]  # Egyptian cat, tabby or tiger cat first
