"""CoOp's prompt learner (Zhou et al., IJCV 2022): learnt context words in front of each class name.

Every class ``c`` is read as the prompt ``"<init> <name>."`` (``init`` = "a photo of a"); the embeddings of the
first ``n_ctx`` tokens of ``init`` are replaced by ``n_ctx`` learnt vectors shared by all classes and
initialised from those very embeddings, and the frozen text encoder runs on the result. So before training the
class embeddings are exactly the encoder's embeddings of the plain prompts. Only the context vectors learn;
every weight of the model stays frozen.

``n_ctx`` follows CoOp's released code by default (``context="per_word"``): one vector per *word* of
``init``, read as the released code reads it (``_`` is a space: ``a_photo_of_a`` is four words). When the tokenizer splits a word into several tokens, CoOp still learns one vector per word, taken
from the first tokens, and the remaining tokens of ``init`` stay in the prompt as frozen embeddings.
``context="per_token"`` learns one vector per token of ``init`` instead. The two agree when every word is one
token ("a photo of a" is four tokens in CLIP's BPE).

A model takes part by providing ``text_token_embeddings(input_ids)`` and ``encode_text_embeddings(embeds,
batch)`` (vlret's tiny dual encoders and transformers CLIP and SigLIP do).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlret.errors import ConfigError
from vlret.models.base import RetrievalModel

DEFAULT_INIT = "a photo of a"
CONTEXT_MODES = ("per_word", "per_token")


def check_promptable(model: RetrievalModel) -> None:
    for method in ("text_token_embeddings", "encode_text_embeddings"):
        if not hasattr(model, method):
            raise ConfigError(
                f"{model.name}: its text tower does not take input embeddings ({method}), so prompts cannot "
                "be learnt on it"
            )


def init_token_span(model: RetrievalModel, init: str) -> tuple[int, int]:
    """``(start, count)``: where ``init``'s own tokens sit when ``init`` is tokenized, and how many there are.

    They are what tokenizing ``init`` adds to tokenizing the empty string: the special tokens in front
    (CLIP's start token; none in SigLIP) are the common prefix of the two, and what follows ``init``'s
    tokens (end token, padding) is the empty text's tail shifted by ``count``.
    """
    batch = model.tokenize([init, ""])
    ids, empty = batch["input_ids"][0].tolist(), batch["input_ids"][1].tolist()
    start = 0
    while start < len(ids) and ids[start] == empty[start]:
        start += 1
    for count in range(1, len(ids) - start + 1):
        if ids[start + count :] == empty[start : len(empty) - count]:
            return start, count
    raise ConfigError(f"{model.name}: cannot find the tokens of {init!r} in its tokenization")


def context_phrase(init: str) -> str:
    """The context initialisation as CoOp's released code reads it: ``_`` is a space (``a_photo_of_a`` is
    four words), and words are what ``split(" ")`` gives. A phrase with an empty word (two spaces or
    underscores in a row, or one at an end) is refused: the released code counts it as a context word and
    takes the end-of-text token's embedding for it, which pushes the class name out of the prompt."""
    phrase = init.replace("_", " ")
    if not phrase.strip():
        raise ConfigError(f"the context initialisation {init!r} has no words")
    if "" in phrase.split(" "):
        raise ConfigError(
            f"the context initialisation {init!r} has an empty word (two spaces or underscores in a row, or "
            "one at an end); write its words with one space or underscore between them"
        )
    return phrase


class PromptLearner(nn.Module):
    """Learnt context vectors and the class prompts they complete; see the module docstring."""

    def __init__(
        self,
        model: RetrievalModel,
        classnames: list[str],
        init: str = DEFAULT_INIT,
        context: str = "per_word",
    ):
        super().__init__()
        check_promptable(model)
        if not classnames:
            raise ConfigError("prompt learning needs at least one class name")
        if context not in CONTEXT_MODES:
            raise ConfigError(f"context must be one of {', '.join(CONTEXT_MODES)}, not {context!r}")
        init = context_phrase(init)
        self.init, self.classnames, self.context = init, list(classnames), context
        self.start, init_tokens = init_token_span(model, init)
        self.n_ctx = len(init.split(" ")) if context == "per_word" else init_tokens
        if self.n_ctx > init_tokens:
            raise ConfigError(f"{model.name}: {init!r} has more words than tokens; use context per_token")
        prompts = [f"{init} {name.replace('_', ' ')}." for name in classnames]
        batch = model.tokenize(prompts)
        expected = model.tokenize([init])["input_ids"][0, self.start : self.start + init_tokens]
        if not (batch["input_ids"][:, self.start : self.start + init_tokens] == expected).all():
            raise ConfigError(f"{model.name}: its tokenizer does not put {init!r} first in every prompt")
        batch = {key: value.to(model.device) for key, value in batch.items()}
        with torch.no_grad():
            frozen = model.text_token_embeddings(batch["input_ids"]).detach()
        self.batch_keys = sorted(batch)
        for key in self.batch_keys:
            self.register_buffer(key, batch[key], persistent=False)
        self.register_buffer("frozen", frozen, persistent=False)
        self.ctx = nn.Parameter(frozen[0, self.start : self.start + self.n_ctx].clone())

    def prompt_embeddings(self) -> torch.Tensor:
        """``[C, L, width]``: the prompts with the context vectors in place of the ``init`` words."""
        ctx = self.ctx[None].expand(len(self.frozen), -1, -1)
        end = self.start + self.n_ctx
        return torch.cat([self.frozen[:, : self.start], ctx, self.frozen[:, end:]], dim=1)

    def class_embeddings(self, model: RetrievalModel) -> torch.Tensor:
        """``[C, D]`` L2-normalised class embeddings through ``model``'s frozen text encoder."""
        batch = {key: getattr(self, key) for key in self.batch_keys}
        return F.normalize(model.encode_text_embeddings(self.prompt_embeddings(), batch).embeds, dim=-1)
