"""The SCAN / BUTD "precomp" layout: ``{split}_ims.npy`` region features and ``{split}_caps.txt`` captions.

- ``{split}_ims.npy``: float ``N x R x D`` (36 regions x 2048 for bottom-up-attention features).
- ``{split}_caps.txt``: one caption per line, 5 consecutive lines per image: caption ``c`` belongs to image
  row ``c // 5``. As the released loaders do, an ims file with one row per caption (``N == len(caps)``) is
  read too: image ``i`` is then row ``5 i``.
- ``{split}_ids.txt`` (optional): an image id per image (or per caption); items are ``{split}:{id}``, or
  ``{split}:{row}`` without it.
- ``vocab.json`` / ``*_vocab.json`` (optional): the SCAN vocabulary (``{"word2idx": ..., "idx2word": ...,
  "idx": n}``), read by :func:`read_scan_vocab` for word-level text towers.

Items point at their features with ``{split}_ims.npy#{row}`` paths (see :mod:`vlret.data.regions`).
"""

from __future__ import annotations

from pathlib import Path

from vlret.data._io import read_json, read_text
from vlret.data._policy import ErrorPolicy, OnError, clean_caption
from vlret.data.records import Caption, Item, RetrievalDataset
from vlret.data.regions import open_region_file, region_path
from vlret.errors import DataError

CAPTIONS_PER_IMAGE = 5
SCAN_SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")  # ids 0..3


def precomp_splits(folder: Path) -> list[str]:
    """Split names that have both ``{split}_ims.npy`` and ``{split}_caps.txt`` in ``folder``."""
    return sorted(
        p.name[: -len("_ims.npy")]
        for p in folder.glob("*_ims.npy")
        if (folder / p.name.replace("_ims.npy", "_caps.txt")).is_file()
    )


def _image_rows(ims_file: Path, caps_file: Path, n_rows: int, n_caps: int) -> list[int]:
    """The ims row of each image: one per 5 captions, or every 5th when the file has a row per caption."""
    if n_caps % CAPTIONS_PER_IMAGE:
        raise DataError(caps_file, None, f"{n_caps} captions: expected {CAPTIONS_PER_IMAGE} lines per image")
    n_images = n_caps // CAPTIONS_PER_IMAGE
    if n_rows == n_images:
        return list(range(n_images))
    if n_rows == n_caps:
        return list(range(0, n_caps, CAPTIONS_PER_IMAGE))
    raise DataError(
        ims_file,
        None,
        f"{n_rows} rows for {n_caps} captions in {caps_file.name}: expected {n_images} "
        f"(one per {CAPTIONS_PER_IMAGE} captions) or {n_caps} (one per caption)",
    )


def _image_ids(folder: Path, split: str, n_images: int) -> list[str]:
    ids_file = folder / f"{split}_ids.txt"
    if not ids_file.is_file():
        return [str(n) for n in range(n_images)]
    ids = [line.strip() for line in read_text(ids_file).splitlines()]
    if len(ids) == n_images * CAPTIONS_PER_IMAGE:
        ids = ids[::CAPTIONS_PER_IMAGE]
    if len(ids) != n_images:
        raise DataError(
            ids_file, None, f"{len(ids)} ids for {n_images} images: expected one per image or caption"
        )
    return ids


def read_precomp(
    folder: str | Path,
    media_root: str | Path | None = None,
    on_error: OnError = "raise",
    splits: list[str] | None = None,
) -> RetrievalDataset:
    """Read the given splits (default: every split with both files) of a precomp folder."""
    folder = Path(folder)
    if media_root is not None:
        raise DataError(
            folder, None, "precomp features live beside the captions; --media-root does not apply"
        )
    policy = ErrorPolicy(on_error)
    items: list[Item] = []
    captions: list[Caption] = []
    names = splits or precomp_splits(folder)
    if not names:
        raise DataError(folder, None, "no {split}_ims.npy with a matching {split}_caps.txt")
    shapes: dict[str, tuple[int, ...]] = {}
    for split in names:
        ims_file, caps_file = folder / f"{split}_ims.npy", folder / f"{split}_caps.txt"
        if not caps_file.is_file():
            raise DataError(
                caps_file, None, "file not found (precomp needs {split}_ims.npy and {split}_caps.txt)"
            )
        rows = open_region_file(ims_file.resolve())
        shapes[split] = rows.shape[1:]
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
            raise DataError(
                folder, None, f"the splits' region features differ in shape (regions, dim): {listed}"
            )
        lines = read_text(
            caps_file, advice="precomp captions are UTF-8 text, one caption a line"
        ).splitlines()
        image_rows = _image_rows(ims_file, caps_file, len(rows), len(lines))
        ids = _image_ids(folder, split, len(image_rows))
        for image, row in enumerate(image_rows):
            item_id = f"{split}:{ids[image]}"
            kept = []
            for c in range(image * CAPTIONS_PER_IMAGE, (image + 1) * CAPTIONS_PER_IMAGE):
                text = clean_caption(lines[c])
                if text is None:
                    policy.bad(caps_file, f"line {c + 1}", "empty caption")
                    continue
                kept.append(Caption(text, item_id))
            if kept:
                items.append(Item(item_id, region_path(ims_file.name, row), split))
                captions.extend(kept)
    return RetrievalDataset(items, captions, folder, str(folder), "precomp", policy.skipped)


def read_scan_vocab(path: str | Path) -> dict[str, int]:
    """A SCAN vocabulary file as ``word -> id``; ids 0-3 must be ``<pad> <start> <end> <unk>``.

    Accepts SCAN's ``{"word2idx": {...}, "idx2word": {...}, "idx": n}`` and a plain ``{word: id}`` object.
    """
    data = read_json(path)
    word2idx = data.get("word2idx", data) if isinstance(data, dict) else None
    if not isinstance(word2idx, dict) or not all(isinstance(v, int) for v in word2idx.values()):
        raise DataError(path, "word2idx", "expected an object mapping words to integer ids")
    for n, special in enumerate(SCAN_SPECIALS):
        if word2idx.get(special) != n:
            raise DataError(
                path, special, f"expected id {n} (SCAN's reserved ids: {', '.join(SCAN_SPECIALS)})"
            )
    if sorted(word2idx.values()) != list(range(len(word2idx))):
        raise DataError(path, "word2idx", "ids must be 0..n-1, each used once")
    return dict(word2idx)
