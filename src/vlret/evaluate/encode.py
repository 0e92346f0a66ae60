"""Batched encoding of a dataset's items and captions, with an on-disk feature cache.

The cache key covers the model (its identity and a hash of its weights), the records (ids, paths, captions)
and the preprocessing, so features are reused exactly when nothing that shapes them changed. Entries are
written to a temporary folder and renamed into place: a killed run never leaves a half-written entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vlret.data.formats import dataset_fingerprint
from vlret.data.images import visual_inputs
from vlret.data.prefetch import prefetch
from vlret.data.records import RetrievalDataset
from vlret.errors import ConfigError, VlretError
from vlret.models.base import Features, RetrievalModel


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in evaluation mode for the body, then back in the mode it was in (a caller's training
    run must not find its dropout switched off)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def in_evaluation_mode(function: Callable) -> Callable:
    """Decorate a function whose first argument is a model: it runs under :func:`evaluating`."""

    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        with evaluating(model):
            return function(model, *args, **kwargs)

    return wrapper


@torch.no_grad()
def check_head_fits(model: RetrievalModel, dataset: RetrievalDataset) -> None:
    """Score the first item against its first caption with the model's head, in evaluation mode: a head
    whose sizes do not fit the features (SGR/SAF's ``n_regions`` or ``embed_dim``, AEOM's chunk sizes)
    says so now, before a whole split is encoded or an epoch trained, as a :class:`ConfigError` on
    ``model.head``."""
    if model.head.is_dot_product or not dataset.items or not dataset.captions:
        return
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), evaluating(model):  # moves no one's random stream
        try:
            inputs = torch.from_numpy(np.asarray(visual_inputs(model, dataset, [0]))).to(device)
            tokens = {k: v.to(device) for k, v in model.tokenize([dataset.captions[0].text]).items()}
            items, texts = model.encode_images(inputs), model.encode_texts(tokens)
            model.head.score(texts, items)
        except ValueError as exc:
            raise ConfigError(f"model.head: {exc}") from None


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLRET_CACHE", Path.home() / ".cache" / "vlret")) / "features"


@dataclass
class FeatureTable:
    """Features of a list of items or texts as arrays (memory-mapped when read from the cache).

    ``embeds`` ``[N, D]`` are L2-normalised float32; ``tokens`` ``[N, T, D_t]`` (padded to the longest) and
    ``mask`` ``[N, T]`` are kept only for heads that read tokens.
    """

    embeds: np.ndarray
    tokens: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.embeds)

    def rows(self, start: int, stop: int) -> Features:
        """Rows ``start:stop`` as float32 torch features (copied out of a memory map)."""
        return self._features(slice(start, stop))

    def take(self, index: np.ndarray) -> Features:
        """The rows ``index`` (any order) as float32 torch features."""
        return self._features(np.asarray(index, dtype=np.int64))

    def _features(self, index: slice | np.ndarray) -> Features:
        def tensor(x: np.ndarray | None, dtype) -> torch.Tensor | None:
            return None if x is None else torch.from_numpy(np.array(x[index], dtype=dtype))

        return Features(
            tensor(self.embeds, np.float32), tensor(self.tokens, np.float32), tensor(self.mask, np.bool_)
        )


@dataclass
class EncodedDataset:
    """Features of a dataset's items and captions, in dataset order."""

    items: FeatureTable
    texts: FeatureTable
    from_cache: bool = False

    @property
    def item_embeds(self) -> np.ndarray:  # [n_items, D], L2-normalised
        return self.items.embeds

    @property
    def text_embeds(self) -> np.ndarray:  # [n_captions, D], L2-normalised
        return self.texts.embeds


def concat_tables(tables: list[FeatureTable]) -> FeatureTable:
    """One table from several, in order; tokens are padded (mask False) to the longest of them."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return FeatureTable(np.zeros((0, 0), np.float32))
    embeds = np.concatenate([t.embeds for t in tables])
    if tables[0].tokens is None:
        return FeatureTable(embeds)
    length = max(t.tokens.shape[1] for t in tables)
    dim = tables[0].tokens.shape[2]
    tokens = np.zeros((len(embeds), length, dim), dtype=tables[0].tokens.dtype)
    mask = np.zeros((len(embeds), length), dtype=bool)
    row = 0
    for t in tables:
        tokens[row : row + len(t), : t.tokens.shape[1]] = t.tokens
        mask[row : row + len(t), : t.mask.shape[1]] = t.mask
        row += len(t)
    return FeatureTable(embeds, tokens, mask)


def table_from_features(features: Features, keep_tokens: bool, token_dtype: np.dtype) -> FeatureTable:
    """One encoder call's outputs as arrays: normalised embeddings, and tokens / mask when kept."""
    embeds = _normalise(features.embeds).cpu().numpy()
    if not keep_tokens:
        return FeatureTable(embeds)
    if features.tokens is None:
        raise VlretError("the model's head reads tokens, but its encoder returned none")
    tokens = features.tokens.float().cpu().numpy().astype(token_dtype)
    if features.mask is None:
        mask = np.ones(tokens.shape[:2], dtype=bool)
    else:
        mask = features.mask.bool().cpu().numpy()
    return FeatureTable(embeds, tokens, mask)


