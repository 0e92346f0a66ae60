"""A server follows its index link to a newer version (issue 28, section 3): a request is answered by the
version it started with, links of results shown before a swap still resolve, and a version that cannot be
opened leaves the served one in place."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from vlret.index import build_index
from vlret.models import create_model
from vlret.serve import create_app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("versions") / "model"
    create_model("tiny-cnn", captions=["a red circle", "a blue square"]).save(folder)
    return folder


@pytest.fixture
def collections(synth_data, tmp_path):
    """Two collections: the first 6 test images, and 3 others."""
    images = sorted((synth_data.parent / "images").rglob("*.png"))
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, picked in ((first, images[:6]), (second, images[6:9])):
        folder.mkdir()
        for path in picked:
            shutil.copy(path, folder / path.name)
    return first, second


def _build(model_dir, link, images):
    # each version is another folder's collection: a full build, not an update
    return build_index(str(model_dir), link, images=images, progress=False, rebuild=True).resolve().name


def _search(client, q="a red circle", k=10):
    body = client.get("/api/search", params={"q": q, "k": k})
    assert body.status_code == 200, body.text
    return body.json()


def test_a_rebuild_is_followed_and_old_links_still_resolve(model_dir, collections, tmp_path):
    first, second = collections
    link = tmp_path / "idx"
    v1 = _build(model_dir, link, first)
    app = create_app(link, check_every=3600)  # only an explicit reload moves it here
    service = app.state.service
    with TestClient(app) as client:
        before = _search(client)
        assert before["version"] == v1 and len(before["results"]) == 6
        assert all(r["thumbnail"].endswith(f"?version={v1}") for r in before["results"])
        v1_snapshot = service.versions.snapshot()
        v2 = _build(model_dir, link, second)
        assert client.get("/health").json()["version"] == v1  # not checked yet
        moved = client.post("/api/reload").json()
        assert moved == {"version": v2, "reload_error": None}
        after = _search(client)
        assert after["version"] == v2 and len(after["results"]) == 3
        assert {r["path"] for r in after["results"]} == {p.name for p in second.iterdir()}
        assert client.get("/health").json()["version"] == v2
        # a result shown before the swap: its thumbnail and media still come from its own version
        old = max(before["results"], key=lambda r: r["item"])
        assert old["item"] >= 3  # an item number the new version does not have
        assert client.get(old["thumbnail"]).status_code == 200
        assert client.get(f"/media/{old['item']}?version={v1}").status_code == 200
        assert client.get(f"/thumbnail/{old['item']}").status_code == 404  # the current version: no such item
        # a request that took its version before the swap is answered by that version
        hits = service._hits([(v1_snapshot, "text", "a red circle", 10)])[0]
        assert sorted(h.path for h in hits) == sorted(p.name for p in first.iterdir())
        # two versions on, the first is gone: its links say so
        v3 = _build(model_dir, link, first)
        assert client.post("/api/reload").json()["version"] == v3
        gone = client.get(old["thumbnail"])
        assert gone.status_code == 410 and "search again" in gone.json()["detail"]


def test_a_request_starts_the_move_when_the_link_has_changed(model_dir, collections, tmp_path):
    first, second = collections
    link = tmp_path / "idx"
    _build(model_dir, link, first)
    app = create_app(link, check_every=0)
    versions = app.state.service.versions
    with TestClient(app) as client:
        _search(client)
        assert versions._loading is None  # the link has not moved: nothing to open
        v2 = _build(model_dir, link, second)
        _search(client)  # answered by the current version; it starts opening v2
        versions._loading.join()
        assert _search(client)["version"] == v2


def test_a_version_that_cannot_be_opened_leaves_the_served_one(model_dir, collections, tmp_path):
    first, second = collections
    link = tmp_path / "idx"
    v1 = _build(model_dir, link, first)
    app = create_app(link, check_every=3600)
    with TestClient(app) as client:
        v2 = _build(model_dir, link, second)
        meta = link.resolve() / "index.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "storage": "tape"}))
        moved = client.post("/api/reload").json()
        assert moved["version"] == v1 and moved["reload_error"].startswith(v2)
        assert "storage" in moved["reload_error"]
        assert str(tmp_path) not in json.dumps(moved)  # what failed, not where on the server
        health = client.get("/health").json()
        assert health["version"] == v1 and health["reload_error"] == moved["reload_error"]
        assert len(_search(client)["results"]) == 6
        assert app.state.service.versions.reload().name == v1  # not tried again until the link moves


def test_replicas_resolve_each_others_links_and_a_reload_reaches_them_all(model_dir, collections, tmp_path):
    """Two replicas of one index (two apps, as `serve --workers 2` runs them): A served v2, B went from
    v1 to v3 without it. A link A gave out for v2 resolves on B too (it answered 410), and a reload asked
    of one replica moves the other at its next request (it moved only the one asked)."""
    first, second = collections
    link = tmp_path / "idx"
    v1 = _build(model_dir, link, first)
    a, b = create_app(link, check_every=3600), create_app(link, check_every=3600)
    with TestClient(a) as client_a, TestClient(b) as client_b:
        v2 = _build(model_dir, link, second)
        assert client_a.post("/api/reload").json()["version"] == v2
        b.state.service.versions.snapshot()  # B sees the stamp A's reload left, and moves too
        b.state.service.versions._loading.join()
        assert _search(client_b)["version"] == v2
        shown = _search(client_a)["results"][0]
        assert shown["thumbnail"].endswith(f"?version={v2}")
        v3 = _build(model_dir, link, first)
        assert client_b.post("/api/reload").json()["version"] == v3
        assert client_a.get("/health").json()["version"] == v2  # A has not answered a request since
        _search(client_a)
        a.state.service.versions._loading.join()
        assert client_a.get("/health").json()["version"] == v3
        # B had v2 as its previous version; a third replica that never served v2 resolves it from disk
        c = create_app(link, check_every=3600)
        with TestClient(c) as client_c:
            assert c.state.service.versions.previous is None
            assert client_c.get(shown["thumbnail"]).status_code == 200
            assert client_c.get(f"/media/{shown['item']}?version={v2}").status_code == 200
            assert client_c.get(f"/media/{shown['item']}?version={v1}").status_code == 410  # gone from disk
            for name in ("../idx.versions", ".hidden", f"{v2}/../{v2}"):
                assert client_c.get(f"/media/0?version={name}").status_code == 410
