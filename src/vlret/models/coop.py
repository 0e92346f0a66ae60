"""CoOp's prompt learner (Zhou et al., IJCV 2022): learnt context words in front of each class name.

Every class ``c`` is read as the prompt ``"<init> <name>."`` (``init`` = "a photo of a"); the embeddings of the
``init`` words (``n_ctx`` = their token count) are replaced by ``n_ctx`` learnt vectors shared by all classes
and initialised from those very embeddings, and the frozen text encoder runs on the result. So before
training the class embeddings are exactly the encoder's embeddings of the plain prompts. Only the context
vectors learn; every weight of the model stays frozen.

A model takes part by providing ``text_token_embeddings(input_ids)`` and ``encode_text_embeddings(embeds,
batch)`` (vlret's tiny dual encoders do); the tokenizer must wrap a text in one start token in front.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlret.errors import ConfigError
from vlret.models.base import RetrievalModel

DEFAULT_INIT = "a photo of a"


def check_promptable(model: RetrievalModel) -> None:
    for method in ("text_token_embeddings", "encode_text_embeddings"):
        if not hasattr(model, method):
            raise ConfigError(
                f"{model.name}: its text tower does not take input embeddings ({method}), so prompts cannot "
                "be learnt on it"
            )


class PromptLearner(nn.Module):
    """Learnt context vectors and the class prompts they complete; see the module docstring."""

    def __init__(self, model: RetrievalModel, classnames: list[str], init: str = DEFAULT_INIT):
        super().__init__()
        check_promptable(model)
        if not classnames:
            raise ConfigError("prompt learning needs at least one class name")
        self.init, self.classnames = init, list(classnames)
        init_batch = model.tokenize([init])
        self.n_ctx = int(init_batch["attention_mask"].sum()) - 2  # minus the start and end tokens
        if self.n_ctx < 1:
            raise ConfigError(f"the context initialisation {init!r} has no words")
        prompts = [f"{init} {name.replace('_', ' ')}." for name in classnames]
        batch = model.tokenize(prompts)
        expected = init_batch["input_ids"][0, 1 : 1 + self.n_ctx]
        if not (batch["input_ids"][:, 1 : 1 + self.n_ctx] == expected).all():
            raise ConfigError(f"{model.name}: its tokenizer does not put {init!r} first in every prompt")
        with torch.no_grad():
            frozen = model.text_token_embeddings(batch["input_ids"]).detach()
        self.register_buffer("input_ids", batch["input_ids"], persistent=False)
        self.register_buffer("attention_mask", batch["attention_mask"], persistent=False)
        self.register_buffer("frozen", frozen, persistent=False)
        self.ctx = nn.Parameter(frozen[0, 1 : 1 + self.n_ctx].clone())

    def prompt_embeddings(self) -> torch.Tensor:
        """``[C, L, width]``: the prompts with the context vectors in place of the ``init`` words."""
        ctx = self.ctx[None].expand(len(self.frozen), -1, -1)
        return torch.cat([self.frozen[:, :1], ctx, self.frozen[:, 1 + self.n_ctx :]], dim=1)

    def class_embeddings(self, model: RetrievalModel) -> torch.Tensor:
        """``[C, D]`` L2-normalised class embeddings through ``model``'s frozen text encoder."""
        batch = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return F.normalize(model.encode_text_embeddings(self.prompt_embeddings(), batch).embeds, dim=-1)
