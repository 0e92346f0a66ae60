"""The precomp layout (region features + captions): reading, clear errors, protocols, region models."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlret.cli import main
from vlret.data import detect_format, load_dataset
from vlret.data.precomp import read_scan_vocab
from vlret.errors import DataError
from vlret.evaluate import evaluate_model
from vlret.models import create_model, load_model

WORDS = ["red", "blue", "green", "circle", "square", "triangle", "big", "small", "left", "right"] + [
    f"w{n}" for n in range(40)
]


def write_precomp(folder: Path, split: str, n_images: int, regions: int = 3, dim: int = 6, seed: int = 0):
    """``n_images`` random region arrays and 5 random captions each; returns (ims, caption lines)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ims = rng.normal(size=(n_images, regions, dim)).astype(np.float32)
    np.save(folder / f"{split}_ims.npy", ims)
    lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)))) for _ in range(5 * n_images)]
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return ims, lines


def test_reads_splits_ids_and_region_rows(tmp_path):
    ims, lines = write_precomp(tmp_path, "test", 4)
    write_precomp(tmp_path, "train", 6, seed=1)
    (tmp_path / "test_ids.txt").write_text("\n".join(["11", "12", "13", "14"]) + "\n")
    assert detect_format(tmp_path) == "precomp"
    data = load_dataset(tmp_path)
    test = data.split("test")
    assert [it.id for it in test.items] == ["test:11", "test:12", "test:13", "test:14"]
    assert [c.text for c in test.captions] == lines
    assert test.caption_to_item.tolist() == [c // 5 for c in range(20)]
    assert [it.id for it in data.split("train").items][:2] == ["train:0", "train:1"]
    from vlret.data.regions import load_regions

    np.testing.assert_array_equal(load_regions([test.media_path(test.items[2])]), ims[2:3])


def test_an_ims_file_with_one_row_per_caption(tmp_path):
    rng = np.random.default_rng(0)
    per_caption = rng.normal(size=(10, 2, 4)).astype(np.float32)
    np.save(tmp_path / "dev_ims.npy", per_caption)
    (tmp_path / "dev_caps.txt").write_text("\n".join(f"caption {c}" for c in range(10)) + "\n")
    data = load_dataset(tmp_path)
    assert [it.path for it in data.items] == ["dev_ims.npy#0", "dev_ims.npy#5"]  # image i is row 5 i


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda d: np.save(d / "test_ims.npy", np.zeros((3, 6), np.float32)),
            "test_ims.npy: expected a float array",
        ),
        (
            lambda d: np.save(d / "test_ims.npy", np.zeros((3, 2, 6), np.float32)),
            "test_ims.npy: 3 rows for 20 captions",
        ),
        (
            lambda d: (d / "test_caps.txt").write_text("a\nb\nc\n"),
            "test_caps.txt: 3 captions: expected 5 lines per image",
        ),
        (lambda d: (d / "test_ids.txt").write_text("1\n2\n"), "test_ids.txt: 2 ids for 4 images"),
        (
            lambda d: (d / "test_ims.npy").write_bytes(b"not numpy"),
            "test_ims.npy: cannot read as a .npy array",
        ),
    ],
)
def test_wrong_shapes_and_counts_name_the_file(tmp_path, break_it, message):
    from vlret.data.regions import open_region_file

    write_precomp(tmp_path, "test", 4)
    break_it(tmp_path)
    open_region_file.cache_clear()
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path)


def test_scan_vocabulary_files(tmp_path):
    words = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "red": 4, "circle": 5}
    (tmp_path / "v.json").write_text(json.dumps({"word2idx": words, "idx2word": {}, "idx": 6}))
    assert read_scan_vocab(tmp_path / "v.json") == words
    (tmp_path / "bad.json").write_text(json.dumps({"word2idx": {**words, "<unk>": 7}}))
    with pytest.raises(DataError, match="bad.json: <unk>: expected id 3"):
        read_scan_vocab(tmp_path / "bad.json")


def _region_model(captions, dim, head=None, vocab=None):
    text = (
        {"hidden": 12, "word_dim": 8, "min_count": 1}
        if vocab is None
        else {"hidden": 12, "word_dim": 8, "vocab": vocab}
    )
    return create_model(
        "composed",
        captions=captions,
        seed=0,
        head=head,
        image_tower="regions",
        text_tower="bigru",
        image_options={"dim": dim},
        text_options=text,
        embed_dim=16,
    )


def _ranks_by_numpy(texts: np.ndarray, items: np.ndarray, cap_item: np.ndarray):
    """Both directions' ranks from normalised features, in 1,000-row chunks (vlret's tie rule: wrong >= right)."""
    t2i = np.empty(len(texts), np.int64)
    scores_all = []
    for s in range(0, len(texts), 1000):
        block = texts[s : s + 1000] @ items.T
        own = block[np.arange(len(block)), cap_item[s : s + 1000]]
        t2i[s : s + 1000] = (block >= own[:, None]).sum(1) - 1
        scores_all.append(block)
    scores = np.concatenate(scores_all)
    i2t = np.empty(len(items), np.int64)
    for j in range(len(items)):
        right = cap_item == j
        best = scores[right, j].max()
        i2t[j] = int((scores[~right, j] >= best).sum())
    return t2i, i2t


