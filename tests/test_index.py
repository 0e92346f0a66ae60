"""The index: build from a folder or a dataset, search every direction, resume a killed build, swap atomically."""

import json
import os
import shutil

import numpy as np
import pytest

import vlret.index.build as build_module
from vlret.cli import main
from vlret.data import load_dataset
from vlret.errors import ConfigError, DataError
from vlret.index import Searcher, build_index, choose_index
from vlret.index.search import _Vectors
from vlret.models import create_model


@pytest.fixture(scope="module")
def model_dir(synth_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "m"
    captions = [c.text for c in load_dataset(synth_data).captions]
    create_model("tiny-cnn", captions=captions, seed=0).save(folder)
    return folder


def test_choice_by_size_and_budget():
    assert choose_index(50_000, 512).kind == "exact"
    ivf = choose_index(1_000_000, 512)
    # sqrt(1e6) = 1000 -> 2^10 lists, nprobe = 1024 / 16
    assert (ivf.kind, ivf.factory, ivf.nprobe, ivf.refine) == ("ivf_flat", "IVF1024,Flat", 64, 0)
    small = choose_index(1_000_000, 512, memory_budget_bytes=512 * 2**20)  # raw 1.9 GiB does not fit 512 MiB
    assert small.kind == "ivf_pq" and small.factory == "IVF1024,PQ64" and small.refine > 0


def test_build_from_folder_and_search(model_dir, synth_data, tmp_path):
    images = synth_data.parent / "images" / "test"
    index = build_index(str(model_dir), tmp_path / "idx", images=images, progress=False)
    searcher = Searcher(index)
    assert searcher.meta["items"] == 6 and searcher.meta["choice"]["kind"] == "exact"
    hits = searcher.text_to_image("a red circle", k=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    # scores are the cosine of the text embedding with each image's embedding (brute force)
    emb = np.load(index / "embeddings.npy")
    expected = np.sort(emb @ searcher.embed_text("a red circle"))[::-1][:4]
    np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5)
    first = images / hits[0].path
    assert searcher.image_to_image(first, k=1)[0].path == hits[0].path  # an image finds itself
    with pytest.raises(ConfigError, match="no captions were indexed"):
        searcher.text_to_text("a red circle")


def test_build_from_dataset_indexes_captions(model_dir, synth_data, tmp_path):
    test = load_dataset(synth_data).split("test")
    searcher = Searcher(build_index(str(model_dir), tmp_path / "idx", dataset=test, progress=False))
    caption = test.captions[7]
    assert searcher.text_to_text(caption.text, k=1)[0].text == caption.text
    assert len(searcher.image_to_text(test.media_path(test.items[0]), k=3)) == 3


def test_killed_build_resumes_without_reencoding(model_dir, synth_data, tmp_path, monkeypatch):
    images = tmp_path / "images"
    shutil.copytree(synth_data.parent / "images" / "train", images)
    names = sorted(p.name for p in images.iterdir())
    good = (images / names[9]).read_bytes()
    (images / names[9]).write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode"):
        build_index(str(model_dir), tmp_path / "idx", images=images, chunk_size=4, progress=False)
    assert sorted(p.name for p in (tmp_path / "idx.building" / "chunks").iterdir()) == ["00000", "00001"]
    (images / names[9]).write_bytes(good)
    loads = []
    real = build_module.load_image
    monkeypatch.setattr(
        build_module, "load_image", lambda path, record=None: loads.append(path) or real(path, record)
    )
    index = build_index(str(model_dir), tmp_path / "idx", images=images, chunk_size=4, progress=False)
    assert len(loads) == len(names) - 8  # the two finished chunks (8 images) were not encoded again
    fresh = build_index(str(model_dir), tmp_path / "fresh", images=images, chunk_size=4, progress=False)
    np.testing.assert_array_equal(np.load(index / "embeddings.npy"), np.load(fresh / "embeddings.npy"))


def test_on_error_skip_leaves_out_unreadable_images_and_their_captions(model_dir, synth_data, tmp_path):
    test = load_dataset(synth_data).split("test")
    media = tmp_path / "media"
    shutil.copytree(test.media_root, media)
    broken = test.items[2]
    (media / broken.path).write_bytes(b"not an image")
    dataset = load_dataset(synth_data, media_root=media).split("test")
    with pytest.raises(DataError, match="cannot decode"):
        build_index(str(model_dir), tmp_path / "strict", dataset=dataset, progress=False)
    index = build_index(
        str(model_dir), tmp_path / "idx", dataset=dataset, chunk_size=4, progress=False, on_error="skip"
    )
    meta = json.loads((index / "index.json").read_text())
    assert meta["items"] == len(test.items) - 1 and meta["skipped"][0]["file"].endswith(broken.path)
    searcher = Searcher(index)
    with pytest.raises(KeyError):
        searcher.item_number(broken.id)
    assert meta["captions"] == len(test.captions) - len(test.item_to_captions[2])
    assert all(c["item_id"] != broken.id for c in searcher.captions)
    assert len(searcher.text_to_image("a red circle", k=100)) == len(test.items) - 1


@pytest.mark.parametrize("k", [0, -3])
def test_search_refuses_k_below_one(model_dir, synth_data, tmp_path, k, capsys):
    index = build_index(
        str(model_dir), tmp_path / "idx", images=synth_data.parent / "images" / "test", progress=False
    )
    with pytest.raises(ConfigError, match="k must be"):
        Searcher(index).text_to_image("a red circle", k)
    assert main(["search", str(index), "a red circle", "-k", str(k)]) == 2
    assert "k must be" in capsys.readouterr().err


def _empty_items(folder):
    from vlret.index.columns import write_columns

    write_columns(folder, "items", {"id": [], "path": []}, sort_by="id")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "items.path.utf8").unlink(), "items.path.utf8"),
        (lambda p: (p / "items.id.utf8").write_bytes(b"short"), "items.id.utf8"),
        (lambda p: (p / "index.json").write_text("{not json"), "index.json"),
        (lambda p: (p / "faiss.index").write_bytes(b"garbage"), "faiss.index"),
        (lambda p: (p / "embeddings.npy").write_bytes(b"\x93NUMPY garbage"), "embeddings.npy"),
        (lambda p: _empty_items(p), "disagree on the number of items"),
    ],
)
def test_damaged_index_folders_give_a_clear_error(model_dir, synth_data, tmp_path, damage, message):
    index = build_index(
        str(model_dir), tmp_path / "idx", images=synth_data.parent / "images" / "test", progress=False
    )
    damage(index.resolve())
    with pytest.raises(ConfigError, match="damaged index") as info:
        Searcher(index)
    assert message in str(info.value)


