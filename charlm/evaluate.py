"""Loss, bits per character, perplexity and accuracy of a model on a text.

Every character of the text after the initial newline is scored, each predicted from everything
before it: the stream is cut into ``rows`` contiguous slices scored in parallel, and each slice
is preceded by up to ``burn_in`` unscored characters of its left context so its first
predictions do not start from an empty state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.vocab import UNK_ID, Vocab

LN2 = math.log(2.0)
IGNORE = -100
_LOGITS_MAX = 2**24  # floats in one window's logits (64 MB): scoring memory does not grow with the vocabulary
_MAX_LOSS = 700.0  # nats per character; exp() of more overflows a float (a uniform guess over 10^300 characters)


@dataclass(frozen=True)
class Score:
    nll: float  # total negative log-likelihood, nats
    correct: int  # targets that were the model's top-1 prediction
    chars: int  # targets scored
    unknown: int  # targets that were <unk>
    nll_unknown: float = 0.0  # the part of nll spent on <unk> targets

    @property
    def loss(self) -> float:
        return self.nll / max(1, self.chars)

    @property
    def bpc(self) -> float:
        return self.loss / LN2


@dataclass(frozen=True)
class EvalResult:
    loss: float  # nats per character
    bpc: float  # bits per character
    perplexity: float
    accuracy: float  # top-1
    chars: int
    unknown_chars: int
    known_bpc: float  # bpc over in-vocabulary targets only: unseen characters neither help nor hurt
    unigram_bpc: float | None  # add-one unigram model from training counts, for scale

    def to_dict(self) -> dict:
        return asdict(self)


def _rows(ids: torch.Tensor, rows: int, burn_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (R, L), targets = inputs shifted by one, burn-in and padding = IGNORE."""
    n = ids.numel() - 1  # number of targets: positions 1..n
    rows = max(1, min(rows, n // 64 or 1))
    bounds = [1 + (n * r) // rows for r in range(rows + 1)]
    xs, ys = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = max(0, a - 1 - burn_in)
        x = ids[s : b - 1]
        y = ids[s + 1 : b].clone()
        y[: a - 1 - s] = IGNORE
        xs.append(x)
        ys.append(y)
    width = max(x.numel() for x in xs)
    X = torch.zeros(len(xs), width, dtype=torch.long)
    Y = torch.full((len(xs), width), IGNORE, dtype=torch.long)
    for i, (x, y) in enumerate(zip(xs, ys)):
        X[i, : x.numel()] = x
        Y[i, : y.numel()] = y
    return X, Y


@torch.no_grad()
def score(model: CharLM, ids: torch.Tensor, *, rows: int = 32, seq_len: int = 256,
          burn_in: int = 256) -> Score:
    """Score a 1-D id stream (its first id is context only) in fp32, state carried across windows.

    Windows are at most ``seq_len`` long, and shorter where a window's logits (rows × window ×
    vocabulary floats) would pass _LOGITS_MAX: the state is carried, so the figure is the same."""
    was_training = model.training
    model.eval()
    try:
        X, Y = _rows(ids, rows, burn_in)
        device = next(model.parameters()).device
        X, Y = X.to(device), Y.to(device)
        seq_len = max(1, min(seq_len, _LOGITS_MAX // max(1, X.size(0) * model.config.vocab_size)))
        state = None
        nll = nll_unknown = 0.0
        correct = 0
        for s in range(0, X.size(1), seq_len):
            x, y = X[:, s : s + seq_len], Y[:, s : s + seq_len]
            logits, state = model(x, state)
            flat = logits.reshape(-1, logits.size(-1)).float()
            target = y.reshape(-1)
            each = F.cross_entropy(flat, target, ignore_index=IGNORE, reduction="none")
            nll += each.sum().item()
            nll_unknown += each[target == UNK_ID].sum().item()
            correct += int((flat.argmax(-1) == target)[target != IGNORE].sum())
        chars = int((Y != IGNORE).sum())
        unknown = int((Y == UNK_ID).sum())
        return Score(nll, correct, chars, unknown, nll_unknown)
    finally:
        model.train(was_training)


def unigram_bpc(counts: list[int] | None, ids: torch.Tensor) -> float | None:
    """Bits per character of an add-one-smoothed unigram model of the training text."""
    if not counts:
        return None
    c = torch.tensor(counts, dtype=torch.float64) + 1.0
    logp = torch.log2(c / c.sum())
    return float(-logp[ids[1:]].mean())


def evaluate(model: CharLM, vocab: Vocab, text: str, counts: list[int] | None = None) -> EvalResult:
    """Score ``text`` (already normalised; poems one per line) with ``model``."""
    from charlm.data import join_poems

    poems = [line for line in text.split("\n") if line.strip()]
    ids = torch.tensor(vocab.encode(join_poems(poems)), dtype=torch.long)
    s = score(model, ids)
    # finite weights can still overflow fp32 into inf or nan: that is a broken model, not a figure
    if not (math.isfinite(s.nll) and math.isfinite(s.nll_unknown)) or s.loss > _MAX_LOSS:
        raise CharLMError(f"the model's loss on this text is not a usable number ({s.loss:.4g} nats per "
                          f"character): its weights are broken")
    return EvalResult(
        loss=s.loss, bpc=s.bpc, perplexity=math.exp(s.loss), accuracy=s.correct / max(1, s.chars),
        chars=s.chars, unknown_chars=s.unknown,
        known_bpc=(s.nll - s.nll_unknown) / max(1, s.chars - s.unknown) / LN2,
        unigram_bpc=unigram_bpc(counts, ids),
    )


def validation_text(ckpt, encoding: str = "utf-8") -> tuple[str, list[str]]:
    """The checkpoint's own held-out poems, rebuilt from its corpus, fraction and seed.

    Returns the text and warnings (e.g. the corpus changed since training).
    """
    from pathlib import Path

    from charlm.checkpoint import project_root
    from charlm.data import read_corpus, sha256_text, split_poems
    from charlm.errors import CharLMError
    from charlm.vocab import normalize

    stored = ckpt.corpus.get("path")
    if not stored:
        raise CharLMError("this checkpoint does not record its corpus; pass --corpus FILE")
    candidates = [Path(stored), project_root() / stored]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise CharLMError(f"the training corpus {stored!r} of this checkpoint was not found; pass --corpus FILE")
    tc = ckpt.config.train
    text = normalize(read_corpus(path, encoding=tc.encoding or encoding), ckpt.vocab.script)
    warnings = []
    if ckpt.corpus.get("sha256") and sha256_text(text) != ckpt.corpus["sha256"]:
        warnings.append(f"{stored} changed since training: its validation split may overlap the training data")
    _, valid = split_poems(text, tc.valid_fraction, tc.seed)
    return "\n".join(valid) + "\n", warnings
