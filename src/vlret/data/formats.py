"""Format detection and the one entry point, :func:`load_dataset`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vlret.data._policy import OnError
from vlret.data.csv_format import read_csv
from vlret.data.didemo import didemo_splits, read_didemo
from vlret.data.karpathy import read_karpathy
from vlret.data.lavis import read_lavis, split_from_filename
from vlret.data.lsmdc import lsmdc_splits, read_lsmdc
from vlret.data.msrvtt import is_msrvtt, read_msrvtt_folder
from vlret.data.msvd import msvd_splits, read_msvd
from vlret.data.precomp import precomp_splits, read_precomp
from vlret.data.records import RetrievalDataset
from vlret.data.vse import read_vse, vse_splits
from vlret.data.webdataset import is_webdataset, read_webdataset
from vlret.errors import DataError

FORMATS = (
    "karpathy",
    "lavis",
    "csv",
    "vse",
    "precomp",
    "msrvtt",
    "didemo",
    "msvd",
    "lsmdc",
    "webdataset",
    "parquet",
)


def detect_format(path: str | Path) -> str:
    """Guess the annotation format of a file or folder; raises :class:`DataError` when it cannot tell."""
    if is_webdataset(path) and not Path(path).is_dir():  # a brace pattern names several files: not a path
        return "webdataset"
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "no such file or folder")
    if is_msrvtt(path):
        return "msrvtt"
    if path.is_dir():
        if didemo_splits(path):
            return "didemo"
        if msvd_splits(path):
            return "msvd"
        if lsmdc_splits(path):
            return "lsmdc"
        if precomp_splits(path):  # before vse: both have {split}_caps.txt
            return "precomp"
        if vse_splits(path):
            return "vse"
        if any(split_from_filename(p) for p in path.glob("*.json")):
            return "lavis"
        if is_webdataset(path):
            return "webdataset"
        raise DataError(
            path,
            None,
            "folder has none of: {split}_caps.txt, *_{train,val,test}.json, MSRVTT_data.json, "
            "{split}_data.json (DiDeMo), {split}_list.txt (MSVD), LSMDC16_*.csv, *.tar (webdataset)",
        )
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".json":
        with path.open("rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"["):
            return "lavis"
        if head.startswith(b"{"):
            return "karpathy"
    raise DataError(path, None, f"unknown annotation format; expected one of {', '.join(FORMATS)}")


def load_dataset(
    path: str | Path,
    format: str = "auto",
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    **options: Any,
) -> RetrievalDataset:
    """Read annotations in any supported format into a :class:`RetrievalDataset`.

    ``options`` go to the format's reader (for CSV and Parquet: ``path_column``, ``caption_column``, ``split_column``,
    ``default_split``; for LAVIS: ``split``; for VSE, precomp, DiDeMo, MSVD and LSMDC: ``splits``; for
    MSR-VTT: ``split_lists``; for DiDeMo: ``paragraph``; for DiDeMo, MSVD and LSMDC: ``suffix``; for
    webdataset shards: ``split``).
    """
    fmt = detect_format(path) if format == "auto" else format
    readers = {
        "karpathy": read_karpathy,
        "lavis": read_lavis,
        "csv": read_csv,
        "vse": read_vse,
        "precomp": read_precomp,
        "msrvtt": read_msrvtt_folder,
        "didemo": read_didemo,
        "msvd": read_msvd,
        "lsmdc": read_lsmdc,
        "webdataset": read_webdataset,
        "parquet": read_csv,  # the same table columns as CSV
    }
    if fmt not in readers:
        raise DataError(path, None, f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    return readers[fmt](path, media_root=media_root, on_error=on_error, **options)


def dataset_fingerprint(dataset: RetrievalDataset) -> str:
    """A content hash of the records (ids, paths, splits, captions), for cache keys."""
    h = hashlib.sha256()
    for item in dataset.items:
        h.update(json.dumps([item.id, item.path, item.split]).encode())
    for cap in dataset.captions:
        h.update(json.dumps([cap.item_id, cap.text]).encode())
    h.update(str(dataset.media_root.resolve()).encode())
    return h.hexdigest()[:16]
