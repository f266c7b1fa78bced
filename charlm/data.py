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

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlm.errors import CharLMError


def read_corpus(path: str | Path, encoding: str = "utf-8") -> str:
    """The file's text, decoded strictly. Errors are sentences a user can act on."""
    p = Path(path)
    if not p.exists():
        raise CharLMError(f"corpus file {str(p)!r} does not exist")
    if p.is_dir():
        raise CharLMError(f"corpus {str(p)!r} is a directory, not a text file")
    raw = p.read_bytes()
    try:
        text = raw.decode(encoding)
    except LookupError:
        raise CharLMError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as e:
        hint = " (try --encoding gbk for GBK/GB2312 files)" if encoding.lower().replace("-", "") == "utf8" else ""
        raise CharLMError(
            f"corpus {str(p)!r} is not valid {encoding} text: bad byte at offset {e.start}{hint}"
        ) from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise CharLMError(f"corpus {str(p)!r} is empty")
    return text


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
    n_valid = max(1, round(len(poems) * valid_fraction))
    order = np.random.default_rng(seed).permutation(len(poems))
    valid_idx = set(order[:n_valid].tolist())
    train = [p for i, p in enumerate(poems) if i not in valid_idx]
    valid = [p for i, p in enumerate(poems) if i in valid_idx]
    return train, valid


LINE_BREAKS = "，。？！；：、\n"


def poem_lines(poems: list[str]) -> set[str]:
    """The distinct lines (clauses between punctuation marks) of some poems."""
    import re

    split = re.compile(f"[{LINE_BREAKS}]")
    return {part.strip() for p in poems for part in split.split(p) if part.strip()}


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
    x = rows[:, s : s + seq_len]  # (B, T)
    y = rows[:, s + 1 : s + seq_len + 1]  # (B, T)
    return x, y


@dataclass
class EpochData:
    """The training stream of one epoch, already batchified."""

    rows: torch.Tensor  # (B, n) int64
    windows: int


def epoch_stream(train_ids: list[list[int]], eos_id: int, epoch: int, seed: int,
                 batch_size: int, seq_len: int) -> EpochData:
    """The poems in an order fixed by (seed, epoch), joined and laid out in rows."""
    order = np.random.default_rng([seed, epoch]).permutation(len(train_ids))
    parts = []
    for i in order:
        parts.append(eos_id)
        parts.extend(train_ids[i])
    parts.append(eos_id)
    stream = torch.tensor(parts, dtype=torch.long)
    rows = batchify(stream, batch_size)
    return EpochData(rows, num_windows(rows, seq_len))
