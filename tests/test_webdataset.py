"""Webdataset shards (issue 28, section 1): tars of samples read as a dataset, their images read in place,
indexed and served like files."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vlret.cli import main
from vlret.data import load_dataset
from vlret.data.image_files import load_image
from vlret.errors import DataError
from vlret.index import Searcher, build_index
from vlret.models import create_model
from vlret.serve import create_app


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(synth_data, tmp_path_factory):
    """Two shards of the synthetic test images: captions as .txt (shard 0) and .json (shard 1); one sample
    without a caption. Returns the shards' folder, the images in shard order and their captions."""
    data = load_dataset(synth_data).split("test")
    folder = tmp_path_factory.mktemp("wds") / "shards"
    folder.mkdir()
    images, captions = [], []
    for s in range(2):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as archive:
            for n, item in enumerate(data.items[s * 3 : s * 3 + 3]):
                key = f"{s:05d}{n:04d}"
                path = data.media_path(item)
                _add(archive, f"{key}.png", path.read_bytes())
                text = next(c.text for c in data.captions if c.item_id == item.id)
                if (s, n) == (1, 2):
                    text = None  # a sample without a caption
                elif s == 0:
                    _add(archive, f"{key}.txt", text.encode())
                else:
                    _add(archive, f"{key}.json", json.dumps({"caption": text, "url": "x"}).encode())
                images.append(path)
                captions.append(text)
    return folder, images, captions


def test_shards_read_as_samples_grouped_by_key(shards):
    folder, images, captions = shards
    data = load_dataset(f"{folder}/{{00000..00001}}.tar")
    assert data.format == "webdataset"
    assert [it.id for it in data.items] == ["00000/000000000", "00000/000000001", "00000/000000002",
                                            "00001/000010000", "00001/000010001", "00001/000010002"]  # fmt: skip
    assert [it.path for it in data.items][:2] == ["00000.tar/000000000.png", "00000.tar/000000001.png"]
    assert {it.split for it in data.items} == {"train"}
    assert [c.text for c in data.captions] == [c for c in captions if c]
    assert data.captions[-1].item_id == "00001/000010001"  # the last sample has none
    # the folder of shards and one shard name the same samples
    assert [it.id for it in load_dataset(folder).items] == [it.id for it in data.items]
    one = load_dataset(folder / "00000.tar", split="test")
    assert [it.id for it in one.items] == ["000000000", "000000001", "000000002"]
    assert {it.split for it in one.items} == {"test"}


def test_an_image_is_read_from_its_shard_as_from_its_file(shards):
    folder, images, _ = shards
    data = load_dataset(folder)
    for item, original in zip(data.items, images, strict=True):
        inside = np.asarray(load_image(data.media_path(item)))
        assert (inside == np.asarray(load_image(original))).all()
    with pytest.raises(DataError, match="no member"):
        load_image(folder / "00000.tar" / "missing.png")


def test_bad_shards_are_named(shards, tmp_path):
    folder, _, _ = shards
    with pytest.raises(DataError, match="shard not found"):
        load_dataset(f"{folder}/{{00000..00002}}.tar")
    compressed = tmp_path / "c.tar"
    with tarfile.open(compressed, "w:gz") as archive:
        _add(archive, "a.png", b"x")
    with pytest.raises(DataError, match="not a readable uncompressed tar"):
        load_dataset(compressed, format="webdataset")
    no_image = tmp_path / "n.tar"
    with tarfile.open(no_image, "w") as archive:
        _add(archive, "a.txt", b"a caption")
        _add(archive, "b.png", _png())
    with pytest.raises(DataError, match="has no image"):
        load_dataset(no_image)
    skipped = load_dataset(no_image, on_error="skip")
    assert [it.id for it in skipped.items] == ["b"] and skipped.skipped[0].record == "a"


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_shards_are_indexed_and_served_like_files(shards, synth_data, tmp_path):
    folder, images, _ = shards
    model = tmp_path / "model"
    create_model("tiny-cnn", captions=["a red circle", "a blue square"]).save(model)
    pattern = f"{folder}/{{00000..00001}}.tar"
    assert (
        main(["index", "build", "--model", str(model), "--data", pattern, "--out", str(tmp_path / "wds")])
        == 0
    )
    files = tmp_path / "files"
    files.mkdir()
    for n, path in enumerate(images):
        (files / f"{n}.png").write_bytes(path.read_bytes())
    plain = build_index(str(model), tmp_path / "plain", images=files, progress=False)
    from_shards = (tmp_path / "wds").resolve()
    assert (
        np.load(from_shards / "embeddings.npy").tobytes()
        == np.load(plain.resolve() / "embeddings.npy").tobytes()
    )
    searcher = Searcher(tmp_path / "wds")
    assert searcher.meta["captions"] == 5
    hits = searcher.text_to_image("a red circle", 6)
    assert {h.path for h in hits} == {it.path for it in load_dataset(pattern).items}
    client = TestClient(create_app(tmp_path / "wds"))
    number = searcher.item_number(hits[0].id)
    thumbnail = client.get(f"/thumbnail/{number}")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
    media = client.get(f"/media/{number}")
    original = images[[it.path for it in load_dataset(pattern).items].index(hits[0].path)]
    assert media.status_code == 200 and media.content == original.read_bytes()
    assert Path(searcher.media_path(hits[0].path)).parent.name.endswith(".tar")


