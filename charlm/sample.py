"""Incremental, batched generation: read the prompt once, then one recurrent step per character.

The recurrent state (h, c) is carried from step to step, so a character costs one step of the
network however long the poem already is — the prompt is never re-read. ``sample_poems`` decodes
a whole batch of poems together (``-n 16`` is one batch of 16 rows, not 16 loops), optionally
within the constraints of charlm.constrain and with best-of-K reranking; ``beam_poems`` is beam
search within a fixed form, with no repeated bigram, a cap on any one character, and diverse
beam groups so that its ``n`` poems are not near copies of each other.

Speed: the constraint state of all rows is tensors (charlm.constrain.Rows), so a step builds every
row's mask without a Python loop over rows; decoding runs under ``torch.inference_mode`` with one
thread for small batches (tiny ops lose more to thread hand-off than they gain);
benchmarks/decode_speed.py measures it beside plain decoding of the same model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from charlm.config import SampleSettings
from charlm.constrain import PoemConstraint, PoemSpec, Repeats
from charlm.errors import CharLMError
from charlm.model import CharLM, model_device
from charlm.vocab import EOS, EOS_ID, UNK_ID, Vocab, escape_char, is_unprintable


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


def sampling_dtype(temperature: float) -> torch.dtype:
    """float32 for the sampling arithmetic, float64 where the temperature itself would not survive
    float32 (below 1e-30 or above 1e30): half the memory traffic of every step."""
    return torch.float32 if 1e-30 < temperature < 1e30 else torch.float64


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(logits − row max) / temperature: the best character scores 0 and the rest are ≤ 0, so no
    temperature overflows to NaN. A tiny temperature (1e-45, in float64) sends every other score to
    −inf, which is greedy decoding; a huge one (1e300) sends them all to 0, which is uniform."""
    return _scale_(logits.to(sampling_dtype(temperature), copy=True), temperature)


