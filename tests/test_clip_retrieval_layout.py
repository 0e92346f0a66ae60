"""Embeddings out of an index in clip-retrieval's layout and back (issue 28, section 1), and Parquet tables
of paths and captions as a data format."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlret.cli import main
from vlret.data import load_dataset
from vlret.errors import ConfigError, DataError
from vlret.index import Searcher, build_index
from vlret.index.clip_retrieval import export_embeddings, import_embeddings
from vlret.models import create_model


@pytest.fixture(scope="module")
def built(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-retrieval")
    model = root / "model"
    create_model("tiny-cnn", captions=["a red circle", "a blue square"]).save(model)
    data = load_dataset(synth_data).split("test")
    return model, data, build_index(str(model), root / "idx", dataset=data, progress=False)


def test_export_writes_the_layout_clip_retrieval_and_autofaiss_read(built, tmp_path):
    model, data, index = built
    searcher = Searcher(index)
    assert main(["index", "export", str(index), "--out", str(tmp_path / "emb")]) == 0
    vectors = np.load(tmp_path / "emb" / "img_emb" / "img_emb_0.npy")
    assert vectors.dtype == np.float16 and vectors.shape == searcher.images.embeddings.shape
    np.testing.assert_allclose(vectors, searcher.images.embeddings, atol=1e-3)
    table = pq.read_table(tmp_path / "emb" / "metadata" / "metadata_0.parquet").to_pylist()
    assert len(table) == len(vectors)
    for n, row in enumerate(table):
        item = searcher.items[n]
        assert row["id"] == item["id"]
        assert row["image_path"] == str(data.media_root.resolve() / item["path"])
        assert row["caption"] == next(c.text for c in data.captions if c.item_id == item["id"])
    parts = export_embeddings(index, tmp_path / "parts", dtype="float32", part_rows=4)
    assert [p.name for p in parts] == ["img_emb_0.npy", "img_emb_1.npy"]
    assert np.load(parts[1]).shape[0] == len(vectors) - 4


def test_an_export_imported_back_searches_as_the_index(built, tmp_path):
    model, data, index = built
    export_embeddings(index, tmp_path / "emb", dtype="float32", part_rows=4)
    original = Searcher(index)
    args = ["index", "build", "--model", str(model), "--embeddings", str(tmp_path / "emb")]
    args += ["--media-root", str(original.media_root)]
    assert main([*args, "--out", str(tmp_path / "back")]) == 0
    back = Searcher(tmp_path / "back")
    assert back.images.embeddings.tobytes() == original.images.embeddings.tobytes()
    assert list(back.items) == list(original.items) and back.media_root == original.media_root
    # without a media root: the folder the files share, the same files
    shared = Searcher(import_embeddings(str(model), tmp_path / "emb", tmp_path / "shared"))
    assert [shared.media_path(r["path"]) for r in shared.items] == [
        original.media_path(r["path"]) for r in original.items
    ]
    for text in [c.text for c in data.captions[:4]]:
        assert [(h.id, h.path) for h in back.text_to_image(text, 6)] == [
            (h.id, h.path) for h in original.text_to_image(text, 6)
        ]
    assert back.meta["imported_from"] == str(tmp_path / "emb")


def _foreign(folder, parts, dim=8, with_ids=False):
    """A clip-retrieval folder as its inference writes one: parts of embeddings and paths, no vlret ids."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rng = np.random.default_rng(0)
    rows, n = [], 0
    for part, size in enumerate(parts):
        vectors = rng.standard_normal((size, dim)).astype(np.float32)
        np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors)
        paths = [f"/data/photos/{'a' if k % 2 else 'b'}/{n + k}.jpg" for k in range(size)]
        columns = {"image_path": paths, "caption": ["x"] * size, "url": ["http://e/"] * size}
        if with_ids:
            columns["id"] = [f"i{n + k}" for k in range(size)]
        pq.write_table(pa.table(columns), folder / "metadata" / f"metadata_{part}.parquet")
        rows.append(vectors)
        n += size
    return np.concatenate(rows)


