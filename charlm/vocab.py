"""Character vocabulary: text normalisation, encode/decode, JSON I/O.

No torch here, so its tests are instant. The vocabulary is a list of characters; a character's
id is its position. Special tokens sit first at fixed ids: ``<unk>`` is 0 and newline (end of
poem) is 1; the rest follow in order of decreasing frequency in the training text.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from charlm.errors import CharLMError, describe

VOCAB_FORMAT_VERSION = 1
UNK = "<unk>"
EOS = "\n"
UNK_ID = 0
EOS_ID = 1

# Half-width punctuation that becomes full-width when it sits next to a Han character.
_HALF_TO_FULL = {",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "："}


def is_han(ch: str) -> bool:
    """True for a CJK unified ideograph (basic block, extensions A–G, compatibility block)."""
    if len(ch) != 1:  # e.g. the <unk> token
        return False
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x323AF
        or 0xF900 <= cp <= 0xFAFF
    )


@lru_cache(maxsize=4)
def _opencc(config: str):
    import opencc  # imported lazily: only needed when a script conversion is asked for

    return opencc.OpenCC(config)


def to_simplified(text: str) -> str:
    return _opencc("t2s").convert(text)


def to_traditional(text: str) -> str:
    return _opencc("s2t").convert(text)


_HALF = re.compile("[" + re.escape("".join(_HALF_TO_FULL)) + "]")


def _fullwidth_punct(text: str) -> str:
    """Turn ASCII , . ? ! ; : into their full-width forms where a Han character touches them."""
    def full(m: re.Match) -> str:
        i = m.start()
        if (i > 0 and is_han(text[i - 1])) or (i + 1 < len(text) and is_han(text[i + 1])):
            return _HALF_TO_FULL[m.group()]
        return m.group()

    return _HALF.sub(full, text)


# Characters that are not shown as themselves: C0/C1 controls (ESC starts terminal escape
# sequences), format characters (zero-width and bidirectional controls, which reorder what a
# terminal shows), lone surrogates (undecodable bytes in file names) and the line/paragraph
# separators U+2028/U+2029.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def is_unprintable(ch: str) -> bool:
    return unicodedata.category(ch) in UNPRINTABLE_CATEGORIES


def escape_char(ch: str) -> str:
    """One character as Python writes it in a string literal: \\n, \\t, \\x1b, \\u200e, \\U000e0001."""
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def printable(text: str) -> str:
    """``text`` with every unprintable character (see UNPRINTABLE_CATEGORIES) escaped, so it can be
    shown on a terminal literally and on one line; all other characters are kept."""
    if text.isprintable():  # the common case: nothing to do (isprintable is stricter than our set)
        return text
    return "".join(escape_char(c) if is_unprintable(c) else c for c in text)


def normalize(text: str, script: str = "none") -> str:
    """The one normalisation used at train, eval and generate time.

    NFC (never NFKC: it would turn ，。 into ASCII), CRLF → LF, half-width punctuation beside
    Han characters → full-width, then the script conversion: ``simplified`` maps traditional
    characters to simplified with OpenCC, ``traditional`` the reverse, ``none`` leaves them.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _fullwidth_punct(text)
    if script == "simplified":
        text = to_simplified(text)
    elif script == "traditional":
        text = to_traditional(text)
    return text


def detect_script(text: str, sample: int = 200_000) -> str:
    """Guess whether Chinese text is written in simplified or traditional characters.

    Counts, over a sample, the Han characters that OpenCC would change in each direction; a text
    with few Han characters gets ``none`` (no conversion is ever applied to it).
    """
    head = text[:sample]
    han = [c for c in head if is_han(c)]
    if len(han) < 20:
        return "none"
    s = "".join(han)
    t2s_changes = sum(a != b for a, b in zip(s, to_simplified(s)))
    s2t_changes = sum(a != b for a, b in zip(s, to_traditional(s)))
    if t2s_changes == 0 and s2t_changes == 0:
        return "none"
    return "simplified" if t2s_changes <= s2t_changes else "traditional"


@dataclass
class Vocab:
    """Characters in id order; ``script`` says which Chinese script inputs are mapped to."""

    chars: list[str]
    script: str = "none"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.chars[:2] != [UNK, EOS]:
            raise CharLMError("vocabulary must start with <unk> and newline")
        if len(set(self.chars)) != len(self.chars):
            seen: set[str] = set()
            repeated = next(c for c in self.chars if c in seen or seen.add(c))
            raise CharLMError(f"the vocabulary lists {describe(repeated)} more than once")
        if self.script not in ("none", "simplified", "traditional"):
            raise CharLMError(f"unknown script {describe(self.script)} in vocabulary")
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str, min_count: int = 1, script: str = "none") -> "Vocab":
        """Build from (already normalised) text: characters seen ``min_count`` times or more,
        most frequent first, ties broken by code point so the result is deterministic."""
        counts = Counter(text)
        counts.pop(EOS, None)
        kept = [c for c, n in counts.items() if n >= min_count]
        kept.sort(key=lambda c: (-counts[c], c))
        return cls([UNK, EOS, *kept], script=script)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: str) -> bool:
        return ch in self._index

    def normalize(self, text: str) -> str:
        return normalize(text, self.script)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as given (call ``normalize`` first for user input)."""
        index = self._index
        return [index.get(c, UNK_ID) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)

    def unknown(self, text: str) -> list[str]:
        """Distinct characters of ``text`` that are not in the vocabulary, in order of appearance."""
        seen: dict[str, None] = {}
        for c in text:
            if c not in self._index:
                seen.setdefault(c, None)
        return list(seen)

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": VOCAB_FORMAT_VERSION,
            "normalization": "NFC",
            "script": self.script,
            "chars": self.chars,
        }

    @classmethod
    def from_dict(cls, data: object) -> "Vocab":
        """Strict: ``chars`` is a list of strings, each exactly one character but <unk>; the
        order and uniqueness rules are ``__post_init__``'s."""
        if not isinstance(data, dict):
            raise CharLMError(f"the vocabulary must be an object, not {describe(data)}")
        version = data.get("format_version")
        if version != VOCAB_FORMAT_VERSION:
            raise CharLMError(
                f"vocabulary format version {describe(version)} is not supported "
                f"(this charlm reads version {VOCAB_FORMAT_VERSION})"
            )
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise CharLMError(f"the vocabulary's chars must be a list, not {describe(chars)}")
        for i, c in enumerate(chars):
            if not isinstance(c, str) or (len(c) != 1 and not (i == UNK_ID and c == UNK)):
                raise CharLMError(f"vocabulary entry {i} must be a single character, not {describe(c)}")
        return cls(chars, script=data.get("script", "none"))

    @staticmethod
    def counts_from_dict(data: dict) -> list[int] | None:
        """The training-text frequency of each entry stored beside ``chars`` (call after
        ``from_dict``): absent, or one integer >= 0 per entry."""
        counts = data.get("counts")
        if counts is None:
            return None
        n = len(data["chars"])
        if not isinstance(counts, list) or len(counts) != n:
            raise CharLMError(f"the vocabulary's counts must be a list of {n} integers (one per entry), "
                              f"not {describe(counts)}")
        for i, c in enumerate(counts):
            if not isinstance(c, int) or isinstance(c, bool) or c < 0:
                raise CharLMError(f"vocabulary count {i} must be an integer >= 0, not {describe(c)}")
        return counts

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=0)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CharLMError(f"vocabulary is not valid JSON ({e})") from None
        return cls.from_dict(data)


