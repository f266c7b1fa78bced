"""The tune table (词谱) of the Song ci, learned from the corpus: one entry per tune (词牌).

No torch here. ``learn`` takes (tune, text) pairs and, for each tune with at least
``MIN_EXAMPLES`` ci, finds:

- its canonical shape: the most common sequence of line lengths and the marks closing them
  (``？！；`` read as ``。``, ``：`` as ``，``; ``、`` is kept, it marks the pause after a 领字),
  with the other shapes counted as variants;
- its stanzas (上下阕), which the source does not mark: the cut at a ``。`` where the two halves
  end with the longest run of identical lines (浣溪沙 7 7 7 | 7 7 7), one stanza if no two lines
  match. A guess, stated as one; 三叠 tunes come out as two stanzas;
- its rhyme lines: two lines rhyme together when, in at least ``RHYME_THRESHOLD`` of the ci with
  the canonical line lengths, their last characters share a 词林正韵 part (below); the rhyme
  sets are the groups of lines so joined (one set for most tunes, four for 菩萨蛮, which changes
  rhyme every couplet), and a rhyme line's tone is the tone (平 or 仄) its last character has in
  most of those ci, so a tune that rhymes on oblique tones (念奴娇, 满江红) says so, and one that
  mixes them in one part (西江月) says so line by line;
- each position's tone: 平 (or 仄) when at least ``TONE_THRESHOLD`` of the ci whose character
  there has one known tone hold it so, else ``中`` (either).

Tones and 平水韵 groups come from ``charlm.poetry.RhymeTable``; nothing here looks a tone up
itself. The table is written as versioned JSON (``write``) and read back with validation (``read``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterable

from charlm.errors import CharLMError, describe
from charlm.poetry import (CILIN_PARTS, COMMA, EITHER, FORMS, FULL_STOP, LEVEL, LINE_ENDS, OBLIQUE, Form, Pattern,
                           RhymeTable, parse_form)
from charlm.vocab import is_han, to_simplified

FORMAT_VERSION = 1
MIN_EXAMPLES = 20
TONE_THRESHOLD = 0.8
RHYME_THRESHOLD = 0.5
# The source's name for a ci whose tune is lost: not a tune.
UNKNOWN_TUNE = "失调名"
# Marks a ci line can end with in a shape; the others are read as one of these.
SHAPE_MARKS = COMMA + FULL_STOP + "、"
_MARK_AS = {"？": FULL_STOP, "！": FULL_STOP, "；": FULL_STOP, "：": COMMA}

# 词林正韵 (CILIN_PARTS) lives in charlm.poetry beside the 平水韵, since the decoder and the judge
# rhyme by it too; the group → parts index here is what learning reads.
_PART_OF: dict[str, frozenset[int]] = {}
for _part, _groups in CILIN_PARTS.items():
    for _g in _groups:
        _PART_OF[_g] = _PART_OF.get(_g, frozenset()) | {_part}


def cilin_parts(ch: str, table: RhymeTable) -> frozenset[int]:
    """The 词林正韵 parts (1–19) ``ch`` can rhyme in; empty for a character the table lacks."""
    return frozenset(p for g in table.groups(ch) for p in _PART_OF.get(g, ()))


Shape = tuple[tuple[int, ...], str]  # (line lengths, the mark closing each line)


def shape_of(text: str) -> Shape | None:
    """(line lengths, marks) of a ci, or None when it holds anything but Han characters and line
    marks, has an empty line, or does not end with a mark."""
    lengths: list[int] = []
    marks: list[str] = []
    run = 0
    for ch in text:
        if ch in LINE_ENDS:
            if run == 0:
                return None
            lengths.append(run)
            marks.append(_MARK_AS.get(ch, ch))
            run = 0
        elif is_han(ch):
            run += 1
        else:
            return None
    if run or not lengths:
        return None
    return tuple(lengths), "".join(marks)


def _lines(text: str) -> list[str]:
    return [s for s in re.split(f"[{LINE_ENDS}]", text) if s]


def stanzas(shape: Shape) -> tuple[int, ...]:
    """Lines per stanza. Among the cuts after a ``。`` where the two halves end with at least two
    identical lines (length and mark), the one that halves the characters most evenly (then the
    longest shared ending); ``(n,)`` when there is no such cut."""
    lengths, marks = shape
    lines = list(zip(lengths, marks))
    n, total = len(lines), sum(lengths)
    best: tuple[int, int] | None = None  # (imbalance, -shared ending)
    best_cut = None
    for cut in range(2, n - 1):
        if marks[cut - 1] != FULL_STOP:
            continue
        common = 0
        while common < min(cut, n - cut) and lines[cut - 1 - common] == lines[n - 1 - common]:
            common += 1
        if common < 2:
            continue
        key = (abs(2 * sum(lengths[:cut]) - total), -common)
        if best is None or key < best:
            best, best_cut = key, cut
    return (n,) if best_cut is None else (best_cut, n - best_cut)


@dataclass(frozen=True)
class Variant:
    lengths: tuple[int, ...]
    marks: str
    count: int


@dataclass(frozen=True)
class Tune:
    """One tune's learned rules. Line indices count from 0; ``tones[i]`` has one of 平 仄 中 per
    character of line ``i``; ``rhymes`` maps each rhyme line to its rhyme tone (平 or 仄) and
    ``rhyme_sets`` groups the rhyme lines by the rhyme they share."""

    name: str
    examples: int  # ci under this tune name
    lengths: tuple[int, ...]
    marks: str
    count: int  # ci with exactly the canonical shape
    stanzas: tuple[int, ...]
    variants: tuple[Variant, ...]
    rhymes: dict[int, str]
    rhyme_sets: tuple[tuple[int, ...], ...]  # the rhyme lines, grouped by the rhyme they share
    tones: tuple[str, ...]


@dataclass(frozen=True)
class CipaiTable:
    tunes: dict[str, Tune]
    ci: int  # ci with a known tune
    covered: int  # of those, the ci whose tune is in ``tunes``
    min_examples: int = MIN_EXAMPLES
    tone_threshold: float = TONE_THRESHOLD
    rhyme_threshold: float = RHYME_THRESHOLD


def _majority_tone(level: int, oblique: int, threshold: float) -> str:
    known = level + oblique
    if known and level / known >= threshold:
        return LEVEL
    if known and oblique / known >= threshold:
        return OBLIQUE
    return EITHER


def _learn_tune(name: str, texts: list[str], table: RhymeTable, tone_threshold: float,
                rhyme_threshold: float, max_variants: int) -> Tune | None:
    shapes = Counter(s for s in map(shape_of, texts) if s is not None)
    if not shapes:
        return None
    (lengths, marks), count = min(shapes.items(), key=lambda kv: (-kv[1], kv[0]))
    variants = sorted(((s, c) for s, c in shapes.items() if s != (lengths, marks)), key=lambda kv: (-kv[1], kv[0]))
    same = [_lines(t) for t in texts if (s := shape_of(t)) is not None and s[0] == lengths]
    n = len(lengths)
    level = [[0] * k for k in lengths]
    oblique = [[0] * k for k in lengths]
    shared = [[0] * n for _ in range(n)]  # shared[i][k]: ci whose lines i and k end in one part
    end_level, end_oblique = [0] * n, [0] * n
    for lines in same:
        for i, line in enumerate(lines):
            for j, ch in enumerate(line):
                tones = table.tones(ch)
                level[i][j] += tones == {LEVEL}
                oblique[i][j] += tones == {OBLIQUE}
            end_level[i] += table.tones(line[-1]) == {LEVEL}
            end_oblique[i] += table.tones(line[-1]) == {OBLIQUE}
        ends = [cilin_parts(line[-1], table) for line in lines]
        for i in range(n):
            for k in range(i + 1, n):
                if ends[i] & ends[k]:
                    shared[i][k] += 1
                    shared[k][i] += 1
    # Lines i and k rhyme together when they end in one part in at least rhyme_threshold of the ci;
    # the rhyme sets are the groups of lines joined that way (菩萨蛮 changes rhyme every couplet).
    linked = [[k for k in range(n) if k != i and same and shared[i][k] / len(same) >= rhyme_threshold]
              for i in range(n)]
    rhyme_sets: list[tuple[int, ...]] = []
    placed: set[int] = set()
    for i in range(n):
        if i in placed or not linked[i]:
            continue
        group, todo = {i}, [i]
        while todo:
            for k in linked[todo.pop()]:
                if k not in group:
                    group.add(k)
                    todo.append(k)
        placed |= group
        rhyme_sets.append(tuple(sorted(group)))
    rhymes = {i: LEVEL if end_level[i] >= end_oblique[i] else OBLIQUE for i in sorted(placed)}
    tones = tuple("".join(_majority_tone(lv, ob, tone_threshold) for lv, ob in zip(lv_line, ob_line))
                  for lv_line, ob_line in zip(level, oblique))
    return Tune(name=name, examples=len(texts), lengths=lengths, marks=marks, count=count,
                stanzas=stanzas((lengths, marks)),
                variants=tuple(Variant(s[0], s[1], c) for s, c in variants[:max_variants]),
                rhymes=rhymes, rhyme_sets=tuple(rhyme_sets), tones=tones)


def learn(ci: Iterable[tuple[str, str]], table: RhymeTable | None = None, min_examples: int = MIN_EXAMPLES,
          tone_threshold: float = TONE_THRESHOLD, rhyme_threshold: float = RHYME_THRESHOLD,
          max_variants: int = 10) -> CipaiTable:
    """The tune table of (tune name, ci text) pairs: tunes with at least ``min_examples`` ci, most
    examples first; ``max_variants`` other shapes are kept per tune, most common first."""
    table = table or RhymeTable.default()
    by_tune: dict[str, list[str]] = {}
    for name, text in ci:
        if name and name != UNKNOWN_TUNE:
            by_tune.setdefault(name, []).append(text)
    tunes = {}
    for name, texts in sorted(by_tune.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        if len(texts) >= min_examples:
            tune = _learn_tune(name, texts, table, tone_threshold, rhyme_threshold, max_variants)
            if tune is not None:
                tunes[name] = tune
    return CipaiTable(tunes=tunes, ci=sum(map(len, by_tune.values())),
                      covered=sum(t.examples for t in tunes.values()), min_examples=min_examples,
                      tone_threshold=tone_threshold, rhyme_threshold=rhyme_threshold)


# -- the JSON format --------------------------------------------------------------------------


def _tune_to_dict(t: Tune) -> dict:
    return {
        "examples": t.examples,
        "lengths": list(t.lengths),
        "marks": t.marks,
        "count": t.count,
        "stanzas": list(t.stanzas),
        "rhymes": {str(i): tone for i, tone in sorted(t.rhymes.items())},
        "rhyme_sets": [list(g) for g in t.rhyme_sets],
        "tones": list(t.tones),
        "variants": [{"lengths": list(v.lengths), "marks": v.marks, "count": v.count} for v in t.variants],
    }


def write(table: CipaiTable, path: str | Path) -> None:
    """Write ``table`` as ``{"format_version": 1, ...}`` UTF-8 JSON, one tune a line."""
    head = {
        "format_version": FORMAT_VERSION,
        "min_examples": table.min_examples,
        "tone_threshold": table.tone_threshold,
        "rhyme_threshold": table.rhyme_threshold,
        "ci": table.ci,
        "covered": table.covered,
    }
    body = ",\n".join(f"  {json.dumps(name, ensure_ascii=False)}: {json.dumps(_tune_to_dict(t), ensure_ascii=False)}"
                      for name, t in table.tunes.items())
    text = json.dumps(head, ensure_ascii=False)[:-1] + ', "tunes": {\n' + body + "\n}}\n"
    Path(path).write_text(text, encoding="utf-8", newline="\n")


def _bad(path: str | Path, what: str) -> CharLMError:
    return CharLMError(f"the tune table {path} is not valid: {what}")


def _count(value: object, path: str | Path, what: str, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise _bad(path, f"{what} is {describe(value)}, not a whole number of at least {low}")
    return value


def _fraction(value: object, path: str | Path, what: str) -> float:
    if type(value) not in (int, float) or not 0 < value <= 1:
        raise _bad(path, f"{what} is {describe(value)}, not a number in (0, 1]")
    return float(value)


def _marks(value: object, n: int, path: str | Path, what: str) -> str:
    if not isinstance(value, str) or len(value) != n or any(m not in SHAPE_MARKS for m in value):
        raise _bad(path, f"{what} is {describe(value)}, not {n} of the marks {SHAPE_MARKS}")
    return value


def _lengths(value: object, path: str | Path, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise _bad(path, f"{what} is {describe(value)}, not a list of line lengths")
    return tuple(_count(v, path, what, 1) for v in value)


def _tune_from_dict(name: str, d: object, path: str | Path) -> Tune:
    if not isinstance(d, dict):
        raise _bad(path, f"tune {describe(name)} is {describe(d)}, not an object")
    w = f"tune {describe(name)}"
    try:
        lengths = _lengths(d["lengths"], path, f"{w}'s lengths")
        n = len(lengths)
        marks = _marks(d["marks"], n, path, f"{w}'s marks")
        st = _lengths(d["stanzas"], path, f"{w}'s stanzas")
        if sum(st) != n:
            raise _bad(path, f"{w}'s stanzas do not add up to its {n} lines")
        tones = d["tones"]
        if (not isinstance(tones, list) or len(tones) != n
                or any(not isinstance(s, str) or len(s) != k or set(s) - {LEVEL, OBLIQUE, EITHER}
                       for s, k in zip(tones, lengths))):
            raise _bad(path, f"{w}'s tones do not give 平, 仄 or 中 for each character of its lines")
        raw_rhymes = d["rhymes"]
        if not isinstance(raw_rhymes, dict):
            raise _bad(path, f"{w}'s rhymes is {describe(raw_rhymes)}, not an object")
        rhymes = {}
        for k, tone in raw_rhymes.items():
            if not (k.isascii() and k.isdigit() and int(k) < n) or tone not in (LEVEL, OBLIQUE):
                raise _bad(path, f"{w} has a rhyme {describe(k)}: {describe(tone)}, not a line index and 平 or 仄")
            rhymes[int(k)] = tone
        raw_sets = d["rhyme_sets"]
        if (not isinstance(raw_sets, list) or not all(isinstance(g, list) and len(g) >= 2 for g in raw_sets)
                or sorted(i for g in raw_sets for i in g) != sorted(rhymes)):
            raise _bad(path, f"{w}'s rhyme_sets do not group its rhyme lines, each once, two or more to a set")
        rhyme_sets = tuple(tuple(g) for g in raw_sets)
        raw_variants = d["variants"]
        if not isinstance(raw_variants, list):
            raise _bad(path, f"{w}'s variants is {describe(raw_variants)}, not a list")
        variants = []
        for v in raw_variants:
            if not isinstance(v, dict):
                raise _bad(path, f"{w} has a variant that is {describe(v)}, not an object")
            vl = _lengths(v["lengths"], path, f"a variant of {w}")
            variants.append(Variant(vl, _marks(v["marks"], len(vl), path, f"a variant of {w}"),
                                    _count(v["count"], path, f"a variant count of {w}", 1)))
        return Tune(name=name, examples=_count(d["examples"], path, f"{w}'s examples", 1), lengths=lengths,
                    marks=marks, count=_count(d["count"], path, f"{w}'s count", 1), stanzas=st,
                    variants=tuple(variants), rhymes=rhymes, rhyme_sets=rhyme_sets,
                    tones=tuple(tones))
    except KeyError as e:
        raise _bad(path, f"{w} has no {e} field") from None


def read(path: str | Path) -> CipaiTable:
    """The tune table written by ``write``; a malformed file raises one ``CharLMError``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CharLMError(f"the tune table {path} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise _bad(path, f"it holds {describe(data)}, not an object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise _bad(path, f"its format_version is {describe(version)}; this charlm reads {FORMAT_VERSION}")
    try:
        tunes_raw = data["tunes"]
        if not isinstance(tunes_raw, dict):
            raise _bad(path, f"its tunes are {describe(tunes_raw)}, not an object")
        tunes = {name: _tune_from_dict(name, d, path) for name, d in tunes_raw.items()}
        return CipaiTable(tunes=tunes, ci=_count(data["ci"], path, "ci"), covered=_count(data["covered"], path, "covered"),
                          min_examples=_count(data["min_examples"], path, "min_examples", 1),
                          tone_threshold=_fraction(data["tone_threshold"], path, "tone_threshold"),
                          rhyme_threshold=_fraction(data["rhyme_threshold"], path, "rhyme_threshold"))
    except KeyError as e:
        raise _bad(path, f"it has no {e} field") from None


# -- tunes as forms ---------------------------------------------------------------------------

def tune_form(tune: Tune) -> Form:
    """``tune`` as a poem form: its canonical line lengths and marks, and one pattern — its
    tones, its rhyme sets and the tone each rhyme line rhymes on — rhyming by 词林正韵 parts.
    Its punctuation is judged as the table was learned (？！； read as 。, ： as ，), and a ``、``
    (the pause after a 领字, an editor's mark) as ``，``, which the source writes there as often."""
    n = len(tune.lengths)
    pattern = Pattern(name=tune.name, lines=tune.tones, rhyme_lines=tuple(sorted(tune.rhymes)), tones=tune.tones,
                      rhyme_sets=tune.rhyme_sets, rhyme_tones=tuple(tune.rhymes.get(i, "") for i in range(n)))
    return Form(tune.name, tune.lengths, tune.marks, (pattern,), rhyme_scheme="词林正韵", examples=tune.examples,
                genre="ci", marks_read=str.maketrans({**_MARK_AS, "、": COMMA}))


def table_path() -> Path:
    """The tune table charlm uses: charlm/cipai.json inside an installed package (setup.py copies
    it there when it builds the wheel), else corpora/cipai.json of the source checkout."""
    package = Path(__file__).resolve().parent  # what charlm.checkpoint calls PACKAGE; that module imports torch
    installed = package / "cipai.json"
    return installed if installed.is_file() else package.parent / "corpora" / "cipai.json"


@cache
def _default_table(path: Path) -> CipaiTable:
    return read(path)


def default_table() -> CipaiTable:
    """The tune table at ``table_path()``, read (and validated) once."""
    return _default_table(table_path())


def all_forms(table: CipaiTable | None = None) -> list[Form]:
    """Every form charlm writes: the four regulated ones, then each tune of the table (most
    examples first)."""
    table = table or default_table()
    return [*FORMS.values(), *(tune_form(t) for t in table.tunes.values())]


def find_form(name: str, table: CipaiTable | None = None) -> Form:
    """The form called ``name``: a regulated form as ``poetry.parse_form`` reads it, else a tune of
    the table by its Chinese name (traditional spellings are read as simplified)."""
    try:
        return parse_form(name)
    except CharLMError:
        pass
    key = to_simplified(name.strip())
    table = table or default_table()
    if key in table.tunes:
        return tune_form(table.tunes[key])
    raise CharLMError(f"unknown poem form {name!r}: neither 五绝/七绝/五律/七律 nor a tune of the tune table; "
                      "`charlm generate --list-forms` lists them")
