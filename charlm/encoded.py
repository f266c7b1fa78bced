"""The encoded corpus: its two splits as compact arrays, memory-mapped from a cache file that is
built once, in a streaming pass, per (corpus bytes, encoding, split, vocabulary).

A split is its poems in corpus order, each followed by the end-of-poem id, and where each starts::

    tokens   3 9 4 1 7 7 2 5 1 8 1        (uint16; uint32 when the vocabulary exceeds 65,535 ids)
    offsets  0       4         9    11    (int64, poems + 1 entries: poem i is tokens[o[i]:o[i+1]])

so an epoch is the end-of-poem id followed by the poems in a shuffled order (data.epoch_stream).

The cache file (``<cache dir>/<key>.encoded``; the folder is CHARLM_CACHE, else
$XDG_CACHE_HOME/charlm, else ~/.cache/charlm) is::

    MAGIC (16 bytes) | header offset, header length (2 × uint64 LE) | sections, 64-byte aligned | header JSON

The header holds the format version, the key's parts (corpus bytes' sha256, encoding, split
settings, vocabulary), the normalised text's sha256 and length, the counts, and each section's
offset, dtype, length and sha256. It is written to a temporary file, fsynced and renamed into
place, so a reader sees a whole file or none, and two runs building the same file race safely
(the last rename wins, and both files are the same). A file that does not match its key, is
truncated or fails a checksum is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from charlm.data import iter_text
from charlm.poetry import LINE_ENDS
from charlm.errors import CharLMError
from charlm.vocab import EOS, EOS_ID, UNK, UNK_ID, Vocab, detect_script, normalize

FORMAT_VERSION = 1
MAGIC = b"charlm-encoded\n\0"
_PREFIX = len(MAGIC) + 16
_ALIGN = 64
_SCRIPT_SAMPLE = 200_000  # characters that detect_script looks at
_BLOCK = 4 * 2**20  # characters handled at a time in the second pass


@dataclass(frozen=True)
class Split:
    tokens: np.ndarray  # (N,) uint16 | uint32, every poem followed by EOS_ID
    offsets: np.ndarray  # (P + 1,) int64

    @property
    def poems(self) -> int:
        return len(self.offsets) - 1


@dataclass
class Encoded:
    vocab: Vocab
    train: Split
    valid: Split
    counts: list[int]  # per id, occurrences in the training text (end-of-poem marks included)
    sha256: str  # of the normalised text
    characters: int  # of the normalised text
    lines: str  # the training poems' distinct lines (clauses), sorted, one a line (checkpoint.render_lines)
    path: Path | None = None  # the cache file, when there is one


# -- where the text comes from ------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A corpus as a file (read in pieces) or as text already in memory."""

    path: Path | None = None
    encoding: str = "utf-8"
    text: str | None = None

    def pieces(self) -> Iterator[str]:
        if self.text is not None:
            yield self.text
        else:
            yield from iter_text(self.path, self.encoding)

    def fingerprint(self) -> str:
        """sha256 of the bytes the corpus is read from."""
        h = hashlib.sha256()
        if self.text is not None:
            h.update(self.text.encode("utf-8", "surrogatepass"))
            return h.hexdigest()
        try:
            with open(self.path, "rb") as f:
                while block := f.read(2**22):
                    h.update(block)
        except OSError:
            next(iter_text(self.path, self.encoding))  # says why, in a sentence
            raise
        return h.hexdigest()


