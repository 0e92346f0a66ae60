"""What the documentation's commands name and CI cannot have, built small and offline for
``test_docs_commands.py``: an offline hub cache whose ids hold tiny architecture-true models, datasets in the
formats and at the sizes the commands' protocols ask for, and a local OpenAI-compatible server."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from json_server import QuietHandler

WORDS = ["a", "red", "blue", "circle", "square", "on", "the", "left", "right", "small", "large"]
SNAPSHOT = "0" * 40  # the revision every stand-in's refs/main names


def hub_cache(root: Path, models: dict[str, Path]) -> Path:
    """A Hugging Face hub cache (``models--ORG--NAME/snapshots/REV``, ``refs/main``) in which each hub id
    of ``models`` holds a copy of its stand-in folder, so that ``from_pretrained(hub_id)`` finds it with
    ``HF_HUB_OFFLINE=1`` exactly as it finds a downloaded model."""
    for hub_id, folder in models.items():
        repo = root / f"models--{hub_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / SNAPSHOT)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(SNAPSHOT)
    return root


def _caption(rng: np.random.Generator, words: int = 6) -> str:
    return " ".join(rng.choice(WORDS, words))


def _images(folder: Path, names: list[str], seed: int) -> None:
    """Small plain images of random colours with a square of another (16 x 16 px; written fast)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = np.empty((16, 16, 3), np.uint8)
        pixels[:] = rng.integers(0, 256, 3)
        x, y = rng.integers(0, 10, 2)
        pixels[y : y + 6, x : x + 6] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(folder / name)


def flickr_like(root: Path, test: int = 1000, train: int = 8, val: int = 4, seed: int = 0) -> dict[str, Path]:
    """Flickr30K's files at a chosen size, 5 captions an image: ``images/``, the Karpathy split file
    ``dataset_flickr30k.json`` and a LAVIS folder ``annotations/`` (``flickr30k_{split}.json``). At the
    default 1,000 test images the ``flickr30k-1k`` protocol accepts it."""
    rng = np.random.default_rng(seed)
    splits = {"train": train, "val": val, "test": test}
    names = {s: [f"{s}_{k:05d}.jpg" for k in range(n)] for s, n in splits.items()}
    _images(root / "images", [n for s in names.values() for n in s], seed)
    captions = {name: [_caption(rng) for _ in range(5)] for s in names.values() for name in s}
    karpathy = [
        {"filename": name, "split": split, "sentences": [{"raw": c} for c in captions[name]]}
        for split, group in names.items()
        for name in group
    ]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": karpathy, "dataset": "flickr30k"}))
    lavis = root / "annotations"
    lavis.mkdir()
    for split, group in names.items():
        if split == "train":
            rows = [{"image": n, "caption": c, "image_id": n} for n in group for c in captions[n]]
        else:
            rows = [{"image": n, "caption": captions[n]} for n in group]
        (lavis / f"flickr30k_{split}.json").write_text(json.dumps(rows))
    return {"images": root / "images", "karpathy": root / "dataset_flickr30k.json", "lavis": lavis}


def karpathy_annotations(path: Path, test: int, seed: int = 0) -> Path:
    """A Karpathy split file of ``test`` test images (5 captions each) whose images are never read (for
    commands that evaluate a stored score matrix)."""
    rng = np.random.default_rng(seed)
    images = [
        {"filename": f"{k:06d}.jpg", "split": "test", "sentences": [{"raw": _caption(rng)} for _ in range(5)]}
        for k in range(test)
    ]
    path.write_text(json.dumps({"images": images}))
    return path


def precomp(
    folder: Path, regions: int, dim: int, sizes: dict[str, int], seed: int = 0, words: int = 6
) -> Path:
    """The SCAN "precomp" layout: ``{split}_ims.npy`` (images x regions x dim) and 5 captions an image of
    ``words`` words."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, n in sizes.items():
        np.save(folder / f"{split}_ims.npy", rng.random((n, regions, dim), dtype=np.float32))
        lines = [_caption(rng, words) for _ in range(5 * n)]
        (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return folder


class ChatServer(QuietHandler):
    """An OpenAI-compatible chat server on the loopback: every completion is three numbered questions (a
    description and an answer the pipeline reads as text), and ``/v1/models`` lists the models asked for."""

    served: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        text = "1. Is there a red circle?\n2. Is the square blue?\n3. Is it on the left?"
        usage = {"prompt_tokens": 9, "completion_tokens": len(text.split())}
        self.send_json(200, {"choices": [{"message": {"content": text}}], "usage": usage})

    def do_GET(self):  # noqa: N802
        self.send_json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served]})


def start_chat_server(models: list[str]) -> tuple[str, ThreadingHTTPServer]:
    """``(base URL ending in /v1, server)``: shut the server down after."""
    ChatServer.served = list(models)
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1", server
