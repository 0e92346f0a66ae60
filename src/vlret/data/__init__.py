"""Datasets: one record model, readers for the common annotation formats, image loading and preprocessing."""

from vlret.data.formats import FORMATS, dataset_fingerprint, detect_format, load_dataset
from vlret.data.karpathy import read_karpathy, write_karpathy
from vlret.data.records import Caption, Item, RetrievalDataset, Skipped

__all__ = [
    "FORMATS",
    "Caption",
    "Item",
    "RetrievalDataset",
    "Skipped",
    "dataset_fingerprint",
    "detect_format",
    "load_dataset",
    "read_karpathy",
    "write_karpathy",
]
