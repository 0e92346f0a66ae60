"""Training objectives, one per file; each maps ``(outputs, batch)`` to named loss terms."""

from vlret.losses.base import Loss, same_item_mask
from vlret.losses.hinge import HingeLoss
from vlret.losses.infonce import InfoNCELoss

LOSSES = {"infonce": InfoNCELoss, "hinge": HingeLoss}

__all__ = ["LOSSES", "HingeLoss", "InfoNCELoss", "Loss", "same_item_mask"]
