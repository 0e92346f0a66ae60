"""Annotation tables, CSV / TSV or Parquet: one row per (media path, caption) pair.

Rows that name the same media path become one item with several captions. The column names are configurable;
a split column is optional (without it every row gets ``default_split``). Parquet files (the tables
img2dataset and clip-retrieval write; the ``parquet`` extra) are read a batch of rows at a time, and a
missing (null) value counts as empty.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from vlret.data._io import read_text
from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.errors import DataError


def read_csv(
    path: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    path_column: str = "image",
    caption_column: str = "caption",
    split_column: str | None = "split",
    default_split: str = "test",
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> RetrievalDataset:
    """Read a CSV (or, by extension ``.tsv``, tab-separated; ``.parquet``: Parquet) annotation table.

    ``encoding`` names the text encoding of a CSV (UTF-8 by default; a UTF-8 byte-order mark is accepted).
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        header, rows = _parquet_rows(path)
        fmt = "parquet"
    else:
        header, rows = _csv_rows(path, delimiter, encoding)
        fmt = "csv"
    policy = ErrorPolicy(on_error)
    items: list[Item] = []
    captions: list[Caption] = []
    index: dict[str, int] = {}
    for needed in (path_column, caption_column):
        if needed not in header:
            raise DataError(
                path, "line 1" if fmt == "csv" else "schema", f"no column {needed!r}; the header has {header}"
            )
    has_split = split_column is not None and split_column in header
    for record, row in rows:
        if row is None:
            policy.bad(path, record, f"expected {len(header)} fields as in the header")
            continue
        media = row[path_column].strip()
        text = clean_caption(row[caption_column])
        split = row[split_column].strip() if has_split else default_split
        if not media:
            policy.bad(path, record, f"empty {path_column!r}")
            continue
        if text is None:
            policy.bad(path, record, f"empty {caption_column!r}")
            continue
        if not split:
            policy.bad(path, record, f"empty {split_column!r}")
            continue
        if media not in index:
            index[media] = len(items)
            items.append(Item(media, media, split))
        elif items[index[media]].split != split:
            policy.bad(path, record, f"{media!r} is also in split {items[index[media]].split!r}")
            continue
        captions.append(Caption(text, media))
    root = Path(media_root) if media_root is not None else path.parent
    return RetrievalDataset(items, captions, root, str(path), fmt, policy.skipped)


Rows = Iterator[tuple[str, dict[str, str] | None]]  # (record label, fields; None for a malformed row)


def _csv_rows(path: Path, delimiter: str | None, encoding: str) -> tuple[list[str], Rows]:
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    text = read_text(
        path, encoding, "give the file's encoding with --encoding (for example latin-1 or cp1252)"
    )
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)

    def rows() -> Rows:
        for row in reader:
            whole = None not in row and all(v is not None for v in row.values())
            yield f"line {reader.line_num}", row if whole else None

    return list(reader.fieldnames or []), rows()


def _parquet_rows(path: Path) -> tuple[list[str], Rows]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(path, None, "reading Parquet needs pyarrow: pip install 'vlret[parquet]'") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for a damaged file
        raise DataError(path, None, f"not a readable Parquet file ({exc})") from None
    header = list(table.schema_arrow.names)

    def rows() -> Rows:
        number = 0
        for batch in table.iter_batches(batch_size=65536):
            for row in batch.to_pylist():
                number += 1
                yield f"row {number}", {k: _cell(v, path, number, k) for k, v in row.items()}

    return header, rows()


def _cell(value: object, path: Path, row: int, column: str) -> str:
    """A Parquet cell as the text a CSV cell would hold; a list or a map (a caption column of lists,
    say) is refused rather than read as its Python spelling."""
    if value is None:
        return ""
    if isinstance(value, (list, dict, bytes)):
        raise DataError(path, f"row {row}", f"{column!r} holds a {type(value).__name__}, not a single value")
    return str(value)
