"""An index's vectors in Qdrant (issue 28, section 2), tested against Qdrant's embedded local mode: the
export resumes, and searches through the collection answer as the index does, from the API, the command
line and the service."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from fastapi.testclient import TestClient

pytest.importorskip("qdrant_client")  # in the test extra: CI has it

from vlret.cli import main  # noqa: E402
from vlret.data import load_dataset  # noqa: E402
from vlret.errors import ConfigError  # noqa: E402
from vlret.index import Searcher, build_index  # noqa: E402
from vlret.index import qdrant as qdrant_module  # noqa: E402
from vlret.index.qdrant import QdrantVectors, connect, export_to_qdrant  # noqa: E402
from vlret.models import create_model  # noqa: E402
from vlret.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def index(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("qdrant")
    create_model("tiny-cnn", captions=["a red circle", "a blue square"]).save(root / "model")
    data = load_dataset(synth_data)
    return build_index(str(root / "model"), root / "photos.vlret", dataset=data, progress=False)


def _hits(hits):
    return [(h.id, h.path, round(h.score, 4)) for h in hits]


def test_searches_through_qdrant_answer_as_the_index(index, tmp_path, capsys):
    store = tmp_path / "qdrant"
    assert main(["index", "export", str(index), "--format", "qdrant", "--qdrant", str(store)]) == 0
    assert "'photos_vlret' holds 60 points" in capsys.readouterr().out
    plain = Searcher(index)
    through = Searcher(index, item_vectors=partial(QdrantVectors, str(store), "photos_vlret"))
    for text in ("a red circle", "two blue squares", "a small green triangle"):
        assert _hits(through.text_to_image(text, 5)) == _hits(plain.text_to_image(text, 5))
    through.images.close()
    # the command line, with the same output
    args = ["search", str(index), "a red circle", "-k", "3", "--json"]
    assert main(args) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main([*args, "--qdrant", str(store)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [(h["id"], round(h["score"], 4)) for h in got] == [
        (h["id"], round(h["score"], 4)) for h in expected
    ]
    # and the service
    client = TestClient(create_app(index, qdrant=str(store)))
    body = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
    assert [r["id"] for r in body["results"]] == [h["id"] for h in expected]
    client.app.state.service.searcher.images.close()


def test_a_stopped_export_resumes_at_the_points_already_there(index, tmp_path, monkeypatch):
    store = tmp_path / "qdrant"
    monkeypatch.setattr(qdrant_module, "BATCH", 16)
    calls = []
    original = qdrant_module.connect

    def stop_after_two_batches(target):
        client = original(target)
        upsert = client.upsert

        def counted(*args, **kwargs):
            calls.append(kwargs["points"].ids[0])
            if len(calls) == 3:
                raise KeyboardInterrupt  # stopped during the third batch
            return upsert(*args, **kwargs)

        client.upsert = counted
        return client

    monkeypatch.setattr(qdrant_module, "connect", stop_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        export_to_qdrant(index, store, "c", progress=False)
    monkeypatch.setattr(qdrant_module, "connect", original)
    client = connect(store)
    assert client.count("c", exact=True).count == 32
    client.close()
    resumed = []
    monkeypatch.setattr(
        qdrant_module,
        "connect",
        lambda target: _recording(original(target), resumed),
    )
    assert export_to_qdrant(index, store, "c", progress=False) == ("c", 60)
    assert resumed == [32, 48]  # only the batches that were missing


def _recording(client, starts):
    upsert = client.upsert

    def recorded(*args, **kwargs):
        starts.append(kwargs["points"].ids[0])
        return upsert(*args, **kwargs)

    client.upsert = recorded
    return client


def test_mismatched_collections_are_named(index, tmp_path):
    from qdrant_client import models

    store = tmp_path / "qdrant"
    client = connect(store)
    client.create_collection(
        "other", vectors_config=models.VectorParams(size=3, distance=models.Distance.DOT)
    )
    client.close()
    with pytest.raises(ConfigError, match="holds 3-d"):
        export_to_qdrant(index, store, "other", progress=False)
    with pytest.raises(ConfigError, match="no collection 'missing'"):
        Searcher(index, item_vectors=partial(QdrantVectors, str(store), "missing"))
    with pytest.raises(ConfigError, match="holds 0 points and the index 60"):
        Searcher(index, item_vectors=partial(QdrantVectors, str(store), "other"))
    assert main(["index", "export", str(index), "--format", "qdrant"]) == 2  # no --qdrant
    assert np.load(index / "embeddings.npy").shape[0] == 60


def test_an_export_after_a_rebuild_replaces_the_old_vectors_and_search_refuses_them_before(
    synth_data, tmp_path, capsys
):
    """Rebuilt (same --out, other weights: same ids, new vectors), then exported again: the collection
    holds the new version, all of it; before that export a search through it is refused, not answered
    from the old vectors."""
    for seed in (0, 1):
        create_model("tiny-cnn", captions=["a red circle"], seed=seed).save(tmp_path / f"m{seed}")
    data = load_dataset(synth_data)
    out, store = tmp_path / "photos.vlret", str(tmp_path / "qdrant")
    export = ["index", "export", str(out), "--format", "qdrant", "--qdrant", store, "--collection", "c"]
    build_index(str(tmp_path / "m0"), out, dataset=data, progress=False)
    old = Searcher(out).version_key
    assert main(export) == 0
    build_index(str(tmp_path / "m1"), out, dataset=data, progress=False, rebuild=True)  # a new version
    new = Searcher(out)
    assert new.version_key != old
    with pytest.raises(
        ConfigError, match=f"holds index version {old}, and the index is at {new.version_key}"
    ):
        Searcher(out, item_vectors=partial(QdrantVectors, store, "c"))
    capsys.readouterr()
    assert main(export) == 0
    assert f"'c' held index version {old}: replaced by {new.version_key}" in capsys.readouterr().err
    through = Searcher(out, item_vectors=partial(QdrantVectors, store, "c"))
    for text in ("a red circle", "two blue squares"):
        assert _hits(through.text_to_image(text, 5)) == _hits(new.text_to_image(text, 5))
    through.images.close()
    client = connect(store)
    points = client.retrieve("c", ids=list(range(60)), with_payload=True)
    client.close()
    assert {p.payload["index_version"] for p in points} == {new.version_key}


def test_a_qdrant_that_is_not_there_is_one_line(index, tmp_path, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "afile").write_text("x")
    for target, says in (
        (f"http://127.0.0.1:{port}", f"--qdrant http://127.0.0.1:{port}: no Qdrant server answered"),
        (str(tmp_path / "afile"), "a file; give a Qdrant server URL"),
    ):
        for command in (
            ["index", "export", str(index), "--format", "qdrant", "--qdrant", target],
            ["search", str(index), "a red circle", "--qdrant", target],
        ):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err, err