class _Collector:
    """Gathers encoder outputs batch by batch; tokens are padded to the longest batch at the end."""

    def __init__(self, keep_tokens: bool, token_dtype: np.dtype):
        self.keep_tokens = keep_tokens
        self.token_dtype = token_dtype
        self.batches: list[FeatureTable] = []

    def add(self, features: Features) -> None:
        self.batches.append(table_from_features(features, self.keep_tokens, self.token_dtype))

    def table(self) -> FeatureTable:
        return concat_tables(self.batches)


def weights_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cache_key(model: RetrievalModel, dataset: RetrievalDataset, token_dtype: str | None = None) -> str:
    parts = {
        "model": model.identity(),
        "weights": weights_fingerprint(model),
        "data": dataset_fingerprint(dataset),
    }
    if token_dtype is not None:  # entries with tokens are apart from (and larger than) global-only ones
        parts["tokens"] = token_dtype
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.no_grad()
def encode_images(
    model: RetrievalModel,
    dataset: RetrievalDataset,
    batch_size: int = 64,
    progress: bool = True,
    keep_tokens: bool = False,
    token_dtype: str = "float32",
) -> FeatureTable:
    """Features of every item's image (or region features); an unreadable one raises a DataError naming it."""
    with evaluating(model):
        return _encode_images(model, dataset, batch_size, progress, keep_tokens, token_dtype)


def _encode_images(model, dataset, batch_size, progress, keep_tokens, token_dtype) -> FeatureTable:
    collect = _Collector(keep_tokens, np.dtype(token_dtype))
    device = model.device
    items = dataset.items
    starts = range(0, len(items), batch_size)
    # the next batch is read (images and clips decoded) while this one is encoded
    batches = prefetch(
        visual_inputs(model, dataset, range(s, min(s + batch_size, len(items)))) for s in starts
    )
    for inputs in tqdm(batches, total=len(starts), desc="encode images", disable=not progress, unit="batch"):
        collect.add(model.encode_images(torch.from_numpy(inputs).to(device)))
    return collect.table()


@torch.no_grad()
def encode_texts(
    model: RetrievalModel,
    texts: list[str],
    batch_size: int = 256,
    progress: bool = True,
    keep_tokens: bool = False,
    token_dtype: str = "float32",
) -> FeatureTable:
    """Features of texts."""
    collect = _Collector(keep_tokens, np.dtype(token_dtype))
    device = model.device
    with evaluating(model):
        for start in tqdm(
            range(0, len(texts), batch_size), desc="encode texts", disable=not progress, unit="batch"
        ):
            batch = {k: v.to(device) for k, v in model.tokenize(texts[start : start + batch_size]).items()}
            collect.add(model.encode_texts(batch))
    return collect.table()


TOKEN_DTYPES = ("float32", "float16")
_ARRAYS = ("embeds", "tokens", "mask")


def encode_dataset(
    model: RetrievalModel,
    dataset: RetrievalDataset,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
    token_dtype: str = "float32",
) -> EncodedDataset:
    """Features of all items and captions, read from the cache when an identical job ran before.

    Tokens are kept when the model's head reads them, stored as ``token_dtype`` (``float16`` halves the
    memory of a heavy head's evaluation) and memory-mapped when read back from the cache.
    """
    if token_dtype not in TOKEN_DTYPES:
        raise VlretError(f"token_dtype must be one of {TOKEN_DTYPES}, not {token_dtype!r}")
    keep_tokens = model.head.uses_tokens
    entry = None
    if use_cache:
        key = cache_key(model, dataset, token_dtype if keep_tokens else None)
        entry = Path(cache_dir or default_cache_dir()) / key
        if (entry / "meta.json").is_file():
            return EncodedDataset(read_table(entry, "items"), read_table(entry, "texts"), from_cache=True)
    items = encode_images(model, dataset, batch_size, progress, keep_tokens, token_dtype)
    captions = [c.text for c in dataset.captions]
    texts = encode_texts(model, captions, max(batch_size, 256), progress, keep_tokens, token_dtype)
    if entry is not None:
        meta = {"model": model.identity(), "items": len(items), "captions": len(texts)}
        _store(entry, {"items": items, "texts": texts}, meta)
    return EncodedDataset(items, texts)


def read_table(entry: Path, side: str) -> FeatureTable:
    """The table :func:`write_table` wrote as ``side``: embeddings read whole, tokens memory-mapped."""
    embeds = entry / f"{side}.embeds.npy"
    if not embeds.is_file():  # an entry written before tokens were cached
        embeds = entry / f"{side}.npy"
    arrays = {"embeds": np.load(embeds)}  # global embeddings are small: read whole
    for name in ("tokens", "mask"):  # token features can be large: memory-mapped
        path = entry / f"{side}.{name}.npy"
        arrays[name] = np.load(path, mmap_mode="r") if path.is_file() else None
    return FeatureTable(**arrays)


def write_table(folder: Path, side: str, table: FeatureTable) -> None:
    """Save ``table`` as ``folder/{side}.embeds.npy`` (and ``.tokens.npy`` / ``.mask.npy`` when it has them)."""
    for name in _ARRAYS:
        array = getattr(table, name)
        if array is not None:
            np.save(folder / f"{side}.{name}.npy", array)


def _store(entry: Path, tables: dict[str, FeatureTable], meta: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        for side, table in tables.items():
            write_table(tmp, side, table)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same entry first: fine
