"""Searching videos: `vlret index build --videos`, clip embeddings against an independent meanP, the poster
frame, and playback by range requests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from vlret.cli import main
from vlret.data.video import FrameSampling, load_video_frames, write_video
from vlret.index.search import Searcher
from vlret.models import create_model, load_model
from vlret.serve import create_app

CAPTIONS = ["a grey clip gets brighter", "a grey clip", "a dark clip"]


@pytest.fixture(scope="module")
def video_index(tmp_path_factory):
    """Three 20-frame clips at 10 fps (frame k of clip n is grey level 10 k + 3 n) and an index of them
    built from the CLI with an image model and 4 frames per clip."""
    root = tmp_path_factory.mktemp("video_index")
    clips = root / "clips"
    for n in range(3):
        frames = [np.full((64, 64, 3), 10 * k + 3 * n, np.uint8) for k in range(20)]
        write_video(clips / ("sub" if n == 2 else "") / f"clip{n}.mp4", frames, fps=10)
    (clips / "notes.txt").write_text("not a video")
    create_model("tiny-cnn", captions=CAPTIONS, seed=0).save(root / "model")
    args = [
        "index",
        "build",
        "--model",
        str(root / "model"),
        "--videos",
        str(clips),
        "--out",
        str(root / "idx"),
    ]
    assert main([*args, "--video-frames", "4"]) == 0
    return root


def test_the_index_holds_each_clips_meanp_embedding(video_index):
    meta = json.loads((video_index / "idx" / "index.json").read_text())
    assert meta["items"] == 3 and meta["video"] == {"frames": 4}
    items = list(Searcher(video_index / "idx").items)
    assert [i["path"] for i in items] == ["clip0.mp4", "clip1.mp4", "sub/clip2.mp4"]
    stored = np.load(video_index / "idx" / "embeddings.npy")
    image_model = load_model(video_index / "model").eval()
    for row, item in enumerate(items):
        frames = load_video_frames(video_index / "clips" / item["path"], FrameSampling(frames=4))
        pixels = torch.from_numpy(np.stack([image_model.image_transform(f) for f in frames]))
        with torch.no_grad():
            each = F.normalize(image_model.encode_images(pixels).embeds, dim=-1)
        expected = F.normalize(each.mean(0), dim=-1).numpy()
        assert np.allclose(stored[row], expected, atol=1e-5)


def test_search_from_the_cli_returns_clips(video_index, capsys):
    capsys.readouterr()
    assert main(["search", str(video_index / "idx"), "a grey clip", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and all(h["path"].endswith(".mp4") for h in hits)


@pytest.fixture(scope="module")
def client(video_index):
    with TestClient(create_app(video_index / "idx")) as c:
        yield c


def test_hits_link_the_clip_and_the_poster_is_the_middle_frame(client, video_index):
    import io

    from PIL import Image

    body = client.get("/api/search", params={"q": "a dark clip", "k": 3}).json()
    hits = body["results"]
    tag = f"?version={body['version']}"  # links name the index version that found them
    assert {h["video"] for h in hits} == {f"/media/{n}{tag}" for n in range(3)}
    png = client.get("/thumbnail/0", params={"size": 64})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    # clip 0 lasts 2 s; its middle (1.0 s) is frame 10, grey level 100
    poster = np.asarray(Image.open(io.BytesIO(png.content)).convert("L"), dtype=float)
    assert abs(poster.mean() - 100) <= 2


def test_media_answers_range_requests(client, video_index):
    data = (video_index / "clips" / "clip1.mp4").read_bytes()
    whole = client.get("/media/1")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    part = client.get("/media/1", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = client.get("/media/1", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    assert client.get("/media/3").status_code == 404
    assert client.get("/media/1", headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416


def test_media_never_serves_a_file_outside_the_collection(video_index, tmp_path):
    """An indexed clip replaced by a symbolic link to a file elsewhere is not served (nor its thumbnail);
    a link that stays inside the collection still is."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(video_index, root, symlinks=True)
    index = json.loads((root / "idx" / "index.json").read_text())
    index["media_root"] = str(root / "clips")
    (root / "idx" / "index.json").write_text(json.dumps(index))
    secret = tmp_path / "secret.txt"
    secret.write_text("a password")
    client = TestClient(create_app(root / "idx"))
    items = {item["path"]: n for n, item in enumerate(Searcher(root / "idx").items)}
    clip0, clip1 = items["clip0.mp4"], items["clip1.mp4"]
    (root / "clips" / "clip0.mp4").unlink()
    (root / "clips" / "clip0.mp4").symlink_to(secret)
    (root / "clips" / "clip1.mp4").rename(root / "clips" / "moved.mp4")
    (root / "clips" / "clip1.mp4").symlink_to(root / "clips" / "moved.mp4")
    response = client.get(f"/media/{clip0}")
    assert response.status_code == 404 and "a password" not in response.text
    assert "outside the indexed collection" in response.text
    assert client.get(f"/thumbnail/{clip0}").status_code == 404
    inside = client.get(f"/media/{clip1}")
    assert inside.status_code == 200 and inside.content == (root / "clips" / "moved.mp4").read_bytes()