def _scale_(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``scale`` in place on a tensor the caller owns (one pass fewer, no new tensors)."""
    top = x.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a fully masked row stays -inf
    return x.sub_(top).div_(temperature)


def filter_logits(logits: torch.Tensor, s: SampleSettings, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on a (V,) or (B, V) row of logits, in a new
    tensor; ``allowed`` (bool, the same shape) masks the characters the constraints forbid."""
    dtype = sampling_dtype(s.temperature)
    if allowed is None:
        logits = logits.to(dtype, copy=True)
    else:
        logits = torch.where(allowed, logits.to(dtype), -math.inf)
    logits[..., UNK_ID] = -math.inf  # never write the unknown-character token (before scaling,
    logits = _scale_(logits, s.temperature)  # so the best remaining character scores 0)
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


# -- decoding ---------------------------------------------------------------------------------

def _check_finite(per_row: torch.Tensor) -> None:
    """``per_row``: a figure of each row of logits (their log-sum-exp, or the best log-softmax),
    finite unless a logit is NaN or +inf."""
    if not bool(torch.isfinite(per_row).all()):
        raise CharLMError("the model's scores are not finite numbers (NaN or infinity), so its weights are broken (e.g. a run that diverged); "
                          "use another checkpoint")


# Dynamic int8 weights pay for their 0.1 s of quantising only on enough work: this many rows, or
# this many steps (a network step of the Tang model on 2 threads, 1 row: 0.75 ms in fp32, 0.47 ms in
# int8; 64 rows: 4.1 ms and 1.9 ms). A free sample's length is unknown until it ends, so it switches
# to int8 only once it has run this many steps: most poems end sooner and never pay.
QUANTIZE_MIN_ROWS, QUANTIZE_MIN_STEPS = 8, 100


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (B, V), drawn in proportion to those non-negative weights
    (they need not sum to 1), by the inverse of the cumulative distribution: u ~ U[0, total), the
    first index whose running sum exceeds u (never a zero-weight one). 20× faster than
    torch.multinomial at 64 rows of 5,000 characters."""
    cdf = probs.cumsum(-1)  # (B, V)
    u = torch.rand(probs.size(0), 1, dtype=cdf.dtype, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=probs.size(-1) - 1)


# A character that scores this far below the row's best gets weight 0 (e^-79.5 ≈ 3e-35 against the
# best's 1). Scores are first raised to -80, because torch's exp is 10-100× slower where its result
# underflows (100 rows × 8,865 characters: 0.17 ms at -50, 16 ms at -100, 1.7 ms for the -inf of a
# masked character); e^-80 then falls under the threshold, so a masked character stays impossible.
NEGLIGIBLE = -79.5


def weights_(x: torch.Tensor) -> torch.Tensor:
    """Sampling weights from scaled scores ``x`` (each row's best is 0, see ``scale``), in place:
    e^x, softmax without its sum (``draw`` needs none), and 0 at or below ``NEGLIGIBLE``."""
    return torch.nn.functional.threshold_(x.clamp_(min=NEGLIGIBLE - 0.5).exp_(), math.exp(NEGLIGIBLE), 0.0)


def decoder(model: CharLM, rows: int, steps: int, quantize: bool) -> torch.nn.Module:
    """The module that decodes ``rows`` rows for ``steps`` steps known to be done or ahead: the
    model itself, or, with ``quantize`` on a CPU and enough work (or a copy already made), a copy whose
    LSTM/GRU and linear layers hold dynamic int8 weights (the embedding stays fp32).
    On the shipped model it moves validation bpc by +0.004 (README, Benchmarks). The copy is made
    once per model, so the model must not be trained afterwards (the CLI's loaded checkpoints)."""
    if not quantize or model_device(model).type != "cpu":
        return model
    made = "_int8_copy" in model.__dict__  # then it costs nothing more (compose, a library caller's loop)
    return int8_copy(model) if made or rows >= QUANTIZE_MIN_ROWS or steps >= QUANTIZE_MIN_STEPS else model


def int8_copy(model: CharLM) -> torch.nn.Module:
    cached = model.__dict__.get("_int8_copy")
    if cached is None:
        import copy
        import warnings

        with warnings.catch_warnings():  # torch.ao.quantization announces its successor; it still works
            warnings.simplefilter("ignore")
            cached = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model).eval(), {torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear}, dtype=torch.qint8)
        object.__setattr__(model, "_int8_copy", cached)  # not a submodule: never saved, never trained
    return cached


@contextmanager
def _decoding(model: CharLM):
    """Eval mode and inference mode; the model's mode is restored afterwards (as evaluate.score
    does). Decoding keeps torch's thread count: since a step goes through the cell functions
    (model.run_rnn) its matrix products dominate even at one row, and two threads beat one at every
    batch size measured (benchmarks/decode_speed.py, 2 cores)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# The network runs where the model is (a GPU, say); its logits come back to the CPU, where the
# constraints, the sampling and the bookkeeping run, so a seed gives the same poems on any device.

def _step(model: CharLM, tokens: torch.Tensor, state):
    logits, state = model(tokens[:, None].to(model_device(model)), state)
    return logits[:, -1].float().cpu(), state


def _prime(model: CharLM, vocab: Vocab, prompt: str, batch: int):
    """Read the prompt once for one poem and copy the result to ``batch`` rows."""
    ids = torch.tensor([[EOS_ID, *vocab.encode(prompt)]], dtype=torch.long, device=model_device(model))
    logits, state = model(ids)
    logits = logits[:, -1].float().cpu().expand(batch, -1).contiguous()
    state = tuple(s.expand(-1, batch, -1).contiguous() for s in state)
    return logits, state


def _texts(vocab: Vocab, prompt: str, toks: torch.Tensor) -> list[str]:
    """Each row's characters up to its end of poem."""
    chars = vocab.chars
    out = []
    for row in toks.tolist():
        end = row.index(EOS_ID) if EOS_ID in row else len(row)
        out.append(prompt + "".join(chars[t] for t in row[:end]))
    return out


def _allowed(con: PoemConstraint | None, rows, rep: Repeats | None, logits: torch.Tensor) -> torch.Tensor | None:
    """The characters each row may write next (B, V), or None when nothing constrains them."""
    allowed = None
    if con is not None:
        allowed = con.masks(rows)  # (B, V)
        if not bool(allowed.any(-1).all()):
            raise CharLMError("no character in this model's vocabulary can continue the poem under "
                              "these constraints; try fewer of them")
    if rep is not None:
        allowed = rep.restrict(allowed if allowed is not None else torch.ones_like(logits, dtype=torch.bool))
    return allowed


def _pick(logits: torch.Tensor, allowed: torch.Tensor | None, settings: SampleSettings,
          generator: torch.Generator | None) -> torch.Tensor:
    """One character per row (B,): temperature, top-k and top-p within the allowed characters."""
    x = filter_logits(logits, settings, allowed)
    bad = torch.isinf(x).all(-1) if settings.top_k or settings.top_p < 1.0 else None
    if bad is not None and bool(bad.any()):  # top-k/top-p removed every allowed character: fall back to the allowed set
        keep = logits.clone() if allowed is None else logits.masked_fill(~allowed, -math.inf)
        keep[:, UNK_ID] = -math.inf
        x[bad] = scale(keep, settings.temperature)[bad]
    return draw(weights_(x), generator)


def _leave_batch(ended: torch.Tensor, idx: torch.Tensor, tok: torch.Tensor, state, rep: Repeats | None):
    """Free poems end at different lengths (Tang poems: 20 to 200 characters), so the rows that
    ``ended`` leave the batch and each step costs only the rows still writing: the batch's poem
    indices, last tokens and carried state without them (and ``rep`` likewise)."""
    if not bool(ended.any()):
        return idx, tok, state
    keep = (~ended).nonzero()[:, 0]
    if rep is not None:
        rep.take(keep)
    return idx[keep], tok[keep], tuple(s[:, keep] for s in state)


def sample_poems(model: CharLM, vocab: Vocab, prompt: str, n: int, *, spec: PoemSpec = PoemSpec(),
                 settings: SampleSettings = SampleSettings(), best_of: int = 1, table=None,
                 lines: set[str] | None = None, generator: torch.Generator | None = None,
                 on_char: Callable[[str], None] | None = None, quantize: bool = False) -> list[Result]:
    """``n`` poems sampled in one batch of n·best_of rows; with best_of > 1 each poem is the best
    of its best_of candidates by mean log-probability per character. ``on_char`` receives the
    characters of row 0 as they are produced (used to stream a single poem); ``quantize``: see
    ``decoder``."""
    if best_of < 1:
        raise CharLMError("--best-of must be at least 1")
    check_prompt(prompt)
    B = n * best_of
    con = PoemConstraint(vocab, spec, table, lines) if spec.constrained else None
    rows = None
    if con is not None:
        starts = con.feed_prompt(prompt)
        pick = torch.randint(len(starts), (B,), generator=generator).tolist()
        rows = con.rows([starts[i] for i in pick])
        max_steps = con.steps_needed() or settings.max_chars + 1
    else:
        max_steps = settings.max_chars
    rep = Repeats(vocab, vocab.encode(prompt), B, max_steps) if settings.no_repeat else None
    toks = torch.full((B, max_steps), EOS_ID, dtype=torch.long)
    logp = torch.zeros(B, dtype=torch.float64)
    count = torch.zeros(B, dtype=torch.long)
    finished = torch.zeros(B, dtype=torch.bool)
    known = con.steps_needed() if con is not None else None  # a form's poems run exactly this long
    net = decoder(model, B, known or 0, quantize)
    idx = torch.arange(B)  # the batch's rows, as indices into the B poems (free poems leave it as they end)
    with _decoding(model):
        logits, state = _prime(net, vocab, prompt, B)
        for i in range(max_steps):
            logits = logits.float()  # (B, V)
            lse = torch.logsumexp(logits, -1)  # for the model's own log-probability of each pick
            _check_finite(lse)
            tok = _pick(logits, _allowed(con, rows, rep, logits), settings, generator)
            done = finished[idx]
            tok = tok.masked_fill(done, EOS_ID)
            live = ~done
            picked = (logits.gather(1, tok[:, None])[:, 0] - lse).double()
            logp[idx] += torch.where(live, picked, 0.0)
            count[idx] += live.long()
            toks[idx, i] = tok
            if on_char is not None and not bool(finished[0]) and int(tok[0]) != EOS_ID:  # row 0, while it writes, is first
                on_char(vocab.chars[int(tok[0])])
            finished[idx] |= tok == EOS_ID
            if con is not None:
                rows = con.advance_rows(rows, tok)
            if rep is not None:
                rep.feed(tok)
            if bool(finished.all()):
                break
            if i + 1 == QUANTIZE_MIN_STEPS and net is model:
                net = decoder(model, B, i + 1, quantize)  # a long one after all
            if con is None:  # a constrained row keeps its place: its state names its pattern at the end
                idx, tok, state = _leave_batch(finished[idx], idx, tok, state, rep)
            logits, state = _step(net, tok, state)
    if spec.acrostic and spec.form is None and not bool(finished.all()):  # a form's step count always suffices
        raise CharLMError(f"a poem did not reach the end of its acrostic within --max-chars {settings.max_chars}; "
                          "raise --max-chars")
    texts = _texts(vocab, prompt, toks)
    results = [Result(t, float(logp[b]), int(count[b]), con.pattern_name(rows, b) if con is not None else None)
               for b, t in enumerate(texts)]
    return [max(results[i * best_of : (i + 1) * best_of], key=lambda r: r.score) for i in range(n)]


DIVERSITY = 1.0  # nats taken off a beam group's candidate for each earlier group that chose its character


def _diverse_step(cand: torch.Tensor, G: int, w: int, han: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of diverse beam search: from the (W, V) candidate scores, each group of ``w`` rows
    in turn keeps its ``w`` best continuations, a candidate losing DIVERSITY nats for each earlier
    group that chose its (Han) character this step. Returns the source row, the character and the
    model's own score of each kept row (a group with nothing left keeps dead rows at −inf)."""
    V = cand.size(1)
    chosen = torch.zeros(V, dtype=torch.float64)
    pick_rows, pick_toks, pick_scores = [], [], []
    for g in range(G):
        c = cand[g * w : (g + 1) * w]
        k = min(w, int(torch.isfinite(c).sum()))
        if k == 0:  # this group has nothing left: keep dead rows
            pick_rows.append(torch.full((w,), g * w)), pick_toks.append(torch.full((w,), EOS_ID))
            pick_scores.append(torch.full((w,), -math.inf, dtype=torch.float64))
            continue
        top = torch.topk((c - DIVERSITY * chosen).flatten(), k)
        r, t = top.indices // V, top.indices % V
        sc = c.flatten()[top.indices]
        if k < w:
            pad = w - k
            r, t = torch.cat([r, r[:1].repeat(pad)]), torch.cat([t, t[:1].repeat(pad)])
            sc = torch.cat([sc, torch.full((pad,), -math.inf, dtype=torch.float64)])
        chosen.index_add_(0, t[:k], han[t[:k]].double())
        pick_rows.append(r + g * w), pick_toks.append(t), pick_scores.append(sc)
    return torch.cat(pick_rows), torch.cat(pick_toks), torch.cat(pick_scores)


def beam_poems(model: CharLM, vocab: Vocab, prompt: str, n: int, *, spec: PoemSpec, beam: int,
               table=None, lines: set[str] | None = None, no_repeat: bool = True,
               groups: int | None = None, quantize: bool = False) -> list[Result]:
    """Beam search of width ``beam`` within the constraints of a fixed form; the ``n`` best
    distinct poems by mean log-probability per character.

    Scoring is the model's log-probability; what stops maximum-likelihood degeneration is
    (``no_repeat``) no repeated bigram and at most constrain.MAX_REPEAT uses of a character, and
    diverse beam search (Vijayakumar et al. 2018): the beam is split into ``groups`` (default: one
    per poem asked for) of beam // groups rows, decoded in turn at each step, and a group's
    candidates lose DIVERSITY nats for each earlier group that chose the same character at this
    step. The penalty only steers the search; the scores returned are the model's own."""
    if spec.form is None:
        raise CharLMError("--beam needs --form: beam search is for poems of a fixed shape")
    if beam < n:
        raise CharLMError(f"--beam {beam} must be at least -n {n}")
    check_prompt(prompt)
    con = PoemConstraint(vocab, spec, table, lines)
    starts = con.feed_prompt(prompt)
    G = max(1, min(groups or n, beam))
    w = beam // G
    W = G * w
    steps = con.steps_needed()
    # each group starts from the prompt's starting states; copies beyond them start dead (-inf)
    first = [starts[i % len(starts)] for i in range(w)]
    rows = con.rows(first * G)
    scores = torch.tensor([0.0 if i < len(starts) else -math.inf for i in range(w)] * G, dtype=torch.float64)
    rep = Repeats(vocab, vocab.encode(prompt), W, steps) if no_repeat else None
    toks = torch.full((W, steps), EOS_ID, dtype=torch.long)
    net = decoder(model, W, steps, quantize)
    with _decoding(model):
        logits, state = _prime(net, vocab, prompt, W)
        for step in range(steps):
            logits = logits.float()
            raw = torch.log_softmax(logits, -1)  # the one softmax of the step
            _check_finite(raw.amax(-1))  # a NaN or +inf logit leaves its whole row NaN
            allowed = con.masks(rows)
            if rep is not None:
                allowed = rep.restrict(allowed)
            cand = (scores[:, None] + raw.double()).masked_fill(~allowed, -math.inf)  # (W, V)
            idx, tok, scores = _diverse_step(cand, G, w, con.han)
            if not bool(torch.isfinite(scores).any()):
                raise CharLMError("no poem satisfies all the constraints with this model's vocabulary")
            rows = con.advance_rows(rows.take(idx), tok)
            toks = toks[idx]
            toks[:, step] = tok
            if rep is not None:
                rep.take(idx)
                rep.feed(tok)
            state = tuple(s[:, idx].contiguous() for s in state)
            if bool(rows.done.all()):
                break
            logits, state = _step(net, tok, state)
    texts = _texts(vocab, prompt, toks)
    order = torch.argsort(scores, descending=True).tolist()
    results, seen = [], set()
    for i in order:
        if texts[i] not in seen and math.isfinite(float(scores[i])):
            seen.add(texts[i])
            results.append(Result(texts[i], float(scores[i]), steps, con.pattern_name(rows, i)))
    # one poem per group first (the best of each), then the rest by score
    best_of_group = {}
    for r_i in order:
        best_of_group.setdefault(r_i // w, r_i)
    firsts = [texts[i] for i in best_of_group.values()]
    results.sort(key=lambda r: (r.text not in firsts, -r.score))
    return sorted(results[:n], key=lambda r: -r.score)


def generate(model: CharLM, vocab: Vocab, prompt: str = "", *, settings: SampleSettings | None = None,
             generator: torch.Generator | None = None, on_char: Callable[[str], None] | None = None) -> str:
    """One unconstrained sample: the prompt (already normalised) and its continuation up to the
    end of the poem (a newline, not included) or ``max_chars`` new characters."""
    return sample_poems(model, vocab, prompt, 1, settings=settings or SampleSettings(),
                        generator=generator, on_char=on_char)[0].text


def prepare_prompt(vocab: Vocab, prompt: str) -> str:
    """The prompt as the model reads it: normalised (vocab.normalize), its ？！；：、 read as the marks
    the model knows (poetry.known_marks), and checked (check_prompt)."""
    from charlm.poetry import LINE_ENDS, known_marks

    text = known_marks(vocab.normalize(prompt), "".join(c for c in LINE_ENDS if c in vocab))
    check_prompt(text)
    return text


def write_poems(model: CharLM, vocab: Vocab, prompt: str, n: int, *, spec: PoemSpec = PoemSpec(),
                settings: SampleSettings = SampleSettings(), best_of: int = 1, beam: int = 0,
                no_repeat: bool | None = None, seed: int | None = None, lines: set[str] | None = None,
                on_char: Callable[[str], None] | None = None,
                on_warning: Callable[[str], None] | None = None, quantize: bool = False) -> list[Result]:
    """What `charlm generate` and `charlm eval --generate` run: the prompt normalised (its
    ？！；：、 read as the marks the model knows, see poetry.known_marks), then beam search when
    ``beam`` > 0, else sampling seeded with ``seed`` (a fresh seed when None). ``no_repeat`` None
    means on for beam search and off for sampling. Unknown prompt characters go to ``on_warning``."""
    from dataclasses import replace

    text = prepare_prompt(vocab, prompt)
    unknown = vocab.unknown(text)
    if unknown and on_warning is not None:
        on_warning(f"not in this model's vocabulary, read as unknown: {' '.join(unknown)}")
    if beam:
        return beam_poems(model, vocab, text, n, spec=spec, beam=beam, lines=lines,
                          no_repeat=True if no_repeat is None else no_repeat, quantize=quantize)
    if no_repeat is not None:
        settings = replace(settings, no_repeat=no_repeat)
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else torch.seed())
    return sample_poems(model, vocab, text, n, spec=spec, settings=settings, best_of=best_of,
                        lines=lines, generator=g, on_char=on_char, quantize=quantize)