def _normalised(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


@pytest.mark.parametrize(
    ("protocol", "split", "n_images"), [("flickr30k-1k", "test", 1000), ("coco-1k", "testall", 5000)]
)
def test_coco_and_flickr_protocols_on_precomp_match_numpy(tmp_path, protocol, split, n_images):
    ims, lines = write_precomp(tmp_path, split, n_images, regions=2, dim=4)
    model = _region_model(lines, dim=4)
    result = evaluate_model(model, load_dataset(tmp_path), protocol, split, use_cache=False, progress=False)
    with torch.no_grad():
        items = _normalised(model.encode_images(torch.from_numpy(ims)).embeds)
        texts = np.concatenate(
            [
                _normalised(model.encode_texts(model.tokenize(lines[s : s + 256])).embeds)
                for s in range(0, len(lines), 256)  # the evaluator's text batch
            ]
        )
    cap_item = np.arange(len(lines)) // 5
    folds = 1 if protocol == "flickr30k-1k" else 5
    expected = {f"{d}_r{k}": 0.0 for d in ("t2i", "i2t") for k in (1, 5, 10)}
    for f in range(folds):  # COCO 1K: five folds of 1,000 consecutive images, metrics averaged
        rows = slice(f * 5000, (f + 1) * 5000)
        t2i, i2t = _ranks_by_numpy(texts[rows], items[f * 1000 : (f + 1) * 1000], cap_item[rows] - f * 1000)
        for k in (1, 5, 10):
            expected[f"t2i_r{k}"] += np.mean(t2i < k) / folds
            expected[f"i2t_r{k}"] += np.mean(i2t < k) / folds
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-9), key
    assert result["counts"]["gallery_items"] == n_images


def test_region_model_trains_saves_and_reloads_from_the_cli(tmp_path, capsys):
    _, lines = write_precomp(tmp_path / "data", "train", 40)
    write_precomp(tmp_path / "data", "dev", 8, seed=1)
    write_precomp(tmp_path / "data", "test", 8, seed=2)
    code = main(
        [
            "train",
            f"data.path={tmp_path / 'data'}",
            f"output_dir={tmp_path / 'run'}",
            "data.val_split=dev",
            "train.max_steps=3",
            "train.batch_size=16",
            "model.name=composed",
            "model.head={name: maxsim}",
            "model.options={image_tower: regions, text_tower: bigru, image_options: {dim: 6}, "
            "text_options: {hidden: 12, word_dim: 8, min_count: 1}, embed_dim: 16}",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    best = tmp_path / "run" / "checkpoints" / "best" / "model"
    model = load_model(best)
    assert model.input_kind == "regions" and model.origin.startswith("folder:")
    assert model.text_tower.embed.weight.requires_grad  # a word tower starts untrained, so it trains
    capsys.readouterr()
    assert main(["eval", "--model", str(best), "--data", str(tmp_path / "data"), "--no-cache"]) == 0
    assert "| composed | generic |" in capsys.readouterr().out


def test_pixel_and_region_models_refuse_the_other_input_clearly(tmp_path, synth_data, capsys):
    _, lines = write_precomp(tmp_path / "pc", "test", 4)
    tiny = create_model("tiny-cnn", captions=lines)
    with pytest.raises(DataError, match="precomputed region features, but tiny-cnn reads pixels"):
        evaluate_model(tiny, load_dataset(tmp_path / "pc"), use_cache=False, progress=False)
    images = load_dataset(synth_data)
    region = _region_model([c.text for c in images.captions], dim=6)
    with pytest.raises(DataError, match="composed reads region features"):
        evaluate_model(region, images, use_cache=False, progress=False)


def test_a_scan_vocabulary_file_sets_the_word_ids(tmp_path):
    words = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "red": 4, "circle": 5}
    (tmp_path / "vocab.json").write_text(json.dumps({"word2idx": words}))
    model = _region_model(None, dim=6, vocab=str(tmp_path / "vocab.json"))
    batch = model.tokenize(["Red CIRCLE", "blue"])
    # <start> red circle <end>; blue is unknown: <start> <unk> <end> <pad>
    assert batch["input_ids"].tolist() == [[1, 4, 5, 2], [1, 3, 2, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # padding never reaches the GRU: a caption's features do not depend on its batch
    with torch.no_grad():
        alone = model.encode_texts(model.tokenize(["blue"])).embeds
        padded = model.encode_texts(batch).embeds[1:]
    torch.testing.assert_close(alone, padded)
