"""Which index to build, from the collection size and a memory budget (the autofaiss idea, kept small).

- up to ``EXACT_MAX`` vectors: exact inner-product search (a flat index: no training, recall 1);
- larger, when the raw float32 vectors fit the budget: ``IVF{nlist},Flat`` (``nlist ~ sqrt(n)``, a power of
  two: cheap to train on a CPU), searched with ``nprobe = nlist / 16`` lists (recall@10 about 0.95 on clustered data);
- larger than the budget: ``IVF{nlist},PQ{m}`` (``m`` bytes per vector), with a refine step that re-scores
  the top candidates exactly from the memory-mapped embeddings file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

EXACT_MAX = 100_000
#: labels of an updated inverted-file index's vectors, one per row, ascending (absent: the row numbers)
FAISS_LABELS = "faiss_labels.npy"


@dataclass(frozen=True)
class IndexChoice:
    kind: str  # exact | ivf_flat | ivf_pq
    factory: str  # the FAISS index factory string
    nprobe: int
    refine: int  # candidates re-scored exactly per result (0 = no refine step)
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def choose_index(n: int, dim: int, memory_budget_bytes: int | None = None) -> IndexChoice:
    raw = n * dim * 4
    if n <= EXACT_MAX:
        return IndexChoice("exact", "Flat", 1, 0, f"{n} vectors <= {EXACT_MAX}: exact search")
    nlist = 1 << round(math.log2(math.sqrt(n)))
    nprobe = max(16, nlist // 16)
    if memory_budget_bytes is None or raw <= memory_budget_bytes:
        return IndexChoice(
            "ivf_flat",
            f"IVF{nlist},Flat",
            nprobe,
            0,
            f"{n} vectors, {raw / 2**30:.2f} GiB raw fits the budget",
        )
    m = next((m for m in (64, 32, 16, 8) if dim % m == 0 and n * m <= memory_budget_bytes), 8)
    return IndexChoice(
        "ivf_pq",
        f"IVF{nlist},PQ{m}",
        nprobe,
        10,
        f"{raw / 2**30:.2f} GiB raw exceeds the budget: {m}-byte codes, exact refine",
    )
