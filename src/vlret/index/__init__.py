"""Search your own collection: build an index of embeddings (resumable), choose exact or FAISS search, query it."""

from vlret.index.build import build_index
from vlret.index.choice import IndexChoice, choose_index
from vlret.index.search import Searcher

__all__ = ["IndexChoice", "Searcher", "build_index", "choose_index"]
