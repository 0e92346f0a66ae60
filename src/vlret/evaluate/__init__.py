"""Protocol-correct evaluation: encoding with a feature cache, chunked ranking, metrics and result files.

The names below are read on first use (PEP 562): the command line reads the protocols' names from
:mod:`vlret.evaluate.protocols` without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlret.lazy import lazy_names

if TYPE_CHECKING:
    from vlret.evaluate.api import evaluate_model, evaluate_scores
    from vlret.evaluate.metrics import retrieval_metrics
    from vlret.evaluate.protocols import PROTOCOLS, get_protocol
    from vlret.evaluate.ranking import Ranks, rank_embeddings, rank_matrix, topk_blocks
    from vlret.evaluate.results import results_table

_HOMES = {
    "evaluate_model": "vlret.evaluate.api",
    "evaluate_scores": "vlret.evaluate.api",
    "retrieval_metrics": "vlret.evaluate.metrics",
    "PROTOCOLS": "vlret.evaluate.protocols",
    "get_protocol": "vlret.evaluate.protocols",
    "Ranks": "vlret.evaluate.ranking",
    "rank_embeddings": "vlret.evaluate.ranking",
    "rank_matrix": "vlret.evaluate.ranking",
    "topk_blocks": "vlret.evaluate.ranking",
    "results_table": "vlret.evaluate.results",
}

__getattr__ = lazy_names(__name__, _HOMES)

__all__ = [
    "PROTOCOLS",
    "Ranks",
    "evaluate_model",
    "evaluate_scores",
    "get_protocol",
    "rank_embeddings",
    "rank_matrix",
    "results_table",
    "retrieval_metrics",
    "topk_blocks",
]