class _Pairs:
    """Just the length of a pair source: what the sampling order reads."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_resampled_epochs_draw_pairs_with_replacement_uniformly():
    from scipy.stats import chisquare

    from vlret.train.data import EpochBatches
    from vlret.train.distributed import DistInfo

    def order(n, epoch, sampling, seed=0):
        return EpochBatches(_Pairs(n), None, 10, epoch, seed, DistInfo(), sampling=sampling).order

    assert sorted(order(50, 0, "epoch")) == list(range(50))  # a permutation: each pair once
    drawn = order(10_000, 0, "resampled")
    # with replacement: the share of pairs drawn at least once is 1 - (1 - 1/n)^n, about 1 - 1/e
    assert abs(len(set(drawn.tolist())) / 10_000 - (1 - (1 - 1 / 10_000) ** 10_000)) < 0.015
    counts = np.bincount(np.concatenate([order(50, e, "resampled") for e in range(400)]), minlength=50)
    assert chisquare(counts).pvalue > 1e-3  # uniform over the pairs (400 draws each on average)
    assert (order(50, 3, "resampled") == order(50, 3, "resampled")).all()  # a resumed epoch draws the same
    assert (order(50, 3, "resampled") != order(50, 4, "resampled")).any()
    with pytest.raises(ValueError, match="sampling"):
        order(50, 0, "shuffled")


def test_a_model_trains_on_shards_with_resampled_epochs(shards, tmp_path):
    folder, _, _ = shards
    args = [
        "train",
        "--recipe",
        "demo_tiny",
        f"data.path={folder}/{{00000..00001}}.tar",
        "data.val_split=none",
    ]
    args += [
        "data.sampling=resampled",
        "train.batch_size=4",
        "train.max_steps=2",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in m for m in metrics)
    assert main([*args[:-1], f"output_dir={tmp_path / 'bad'}", "data.sampling=sometimes"]) == 2


def test_a_key_ends_at_the_first_dot_of_the_file_name_not_of_its_folder(synth_data, tmp_path):
    """Both sides of the documented rule: ``dir.v2/000001.png`` is sample ``dir.v2/000001`` (a dot in a
    folder is part of the key); ``000002.seg.png`` is member ``seg.png`` of sample ``000002``, which is
    not an image extension, so that sample has no image."""
    image = load_dataset(synth_data).split("test")
    png = image.media_path(image.items[0]).read_bytes()
    with tarfile.open(tmp_path / "00000.tar", "w") as archive:
        _add(archive, "dir.v2/000001.png", png)
        _add(archive, "dir.v2/000001.txt", b"a red circle")
        _add(archive, "000002.seg.png", png)
        _add(archive, "000002.txt", b"a blue square")
    with pytest.raises(DataError, match="000002"):
        load_dataset(tmp_path / "00000.tar")
    data = load_dataset(tmp_path / "00000.tar", on_error="skip")
    assert [it.id for it in data.items] == ["dir.v2/000001"]  # one shard: ids are the keys
    assert [c.text for c in data.captions] == ["a red circle"]
    assert load_image(data.media_path(data.items[0])).size == Image.open(io.BytesIO(png)).size


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 20, 20)).save(buffer, "PNG")
    return buffer.getvalue()


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            _add(archive, name, data)
    return path


def _cut_at_member(path: Path, members: int) -> None:
    """The tar cut short right after ``members`` whole members: no end-of-archive marker."""
    with tarfile.open(path) as archive:
        kept = archive.getmembers()[members - 1]
    end = kept.offset_data + -(-kept.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    path.write_bytes(path.read_bytes()[:end])


@pytest.mark.parametrize(
    "case, says, kept",
    [
        ("json", "0001.json: not valid JSON", 1),
        ("truncated", "it ends without the end-of-archive marker: cut short", 2),
        ("repeated", "1 member name(s) used twice, only the last one read (0001.png)", 2),
        ("case", "two members of sample '0001' have one extension", 1),
        ("absolute", "/abs0001.png: a member name that leaves the shard", 1),
        ("parent", "../0009.png: a member name that leaves the shard", 1),
    ],
)
def test_a_damaged_shard_is_an_error_under_raise_and_a_listed_skip_under_skip(tmp_path, case, says, kept):
    png = _png()
    members = [("0000.png", png), ("0000.txt", b"a red square")]
    members += {
        "json": [("0001.png", png), ("0001.json", b"{not json")],
        "truncated": [("0001.png", png), ("0002.png", png)],
        "repeated": [("0001.png", png), ("0001.png", png)],
        "case": [("0001.png", png), ("0001.PNG", png)],
        "absolute": [("/abs0001.png", png)],
        "parent": [("../0009.png", png)],
    }[case]
    shard = _shard(tmp_path / "s.tar", members)
    if case == "truncated":
        _cut_at_member(shard, 3)  # 0000.png, 0000.txt, 0001.png whole; 0002.png and the marker gone
    with pytest.raises(DataError, match="--on-error skip"):
        load_dataset(shard)
    with pytest.raises(DataError) as error:
        load_dataset(shard)
    assert says in str(error.value)
    data = load_dataset(shard, on_error="skip")
    assert len(data.items) == kept and any(says.split(": ", 1)[-1] in s.reason for s in data.skipped)


def test_a_whole_shard_reads_without_a_problem(tmp_path):
    png = _png()
    shard = _shard(
        tmp_path / "s.tar", [("0000.png", png), ("0001.png", png), ("0001.json", b'{"caption": "x"}')]
    )
    data = load_dataset(shard)
    assert len(data.items) == 2 and not data.skipped and [c.text for c in data.captions] == ["x"]


def test_an_unbalanced_brace_pattern_is_one_line(tmp_path, capsys):
    args = ["data", "stats", str(tmp_path / "wds" / "{0..1.tar")]
    assert main(args) == 2
    assert (
        "unbalanced braces: expected a pattern such as 'shards/{00000..00099}.tar'" in capsys.readouterr().err
    )
