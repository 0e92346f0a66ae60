"""The training data pipeline: one sample per caption, deterministic batches, optional augmentation.

Batch ``b`` of epoch ``e`` is fixed by the seed alone: the pairs are permuted by ``default_rng([seed, e])``,
cut into global batches (the last, incomplete one is dropped), and each process takes its contiguous slice.
Augmentation draws from a generator seeded by ``(seed, epoch, sample)``. A run resumed at any step therefore
sees exactly the batches an uninterrupted run would, whatever the number of loader workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vlret.data.image_files import load_image
from vlret.data.records import RetrievalDataset
from vlret.data.regions import load_regions
from vlret.data.transforms import ImageTransform
from vlret.data.video import FrameSampling, clip_frames, default_frame_cache, stack_clip
from vlret.errors import ConfigError
from vlret.train.distributed import DistInfo
from vlret.train.recipe import DataSection


@dataclass
class Augment:
    """Random-resized crop and horizontal flip, drawn from a generator the caller seeds.

    The crop's area is a fraction in ``crop_scale`` of the image's. With ``aspect`` None it keeps the image's
    aspect ratio; with ``aspect = (lo, hi)`` its width / height is log-uniform in that range, as
    torchvision's ``RandomResizedCrop`` draws it (ten tries, then a centred box).
    """

    crop_scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False
    aspect: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return self.crop_scale != (1.0, 1.0) or self.hflip or self.aspect is not None

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        box = self._crop_box(image.width, image.height, rng)
        if box is not None:
            image = image.crop(box)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple | None:
        lo, hi = self.crop_scale
        if self.aspect is None:
            if (lo, hi) == (1.0, 1.0):
                return None
            side = float(np.sqrt(rng.uniform(lo, hi)))
            w, h = max(1, round(width * side)), max(1, round(height * side))
        else:
            for _ in range(10):
                area = width * height * rng.uniform(lo, hi)
                ratio = float(np.exp(rng.uniform(*np.log(self.aspect))))
                w, h = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
                if 0 < w <= width and 0 < h <= height:
                    break
            else:
                return self._central_box(width, height)
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        return left, top, left + w, top + h

    def _central_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """torchvision's fallback: the largest centred box whose aspect is clamped into range."""
        lo, hi = self.aspect
        w, h = width, height
        if width / height < lo:
            h = round(width / lo)
        elif width / height > hi:
            w = round(height * hi)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h


class PairSource:
    """The (item, caption) pairs of a split and what the model encodes for their items: the pixels of their
    images, their region features (a model whose ``input_kind`` is ``"regions"``: read from the memory-mapped
    files, never augmented) or the frames of their clips (``"frames"``: ``sampling`` says which; a clip's
    frames share one crop and flip)."""

    def __init__(
        self,
        dataset: RetrievalDataset,
        transform: ImageTransform,
        section: DataSection,
        input_kind: str = "pixels",
        sampling: FrameSampling | None = None,
    ):
        self.dataset = dataset
        self.transform = transform
        self.regions = input_kind == "regions"
        self.sampling = sampling if input_kind == "frames" else None
        if input_kind == "frames" and sampling is None:
            raise ValueError("a model that reads frames needs a frame sampling")
        self.augment = Augment(tuple(section.crop_scale), section.hflip)
        if self.regions and self.augment.active:
            raise ConfigError("data.crop_scale / data.hflip: region features cannot be cropped or flipped")
        self.caption_item = dataset.caption_to_item
        self.texts = [c.text for c in dataset.captions]
        self._media: dict[int, Image.Image | list[Image.Image]] | None = None
        self._pixels: np.ndarray | None = None
        if section.cache_images and not self.regions:  # region files are memory-mapped already
            self._fill_cache()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def decodes_each_step(self) -> bool:
        """Whether a batch reads and decodes its media from disk (not cached; region features are
        memory-mapped, which costs nothing to read)."""
        return not self.regions and self._pixels is None and self._media is None

    def _load(self, item: int) -> Image.Image | list[Image.Image]:
        it = self.dataset.items[item]
        path, record = self.dataset.media_path(it), f"item {it.id!r}"
        if self.sampling is not None:
            return clip_frames(path, self.sampling, record, default_frame_cache())
        return load_image(path, record)

    def _finish(self, media: Image.Image | list[Image.Image], rng: np.random.Generator | None) -> np.ndarray:
        """Augmented (when ``rng`` is given) and transformed pixels of one image or clip."""
        if isinstance(media, Image.Image):
            return self.transform(self.augment(media, rng) if rng is not None else media)
        if rng is None:
            return stack_clip([self.transform(frame) for frame in media], self.sampling)
        seed = int(rng.integers(2**63))  # one draw per clip: every frame gets the same crop and flip
        frames = [self.transform(self.augment(f, np.random.default_rng(seed))) for f in media]
        return stack_clip(frames, self.sampling)

    def _fill_cache(self) -> None:
        if self.augment.active:
            self._media = {i: self._load(i) for i in range(len(self.dataset.items))}
        else:  # nothing random: cache the finished pixels
            self._pixels = np.stack(
                [self._finish(self._load(i), None) for i in range(len(self.dataset.items))]
            )

    def pixels(self, items: np.ndarray, rng_for: Callable[[int], np.random.Generator]) -> np.ndarray:
        """Pixels ``[n, 3, H, W]`` (clips: ``[n, F, 3, H, W]``) of ``items``; ``rng_for(n)`` gives sample
        ``n``'s augmentation generator (only called when augmentation is on)."""
        if self.regions:
            return load_regions([self.dataset.media_path(self.dataset.items[int(i)]) for i in items])
        if self._pixels is not None:
            return self._pixels[items]  # one gather from the cache
        out = []
        for n, item in enumerate(items):
            media = self._media[item] if self._media is not None else self._load(int(item))
            out.append(self._finish(media, rng_for(n) if self.augment.active else None))
        return np.stack(out)