def test_a_folder_clip_retrieval_wrote_is_indexed_in_part_order(tmp_path, monkeypatch):
    import vlret.index.clip_retrieval as module

    monkeypatch.setattr(module, "_check_dimension", lambda *a: None)  # any model: the vectors are random
    raw = _foreign(tmp_path / "emb", [3, 12, 2])  # part 10 sorts after 2 by number, not by text
    (tmp_path / "emb" / "img_emb" / "img_emb_1.npy").rename(tmp_path / "emb" / "img_emb" / "img_emb_10.npy")
    (tmp_path / "emb" / "metadata" / "metadata_1.parquet").rename(
        tmp_path / "emb" / "metadata" / "metadata_10.parquet"
    )
    order = np.concatenate([raw[:3], raw[15:], raw[3:15]])  # parts 0, 2, 10
    index = import_embeddings("tiny-cnn", tmp_path / "emb", tmp_path / "idx")
    searcher = Searcher(index)
    np.testing.assert_allclose(
        searcher.images.embeddings, order / np.linalg.norm(order, axis=1, keepdims=True), rtol=1e-6
    )
    assert str(searcher.media_root) == "/data/photos"
    assert searcher.items[0] == {"id": "/data/photos/b/0.jpg", "path": "b/0.jpg"}  # no id column: the path
    assert searcher.items[3]["path"] == "b/15.jpg"  # part 2 comes before part 10


def test_bad_embedding_folders_are_named(built, tmp_path):
    model, _, _ = built
    _foreign(tmp_path / "dims", [3], dim=8)
    with pytest.raises(ConfigError, match="8 dimensions"):
        import_embeddings(str(model), tmp_path / "dims", tmp_path / "a")
    _foreign(tmp_path / "lost", [3, 2])
    (tmp_path / "lost" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(DataError, match="metadata_1.parquet"):
        import_embeddings(str(model), tmp_path / "lost", tmp_path / "b")
    with pytest.raises(DataError, match="not a clip-retrieval embeddings folder"):
        import_embeddings(str(model), tmp_path, tmp_path / "c")
    _foreign(tmp_path / "short", [3])
    pq.write_table(
        pa.table({"image_path": ["/x/1.jpg"]}), tmp_path / "short" / "metadata" / "metadata_0.parquet"
    )
    with pytest.raises(DataError, match="1 rows for the 3 embeddings"):
        import_embeddings(str(model), tmp_path / "short", tmp_path / "d")


def test_a_parquet_table_reads_as_the_same_csv(tmp_path):
    rows = [
        ("a.jpg", "a red circle", "test"),
        ("a.jpg", "a round red thing", "test"),
        ("b.jpg", "a square", "train"),
    ]
    (tmp_path / "t.csv").write_text("image,caption,split\n" + "".join(f"{p},{c},{s}\n" for p, c, s in rows))
    pq.write_table(
        pa.table(
            {"image": [r[0] for r in rows], "caption": [r[1] for r in rows], "split": [r[2] for r in rows]}
        ),
        tmp_path / "t.parquet",
    )
    from_csv, from_parquet = load_dataset(tmp_path / "t.csv"), load_dataset(tmp_path / "t.parquet")
    assert from_parquet.format == "parquet"
    assert from_parquet.items == from_csv.items and from_parquet.captions == from_csv.captions
    pq.write_table(pa.table({"image": ["c.jpg"], "caption": [None]}), tmp_path / "null.parquet")
    with pytest.raises(DataError, match="row 1: empty 'caption'"):
        load_dataset(tmp_path / "null.parquet")
    pq.write_table(pa.table({"path": ["c.jpg"]}), tmp_path / "cols.parquet")
    with pytest.raises(DataError, match="no column 'image'"):
        load_dataset(tmp_path / "cols.parquet")


def test_an_export_owns_its_folder(built, synth_data, tmp_path, capsys):
    """A re-export into the same folder replaces the earlier one whole (a smaller export once left stale
    parts after its own); a folder of other files, another index's export or a file is refused."""
    model, data, index = built
    out = tmp_path / "emb"
    assert len(export_embeddings(index, out, dtype="float32", part_rows=2)) > 2  # an earlier, larger export
    assert [p.name for p in export_embeddings(index, out, dtype="float32", part_rows=100)] == [
        "img_emb_0.npy"
    ]
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy"]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == ["metadata_0.parquet"]
    back = import_embeddings(str(model), out, tmp_path / "back")
    assert len(Searcher(back).items) == len(Searcher(index).items)  # no stale rows
    # refused, with one line each, and nothing written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    other = build_index(str(model), tmp_path / "other", dataset=data, progress=False)
    for target, says in (
        (tmp_path / "mine", "a folder that holds files (not an export of vlret)"),
        (out, f"a folder that holds files (an export of {index.absolute()})"),
        (tmp_path / "mine" / "notes.txt", "a file; an export writes a folder"),
    ):
        source = other if target == out else index
        assert main(["index", "export", str(source), "--out", str(target)]) == 2
        assert says in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert (out / "img_emb" / "img_emb_0.npy").is_file()


def test_one_outside_path_never_widens_what_is_served(built, tmp_path, capsys):
    """One image_path of /etc/passwd among the collection's: without --media-root the import is refused
    (the paths share only /); with it, that item is indexed and searchable but its link answers 404."""
    from fastapi.testclient import TestClient

    from vlret.serve import create_app

    model, data, index = built
    out = tmp_path / "emb"
    export_embeddings(index, out, dtype="float32")
    table = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pylist()
    table[3]["image_path"] = "/etc/passwd"
    pq.write_table(pa.Table.from_pylist(table), out / "metadata" / "metadata_0.parquet")
    args = ["index", "build", "--model", str(model), "--embeddings", str(out)]
    assert main([*args, "--out", str(tmp_path / "wide")]) == 2
    assert f"the {len(table)} image paths share only /, which would serve everything under it" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "wide").exists()
    root = Searcher(index).media_root
    assert main([*args, "--media-root", str(root), "--out", str(tmp_path / "ix")]) == 0
    assert f"1 of them lie outside the media root {root}" in capsys.readouterr().err
    searcher = Searcher(tmp_path / "ix")
    assert searcher.meta["outside_media_root"] == 1 and searcher.media_root == root
    outside = searcher.item_number(table[3]["id"])
    client = TestClient(create_app(tmp_path / "ix"))
    assert client.get(f"/media/{outside}").status_code == 404
    inside = searcher.item_number(table[4]["id"])
    assert client.get(f"/media/{inside}").status_code == 200


