"""Image classification data for prompt learning (CoOp, TextRefiner): splits, few-shot subsets, base and new.

Two layouts are read into one record model (:class:`ClassData`):

- **CoOp's split files** ``split_zhou_<Name>.json``: ``{"train" | "val" | "test": [[relative path, label,
  class name], ...]}``, paths relative to the dataset's image folder (:func:`read_split_zhou`);
- **class folders**: ``root/<split>/<class name>/<images>`` or, with one split, ``root/<class name>/<images>``;
  labels follow the sorted folder names (:func:`read_class_folders`). Folders named by id (ImageNet's
  ``n01440764``, ImageNetV2's ``0`` .. ``999``) take their class names from CoOp's ``classnames.txt``
  (:func:`read_classnames`);
- **FGVC-Aircraft's own lists** ``images_variant_<split>.txt`` and ``variants.txt`` (no split file exists for
  it; :func:`read_fgvc_aircraft`).

Protocols (CoOp's, which TextRefiner reports):

- :func:`few_shot`: ``shots`` images per class drawn without replacement, seeded; a class with fewer keeps
  what it has, and the shortfall is returned so that a result can say so (CoOp warns and goes on);
- :func:`base_new`: the train split's labels sorted, the first ``ceil(C / 2)`` are *base*, the rest *new*,
  each half relabelled from 0 (37 classes: 19 / 18; 397: 199 / 198);
- :func:`harmonic_mean`: ``2 B N / (B + N)``; a dataset average is the harmonic mean of the averaged base and
  new accuracies, not the average of per-dataset harmonic means.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlret.data._io import read_json
from vlret.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledImage:
    path: str  # relative to ClassData.root (or absolute)
    label: int


@dataclass
class ClassData:
    """Labelled images per split, and the class names by label."""

    root: Path
    classnames: list[str]
    splits: dict[str, list[LabelledImage]]
    source: str = ""
    notes: list[str] = field(default_factory=list)  # what a protocol could not do as asked

    def path(self, image: LabelledImage) -> Path:
        p = Path(image.path)
        return p if p.is_absolute() else self.root / p

    def split(self, name: str) -> list[LabelledImage]:
        if name not in self.splits:
            raise DataError(self.source, None, f"no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


def _check_files(data: ClassData, where: str) -> None:
    for split, images in data.splits.items():
        for n, image in enumerate(images):
            if not data.path(image).is_file():
                raise DataError(where, f"{split}[{n}]", f"image file not found: {data.path(image)}")


def read_split_zhou(path: str | Path, image_root: str | Path, check_files: bool = True) -> ClassData:
    """A CoOp split file; ``image_root`` is the folder its paths are relative to."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict) or not any(s in raw for s in SPLITS):
        raise DataError(path, None, 'expected {"train": [...], "val": [...], "test": [...]}')
    names: dict[int, str] = {}
    splits: dict[str, list[LabelledImage]] = {}
    for split in SPLITS:
        entries = raw.get(split, [])
        if not isinstance(entries, list):
            raise DataError(path, split, "expected a list of [path, label, class name]")
        images = []
        for n, entry in enumerate(entries):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)):
                raise DataError(path, f"{split}[{n}]", f"expected [path, label, class name], got {entry!r}")
            rel, label, name = entry
            if names.setdefault(label, name) != name:
                raise DataError(
                    path, f"{split}[{n}]", f"label {label} is {names[label]!r} elsewhere, here {name!r}"
                )
            images.append(LabelledImage(str(rel), label))
        splits[split] = images
    if sorted(names) != list(range(len(names))):
        raise DataError(path, None, f"labels must be 0..{len(names) - 1}; got {sorted(names)[:5]}...")
    data = ClassData(Path(image_root), [names[i] for i in range(len(names))], splits, str(path))
    if check_files:
        _check_files(data, str(path))
    return data


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_classnames(path: str | Path) -> list[tuple[str, str]]:
    """CoOp's ``classnames.txt``: one ``<folder id> <class name>`` per line, in label order."""
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        folder, _, name = line.strip().partition(" ")
        if not name.strip():
            raise DataError(path, f"line {n}", f"expected '<folder id> <class name>', got {line!r}")
        pairs.append((folder, name.strip()))
    if not pairs:
        raise DataError(path, None, "no class names")
    return pairs


def _folder_order(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)  # 2 before 10 for numbered folders