class EpochBatches(Dataset):
    """This process's slice of every global batch of one epoch, from ``start_batch`` on."""

    def __init__(
        self,
        source: PairSource,
        tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
        batch_size: int,
        epoch: int,
        seed: int,
        info: DistInfo,
        start_batch: int = 0,
        sampling: str = "epoch",
    ):
        """``sampling``: ``epoch`` visits every pair once per epoch in a shuffled order; ``resampled`` draws
        an epoch's pairs with replacement (open_clip's ``--dataset-resampled``, for streams of shards where
        an epoch is only a unit of measure), so a pair may come twice or not at all."""
        if batch_size % info.world_size:
            raise ValueError(
                f"batch size {batch_size} does not split evenly over {info.world_size} processes"
            )
        self.source, self.tokenize = source, tokenize
        self.batch_size, self.epoch, self.seed, self.info = batch_size, epoch, seed, info
        rng = np.random.default_rng([seed, epoch])
        if sampling == "resampled":
            self.order = rng.integers(0, len(source), size=len(source))
        elif sampling == "epoch":
            self.order = rng.permutation(len(source))
        else:
            raise ValueError(f"sampling must be epoch or resampled, not {sampling!r}")
        self.n_batches = len(source) // batch_size
        self.start_batch = start_batch

    def __len__(self) -> int:
        return max(0, self.n_batches - self.start_batch)

    def __getitem__(self, j: int) -> dict:
        b = j + self.start_batch
        per_rank = self.batch_size // self.info.world_size
        lo = b * self.batch_size + self.info.rank * per_rank
        captions = self.order[lo : lo + per_rank]
        items = self.source.caption_item[captions]
        pixels = self.source.pixels(
            items, lambda n: np.random.default_rng([self.seed, self.epoch, int(captions[n])])
        )
        return {
            "pixels": torch.from_numpy(pixels),
            "text": self.tokenize([self.source.texts[c] for c in captions]),
            "item_ids": torch.from_numpy(items.astype(np.int64)),
            "caption_ids": torch.from_numpy(captions.astype(np.int64)),
        }


#: the most loader processes ``num_workers: auto`` starts
MAX_AUTO_WORKERS = 8


def loader_workers(setting: int | str, source: PairSource, device: str = "cpu") -> int:
    """``data.num_workers`` as a number. ``auto`` is 0 (a background thread prefetches the next batch)
    when ``source`` does not decode at every step, and when the model trains on the CPU: its threads
    already use every core, and a decoding process only takes cores from them (on 2 cores one worker gave
    0.81 of the in-memory speed where the thread gave 0.89). On an accelerator, where the model outruns one
    decoding thread and the cores are free, it is half the cores this process may use, from 1 to
    :data:`MAX_AUTO_WORKERS`. Workers change no batch: each one's order and augmentation come from the
    epoch's seed (:class:`EpochBatches`), so a run resumes alike with any number."""
    if setting != "auto":
        return int(setting)
    if not source.decodes_each_step or device == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_AUTO_WORKERS, cores // 2))


def epoch_loader(batches: EpochBatches, num_workers: int) -> DataLoader:
    # A private generator: a DataLoader otherwise draws its workers' base seed from torch's global RNG each
    # time an epoch starts, which would shift the dropout masks of a resumed run.
    return DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        generator=torch.Generator().manual_seed(batches.seed),
    )
