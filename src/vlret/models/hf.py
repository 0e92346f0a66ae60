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
import torch.nn.functional as F
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

from vlret.data.transforms import ImageTransform
from vlret.errors import ConfigError
from vlret.models.base import HF_MODEL_TYPES, Features, RetrievalModel
from vlret.models.files import MODEL_CONFIG_FILE

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
        if config.model_type not in HF_MODEL_TYPES:
            raise ConfigError(
                f"hf:{source} is a {config.model_type!r} model; supported: {', '.join(HF_MODEL_TYPES)}"
            )
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

    def local_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image token in the joint space ``[B, 1 + N, D]`` (token 0 is the image embedding) and each
        patch's share of the pooling attention ``[B, N]`` (head-averaged): TextRefiner's local features.

        CLIP (the paper's ViT-B/16 recipe): the last block's outputs through ``post_layernorm`` and the
        visual projection, and the last block's ``[CLS]`` attention row (softmax over every key, patches
        kept). SigLIP has no ``[CLS]``; its image embedding is an attention pooling of the tokens by a
        learnt probe. Each patch token is mapped the way that pooling maps a token it attends to alone (the
        value and output projections, then the head's residual MLP), and the attention is the probe's.
        """
        if self.model_type == "clip":
            return self._clip_local_tokens(pixels)
        return self._siglip_local_tokens(pixels)

    def _clip_local_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.model.vision_model
        last = vision.encoder.layers[-1]
        seen: list[torch.Tensor] = []
        hook = last.layer_norm1.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            hidden = vision(pixel_values=pixels).last_hidden_state
        finally:
            hook.remove()
        tokens = self.model.visual_projection(vision.post_layernorm(hidden))
        attention = last.self_attn
        normed = seen[-1]
        heads, width = attention.num_heads, attention.head_dim
        query = attention.q_proj(normed[:, :1]).unflatten(-1, (heads, width)).transpose(1, 2)  # [B, h, 1, w]
        keys = attention.k_proj(normed).unflatten(-1, (heads, width)).transpose(1, 2)  # [B, h, 1 + N, w]
        weights = torch.softmax(query @ keys.transpose(-1, -2) * attention.scale, dim=-1)
        return tokens, weights.mean(dim=1)[:, 0, 1:]

    def _siglip_local_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.model.vision_model
        if not getattr(vision, "use_head", False):
            raise ConfigError(f"{self.name}: local tokens need the vision tower's attention-pooling head")
        out = vision(pixel_values=pixels)
        hidden, head = out.last_hidden_state, vision.head
        pool = head.attention
        w_query, w_key, w_value = pool.in_proj_weight.chunk(3)
        b_query, b_key, b_value = pool.in_proj_bias.chunk(3)
        mapped = pool.out_proj(F.linear(hidden, w_value, b_value))
        mapped = mapped + head.mlp(head.layernorm(mapped))
        heads = pool.num_heads
        width = hidden.shape[-1] // heads
        query = F.linear(head.probe, w_query, b_query).unflatten(-1, (heads, width)).transpose(1, 2)
        keys = F.linear(hidden, w_key, b_key).unflatten(-1, (heads, width)).transpose(1, 2)
        weights = torch.softmax(query @ keys.transpose(-1, -2) / width**0.5, dim=-1)  # [B, h, 1, N]
        return torch.cat([out.pooler_output[:, None], mapped], dim=1), weights.mean(dim=1)[:, 0]

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
        """The text model's input embeddings of ``input_ids`` (what prompt learning edits)."""
        return self.model.text_model.embeddings.token_embedding(input_ids)

    def encode_text_embeddings(self, embeds: torch.Tensor, batch: dict[str, torch.Tensor]) -> Features:
        """:meth:`encode_texts` from input embeddings: positions, the encoder, the final norm, the pooled
        state and the projection. CLIP pools its end-of-text state (found in ``batch["input_ids"]`` as CLIP
        finds it) under a causal mask; SigLIP pools the last position, attending both ways."""
        text = self.model.text_model
        mask = batch.get("attention_mask")
        hidden = text.embeddings(inputs_embeds=embeds)
        if self.model_type == "siglip":
            from transformers.masking_utils import create_bidirectional_mask

            full = create_bidirectional_mask(config=text.config, inputs_embeds=hidden, attention_mask=mask)
            states = text.final_layer_norm(
                text.encoder(inputs_embeds=hidden, attention_mask=full).last_hidden_state
            )
            token_mask = mask.bool() if mask is not None else torch.ones(states.shape[:2], dtype=torch.bool)
            return Features(text.head(states[:, -1]), states, token_mask)
        from transformers.masking_utils import create_causal_mask

        causal = create_causal_mask(config=text.config, inputs_embeds=hidden, attention_mask=mask, cache=None)
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
