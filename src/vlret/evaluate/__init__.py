"""Protocol-correct evaluation: encoding with a feature cache, chunked ranking, metrics and result files."""

from vlret.evaluate.api import evaluate_model, evaluate_scores
from vlret.evaluate.metrics import retrieval_metrics
from vlret.evaluate.protocols import PROTOCOLS, get_protocol
from vlret.evaluate.ranking import Ranks, rank_embeddings, rank_matrix, topk_blocks
from vlret.evaluate.results import results_table

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
