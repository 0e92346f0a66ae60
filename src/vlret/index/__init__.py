"""Search your own collection: build an index of embeddings (resumable), choose exact or FAISS search, query it.

The names below are read on first use (PEP 562): opening a searcher over an index whose model embeds
query texts without torch (:mod:`vlret.models.text_queries`) never imports the build's torch code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlret.lazy import lazy_names

if TYPE_CHECKING:
    from vlret.index.build import build_index
    from vlret.index.choice import IndexChoice, choose_index
    from vlret.index.search import Searcher

_HOMES = {
    "build_index": "vlret.index.build",
    "IndexChoice": "vlret.index.choice",
    "choose_index": "vlret.index.choice",
    "Searcher": "vlret.index.search",
}

__getattr__ = lazy_names(__name__, _HOMES)

__all__ = ["IndexChoice", "Searcher", "build_index", "choose_index"]
