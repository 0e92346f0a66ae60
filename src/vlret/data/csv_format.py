"""CSV / TSV annotation tables: one row per (media path, caption) pair.

Rows that name the same media path become one item with several captions. The column names are configurable;
a split column is optional (without it every row gets ``default_split``).
"""

from __future__ import annotations

import csv
import io
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
    """Read a CSV (or, by extension ``.tsv``, tab-separated) annotation table.

    ``encoding`` names the text encoding (UTF-8 by default; a UTF-8 byte-order mark is accepted).
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(
        io.StringIO(
            read_text(
                path, encoding, "give the file's encoding with --encoding (for example latin-1 or cp1252)"
            ),
            newline="",
        ),
        delimiter=delimiter,
    )
    policy = ErrorPolicy(on_error)
    items: list[Item] = []
    captions: list[Caption] = []
    index: dict[str, int] = {}
    header = reader.fieldnames or []
    for needed in (path_column, caption_column):
        if needed not in header:
            raise DataError(path, "line 1", f"no column {needed!r}; the header has {header}")
    has_split = split_column is not None and split_column in header
    for row in reader:
        record = f"line {reader.line_num}"
        if None in row or any(v is None for v in row.values()):
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
    return RetrievalDataset(items, captions, root, str(path), "csv", policy.skipped)
