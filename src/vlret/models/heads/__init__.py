"""Similarity heads, one per file, and the registry that builds them by name."""

from __future__ import annotations

from vlret.errors import ConfigError
from vlret.models.heads.aeom import AEOMHead
from vlret.models.heads.base import SimilarityHead
from vlret.models.heads.cosine import CosineHead
from vlret.models.heads.itm import ITMHead
from vlret.models.heads.maxsim import MaxSimHead
from vlret.models.heads.sgraf import SAFHead, SGRHead

HEADS: dict[str, type[SimilarityHead]] = {
    "cosine": CosineHead,
    "maxsim": MaxSimHead,
    "sgr": SGRHead,
    "saf": SAFHead,
    "aeom": AEOMHead,
    "itm": ITMHead,
}


def build_head(spec: str | dict | None) -> SimilarityHead:
    """A head from its name, or from ``{"name": ..., **options}``; ``None`` is the cosine head."""
    if spec is None:
        return CosineHead()
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = options.pop("name", None)
    if name not in HEADS:
        raise ConfigError(f"unknown similarity head {name!r}; expected one of {sorted(HEADS)}")
    try:
        return HEADS[name](**options)
    except TypeError as exc:
        raise ConfigError(f"head {name!r}: {exc}") from None


__all__ = [
    "HEADS",
    "AEOMHead",
    "CosineHead",
    "ITMHead",
    "MaxSimHead",
    "SAFHead",
    "SGRHead",
    "SimilarityHead",
    "build_head",
]
