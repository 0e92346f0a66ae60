"""An index's vectors in Qdrant, for collections that need a database (the ``qdrant`` extra).

:func:`export_to_qdrant` writes the item embeddings of a vlret index into a Qdrant collection: one point
per item, its id the item's row in the index, its payload the item's ``id`` and ``path``, cosine distance.
It uploads in batches, each acknowledged before the next, so an export that was stopped resumes at the
points already there. :class:`QdrantVectors` searches that collection in place of the index's FAISS
vectors (``Searcher(index, vectors=...)``, ``vlret search --qdrant``, ``vlret serve --qdrant``): the model,
the items and the results are the index's, so the answers have the same form as without Qdrant.

``target`` is a server URL (``http://host:6333``, for production) or a folder, opened with Qdrant's
embedded local mode (one process at a time; for tests and small collections).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from vlret.errors import ConfigError
from vlret.index.search import Searcher

#: points per upload request
BATCH = 1024


def _qdrant():
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        raise ConfigError("Qdrant needs its client: pip install 'vlret[qdrant]'") from None
    return QdrantClient, models


def connect(target: str | Path):
    """A Qdrant client for a server URL or an embedded local folder that answers, or a ConfigError that
    says why not (nothing listening, a file where the folder should be, a folder in use)."""
    client_class, _ = _qdrant()
    text = str(target)
    remote = text.startswith(("http://", "https://"))
    if not remote and Path(text).exists() and not Path(text).is_dir():
        raise ConfigError(f"--qdrant {text}: a file; give a Qdrant server URL (http://host:6333) or a folder")
    try:
        client = client_class(url=text) if remote else client_class(path=text)
        client.get_collections()  # the first request: a server that is not there fails here, not later
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the client raises its own, httpx's and OS errors
        what = "no Qdrant server answered" if remote else "Qdrant could not open the folder"
        raise ConfigError(f"--qdrant {text}: {what} ({str(exc)[:200]})") from None
    return client


def default_collection(index: str | Path) -> str:
    """The collection an index is exported to unless one is named: the index link's name."""
    return Path(index).name.replace(".", "_")


def export_to_qdrant(
    index: str | Path, target: str | Path, collection: str | None = None, progress: bool = True
) -> tuple[str, int]:
    """Upload the index's item embeddings to ``collection`` at ``target``; returns the collection and
    its number of points. A collection of another dimension or distance is refused, not overwritten."""
    _, models = _qdrant()
    searcher = Searcher(index)
    collection = collection or default_collection(index)
    embeddings = searcher.images.embeddings
    holds = searcher.version_key
    client = connect(target)
    try:
        done = 0
        if client.collection_exists(collection):
            params = client.get_collection(collection).config.params.vectors
            if params.size != embeddings.shape[1] or params.distance != models.Distance.COSINE:
                raise ConfigError(
                    f"{target}: collection {collection!r} holds {params.size}-d {params.distance} vectors, and "
                    f"the index {embeddings.shape[1]}-d cosine ones; name another with --collection"
                )
            before = collection_version(client, collection)
            if before in (holds, None):  # this version's export, stopped: whole batches are in
                done = client.count(collection, exact=True).count // BATCH * BATCH
            else:  # another version of the index (a rebuild): its vectors are replaced, none kept
                if progress:
                    print(f"{collection!r} held index version {before}: replaced by {holds}", file=sys.stderr)
                client.delete_collection(collection)
        if not client.collection_exists(collection):
            client.create_collection(
                collection,
                vectors_config=models.VectorParams(size=embeddings.shape[1], distance=models.Distance.COSINE),
            )
        starts = range(done, len(embeddings), BATCH)
        for start in tqdm(starts, desc="qdrant upload", unit="batch", disable=not progress):
            stop = min(start + BATCH, len(embeddings))
            rows = [searcher.items[n] for n in range(start, stop)]
            batch = models.Batch(
                ids=list(range(start, stop)),
                vectors=np.asarray(embeddings[start:stop], dtype=np.float32).tolist(),
                payloads=[{"id": r["id"], "path": r["path"], "index_version": holds} for r in rows],
            )
            client.upsert(collection, points=batch, wait=True)
        return collection, client.count(collection, exact=True).count
    finally:
        client.close()


def collection_version(client, collection: str) -> str | None:
    """The index version a collection's points were exported from (None: empty, or exported before
    versions were recorded)."""
    points = client.retrieve(collection, ids=[0], with_payload=True)
    return points[0].payload.get("index_version") if points else None


class QdrantVectors:
    """A Qdrant collection searched as an index's item vectors: ``search(vector, k)`` gives the scores
    and row numbers, best first, as the index's own vectors do."""

    def __init__(
        self, target: str | Path, collection: str, embeddings: np.ndarray, version: str | None = None
    ):
        """``version``: the searcher's :attr:`~vlret.index.search.Searcher.version_key`; a collection
        exported from another version is refused."""
        self.client = connect(target)
        self.collection = collection
        self.embeddings = embeddings  # the index's, for the count and for callers that read rows
        if not self.client.collection_exists(collection):
            raise ConfigError(
                f"{target}: no collection {collection!r}; export the index to it with vlret index export "
                "--format qdrant"
            )
        points = self.client.count(collection, exact=True).count
        if points != len(embeddings):
            raise ConfigError(
                f"{target}: collection {collection!r} holds {points} points and the index {len(embeddings)} "
                "items; finish the export (run it again) or name the collection of this index"
            )
        held = collection_version(self.client, collection)
        if version is not None and held != version:
            self.client.close()
            raise ConfigError(
                f"{target}: collection {collection!r} holds index version {held}, and the index is at {version} "
                "(rebuilt since the export); export it again"
            )
        self.faiss_index = None

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.client.query_points(
            self.collection, query=np.asarray(query, dtype=np.float32).ravel().tolist(), limit=k
        ).points
        return (
            np.array([p.score for p in found], dtype=np.float32),
            np.array([int(p.id) for p in found], dtype=np.int64),
        )

    def close(self) -> None:
        self.client.close()
