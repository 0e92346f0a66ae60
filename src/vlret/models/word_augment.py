"""VSE-infinity's text size augmentation on token ids, word by word (AVSE trains with it).

In training every *word* of a caption is perturbed with probability ``rate`` (AVSE: 0.2); a perturbed word
has all its sub-tokens replaced by the mask token (half of the perturbed words), by random vocabulary tokens
(a tenth), or is deleted (the remaining 40%). Special tokens (``[CLS]``, ``[SEP]``, ``<start>``...) are never
touched. A deleted word shortens its row: the survivors move to the front and the row is padded again, so the
batch keeps its width.

A tower says what a word is through :class:`WordPieces`: which ids continue the previous token's word
(WordPiece's ``##`` pieces; none for a word-level vocabulary), which are special, the mask id (``[MASK]``;
``<unk>`` for a tower without one) and the pad id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK_SHARE = 0.5  # of the perturbed words: sub-tokens -> the mask token
RANDOM_SHARE = 0.1  # -> random vocabulary tokens; the rest (0.4) are deleted


@dataclass
class WordPieces:
    """What a tower's vocabulary needs for word-level augmentation; tensors are indexed by token id."""

    continues_word: torch.Tensor  # [vocab] bool: the token belongs to the previous token's word
    special: torch.Tensor  # [vocab] bool: never perturbed
    mask_id: int
    pad_id: int

    @classmethod
    def from_vocab(
        cls, vocab: dict[str, int], special_ids: list[int], mask_id: int, pad_id: int, wordpiece: bool
    ) -> WordPieces:
        """From a token -> id map; with ``wordpiece``, tokens starting with ``##`` continue a word (else every
        token is a word)."""
        size = max(vocab.values()) + 1
        continues = torch.zeros(size, dtype=torch.bool)
        for token, index in vocab.items():
            if wordpiece and token.startswith("##"):
                continues[index] = True
        special = torch.zeros(size, dtype=torch.bool)
        special[torch.tensor(sorted(set(special_ids)), dtype=torch.long)] = True
        return cls(continues, special, mask_id, pad_id)

    @property
    def vocab_size(self) -> int:
        return len(self.special)


def word_numbers(ids: torch.Tensor, real: torch.Tensor, pieces: WordPieces) -> torch.Tensor:
    """``[B, L]`` the word each token belongs to, counted from 0 per row; -1 for special and pad tokens."""
    special = pieces.special[ids] | ~real
    starts = ~special & ~pieces.continues_word[ids]
    numbers = torch.cumsum(starts.long(), dim=1) - 1
    # a continuation piece before the row's first word (a malformed text) belongs to no word
    return torch.where(special | (numbers < 0), torch.full_like(numbers, -1), numbers)


def augment_words(
    batch: dict[str, torch.Tensor], pieces: WordPieces, rate: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A perturbed copy of a tokenized batch (``input_ids``, ``attention_mask``); see the module docstring.
    The random draws come from ``generator`` (default: torch's global one, which the trainer seeds)."""
    device = batch["input_ids"].device
    ids, real = batch["input_ids"].cpu(), batch["attention_mask"].bool().cpu()  # the tables live on the CPU
    words = word_numbers(ids, real, pieces)
    n_words = int(words.max().item()) + 1 if words.numel() else 0
    if n_words == 0 or rate <= 0:
        return dict(batch)
    rows = ids.shape[0]
    draw = torch.rand(rows, n_words, generator=generator)
    choice = torch.rand(rows, n_words, generator=generator)
    perturbed = draw < rate
    masked_word = perturbed & (choice < MASK_SHARE)
    random_word = perturbed & (choice >= MASK_SHARE) & (choice < MASK_SHARE + RANDOM_SHARE)
    deleted_word = perturbed & (choice >= MASK_SHARE + RANDOM_SHARE)

    def per_token(per_word: torch.Tensor) -> torch.Tensor:
        return per_word.gather(1, words.clamp(min=0)) & (words >= 0)

    out = ids.clone()
    out[per_token(masked_word)] = pieces.mask_id
    to_random = per_token(random_word)
    if to_random.any():
        allowed = torch.nonzero(~pieces.special).squeeze(1)
        picks = torch.randint(len(allowed), (int(to_random.sum()),), generator=generator)
        out[to_random] = allowed[picks].to(ids.dtype)
    keep = real & ~per_token(deleted_word)
    packed = _pack(out, keep, pieces.pad_id, batch["attention_mask"].dtype)
    return {name: value.to(device) for name, value in packed.items()}


def _pack(
    ids: torch.Tensor, keep: torch.Tensor, pad_id: int, mask_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The kept tokens of every row moved to the front (order kept), the rest padding."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    packed = ids.gather(1, order)
    mask = keep.gather(1, order)
    packed[~mask] = pad_id
    return {"input_ids": packed, "attention_mask": mask.to(mask_dtype)}
