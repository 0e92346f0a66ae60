"""The training engine: recipes, the trainer loop, schedules, checkpoints and data-parallel helpers."""

from vlret.train.recipe import Recipe, load_recipe
from vlret.train.trainer import Trainer

__all__ = ["Recipe", "Trainer", "load_recipe"]
