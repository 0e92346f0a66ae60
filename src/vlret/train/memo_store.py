"""A run's frozen-tower memos on disk, so that a resumed run is bit-identical to an uninterrupted one.

A frozen tower's memo (:class:`~vlret.models.composed.ComposedModel`) returns, for an input seen before, the
output computed in the batch where that input first appeared; floating-point results depend slightly on a
batch's size and make-up, so a resumed run that recomputed those rows in other batches would drift. At every
checkpoint the rows added since the last one are appended to ``output_dir/memo/rank<R>/<side>/NNNNNN.pt`` (written
atomically); a resumed run loads them all. Rows written after the checkpoint it resumes from were computed in
the same batches the resumed run would compute them in (batches are fixed by the seed), so they are exact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

MEMO_DIR = "memo"


def save_new_rows(folder: Path, memos: dict) -> None:
    """Append each memo's rows added since the last call to ``folder`` as one shard per side."""
    for side, memo in memos.items():
        rows = memo.take_unsaved()
        if not rows:
            continue
        shards = Path(folder) / side
        shards.mkdir(parents=True, exist_ok=True)
        number = len(list(shards.glob("*.pt")))
        has_tokens = rows[0][2] is not None
        shard = {
            "keys": torch.tensor([list(k) for k, _, _ in rows], dtype=torch.uint8),
            "embeds": torch.stack([e for _, e, _ in rows]),
        }
        if has_tokens:
            shard["lengths"] = torch.tensor([len(t) for _, _, t in rows])
            shard["tokens"] = torch.cat([t for _, _, t in rows])
        tmp = shards / f".{number:06d}.pt.tmp"
        torch.save(shard, tmp)
        os.replace(tmp, shards / f"{number:06d}.pt")


def load_rows(folder: Path, memos: dict) -> None:
    """Fill each memo with the rows persisted in ``folder``, in the order they were added."""
    for side, memo in memos.items():
        for path in sorted((Path(folder) / side).glob("*.pt")):
            shard = torch.load(path, weights_only=True)
            keys = [bytes(k.tolist()) for k in shard["keys"]]
            tokens = [None] * len(keys)
            if "tokens" in shard:
                tokens = list(torch.split(shard["tokens"], shard["lengths"].tolist()))
            memo.restore(list(zip(keys, shard["embeds"], tokens, strict=True)))
