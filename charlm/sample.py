"""Incremental, batched generation: read the prompt once, then one recurrent step per character.

The recurrent state (h, c) is carried from step to step, so a character costs one step of the
network however long the poem already is — the prompt is never re-read. ``sample_poems`` decodes
a whole batch of poems together (``-n 16`` is one batch of 16 rows, not 16 loops), optionally
within the constraints of charlm.constrain and with best-of-K reranking; ``beam_poems`` is beam
search within a fixed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from charlm.constrain import PoemConstraint, PoemSpec, Slot
from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.vocab import EOS, EOS_ID, UNK_ID, Vocab, escape_char, is_unprintable


@dataclass(frozen=True)
class SampleSettings:
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_chars: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:  # also refuses NaN
            raise CharLMError("--temperature must be a finite number greater than 0")
        if self.top_k < 0:
            raise CharLMError("--top-k must be 0 (off) or a positive number")
        if not 0 < self.top_p <= 1:  # also refuses NaN
            raise CharLMError("--top-p must be in (0, 1]")
        if self.max_chars < 1:
            raise CharLMError("--max-chars must be at least 1")


def check_prompt(prompt: str) -> None:
    """Refuse a prompt a poem cannot hold: a newline (to the model it ends the poem, so what
    follows would be a second poem) or another unprintable character (see vocab.printable)."""
    for i, ch in enumerate(prompt):
        if ch == EOS:
            raise CharLMError(f"the prompt holds a newline (character {i + 1}); a newline ends a poem, "
                              "so a prompt must be a single line")
        if is_unprintable(ch):
            raise CharLMError(f"the prompt holds the control character {escape_char(ch)} (character {i + 1}), "
                              "which a poem cannot contain")


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(logits − row max) / temperature in float64: the best character scores 0 and the rest are
    ≤ 0, so no temperature overflows to NaN. A tiny temperature (1e-45) sends every other score to
    −inf, which is greedy decoding; a huge one (1e300) sends them all to 0, which is uniform."""
    logits = logits.double()
    top = logits.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a fully masked row stays -inf
    return (logits - top) / temperature


