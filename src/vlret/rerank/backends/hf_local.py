"""Local generation with transformers: image-text-to-text VLMs (Qwen2-VL, LLaVA, ...) and causal LLMs.

The model's own chat template builds the prompt; decoding is greedy unless a temperature is given. Calls are
serialised with a lock (one model, one device); the pipeline's concurrency then only overlaps I/O.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from vlret.rerank.backends.base import Usage


class HFChat:
    def __init__(self, model: str, device: str | None = None, dtype: str = "auto"):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

        self.id = f"hf:{model}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        config = AutoConfig.from_pretrained(model)
        self.vision = hasattr(config, "vision_config")
        loader = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        self.model = loader.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        self.usage = Usage()
        self._lock = threading.Lock()

    @torch.no_grad()
    def chat(
        self, prompt: str, images: list[Path] = (), max_tokens: int = 512, temperature: float = 0.0
    ) -> str:
        from PIL import Image

        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content if self.vision else prompt}]
        template = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pictures = [
            p.convert("RGB") if isinstance(p, Image.Image) else Image.open(p).convert("RGB") for p in images
        ]
        kwargs = {"images": pictures} if pictures else {}
        inputs = self.processor(text=[template], return_tensors="pt", **kwargs).to(self.device)
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        with self._lock:
            output = self.model.generate(**inputs, max_new_tokens=max_tokens, **sampling)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        self.usage.calls += 1
        self.usage.prompt_tokens += int(inputs["input_ids"].shape[1])
        self.usage.completion_tokens += int(new_tokens.shape[0])
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return tokenizer.decode(new_tokens, skip_special_tokens=True)
