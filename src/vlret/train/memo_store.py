"""A run's frozen-tower memos on disk, so that a resumed run is bit-identical to an uninterrupted one.

A frozen tower's memo (:class:`~vlret.models.composed.ComposedModel`) returns, for an input seen before, the
output computed in the batch where that input first appeared (its tokens rounded to float16); floating-point
results depend slightly on a batch's size and make-up, so a resumed run that recomputed those rows in other
batches would drift. Just before each checkpoint of step ``S`` is written, the rows added since the last one
are saved as ``output_dir/memo/rank<R>/<side>/step-S.pt`` (atomically); a run resumed from step ``S`` loads
the shards of steps up to ``S`` and no later one (a kill between a shard and its checkpoint leaves a shard
of a step the run never published), so its memo is the uninterrupted run's at that step.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

MEMO_DIR = "memo"


def save_new_rows(folder: Path, memos: dict, step: int) -> None:
    """Save each memo's rows added since the last call to ``folder`` as the shard of ``step``, per side."""
    for side, memo in memos.items():
        rows = memo.take_unsaved()
        if not rows:
            continue
        shards = Path(folder) / side
        shards.mkdir(parents=True, exist_ok=True)
        has_tokens = rows[0][2] is not None
        shard = {
            "keys": torch.tensor([list(k) for k, _, _ in rows], dtype=torch.uint8),
            "embeds": torch.stack([e for _, e, _ in rows]),
        }
        if has_tokens:
            shard["lengths"] = torch.tensor([len(t) for _, _, t in rows])
            shard["tokens"] = torch.cat([t for _, _, t in rows])
        tmp = shards / f".step-{step:07d}.pt.tmp"
        torch.save(shard, tmp)
        os.replace(tmp, shards / f"step-{step:07d}.pt")


def load_rows(folder: Path, memos: dict, step: int) -> None:
    """Fill each memo with the rows persisted in ``folder`` up to ``step``, in the order they were added."""
    for side, memo in memos.items():
        for path in sorted((Path(folder) / side).glob("step-*.pt")):
            if int(path.stem.removeprefix("step-")) > step:
                continue  # its checkpoint was never published
            shard = torch.load(path, weights_only=True)
            keys = [bytes(k.tolist()) for k in shard["keys"]]
            tokens = [None] * len(keys)
            if "tokens" in shard:
                tokens = list(torch.split(shard["tokens"], shard["lengths"].tolist()))
            memo.restore(list(zip(keys, shard["embeds"], tokens, strict=True)))
