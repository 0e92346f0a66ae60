"""Hugging Face transformers CLIP and SigLIP as vlret dual encoders.

``hf:openai/clip-vit-base-patch32`` loads from the hub (or its cache); ``hf:/path/to/folder`` loads a folder
written by ``save_pretrained``. The global embeddings are the models' own ``get_image_features`` /
``get_text_features`` outputs. Tokens: CLIP's patch tokens go through the vision post-layernorm and the
visual projection (so they live in the joint space); its word tokens through the text projection; SigLIP's
are the last hidden states. Images are preprocessed by :class:`ImageTransform` built from the checkpoint's
image-processor settings, so no torchvision is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

from vlret.data.transforms import ImageTransform
from vlret.errors import ConfigError
from vlret.models.base import MODEL_CONFIG_FILE, Features, RetrievalModel

SUPPORTED_TYPES = ("clip", "siglip")
_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def transform_from_processor(processor) -> ImageTransform:
    """Translate a transformers image processor's settings into an :class:`ImageTransform`."""
    size = processor.size
    resample = _PIL_RESAMPLE_NAMES.get(int(getattr(processor, "resample", 3)), "bicubic")
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    if "shortest_edge" in size:
        crop = (
            processor.crop_size["height"]
            if getattr(processor, "do_center_crop", False)
            else size["shortest_edge"]
        )
        return ImageTransform(size["shortest_edge"], crop, mean, std, resample, "shortest")
    return ImageTransform(size["height"], size["height"], mean, std, resample, "squash")


class HFDualEncoder(RetrievalModel):
    """A transformers CLIPModel or SiglipModel with its tokenizer and preprocessing."""

    backbone_prefixes = ("model.vision_model.", "model.text_model.")

    def __init__(self, source: str, model, tokenizer, image_transform: ImageTransform):
        super().__init__()
        self.name = f"hf:{source}"
        self.source = source
        self.model = model
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.model_type = model.config.model_type
        # SigLIP was trained on texts padded to the full length and pools the last position.
        self.pad_to_max = self.model_type == "siglip"

    @classmethod
    def from_pretrained(cls, source: str) -> HFDualEncoder:
        config = AutoConfig.from_pretrained(source)
        if config.model_type not in SUPPORTED_TYPES:
            raise ConfigError(f"hf:{source} is a {config.model_type!r} model; supported: {SUPPORTED_TYPES}")
        model = AutoModel.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source, backend="pil")
        return cls(source, model, tokenizer, transform_from_processor(processor))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        max_len = self.model.config.text_config.max_position_embeddings
        padding = "max_length" if self.pad_to_max else True
        out = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return {k: v for k, v in out.items() if k in ("input_ids", "attention_mask")}

    def encode_images(self, pixels: torch.Tensor) -> Features:
        out = self.model.get_image_features(pixel_values=pixels)
        hidden = out.last_hidden_state
        if self.model_type == "clip":
            vision = self.model.vision_model
            tokens = self.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))
        else:
            tokens = hidden
        return Features(out.pooler_output, tokens, None)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> Features:
        mask = batch.get("attention_mask")
        out = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=mask)
        tokens = out.last_hidden_state
        if self.model_type == "clip":
            tokens = self.model.text_projection(tokens)
        # SigLIP is fed without an attention mask in its reference pipeline; keep the tokenizer's if given.
        token_mask = mask.bool() if mask is not None else torch.ones(tokens.shape[:2], dtype=torch.bool)
        return Features(out.pooler_output, tokens, token_mask)

    def text_token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The text model's input embeddings of ``input_ids`` (CLIP; what prompt learning edits)."""
        self._require_clip("prompt learning")
        return self.model.text_model.embeddings.token_embedding(input_ids)

    def encode_text_embeddings(self, embeds: torch.Tensor, batch: dict[str, torch.Tensor]) -> Features:
        """CLIP's text pass from input embeddings: positions, the causal encoder, the final norm, the
        end-of-text state (found in ``batch["input_ids"]`` as CLIP finds it) and the projection."""
        self._require_clip("prompt learning")
        from transformers.masking_utils import create_causal_mask

        text = self.model.text_model
        mask = batch["attention_mask"]
        hidden = text.embeddings(inputs_embeds=embeds)
        causal = create_causal_mask(
            config=text.config, inputs_embeds=hidden, attention_mask=mask, past_key_values=None
        )
        states = text.encoder(inputs_embeds=hidden, attention_mask=causal, is_causal=True).last_hidden_state
        states = text.final_layer_norm(states)
        ids = batch["input_ids"].to(torch.int)
        if text.eos_token_id == 2:  # old CLIP configs: the end-of-text id is the largest
            ends = ids.argmax(dim=-1)
        else:
            ends = (ids == text.eos_token_id).int().argmax(dim=-1)
        pooled = states[torch.arange(len(states), device=states.device), ends]
        tokens = self.model.text_projection(states)
        return Features(self.model.text_projection(pooled), tokens, mask.bool())

    def _require_clip(self, what: str) -> None:
        if self.model_type != "clip":
            raise ConfigError(f"{self.name}: {what} needs a CLIP text model, not {self.model_type}")

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        meta = {
            "kind": "hf",
            "source": self.source,
            "transform": self.image_transform.to_dict(),
            "head": self.save_head(folder),
        }
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> HFDualEncoder:
        folder = str(folder)
        model = AutoModel.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encoder = cls(folder, model, tokenizer, ImageTransform.from_dict(meta["transform"]))
        encoder.load_head(Path(folder), meta)
        return encoder
