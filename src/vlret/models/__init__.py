"""Backbones and the model factory."""

from vlret.models.base import Features, RetrievalModel, similarity
from vlret.models.registry import create_model, load_model

__all__ = ["Features", "RetrievalModel", "create_model", "load_model", "similarity"]
