"""The embeddings folder layout of clip-retrieval, out of an index and back into one.

clip-retrieval's ``inference`` writes ``img_emb/img_emb_{n}.npy`` (L2-normalised embeddings, float16) and
``metadata/metadata_{n}.parquet`` (one row per embedding, in the same order: ``image_path``, and
``caption`` when captions were read), part by part; autofaiss builds its indexes from ``img_emb`` and
clip-retrieval's ``back`` serves them with the metadata. :func:`export_embeddings` writes a vlret index so
(with vlret's item ``id`` as a further column); :func:`import_embeddings` publishes a vlret index from such
a folder, without encoding anything, for the model that made the embeddings. Parquet needs pyarrow (the
``parquet`` extra).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from vlret.data._io import read_json, write_json
from vlret.errors import ConfigError, DataError
from vlret.index.build import index_embeddings
from vlret.index.search import Searcher
from vlret.models.registry import create_model

#: rows per part, as clip-retrieval's output partitions hold
PART_ROWS = 1_000_000
#: what an export records in its folder: the index it came from, its version, and (once finished) its parts
EXPORT_RECORD = "vlret-export.json"


def _parquet():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("the clip-retrieval layout is Parquet: pip install 'vlret[parquet]'") from None
    return pa, pq


def export_embeddings(
    index: str | Path, out: str | Path, dtype: str = "float16", part_rows: int = PART_ROWS
) -> list[Path]:
    """Write the index's item embeddings and metadata in clip-retrieval's layout; returns the parts'
    embedding files. ``image_path`` is each item's absolute path; ``caption`` the item's first indexed
    caption (empty without one)."""
    pa, pq = _parquet()
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 (clip-retrieval's) or float32, not {dtype!r}")
    searcher = Searcher(index)
    out = Path(out)
    _claim_export_folder(out, index)
    write_json(out / EXPORT_RECORD, {"index": str(Path(index).absolute()), "version": searcher.version_key})
    (out / "img_emb").mkdir()
    (out / "metadata").mkdir()
    first_caption: dict[str, str] = {}
    for caption in searcher.captions or []:
        first_caption.setdefault(caption["item_id"], caption["text"])
    embeddings = searcher.images.embeddings
    written = []
    for part, start in enumerate(range(0, len(embeddings), part_rows)):
        stop = min(start + part_rows, len(embeddings))
        target = out / "img_emb" / f"img_emb_{part}.npy"
        np.save(target, np.asarray(embeddings[start:stop], dtype=dtype))
        rows = [searcher.items[n] for n in range(start, stop)]
        table = pa.table(
            {
                "image_path": [str(searcher.media_root / r["path"]) for r in rows],
                "caption": [first_caption.get(r["id"], "") for r in rows],
                "id": [r["id"] for r in rows],
            }
        )
        pq.write_table(table, out / "metadata" / f"metadata_{part}.parquet")
        written.append(target)
    record = read_json(out / EXPORT_RECORD)
    write_json(out / EXPORT_RECORD, {**record, "parts": len(written)})  # the parts' count: finished
    return written


def _claim_export_folder(out: Path, index: str | Path) -> None:
    """An export owns its folder: it may be new or empty, or an earlier export of the same index (any
    version, finished or not), which is replaced whole; anything else is refused, so that no part of
    another export is left to be read with this one."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file; an export writes a folder (img_emb/, metadata/)")
    if not out.is_dir() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    record = out / EXPORT_RECORD
    earlier = read_json(record).get("index") if record.is_file() else None
    if earlier != str(Path(index).absolute()):
        whose = f"an export of {earlier}" if earlier else "not an export of vlret"
        raise ConfigError(f"--out {out}: a folder that holds files ({whose}); give an empty or new folder")
    for name in ("img_emb", "metadata"):
        shutil.rmtree(out / name, ignore_errors=True)
    record.unlink()