def test_a_media_root_derived_from_the_paths_is_at_least_two_folders_deep():
    from pathlib import Path

    from vlret.index.clip_retrieval import _common_folder

    assert _common_folder(["/data/p/a.jpg", "/data/p/q/b.jpg"]) == Path("/data/p")
    for shallow in (
        ["/data/a.jpg", "/data/b.jpg"],
        ["/data/p/a.jpg", "/etc/passwd"],
        ["/x/../a.jpg", "/b.jpg"],
    ):
        with pytest.raises(ConfigError, match="give --media-root FOLDER"):
            _common_folder(shallow)


def test_a_memory_budget_is_a_positive_number(built, tmp_path, capsys):
    model, _, index = built
    images = str(Searcher(index).media_root)
    for bad in ("nan", "0", "-1", "inf"):
        args = ["index", "build", "--model", str(model), "--images", images, "--memory-gb", bad]
        assert main([*args, "--out", str(tmp_path / "ix")]) == 2
        assert f"--memory-gb must be a positive number of GiB, not {float(bad)}" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists()


def test_a_parquet_tables_columns_are_named_on_the_command_line(tmp_path, capsys):
    """--path-column, --caption-column, --split-column and --default-split reach Parquet as they reach CSV
    (a table with a filepath column failed with "no column 'image'")."""
    import json

    columns = {"filepath": ["a.jpg", "a.jpg", "b.jpg"], "text": ["a red circle", "a round thing", "a square"]}
    pq.write_table(pa.table({**columns, "part": ["val", "val", "train"]}), tmp_path / "t.parquet")
    named = ["--path-column", "filepath", "--caption-column", "text", "--split-column", "part", "--json"]
    assert main(["data", "stats", str(tmp_path / "t.parquet"), *named]) == 0
    splits = json.loads(capsys.readouterr().out)["splits"]
    assert (splits["val"]["items"], splits["val"]["captions"], splits["train"]["items"]) == (1, 2, 1)
    pq.write_table(pa.table(columns), tmp_path / "nosplit.parquet")  # no split column: the default split
    args = ["data", "stats", str(tmp_path / "nosplit.parquet"), *named, "--default-split", "train"]
    assert main(args) == 0
    assert list(json.loads(capsys.readouterr().out)["splits"]) == ["train"]
    assert main(["data", "stats", str(tmp_path / "t.parquet")]) == 2  # the default columns are not there
    assert "no column 'image'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, says",
    [
        ("garbage_npy", "img_emb_0.npy: not a NumPy array file"),
        ("one_d", "img_emb_0.npy: a 1-d float32 array of shape (24,); expected floats [rows, dimension]"),
        ("three_d", "a 3-d float32 array of shape (2, 3, 4)"),
        ("corrupt_parquet", "metadata_0.parquet: not a readable Parquet file"),
        ("null_path", "metadata_0.parquet: row 1: empty 'image_path'"),
        ("list_path", "metadata_0.parquet: row 0: 'image_path' holds a list, not a string"),
        ("duplicate_id", "rows 0 and 2: the id 'i0' twice"),
        ("all_empty", "every part holds 0 embeddings: nothing to index"),
    ],
)
def test_a_damaged_embeddings_folder_is_one_line_naming_the_file(tmp_path, capsys, damage, says):
    folder = tmp_path / "emb"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    columns = {"image_path": [f"/data/photos/{n}.jpg" for n in range(3)], "id": ["i0", "i1", "i2"]}
    if damage == "one_d":
        vectors = vectors.ravel()
    elif damage == "three_d":
        vectors = np.zeros((2, 3, 4), np.float32)
    elif damage == "null_path":
        columns["image_path"][1] = None
    elif damage == "list_path":
        columns["image_path"] = [["/a.jpg"], ["/b.jpg"], ["/c.jpg"]]
    elif damage == "duplicate_id":
        columns["id"] = ["i0", "i1", "i0"]
    elif damage == "all_empty":
        vectors, columns = vectors[:0], {"image_path": pa.array([], pa.string())}
    np.save(folder / "img_emb" / "img_emb_0.npy", vectors)
    pq.write_table(pa.table(columns), folder / "metadata" / "metadata_0.parquet")
    if damage == "garbage_npy":
        (folder / "img_emb" / "img_emb_0.npy").write_bytes(b"\x93NUMPY garbage")
    if damage == "corrupt_parquet":
        (folder / "metadata" / "metadata_0.parquet").write_bytes(b"PAR1 not really")
    if damage in ("one_d", "three_d"):  # the row count agrees, so the shape itself is what is refused
        pq.write_table(
            pa.table({"image_path": [f"/data/p/{n}.jpg" for n in range(len(vectors))]}),
            folder / "metadata" / "metadata_0.parquet",
        )
    args = [
        "index",
        "build",
        "--model",
        "tiny-cnn",
        "--embeddings",
        str(folder),
        "--out",
        str(tmp_path / "ix"),
    ]
    assert main([*args, "--media-root", "/data/photos"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_parquet_caption_column_of_lists_is_refused_not_read_as_its_repr(tmp_path):
    pq.write_table(pa.table({"image": ["a.jpg"], "caption": [["a cat", "a pet"]]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="row 1: 'caption' holds a list, not a single value"):
        load_dataset(tmp_path / "t.parquet")


def _write_part(folder, n: int, vectors: np.ndarray, ids: list[str], root) -> None:
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{n}.npy", vectors)
    table = pa.table({"image_path": [str(root / f"{i}.jpg") for i in ids], "id": ids})
    pq.write_table(table, folder / "metadata" / f"metadata_{n}.parquet")


def test_an_import_over_an_imported_index_is_an_update_that_keeps_rows_and_labels(tmp_path, monkeypatch):
    from vlret.index import build as build_module
    from vlret.index import update as update_module
    from vlret.index.choice import FAISS_LABELS, IndexChoice

    def ivf(n, dim, budget=None):
        return IndexChoice("ivf_flat", "IVF2,Flat", 2, 0, "forced for the test")

    import vlret.index.clip_retrieval as clip_module

    monkeypatch.setattr(build_module, "choose_index", ivf)
    monkeypatch.setattr(update_module, "choose_index", ivf)
    monkeypatch.setattr(clip_module, "_check_dimension", lambda *a: None)  # random vectors: any model
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{n}" for n in range(10)]
    emb, root = tmp_path / "emb", tmp_path / "media"
    _write_part(emb, 0, vectors[:5], ids[:5], root)
    _write_part(emb, 1, vectors[5:], ids[5:], root)
    args = ["index", "build", "--model", "tiny-cnn", "--embeddings", str(emb), "--media-root", str(root)]
    out = tmp_path / "idx"
    assert main([*args, "--out", str(out)]) == 0
    first = out.resolve()
    assert main([*args, "--out", str(out)]) == 0 and out.resolve() == first  # nothing changed: up to date
    changed = vectors[5:].copy()
    changed[1] = -changed[1]  # p6's vector changed
    _write_part(emb, 1, np.concatenate([changed[:4], rng.standard_normal((2, 16)).astype(np.float32)]),
                ["p5", "p6", "p7", "p8", "q0", "q1"], root)  # fmt: skip
    trained: list[str] = []
    import vlret.index.layout as layout

    monkeypatch.setattr(layout, "train_ivf", lambda f, v: trained.append(f))
    assert main([*args, "--out", str(out)]) == 0  # p9 removed, p6 changed, q0 and q1 added
    assert trained == []
    version = out.resolve()
    meta = __import__("json").loads((version / "index.json").read_text())
    assert meta["update"] == {"unchanged": 8, "new": 2, "edited": 1, "removed": 1}
    # rows 0..8 kept but p6 (row 6) and p9 (row 9): labels 0-5, 7, 8 kept; p6, q0, q1 take 10, 11, 12
    assert np.load(version / FAISS_LABELS).tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 10, 11, 12]
    searcher = Searcher(out)
    assert [searcher.items[n]["id"] for n in range(len(searcher.items))] == [
        "p0", "p1", "p2", "p3", "p4", "p5", "p7", "p8", "p6", "q0", "q1"
    ]  # fmt: skip
    assert searcher.images.embeddings[0].tobytes() == vectors[0].tobytes()
    hits = searcher.image_hits(np.asarray(changed[1]), 1)
    assert hits[0].id == "p6" and abs(hits[0].score - 1) < 1e-5
    with pytest.raises(ConfigError, match="--retrain"):
        import_embeddings("tiny-cnn", emb, out, root, on_disk=True)
    monkeypatch.undo()
    monkeypatch.setattr(clip_module, "_check_dimension", lambda *a: None)
    assert main([*args, "--out", str(out), "--retrain", "--on-disk"]) == 0
    assert not (out.resolve() / FAISS_LABELS).exists()
    _write_part(emb, 1, vectors[5:6], ["p5"], root)
    (emb / "img_emb" / "img_emb_0.npy").unlink()
    (emb / "metadata" / "metadata_0.parquet").unlink()
    with pytest.raises(ConfigError, match=r"remove 10 of the index's 11 items"):
        import_embeddings("tiny-cnn", emb, out, root, on_disk=True)
    assert main([*args, "--out", str(out), "--on-disk", "--allow-mass-removal"]) == 0
    assert len(Searcher(out).items) == 1
    assert main([*args, "--out", str(out), "--rebuild"]) == 0
    assert "update" not in __import__("json").loads((out / "index.json").read_text())
