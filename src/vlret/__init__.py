"""vlret: a toolkit for text-visual retrieval.

The public entry points most users need:

- :func:`vlret.data.load_dataset` reads Karpathy, BLIP/LAVIS, CSV and VSE layouts into one record model;
- :func:`vlret.models.create_model` builds a backbone by name (``tiny-cnn``, ``hf:openai/clip-vit-base-patch32``);
- :func:`vlret.evaluate.evaluate_model` and :func:`vlret.evaluate.evaluate_scores` run a retrieval protocol.
"""

__version__ = "0.1.0"
