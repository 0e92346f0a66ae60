"""Training objectives, one per file; each maps ``(outputs, batch)`` to named loss terms."""

from vlret.losses.base import Loss, same_item_mask
from vlret.losses.hinge import HingeLoss
from vlret.losses.infonce import InfoNCELoss
from vlret.losses.itm import ITMLoss
from vlret.losses.representation_distill import RepresentationDistillation
from vlret.losses.structure_distill import StructureDistillation
from vlret.losses.view_decorrelation import ViewDecorrelationLoss
from vlret.losses.vsl import TextualSemanticLoss, VisualSemanticLoss, soft_rank

LOSSES = {
    "infonce": InfoNCELoss,
    "hinge": HingeLoss,
    "vsl": VisualSemanticLoss,
    "tsl": TextualSemanticLoss,
    "view_decorrelation": ViewDecorrelationLoss,
    "itm": ITMLoss,
    "representation_distill": RepresentationDistillation,
    "structure_distill": StructureDistillation,
}

__all__ = [
    "LOSSES",
    "HingeLoss",
    "ITMLoss",
    "InfoNCELoss",
    "Loss",
    "RepresentationDistillation",
    "StructureDistillation",
    "TextualSemanticLoss",
    "ViewDecorrelationLoss",
    "VisualSemanticLoss",
    "same_item_mask",
    "soft_rank",
]