def test_rebuild_swaps_atomically_and_open_searchers_keep_working(model_dir, synth_data, tmp_path):
    first_images = synth_data.parent / "images" / "test"
    index = build_index(str(model_dir), tmp_path / "idx", images=first_images, progress=False)
    old = Searcher(index)
    build_index(
        str(model_dir),
        tmp_path / "idx",
        images=synth_data.parent / "images" / "val",
        progress=False,
        rebuild=True,
    )
    new = Searcher(index)
    assert index.is_symlink() and new.path != old.path
    # the version before is kept on disk (replicas resolve its links); the one before that is not
    assert sorted(p.name for p in (tmp_path / "idx.versions").glob("v-*")) == sorted(
        [old.path.name, new.path.name]
    )
    build_index(str(model_dir), tmp_path / "idx", images=first_images, progress=False, rebuild=True)
    newest = Searcher(index)
    assert sorted(p.name for p in (tmp_path / "idx.versions").glob("v-*")) == sorted(
        [new.path.name, newest.path.name]
    )
    assert len(old.text_to_image("a blue square", k=2)) == 2  # an open searcher of a removed one answers
    assert {h.path for h in new.text_to_image("a blue square", k=6)} == {
        p.name for p in (synth_data.parent / "images" / "val").iterdir()
    }