def _parts(folder: Path) -> list[tuple[Path, Path]]:
    embeddings = sorted(
        (folder / "img_emb").glob("img_emb_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
    )
    if not embeddings:
        raise DataError(folder, None, "no img_emb/img_emb_*.npy: not a clip-retrieval embeddings folder")
    pairs = []
    for path in embeddings:
        meta = folder / "metadata" / f"metadata_{path.stem.rsplit('_', 1)[1]}.parquet"
        if not meta.is_file():
            raise DataError(meta, None, f"the metadata of {path.name} is missing")
        pairs.append((path, meta))
    return pairs


def import_embeddings(
    model_name: str,
    folder: str | Path,
    out: str | Path,
    media_root: str | Path | None = None,
    on_disk: bool = False,
    memory_budget_bytes: int | None = None,
    rebuild: bool = False,
    retrain: bool = False,
    allow_mass_removal: bool = False,
) -> Path:
    """Publish a vlret index from a clip-retrieval embeddings folder (over an index imported before, an
    update: :func:`~vlret.index.build.index_embeddings`). Item paths come from
    ``image_path`` (relative to ``media_root``, by default the folder all of them share), ids from an
    ``id`` column when there is one, else the paths. The model must be the one that made the embeddings:
    its dimension is checked."""
    _, pq = _parquet()
    folder = Path(folder)
    arrays, image_paths, ids = [], [], []
    for embeddings_file, meta_file in _parts(folder):
        vectors = _read_vectors(embeddings_file)
        try:
            table = pq.read_table(meta_file)
        except (OSError, ValueError) as exc:  # pyarrow's errors for what is not Parquet
            raise DataError(meta_file, None, f"not a readable Parquet file ({exc})") from None
        if "image_path" not in table.column_names:
            raise DataError(meta_file, "schema", f"no column 'image_path'; it has {table.column_names}")
        if table.num_rows != len(vectors):
            raise DataError(
                meta_file,
                None,
                f"{table.num_rows} rows for the {len(vectors)} embeddings of {embeddings_file.name}",
            )
        if not len(vectors):
            continue  # an empty part (the last of a run, say): nothing to index
        paths = _text_column(table, "image_path", meta_file)
        image_paths += paths
        ids += _text_column(table, "id", meta_file) if "id" in table.column_names else paths
        arrays.append(vectors)
    if not arrays:
        raise DataError(folder, None, "every part holds 0 embeddings: nothing to index")
    _check_unique_ids(ids, folder)
    embeddings = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    root = Path(os.path.abspath(media_root)) if media_root else _common_folder(image_paths)
    relative = [_relative(p, root) for p in image_paths]
    _check_dimension(model_name, embeddings.shape[1], folder)
    return index_embeddings(
        model_name, out, embeddings, ids, relative, root, on_disk, memory_budget_bytes, source=str(folder),
        rebuild=rebuild, retrain=retrain, allow_mass_removal=allow_mass_removal,
    )  # fmt: skip


def _read_vectors(path: Path) -> np.ndarray:
    """A part's embeddings ``[rows, dimension]`` (memory-mapped), or a DataError naming the file."""
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(path, None, f"not a NumPy array file ({exc})") from None
    if vectors.ndim != 2 or vectors.dtype.kind != "f":
        raise DataError(
            path,
            None,
            f"a {vectors.ndim}-d {vectors.dtype} array of shape {vectors.shape}; expected floats [rows, dimension]",
        )
    return vectors


def _text_column(table, name: str, file: Path) -> list[str]:
    """A column of non-empty strings (numbers are written as text), or a DataError naming the row."""
    values = table.column(name).to_pylist()
    for row, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(file, f"row {row}", f"empty {name!r}")
        if not isinstance(value, (str, int)):
            raise DataError(file, f"row {row}", f"{name!r} holds a {type(value).__name__}, not a string")
    return [str(v) for v in values]


def _check_unique_ids(ids: list[str], folder: Path) -> None:
    if len(set(ids)) == len(ids):
        return
    seen: dict[str, int] = {}
    for row, item in enumerate(ids):
        if item in seen:
            raise DataError(
                folder, f"rows {seen[item]} and {row}", f"the id {item!r} twice: every item needs its own id"
            )
        seen[item] = row


#: a media root derived from the paths must be at least this deep (``/data/photos``): the data never
#: widens what is served to ``/`` or ``/home`` because one path lies elsewhere
MIN_DERIVED_ROOT_PARTS = 3


def _common_folder(paths: list[str]) -> Path:
    """The folder all the (absolute) paths share, when it is deep enough to be a collection's own."""
    absolute = [p for p in paths if os.path.isabs(p)]
    if len(absolute) != len(paths):
        raise ConfigError(
            "image_path holds relative paths: give --media-root, the folder they are relative to"
        )
    root = Path(os.path.commonpath([os.path.dirname(os.path.normpath(p)) for p in paths]))
    if len(root.parts) < MIN_DERIVED_ROOT_PARTS:
        raise ConfigError(
            f"the {len(paths)} image paths share only {root}, which would serve everything under it: give "
            "--media-root FOLDER, the collection's folder (paths outside it are indexed and searchable, "
            "but their files are not served)"
        )
    return root


def _relative(path: str, root: Path) -> str:
    """``path`` relative to ``root``; one outside it stays absolute (the index then never serves it)."""
    candidate = Path(path)
    if not candidate.is_absolute():
        return candidate.as_posix()
    try:
        return Path(os.path.normpath(candidate)).relative_to(root).as_posix()
    except ValueError:
        return candidate.as_posix()


def _check_dimension(model_name: str, dim: int, folder: Path) -> None:
    model = create_model(model_name).eval()
    with torch.no_grad():
        model_dim = model.encode_texts(model.tokenize(["a photo"])).embeds.shape[1]
    if model_dim != dim:
        raise ConfigError(
            f"{folder}: its embeddings have {dim} dimensions and {model_name}'s {model_dim}: give the model "
            "that made them"
        )