def filter_logits(logits: torch.Tensor, s: SampleSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on a (V,) or (B, V) row of logits."""
    logits = logits.double().clone()
    logits[..., UNK_ID] = -float("inf")  # never write the unknown-character token (before scaling,
    logits = scale(logits, s.temperature)  # so the best remaining character scores 0)
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


@dataclass
class Result:
    text: str
    logprob: float  # total log-probability under the model (nats) of everything generated
    chars: int  # characters scored (the generated ones plus the end of poem)
    pattern: str | None = None

    @property
    def score(self) -> float:
        """Mean log-probability per character, the ranking for --best-of and --beam."""
        return self.logprob / max(1, self.chars)


# -- decoding ----------------------------------------------------------------------------------

def _check_finite(logits: torch.Tensor) -> None:
    if not torch.isfinite(logits).all():
        raise CharLMError("the model's scores are not finite numbers (NaN or infinity), so its weights are broken (e.g. a run that diverged); "
                          "use another checkpoint")


def _step(model: CharLM, tokens: torch.Tensor, state):
    logits, state = model(tokens[:, None], state)
    return logits[:, -1], state


def _prime(model: CharLM, vocab: Vocab, prompt: str, batch: int):
    """Read the prompt once for one poem and copy the result to ``batch`` rows."""
    ids = torch.tensor([[EOS_ID, *vocab.encode(prompt)]], dtype=torch.long)
    logits, state = model(ids)
    logits = logits[:, -1].expand(batch, -1).contiguous()
    state = tuple(s.expand(-1, batch, -1).contiguous() for s in state)
    return logits, state


@torch.no_grad()
def sample_poems(model: CharLM, vocab: Vocab, prompt: str, n: int, *, spec: PoemSpec = PoemSpec(),
                 settings: SampleSettings = SampleSettings(), best_of: int = 1, table=None,
                 lines: set[str] | None = None, generator: torch.Generator | None = None,
                 on_char: Callable[[str], None] | None = None) -> list[Result]:
    """``n`` poems sampled in one batch of n·best_of rows; with best_of > 1 each poem is the best
    of its best_of candidates by mean log-probability per character. ``on_char`` receives the
    characters of row 0 as they are produced (used to stream a single poem)."""
    if best_of < 1:
        raise CharLMError("--best-of must be at least 1")
    check_prompt(prompt)
    model.eval()
    B = n * best_of
    con = PoemConstraint(vocab, spec, table, lines) if spec.constrained else None
    if con is not None:
        starts = con.feed_prompt(prompt)
        pick = torch.randint(len(starts), (B,), generator=generator).tolist()
        slots = [starts[i] for i in pick]
        max_steps = con.steps_needed() or settings.max_chars + 1
    else:
        slots = [Slot() for _ in range(B)]
        max_steps = settings.max_chars
    logits, state = _prime(model, vocab, prompt, B)
    out = [[] for _ in range(B)]
    logp = torch.zeros(B, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool)
    for _ in range(max_steps):
        _check_finite(logits)
        raw = torch.log_softmax(logits.float(), -1)  # (B, V)
        masked = logits.float().clone()
        if con is not None:
            allowed = torch.stack([con.mask(s) for s in slots])  # (B, V)
            if not allowed.any(-1).all():
                raise CharLMError("no character in this model's vocabulary can continue the poem under "
                                  "these constraints; try fewer of them")
            masked = masked.masked_fill(~allowed, -math.inf)
        masked = filter_logits(masked, settings)
        bad = torch.isinf(masked).all(-1)
        if bad.any():  # top-k/top-p removed every allowed character: fall back to the allowed set
            keep = logits.double().masked_fill(~allowed, -math.inf) if con is not None else logits.double().clone()
            keep[:, UNK_ID] = -math.inf
            masked[bad] = scale(keep, settings.temperature)[bad]
        tok = torch.multinomial(torch.softmax(masked, -1), 1, generator=generator)[:, 0]
        tok[finished] = EOS_ID
        live = ~finished
        logp[live] += raw[live, tok[live]].double()
        count[live] += 1
        for b in torch.nonzero(live)[:, 0].tolist():
            t = int(tok[b])
            if t == EOS_ID:
                finished[b] = True
            else:
                out[b].append(vocab.chars[t])
                if b == 0 and on_char is not None:
                    on_char(vocab.chars[t])
            if con is not None:
                slots[b] = con.advance(slots[b], t)
        if finished.all():
            break
        logits, state = _step(model, tok, state)
    if spec.acrostic and spec.form is None and not finished.all():  # a form's step count always suffices
        raise CharLMError(f"a poem did not reach the end of its acrostic within --max-chars {settings.max_chars}; "
                          "raise --max-chars")
    results = [Result(prompt + "".join(o), float(logp[b]), int(count[b]), slots[b].pattern_name)
               for b, o in enumerate(out)]
    return [max(results[i * best_of : (i + 1) * best_of], key=lambda r: r.score) for i in range(n)]


@torch.no_grad()
def beam_poems(model: CharLM, vocab: Vocab, prompt: str, n: int, *, spec: PoemSpec, beam: int,
               table=None, lines: set[str] | None = None) -> list[Result]:
    """Beam search of width ``beam`` within the constraints of a fixed form; the ``n`` best
    distinct poems by mean log-probability per character."""
    if spec.form is None:
        raise CharLMError("--beam needs --form: beam search is for poems of a fixed shape")
    if beam < n:
        raise CharLMError(f"--beam {beam} must be at least -n {n}")
    check_prompt(prompt)
    model.eval()
    con = PoemConstraint(vocab, spec, table, lines)
    starts = con.feed_prompt(prompt)[:beam]
    slots = list(starts)
    W = len(slots)
    logits, state = _prime(model, vocab, prompt, W)
    texts = ["" for _ in range(W)]
    scores = torch.zeros(W, dtype=torch.float64)
    steps = con.steps_needed()
    for _ in range(steps):
        _check_finite(logits)
        raw = torch.log_softmax(logits.float(), -1).double()
        allowed = torch.stack([con.mask(s) for s in slots])
        cand = (scores[:, None] + raw).masked_fill(~allowed, -math.inf)  # (W, V)
        k = min(beam, int(torch.isfinite(cand).sum()))
        if k == 0:
            raise CharLMError("no poem satisfies all the constraints with this model's vocabulary")
        top = torch.topk(cand.flatten(), k)
        rows = torch.div(top.indices, cand.size(1), rounding_mode="floor")
        toks = top.indices % cand.size(1)
        slots = [con.advance(slots[r], int(t)) for r, t in zip(rows.tolist(), toks.tolist())]
        texts = [texts[r] + ("" if int(t) == EOS_ID else vocab.chars[int(t)])
                 for r, t in zip(rows.tolist(), toks.tolist())]
        scores = top.values
        state = tuple(s[:, rows].contiguous() for s in state)
        if all(s.done for s in slots):
            break
        logits, state = _step(model, toks, state)
    results, seen = [], set()
    for i in torch.argsort(scores, descending=True).tolist():
        if texts[i] not in seen:
            seen.add(texts[i])
            results.append(Result(prompt + texts[i], float(scores[i]), steps, slots[i].pattern_name))
    return results[:n]


def generate(model: CharLM, vocab: Vocab, prompt: str = "", *, settings: SampleSettings | None = None,
             generator: torch.Generator | None = None, on_char: Callable[[str], None] | None = None) -> str:
    """One unconstrained sample: the prompt (already normalised) and its continuation up to the
    end of the poem (a newline, not included) or ``max_chars`` new characters."""
    return sample_poems(model, vocab, prompt, 1, settings=settings or SampleSettings(),
                        generator=generator, on_char=on_char)[0].text
