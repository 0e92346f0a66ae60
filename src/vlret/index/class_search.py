"""Learnt prompts over an index: text-to-image search by class, and image-to-class answers.

A prompt-tuned classifier (CoOp, CoOp + TextRefiner) scores an image against class *embeddings* in the frozen
model's joint space, so an image's logits over the classes answer "which class is this", and the indexed
images can be ranked for a class. They are ranked by the probability of the class, as
:func:`vlret.evaluate.classification.class_retrieval_map` explains, in two steps: a shortlist by the
*centred* class embedding (the class's minus the mean of all classes: a dot product the ANN index can search,
which drops the term all classes share), then the exact probability of each candidate from its stored
embedding. With a shortlist as large as the gallery the ranking is exact.

The classifier runs on the index's own model, so the prompts must have been trained on that model (checked);
the class embeddings are computed once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlret.errors import ConfigError
from vlret.evaluate.classification import check_finite_logits, softmax
from vlret.index.search import Hit, Searcher
from vlret.models.registry import canonical_model_name

SHORTLIST = 1000


class ClassSearch:
    """The learnt prompts in ``prompts`` (a ``RUN/prompts`` folder) over ``searcher``'s one-stage index."""

    def __init__(self, searcher: Searcher, prompts: str | Path):
        from vlret.train.prompt_trainer import load_prompts, prompts_meta

        meta = prompts_meta(prompts)
        if canonical_model_name(meta["model"]) != canonical_model_name(searcher.meta["model"]):
            raise ConfigError(
                f"{prompts}: the prompts were learnt on {meta['model']!r} but the index was built with "
                f"{searcher.meta['model']!r}; class embeddings only match the images of their own model"
            )
        if searcher.two_stage is not None:
            raise ConfigError(f"{searcher.path}: class search needs a one-stage index (no re-scoring head)")
        self.searcher = searcher
        self.classifier = load_prompts(prompts, model=searcher.model)
        self.classnames: list[str] = list(self.classifier.prompts.classnames)
        with torch.no_grad():
            self.class_embeddings = self.classifier.class_embeddings().numpy()
        if not np.isfinite(self.class_embeddings).all():
            bad = self.classnames[int(np.argwhere(~np.isfinite(self.class_embeddings))[0][0])]
            raise ConfigError(
                f"{prompts}: the class embedding of {bad!r} is not finite on the index's model; these "
                "prompts cannot rank or classify images"
            )
        self.centred = self.class_embeddings - self.class_embeddings.mean(0, keepdims=True)
        self.logit_scale = float(searcher.model.logit_scale.exp())

    def class_number(self, name: str) -> int:
        try:
            return self.classnames.index(name)
        except ValueError:
            raise ConfigError(f"no class {name!r}; the prompts know {len(self.classnames)} classes") from None

    def class_hits(self, name: str, k: int, shortlist: int = SHORTLIST) -> list[Hit]:
        """The ``k`` indexed images most probably of class ``name``; a hit's ``score`` is that probability
        and its ``first_stage_score`` the centred dot product that shortlisted it."""
        c = self.class_number(name)
        first, numbers = self.searcher.images.search(self.centred[c], max(k, shortlist))
        order = np.argsort(numbers, kind="stable")  # ascending item order, so ties go to the lower number
        first, numbers = first[order], numbers[order]
        features = np.asarray(self.searcher.images.embeddings[numbers], dtype=np.float32)
        probability = softmax(self.logit_scale * features @ self.class_embeddings.T)[:, c]
        best = np.argsort(-probability, kind="stable")[:k]
        return [
            self.searcher._image_hit(rank, probability[n], numbers[n], first[n])
            for rank, n in enumerate(best, start=1)
        ]

    def classify(self, images: list[Image.Image | str | Path], k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the ``k`` most probable classes and their softmax probabilities, in one model call."""
        return self.classify_features(self.searcher.embed_images(images), k)

    def classify_features(self, features: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """:meth:`classify` for normalised image embeddings ``[n, D]`` of the index's model."""
        logits = self.logit_scale * features @ self.class_embeddings.T
        check_finite_logits(logits)  # a NaN image embedding would otherwise answer class 0
        probabilities = softmax(logits)
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [(self.classnames[c], float(p[c])) for c in row]
            for p, row in zip(probabilities, top, strict=True)
        ]