def cache_dir() -> Path:
    if os.environ.get("CHARLM_CACHE"):
        return Path(os.environ["CHARLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charlm"


# -- the cache ------------------------------------------------------------------------------------

def load(source: Source, valid_fraction: float, seed: int, min_count: int, vocab: Vocab | None = None,
         directory: Path | None = None) -> Encoded:
    """The encoded corpus, from its cache file when a valid one exists, else built and cached.

    ``vocab`` (when resuming) fixes the vocabulary; otherwise it is built from the training split."""
    directory = directory or cache_dir()
    key = {"format_version": FORMAT_VERSION, "corpus_bytes_sha256": source.fingerprint(),
           "encoding": source.encoding, "valid_fraction": valid_fraction, "seed": seed, "min_count": min_count}
    names = [_name(key, None)] + ([_name(key, vocab)] if vocab is not None else [])
    for name in names:
        found = _read(directory / name, key)
        if found is not None and (vocab is None or found.vocab.to_dict() == vocab.to_dict()):
            return found
    enc = build(source.pieces(), valid_fraction, seed, min_count, vocab)
    try:
        enc.path = _write(directory / names[-1], key, enc)
    except OSError:
        pass  # no cache (a read-only home, a full disk): this run works from memory, the next builds again
    return enc


def _name(key: dict, vocab: Vocab | None) -> str:
    parts = json.dumps(key, sort_keys=True) + (json.dumps(vocab.to_dict(), ensure_ascii=False) if vocab else "")
    return hashlib.sha256(parts.encode("utf-8")).hexdigest()[:32] + ".encoded"


def _sections(enc: Encoded) -> dict[str, np.ndarray]:
    return {"train.tokens": enc.train.tokens, "train.offsets": enc.train.offsets,
            "valid.tokens": enc.valid.tokens, "valid.offsets": enc.valid.offsets,
            "lines": np.frombuffer(enc.lines.encode("utf-8"), dtype=np.uint8)}


def _write(path: Path, key: dict, enc: Encoded) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * _PREFIX)
            sections = {}
            for name, arr in _sections(enc).items():
                f.write(b"\0" * (-f.tell() % _ALIGN))
                data = np.ascontiguousarray(arr).tobytes()
                sections[name] = {"offset": f.tell(), "dtype": arr.dtype.str, "length": int(arr.size),
                                  "sha256": hashlib.sha256(data).hexdigest()}
                f.write(data)
            header = json.dumps({**key, "vocab": enc.vocab.to_dict(), "counts": enc.counts, "sha256": enc.sha256,
                                 "characters": enc.characters, "sections": sections},
                                ensure_ascii=False).encode("utf-8")
            at = f.tell()
            f.write(header)
            f.seek(0)
            f.write(MAGIC + np.array([at, len(header)], dtype="<u8").tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _read(path: Path, key: dict) -> Encoded | None:
    """The cached corpus if ``path`` is a whole, uncorrupted cache file for ``key``, else None."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(_PREFIX)
            if len(prefix) != _PREFIX or prefix[: len(MAGIC)] != MAGIC:
                return None
            at, length = (int(v) for v in np.frombuffer(prefix[len(MAGIC):], dtype="<u8"))
            if at + length != size:
                return None
            f.seek(at)
            header = json.loads(f.read(length).decode("utf-8"))
        if any(header.get(k) != v for k, v in key.items()):
            return None
        vocab = Vocab.from_dict(header["vocab"])
        arrays = {}
        for name, s in header["sections"].items():
            dtype = np.dtype(s["dtype"])
            if dtype.str not in ("<u2", "<u4", "<i8", "|u1") or s["offset"] + s["length"] * dtype.itemsize > at:
                return None
            arr = np.memmap(path, dtype=dtype, mode="r", offset=s["offset"], shape=(s["length"],)) \
                if s["length"] else np.zeros(0, dtype)
            if hashlib.sha256(arr.tobytes() if arr.size < 2**20 else memoryview(arr)).hexdigest() != s["sha256"]:
                return None
            arrays[name] = arr
        train = Split(arrays["train.tokens"], np.asarray(arrays["train.offsets"]))
        valid = Split(arrays["valid.tokens"], np.asarray(arrays["valid.offsets"]))
        for split in (train, valid):
            o = split.offsets
            if o.size < 1 or o[0] != 0 or o[-1] != split.tokens.size or (np.diff(o) < 1).any():
                return None
        counts = header["counts"]
        if not (isinstance(counts, list) and len(counts) == len(vocab)):
            return None
        lines = bytes(arrays["lines"]).decode("utf-8")
        return Encoded(vocab, train, valid, counts, header["sha256"], int(header["characters"]), lines, path)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, CharLMError, AttributeError):
        return None


# -- building -------------------------------------------------------------------------------------

def build(pieces: Iterable[str], valid_fraction: float, seed: int, min_count: int,
          vocab: Vocab | None = None) -> Encoded:
    """Normalise, split by poem (as data.split_poems), build the vocabulary (as Vocab.from_text on
    the training poems) unless given, and encode, holding one piece of text at a time.

    Pass 1 writes every poem's code points, each poem followed by a newline, to a temporary file;
    pass 2 reads them back in blocks of whole poems to count, encode and collect lines."""
    pieces = iter(pieces)
    with tempfile.TemporaryFile() as scratch:
        script, sha, characters, lengths = _first_pass(pieces, vocab, scratch)
        if len(lengths) < 2:  # one line: no poems to split by, so its tail is the validation part
            body = _read_at(scratch, 0, lengths[0] - 1) if lengths else np.zeros(0, "<u4")
            cut = max(1, int(body.size * (1 - valid_fraction)))
            parts = [body[:cut], body[cut:]]
            scratch.seek(0)
            scratch.truncate()
            for part in parts:
                scratch.write(np.append(part, np.uint32(10)).astype("<u4").tobytes())
            lengths = [p.size + 1 for p in parts]
            is_valid = np.array([False, True])
        else:
            n_valid = max(1, round(len(lengths) * valid_fraction))
            order = np.random.default_rng(seed).permutation(len(lengths))
            is_valid = np.zeros(len(lengths), dtype=bool)
            is_valid[order[:n_valid]] = True
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        if vocab is None:
            vocab = _vocab(_blocks(scratch, starts, is_valid, want_valid=False), min_count, script)
        lookup = _Lookup(vocab)
        dtype = np.uint16 if len(vocab) <= 65535 else np.uint32
        counts = np.zeros(len(vocab), dtype=np.int64)
        splits, line_set = [], set()
        for want_valid in (False, True):
            tokens = np.empty(int(np.asarray(lengths)[is_valid == want_valid].sum()), dtype=dtype)
            at = 0
            for cps in _blocks(scratch, starts, is_valid, want_valid):
                ids = lookup(cps)
                tokens[at : at + ids.size] = ids
                at += ids.size
                if not want_valid:
                    counts += np.bincount(ids, minlength=len(vocab))
                    text = cps.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
                    line_set.update(part.strip() for part in _CLAUSE.split(text))
            lens = np.asarray(lengths, dtype=np.int64)[is_valid == want_valid]
            offsets = np.zeros(lens.size + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            splits.append(Split(tokens, offsets))
    counts[EOS_ID] += 1  # the end-of-poem mark before the first poem
    line_set.discard("")
    lines = "\n".join(sorted(line_set)) + "\n"
    return Encoded(vocab, splits[0], splits[1], counts.tolist(), sha, characters, lines)


_CLAUSE = re.compile(f"[{LINE_ENDS}\n]")  # the clause ends poetry.py owns, and the end of a poem


def _first_pass(pieces: Iterator[str], vocab: Vocab | None, scratch) -> tuple[str, str, int, list[int]]:
    """Normalise each piece, hash it, and append its poems' code points to ``scratch``."""
    first = next(pieces, "")
    head = [first]
    while sum(map(len, head)) < _SCRIPT_SAMPLE and (more := next(pieces, None)) is not None:
        head.append(more)
    script = vocab.script if vocab is not None else detect_script("".join(head))
    sha, characters, lengths = hashlib.sha256(), 0, []
    for piece in _chain(head, pieces):
        text = normalize(piece, script)
        sha.update(text.encode("utf-8", "surrogatepass"))
        characters += len(text)
        for line in text.split("\n"):
            if line.strip():
                scratch.write((line + "\n").encode("utf-32-le", "surrogatepass"))
                lengths.append(len(line) + 1)
    return script, sha.hexdigest(), characters, lengths


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    """The pieces again, joined so that each ends at a newline (normalising a line whole)."""
    carry = ""
    for piece in [*head, *rest]:
        piece = carry + piece
        cut = piece.rfind("\n") + 1
        if cut:
            yield piece[:cut]
        carry = piece[cut:]
    if carry:
        yield carry


def _blocks(scratch, starts: np.ndarray, is_valid: np.ndarray, want_valid: bool) -> Iterator[np.ndarray]:
    """The code points of the chosen split's poems, in corpus order, in blocks of whole poems."""
    n, i = len(starts) - 1, 0
    while i < n:
        j = min(n, max(i + 1, int(np.searchsorted(starts, starts[i] + _BLOCK, side="right")) - 1))
        block = _read_at(scratch, starts[i], starts[j])
        keep = np.repeat(is_valid[i:j] == want_valid, np.diff(starts[i : j + 1]))
        if keep.any():
            yield block[keep]
        i = j


def _read_at(scratch, start: int, end: int) -> np.ndarray:
    scratch.seek(int(start) * 4)
    return np.frombuffer(scratch.read(int(end - start) * 4), dtype="<u4")


def _vocab(blocks: Iterable[np.ndarray], min_count: int, script: str) -> Vocab:
    """Vocab.from_text over the training poems, from counts of code points."""
    seen: dict[int, int] = {}
    for cps in blocks:
        values, counts = np.unique(cps, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            seen[v] = seen.get(v, 0) + c
    seen.pop(ord(EOS), None)
    kept = sorted((v for v, c in seen.items() if c >= min_count), key=lambda v: (-seen[v], v))
    return Vocab([UNK, EOS, *(chr(v) for v in kept)], script=script)


class _Lookup:
    """Code points → vocabulary ids (UNK_ID for characters outside it), by a table indexed by
    code point."""

    def __init__(self, vocab: Vocab) -> None:
        self.table = np.full(0x110000, UNK_ID, dtype=np.int32)  # 4.4 MB: every code point
        for i, c in enumerate(vocab.chars):
            if i != UNK_ID:
                self.table[ord(c)] = i

    def __call__(self, cps: np.ndarray) -> np.ndarray:
        return self.table[cps]


# -- reading a split --------------------------------------------------------------------------------

def subset(split: Split, chars: int, seed: int) -> np.ndarray:
    """Indices, in corpus order, of a fixed, seeded choice of the split's poems whose characters
    (end-of-poem marks included) add up to at most ``chars`` — at least one poem; all of them
    when the split is that small."""
    lengths = np.diff(split.offsets)
    if lengths.sum() <= chars:
        return np.arange(split.poems)
    order = np.random.default_rng([seed, 2]).permutation(split.poems)
    fits = np.cumsum(lengths[order]) <= chars
    fits[0] = True
    return np.sort(order[fits])


def stream(split: Split, poems: np.ndarray | None = None) -> np.ndarray:
    """The chosen poems (all by default) as one stream, a newline first: (N,) int64."""
    if poems is None or poems.size == split.poems:
        return np.concatenate([[EOS_ID], np.asarray(split.tokens, dtype=np.int64)])
    o = split.offsets
    return np.concatenate([[EOS_ID], *(np.asarray(split.tokens[o[i] : o[i + 1]], dtype=np.int64) for i in poems)])
