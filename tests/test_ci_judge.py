"""Judging ci against their tune: shape, 词林正韵 rhyme and tones, for real ci of the committed tune
table and for broken copies of them, through check_poem and the judge table."""

from __future__ import annotations

import pytest

from charlm import cipai
from charlm.judge import judge, poem_checks
from charlm.poetry import RhymeTable, check_poem, split_lines

TABLE = RhymeTable.default()
# 晏殊《浣溪沙》, as corpora/songci.txt has it (line 436)
YANSHU = "一曲新词酒一杯。去年天气旧亭台。夕阳西下几时回。无可奈何花落去，似曾相识燕归来。小园香径独徘徊。"
# 苏轼《念奴娇·赤壁怀古》: a variant shape (浪淘尽、 three characters where the table's line has five)
SUSHI = ("大江东去，浪淘尽、千古风流人物。故垒西边人道是，三国周郎赤壁。乱石穿空，惊涛拍岸，卷起千堆雪。江山如画，"
         "一时多少豪杰。遥想公瑾当年，小乔初嫁了，雄姿英发。羽扇纶巾谈笑间，强虏灰飞烟灭。故国神游，多情应笑，"
         "我早生华发。人间如梦，一尊还酹江月。")


@pytest.fixture(scope="module")
def huanxisha():
    return cipai.find_form("浣溪沙")


def test_a_real_ci_passes_shape_rhyme_and_tones(huanxisha):
    assert YANSHU in (cipai.table_path().parent / "songci.txt").read_text(encoding="utf-8")
    c = check_poem(YANSHU, huanxisha, TABLE)
    assert (c.form, c.form_valid, c.problems) == ("浣溪沙", True, ())
    assert c.rhyme_valid and c.rhyme_group == "第3部" and c.rhyme_chars == tuple("杯台回来徊")
    assert c.tone_valid and c.tone_agreement == 1.0 and c.pattern == "浣溪沙"


def test_a_line_of_the_wrong_length_breaks_the_shape(huanxisha):
    lines = split_lines(YANSHU)
    lines[1] = lines[1][:-2] + lines[1][-1]
    c = check_poem(huanxisha.format(lines), huanxisha, TABLE)
    assert not c.form_valid and c.problems == ("line 2 has 6 characters where a 浣溪沙 line has 7",)
    assert c.rhyme_valid  # the other checks still run on what there is


def test_a_line_that_does_not_rhyme_breaks_the_rhyme(huanxisha):
    broken = YANSHU.replace("旧亭台", "旧亭东")  # 东: 第1部, not 第3部
    c = check_poem(broken, huanxisha, TABLE)
    assert c.form_valid and c.rhyme_valid is False and c.rhyme_group is None


def test_a_rhyme_on_the_wrong_tone_breaks_the_rhyme(huanxisha):
    # 世 is in 第3部 too, but oblique: 浣溪沙 rhymes on the level tone
    assert cipai.cilin_parts("世", TABLE) & cipai.cilin_parts("杯", TABLE)
    c = check_poem(YANSHU.replace("几时回", "几时世"), huanxisha, TABLE)
    assert c.rhyme_valid is False


def test_a_wrong_tone_breaks_the_tones(huanxisha):
    assert huanxisha.patterns[0].tones[0][1] == "仄"  # the 2nd character of the first line is oblique
    c = check_poem(YANSHU.replace("一曲新词", "一天新词"), huanxisha, TABLE)  # 天: level only
    assert c.form_valid and c.rhyme_valid and c.tone_valid is False and c.tone_agreement < 1.0


def test_punctuation_is_read_as_the_table_learned_it(huanxisha):
    assert check_poem(YANSHU.replace("回。", "回？"), huanxisha, TABLE).form_valid  # ？ is read as 。
    c = check_poem(YANSHU.replace("回。", "回，"), huanxisha, TABLE)
    assert not c.form_valid and "punctuation" in c.problems[0]
    assert not check_poem(YANSHU.replace("。", "."), huanxisha, TABLE).form_valid


def test_a_variant_shape_fails_the_shape_and_is_said_so():
    c = check_poem(SUSHI, cipai.find_form("念奴娇"), TABLE)
    assert not c.form_valid and "line 2 has 3 characters where line 2 of a 念奴娇 has 5" in c.problems


def test_a_tune_with_a_change_of_rhyme_names_each_part():
    form = cipai.find_form("菩萨蛮")
    assert len(form.patterns[0].rhyme_sets) == 4
    text = "平林漠漠烟如织。寒山一带伤心碧。暝色入高楼。有人楼上愁。玉阶空伫立。宿鸟归飞急。何处是归程。长亭更短亭。"
    c = check_poem(text, form, TABLE)
    assert c.form_valid and c.rhyme_valid and c.rhyme_group.count("/") == 3
    # a couplet that rhymes with the wrong set: 愁 replaced by 程 (第11部, not 第12部)
    assert check_poem(text.replace("上愁", "上程"), form, TABLE).rhyme_valid is False


def test_the_judge_table_reports_ci_like_regulated_verse(huanxisha):
    broken = YANSHU.replace("旧亭台", "旧亭东")
    reports, summary = judge([YANSHU, broken], huanxisha, table=TABLE)
    assert [(r.form, r.form_valid, r.rhyme_valid, r.tone_valid) for r in reports] == [
        ("浣溪沙", True, True, True), ("浣溪沙", True, False, True)]  # 东 is level, as the line's end wants
    assert (summary.form_valid, summary.rhyme_valid) == (1.0, 0.5)
    assert poem_checks(YANSHU, huanxisha)["rhyme_group"] == "第3部"


def test_regulated_verse_is_judged_as_before():
    # 登鹳雀楼: the regulated forms keep the 平水韵 group names and their punctuation rule
    c = check_poem("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。", cipai.find_form("五绝"), TABLE)
    assert c.valid and c.rhyme_group == "下平十一尤" and c.pattern == "五绝 仄起 首句不入韵"
    assert not check_poem("白日依山尽，黄河入海流？欲穷千里目，更上一层楼。", cipai.find_form("五绝"), TABLE).form_valid
