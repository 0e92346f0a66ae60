"""Backbones and the model factory.

The names below are read on first use (PEP 562), so a module of this package that needs no torch (the
numpy query encoder a cold ``vlret search`` uses) can be imported without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlret.lazy import lazy_names

if TYPE_CHECKING:
    from vlret.models.base import Features, RetrievalModel, similarity
    from vlret.models.registry import create_model, load_model

_HOMES = {
    "Features": "vlret.models.base",
    "RetrievalModel": "vlret.models.base",
    "similarity": "vlret.models.base",
    "create_model": "vlret.models.registry",
    "load_model": "vlret.models.registry",
}

__getattr__ = lazy_names(__name__, _HOMES)

__all__ = ["Features", "RetrievalModel", "create_model", "load_model", "similarity"]