def read_class_folders(root: str | Path, classnames: str | Path | None = None) -> ClassData:
    """``root/<split>/<class>/...`` (splits among train, val, test) or ``root/<class>/...`` (one split,
    ``test``); labels follow the sorted folder names (numbered folders in numeric order). Class names are
    the folder names with ``_`` read as a space, or, with ``classnames`` (a ``classnames.txt``), the name
    of each folder's id, a numbered folder ``k`` taking the ``k``-th line's name (ImageNetV2)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, None, "not a folder of class folders")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    layout = split_dirs or {"test": root}
    folder_names = sorted(
        {d.name for folder in layout.values() for d in folder.iterdir() if d.is_dir()}, key=_folder_order
    )
    if not folder_names:
        raise DataError(root, None, "no class folders found")
    label_of = {name: n for n, name in enumerate(folder_names)}
    splits = {}
    for split, folder in layout.items():
        images = []
        for class_dir in sorted(
            (d for d in folder.iterdir() if d.is_dir()), key=lambda d: _folder_order(d.name)
        ):
            files = _images_in(class_dir)
            if not files:
                raise DataError(class_dir, None, f"class folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            images += [LabelledImage(str(f.relative_to(root)), label_of[class_dir.name]) for f in files]
        splits[split] = images
    if classnames is None:
        names = [name.replace("_", " ") for name in folder_names]
    else:
        names = _names_of_folders(folder_names, read_classnames(classnames), classnames)
    _check_distinct_names(folder_names, names, root)
    return ClassData(root, names, splits, str(root))


def _check_distinct_names(folders: list[str], names: list[str], root: Path) -> None:
    """Two folders read as one class name would give two labels the same prompt: a class could never be
    told from its twin, and accuracy would count a coin toss."""
    seen: dict[str, str] = {}
    for folder, name in zip(folders, names, strict=True):
        key = " ".join(name.lower().split())
        if key in seen:
            raise DataError(
                root,
                f"class folders {seen[key]!r} and {folder!r}",
                f"both read as the class name {name!r}; rename one (or name them in classnames.txt)",
            )
        seen[key] = folder


def _names_of_folders(folders: list[str], pairs: list[tuple[str, str]], source) -> list[str]:
    by_id = dict(pairs)
    names = []
    for folder in folders:
        if folder in by_id:
            names.append(by_id[folder])
        elif folder.isdigit() and int(folder) < len(pairs):
            names.append(pairs[int(folder)][1])
        else:
            raise DataError(source, None, f"no class name for folder {folder!r}")
    return names


def read_fgvc_aircraft(root: str | Path) -> ClassData:
    """FGVC-Aircraft as CoOp reads it: ``root/variants.txt`` (the 100 classes in label order),
    ``root/images_variant_{train,val,test}.txt`` (``<image id> <variant>`` per line), ``root/images/<id>.jpg``."""
    root = Path(root)
    variants_file = root / "variants.txt"
    if not variants_file.is_file():
        raise DataError(variants_file, None, "not found (expected FGVC-Aircraft's data folder)")
    classnames = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    label_of = {name: n for n, name in enumerate(classnames)}
    splits = {}
    for split in SPLITS:
        listing = root / f"images_variant_{split}.txt"
        if not listing.is_file():
            raise DataError(listing, None, "not found")
        images = []
        for n, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise DataError(listing, f"line {n}", f"variant {variant!r} is not in variants.txt")
            images.append(LabelledImage(f"images/{image_id}.jpg", label_of[variant]))
        splits[split] = images
    data = ClassData(root, classnames, splits, str(root))
    _check_files(data, str(root))
    return data


def few_shot(
    images: list[LabelledImage], shots: int, seed: int
) -> tuple[list[LabelledImage], dict[int, int]]:
    """``shots`` images per label (all of a label's when it has fewer), deterministic for ``seed``; returns
    (the subset in label order, {label: images available} for every label short of ``shots``)."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, not {shots}")
    by_label: dict[int, list[LabelledImage]] = {}
    for image in images:
        by_label.setdefault(image.label, []).append(image)
    rng = random.Random(seed)
    chosen, short = [], {}
    for label in sorted(by_label):
        pool = by_label[label]
        if len(pool) < shots:
            short[label] = len(pool)
        chosen += rng.sample(pool, min(shots, len(pool)))
    return chosen, short


def few_shot_data(data: ClassData, shots: int, seed: int, val_shots: int = 4) -> ClassData:
    """CoOp's few-shot training data: ``shots`` per class from train, ``min(shots, val_shots)`` from val
    (when there is a val split); test untouched; shortfalls recorded in ``notes``."""
    splits = dict(data.splits)
    notes = list(data.notes)
    for split, count in (("train", shots), ("val", min(shots, val_shots))):
        if split not in splits:
            continue
        splits[split], short = few_shot(splits[split], count, seed)
        for label, available in short.items():
            notes.append(
                f"{split}: class {data.classnames[label]!r} has {available} images, fewer than {count} shots; "
                "all of them are used"
            )
    return replace(data, splits=splits, notes=notes)


def base_new(data: ClassData, subset: str) -> ClassData:
    """The ``base`` or ``new`` half of the classes (or ``all``), relabelled from 0 in every split."""
    if subset == "all":
        return data
    if subset not in ("base", "new"):
        raise ValueError(f"subset must be base, new or all, not {subset!r}")
    labels = sorted({image.label for image in data.split("train")})
    half = math.ceil(len(labels) / 2)
    kept = labels[:half] if subset == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(kept)}
    splits = {
        split: [LabelledImage(i.path, relabel[i.label]) for i in images if i.label in relabel]
        for split, images in data.splits.items()
    }
    return replace(data, classnames=[data.classnames[old] for old in kept], splits=splits)


def harmonic_mean(base: float, new: float) -> float:
    """``2 B N / (B + N)`` (0 when both are 0)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)
