"""Read a corpus, split it by poem, and cut it into (x, y) batches with y = x shifted by one.

Language modelling is "predict the sequence shifted by one": for a window of characters
c_0 … c_T, the input is x = c_0 … c_{T-1} and the target is y = c_1 … c_T.

Batching (as in pytorch/examples' word_language_model): the training stream — the poems of
the split, shuffled per epoch, each ending in a newline — is laid out as ``batch_size`` parallel
rows, and windows of ``seq_len`` are read left to right::

    stream  a b c d e f g h i j k l m n o p q r s t u v w x     (batch_size = 3, seq_len = 3)
    rows    a b c d e f g h | i j k l m n o p | q r s t u v w x
    window 0: x = [a b c] [i j k] [q r s]   y = [b c d] [j k l] [r s t]
    window 1: x = [d e f] [l m n] [t u v]   y = [e f g] [m n o] [u v w]

Row r of window w+1 continues row r of window w, so the trainer carries the recurrent state
from one window to the next (truncated backpropagation through time: gradients stop at the
window edge, the state does not). The state starts from zero at each epoch.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from charlm.errors import CharLMError


# Byte-order marks of the wider Unicode encodings; UTF-32 LE first, since it starts with UTF-16 LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF32_BE, "UTF-32", "utf-32"),
    (codecs.BOM_UTF16_LE, "UTF-16", "utf-16"),
    (codecs.BOM_UTF16_BE, "UTF-16", "utf-16"),
)


BLOCK_BYTES = 8 * 2**20  # how much of a corpus file is read and decoded at a time


def iter_text(path: str | Path, encoding: str = "utf-8", what: str = "corpus",
              block: int = BLOCK_BYTES) -> Iterator[str]:
    """The file's text, decoded strictly, in pieces that end at a newline (but the last), so a
    large corpus never sits in memory whole. Errors are sentences a user can act on; ``what``
    names the file in them (e.g. "poems file"). An empty file is refused after its last piece."""
    p = Path(path)
    if not p.exists():
        raise CharLMError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise CharLMError(f"{what} {str(p)!r} is a directory, not a text file")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise CharLMError(f"unknown encoding {encoding!r}") from None
    wide = codec.startswith(("utf-16", "utf-32"))  # these legitimately hold NUL bytes
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    pending, offset, first, blank = "", 0, True, True
    try:
        f = p.open("rb")
    except OSError as e:
        raise CharLMError(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from None
    with f:
        while True:
            try:
                raw = f.read(block)
            except OSError as e:
                raise CharLMError(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from None
            if first and not wide:
                for bom, name, option in _BOMS:
                    if raw.startswith(bom):
                        raise CharLMError(f"{what} {str(p)!r} is {name} text (it starts with a {name} byte-order "
                                          f"mark); convert it to UTF-8 or pass --encoding {option}")
            if not wide and b"\0" in raw:
                raise CharLMError(f"{what} {str(p)!r} holds NUL bytes (the first at offset {offset + raw.index(0)}), "
                                  f"so it is a binary file or UTF-16/UTF-32 text without a byte-order mark, "
                                  f"not {encoding} text")
            held = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                hint = " (try --encoding gbk for GBK/GB2312 files)" if codec == "utf-8" else ""
                raise CharLMError(f"{what} {str(p)!r} is not valid {encoding} text: bad byte at offset "
                                  f"{offset - held + e.start}{hint}") from None
            offset += len(raw)
            if first:
                text, first = text.removeprefix("\ufeff"), False
            text, cut = pending + text, None
            if raw:
                cut = text.rfind("\n") + 1
                text, pending = text[:cut], text[cut:]
            blank = blank and not text.strip()
            if text:
                yield text
            if not raw:
                break
    if blank:
        raise CharLMError(f"{what} {str(p)!r} is empty")


def read_corpus(path: str | Path, encoding: str = "utf-8", what: str = "corpus") -> str:
    """The whole file's text, decoded strictly (see iter_text)."""
    return "".join(iter_text(path, encoding, what))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_poems(text: str, valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split into (train, valid) by poem — one non-empty line is one poem — deterministically.

    A text of a single line (no line structure to split by) falls back to its last
    ``valid_fraction`` of characters as the validation part.
    """
    poems = [line for line in text.split("\n") if line.strip()]
    if len(poems) < 2:
        body = poems[0] if poems else ""
        cut = max(1, int(len(body) * (1 - valid_fraction)))
        return [body[:cut]], [body[cut:]]
    valid_idx = split_indices(len(poems), valid_fraction, seed)
    train = [p for i, p in enumerate(poems) if i not in valid_idx]
    valid = [p for i, p in enumerate(poems) if i in valid_idx]
    return train, valid


def split_indices(n: int, valid_fraction: float, seed: int) -> set[int]:
    """Which of ``n`` poems (n ≥ 2) are held out for validation: the split_poems rule, for callers
    whose lines carry more than a poem (a label, say)."""
    n_valid = max(1, round(n * valid_fraction))
    order = np.random.default_rng(seed).permutation(n)
    return set(order[:n_valid].tolist())




def join_poems(poems: list[str]) -> str:
    """Poems as one stream; each poem is preceded by the newline that marks a poem start."""
    return "".join("\n" + p for p in poems) + "\n"


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Lay a 1-D stream out as (batch_size, n) rows, dropping the ragged tail."""
    n = ids.numel() // batch_size
    return ids[: n * batch_size].view(batch_size, n)


def num_windows(rows: torch.Tensor, seq_len: int) -> int:
    """How many windows of ``seq_len`` inputs fit a (B, n) layout (each needs one extra target)."""
    return max(0, (rows.size(1) - 1) // seq_len)


def get_window(rows: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Window i: x = rows[:, s:s+T], y = rows[:, s+1:s+T+1] — the same characters shifted by one."""
    s = i * seq_len
    x = rows[:, s : s + seq_len].long()  # (B, T)
    y = rows[:, s + 1 : s + seq_len + 1].long()  # (B, T)
    return x, y


@dataclass
class EpochData:
    """The training stream of one epoch, already batchified."""

    rows: torch.Tensor  # (B, n) uint16 or uint32 (the corpus's compact ids); get_window widens a window to int64
    windows: int


def unk_probabilities(counts: list[int], alpha: float, keep: tuple[int, ...]) -> np.ndarray:
    """Per vocabulary id, the chance an occurrence is replaced by <unk>: alpha / (alpha + count).

    Word dropout to the unknown token (Kiperwasser & Goldberg 2016): rare characters are replaced
    most often, so the model learns what "a character I have never seen" costs and what follows
    one. Ids in ``keep`` (<unk> itself, end of poem) are never replaced.
    """
    c = np.asarray(counts, dtype=np.float64)
    p = np.where(c > 0, alpha / (alpha + c), 0.0) if alpha > 0 else np.zeros_like(c)
    p[list(keep)] = 0.0
    return p


def good_turing_alpha(counts: list[int], keep: tuple[int, ...]) -> float:
    """The alpha whose expected <unk> rate equals the Good-Turing estimate of unseen characters.

    Good-Turing: the probability that the next character is one never seen is about N1 / N, the
    share of the text made of characters seen exactly once. The expected replacement rate
    sum_c count_c * alpha / (alpha + count_c) / N grows with alpha, so it is solved by bisection.
    Returns 0 when no character is seen once (e.g. with --min-count 2, where <unk> is already in
    the training text).
    """
    c = np.asarray(counts, dtype=np.float64).copy()
    c[list(keep)] = 0.0
    n = c.sum()
    n1 = float((c == 1).sum())
    if n <= 0 or n1 == 0:
        return 0.0
    target = n1 / n
    seen = c[c > 0]

    def rate(a: float) -> float:
        return float((seen * a / (a + seen)).sum() / n)

    lo, hi = 0.0, 1.0
    while rate(hi) < target:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < target else (lo, mid)
    return (lo + hi) / 2


def epoch_stream(tokens: np.ndarray, offsets: np.ndarray, eos_id: int, epoch: int, seed: int,
                 batch_size: int, seq_len: int, unk_p: np.ndarray | None = None,
                 unk_id: int = 0) -> EpochData:
    """The poems in an order fixed by (seed, epoch), joined and laid out in rows.

    Poem i is tokens[offsets[i]:offsets[i+1]], its end-of-poem id included (encoded.Split); the
    stream starts with one more, so every poem is preceded by the newline that marks a poem start.
    With ``unk_p`` (see unk_probabilities), each occurrence of id i becomes ``unk_id`` with
    probability unk_p[i], drawn afresh per epoch from (seed, epoch).
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(offsets) - 1)
    starts, lengths = offsets[:-1][order], np.diff(offsets)[order]
    stream = np.empty(int(offsets[-1]) + 1, dtype=tokens.dtype)  # ids in the corpus's compact dtype
    stream[0] = eos_id
    at = 1
    for g in range(0, order.size, _GROUP):  # gather a group of poems at a time: index memory stays small
        s, n = starts[g : g + _GROUP], lengths[g : g + _GROUP]
        total = int(n.sum())
        # position k of the group's output reads tokens[s[j] + (k - where poem j begins in the output)]
        index = np.repeat(s - (np.cumsum(n) - n), n) + np.arange(total)
        stream[at : at + total] = tokens[index]
        at += total
    if unk_p is not None and unk_p.any():
        rng = np.random.default_rng([seed, epoch, 1])  # drawn in blocks: the same draws as all at once
        for s in range(0, stream.size, _UNK_BLOCK):
            part = stream[s : s + _UNK_BLOCK]
            part[rng.random(part.size) < unk_p[part]] = unk_id
    rows = batchify(torch.from_numpy(stream), batch_size)
    return EpochData(rows, num_windows(rows, seq_len))


_UNK_BLOCK = 2**22
_GROUP = 2**15  # poems gathered at once