def test_untrained_model_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs a trained model"):
        build_index("tiny-cnn", tmp_path / "idx", images=tmp_path)


def test_ivf_search_recall_and_exact_refine():
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.3 * rng.normal(size=(50, 32)).astype(np.float32)
    exact = _Vectors(vectors)
    ivf = faiss.index_factory(32, "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    approx = _Vectors(vectors, ivf, nprobe=32)
    pq = faiss.index_factory(32, "IVF64,PQ8", faiss.METRIC_INNER_PRODUCT)
    pq.do_polysemous_training = False  # codes vlret never reads (training them took 5x the rest)
    pq.train(vectors)
    pq.add(vectors)
    refined = _Vectors(vectors, pq, nprobe=32, refine=10)
    recall_ivf = recall_pq = 0.0
    for q in queries:
        truth = set(exact.search(q, 10)[1])
        recall_ivf += len(truth & set(approx.search(q, 10)[1])) / 10
        scores, ids = refined.search(q, 10)
        recall_pq += len(truth & set(ids)) / 10
        np.testing.assert_allclose(scores, vectors[ids] @ q, rtol=1e-5)  # refined scores are exact
    assert recall_ivf / 50 >= 0.9 and recall_pq / 50 >= 0.9, (recall_ivf / 50, recall_pq / 50)


def test_index_works_from_another_directory(model_dir, synth_data, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(synth_data.parent)
    test = load_dataset("dataset.json").split("test")  # a relative media root
    rel_model = os.path.relpath(model_dir, synth_data.parent)
    index = build_index(rel_model, tmp_path / "idx", dataset=test, progress=False)
    monkeypatch.chdir(tmp_path)
    searcher = Searcher(index)
    hit = searcher.text_to_image("a red circle", k=1)[0]
    assert searcher.media_path(hit.path).is_file()


def test_bombs_and_strips_in_a_collection_are_skipped_with_a_reason(model_dir, synth_data, tmp_path):
    """The caps uploads have apply to every image vlret opens: a build with --on-error skip leaves them out
    (it used to abort with DecompressionBombError), and a strict build names the file."""
    from test_serve import _png_header_only

    photos = tmp_path / "photos"
    shutil.copytree(synth_data.parent / "images" / "test", photos)
    good = len(list(photos.iterdir()))
    (photos / "bomb.png").write_bytes(_png_header_only(20000, 20000))  # Pillow's own bomb error
    (photos / "big.png").write_bytes(_png_header_only(8000, 7000))  # 56 MP: over vlret's 50 MP
    (photos / "strip.png").write_bytes(_png_header_only(200_000, 1))  # 0.2 MP, 200,000:1
    with pytest.raises(DataError, match=r"big.png: refused: the image declares 8000 x 7000"):
        build_index(str(model_dir), tmp_path / "strict", images=photos, progress=False)
    index = build_index(str(model_dir), tmp_path / "idx", images=photos, progress=False, on_error="skip")
    meta = json.loads((index / "index.json").read_text())
    reasons = {s["file"]: s["reason"] for s in meta["skipped"]}
    assert meta["items"] == good and set(reasons) == {"bomb.png", "big.png", "strip.png"}
    assert "more elongated than 50:1" in reasons["strip.png"]
    assert "decompression bomb" in reasons["bomb.png"].lower()


def test_a_search_by_a_strip_image_is_refused_with_a_reason(model_dir, synth_data, tmp_path):
    from PIL import Image

    index = build_index(
        str(model_dir), tmp_path / "idx", images=synth_data.parent / "images" / "test", progress=False
    )
    with pytest.raises(ConfigError, match="more elongated than 50:1"):
        Searcher(index).image_to_image(Image.new("RGB", (2000, 10)), k=2)


def test_items_are_memory_mapped_columns_and_old_json_indexes_still_open(model_dir, synth_data, tmp_path):
    import json

    from vlret.index.columns import StringTable, write_columns

    index = build_index(
        str(model_dir), tmp_path / "idx", images=synth_data.parent / "images" / "test", progress=False
    )
    searcher = Searcher(index)
    items = list(searcher.items)
    assert isinstance(searcher.items, StringTable) and len(items) == searcher.meta["items"]
    for n in (0, len(items) // 2, len(items) - 1):
        assert searcher.item_number(items[n]["id"]) == n
    with pytest.raises(KeyError):
        searcher.item_number("no such item")
    # an index written before the columns: items.json, read into memory, answers the same
    folder = index.resolve()
    (folder / "items.json").write_text(json.dumps(items))
    for f in folder.glob("items.*.*"):
        if f.name != "items.json":
            f.unlink()
    old = Searcher(index)
    assert list(old.items) == items and old.item_number(items[3]["id"]) == 3
    # non-ASCII, empty and duplicate-prefix strings round-trip
    write_columns(
        tmp_path, "t", {"id": ["b", "", "ab", "é/ü.png"], "path": ["x", "y", "z", "w"]}, sort_by="id"
    )
    table = StringTable.open(tmp_path, "t", ("id", "path"))
    assert [table[n]["id"] for n in range(4)] == ["b", "", "ab", "é/ü.png"]
    assert [table.number_of(k) for k in ("", "ab", "b", "é/ü.png")] == [1, 2, 0, 3]


def test_an_index_goes_into_folders_not_made_yet(model_dir, synth_data, tmp_path, monkeypatch):
    """`--out shared/photos.vlret` with no `shared/` yet (the docs' slurm command, found by the docs test:
    the lock beside the index could not be created)."""
    monkeypatch.chdir(tmp_path)
    images = str(synth_data.parent / "images")
    assert main(["index", "build", "--model", str(model_dir), "--images", images, "--out", "a/b/idx"]) == 0
    assert (tmp_path / "a" / "b" / "idx" / "index.json").is_file()


def test_several_queries_share_one_model_load(model_dir, synth_data, tmp_path, capsys, monkeypatch):
    index = build_index(
        str(model_dir), tmp_path / "idx", images=synth_data.parent / "images" / "test", progress=False
    )
    loads = []
    real = Searcher._load_model
    monkeypatch.setattr(Searcher, "_load_model", lambda self, ref: loads.append(ref) or real(self, ref))
    queries = tmp_path / "queries.txt"
    queries.write_text("a blue square\n\n  a green triangle  \n")
    assert main(["search", str(index), "a red circle", "--queries", str(queries), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert len(loads) == 1  # one model for the three queries
    assert [line for line in out.splitlines() if line.startswith("# ")] == [
        "# a red circle", "# a blue square", "# a green triangle"
    ]  # fmt: skip
    one = Searcher(index).text_to_image("a green triangle", k=2)
    tail = out.split("# a green triangle")[1].split()
    assert tail[2] == one[0].path and tail[5] == one[1].path
    assert main(["search", str(index), "a red circle", "a blue square", "-k", "1", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["query"] for a in answers] == ["a red circle", "a blue square"] and len(answers[0]["hits"]) == 1
    picture = str(
        synth_data.parent / "images" / "test" / sorted(os.listdir(synth_data.parent / "images" / "test"))[0]
    )
    assert main(["search", str(index), "--image", picture, "--image", picture, "-k", "1", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert answers[0]["hits"] == answers[1]["hits"] and answers[0]["query"] == picture
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    for args, message in (
        (["--queries", str(tmp_path / "none.txt")], "none.txt: file not found"),
        (["--queries", str(empty)], "empty.txt: no query in it"),
        (["a cat", "--image", picture], "not both"),
        ([], "not both and not neither"),
    ):
        assert main(["search", str(index), *args]) == 2
        assert message in capsys.readouterr().err
