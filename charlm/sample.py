"""Incremental generation: read the prompt once, then one recurrent step per character.

The recurrent state (h, c) is carried from step to step, so a character costs one step of the
network however long the poem already is — the prompt is never re-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.vocab import EOS_ID, UNK_ID, Vocab


@dataclass(frozen=True)
class SampleSettings:
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_chars: int = 200

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise CharLMError("--temperature must be greater than 0")
        if self.top_k < 0:
            raise CharLMError("--top-k must be 0 (off) or a positive number")
        if not 0 < self.top_p <= 1:
            raise CharLMError("--top-p must be in (0, 1]")
        if self.max_chars < 1:
            raise CharLMError("--max-chars must be at least 1")


def filter_logits(logits: torch.Tensor, s: SampleSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on a (V,) or (B, V) row of logits."""
    logits = logits.float() / s.temperature
    logits[..., UNK_ID] = -float("inf")  # never write the unknown-character token
    if s.top_k and s.top_k < logits.size(-1):
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if s.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= s.top_p
        sorted_logits = sorted_logits.masked_fill(drop, -float("inf"))
        logits = torch.full_like(logits, -float("inf")).scatter(-1, idx, sorted_logits)
    return logits


@torch.no_grad()
def generate(model: CharLM, vocab: Vocab, prompt: str = "", *, settings: SampleSettings | None = None,
             generator: torch.Generator | None = None, on_char: Callable[[str], None] | None = None) -> str:
    """One sample: the prompt (already normalised) and its continuation up to the end of the poem
    (a newline, not included) or ``max_chars`` new characters."""
    s = settings or SampleSettings()
    model.eval()
    # every poem in training follows a newline, so the prompt is read after one
    ids = torch.tensor([[EOS_ID, *vocab.encode(prompt)]], dtype=torch.long)  # (1, T)
    logits, state = model(ids)
    out: list[str] = []
    for _ in range(s.max_chars):
        probs = torch.softmax(filter_logits(logits[0, -1], s), dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        if nxt == EOS_ID:
            break
        ch = vocab.chars[nxt]
        out.append(ch)
        if on_char is not None:
            on_char(ch)
        logits, state = model(torch.tensor([[nxt]]), state)
    return prompt + "".join(out)
