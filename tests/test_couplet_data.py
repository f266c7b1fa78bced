"""Couplet data: the pairs the corpora builder extracts from regulated verse, the pairs file, and
the split by poem."""

import json

import pytest

from charlm.corpora import as_regulated, build, couplets, main, render_couplets
from charlm.couplet import flatten, read_pairs, split_pairs
from charlm.errors import CharLMError
from charlm.poetry import couplet_positions, tones_opposed, RhymeTable

# 杜甫《春望》 and 王维《山居秋暝》 (五律), 杜甫《登高》 (七律), a quatrain and an irregular poem.
CHUNWANG = "国破山河在，城春草木深。感时花溅泪，恨别鸟惊心。烽火连三月，家书抵万金。白头搔更短，浑欲不胜簪。"
SHANJU = "空山新雨后，天气晚来秋。明月松间照，清泉石上流。竹喧归浣女，莲动下渔舟。随意春芳歇，王孙自可留。"
DENGGAO = ("风急天高猿啸哀，渚清沙白鸟飞回。无边落木萧萧下，不尽长江滚滚来。万里悲秋常作客，百年多病独登台。"
           "艰难苦恨繁霜鬓，潦倒新停浊酒杯。")
QUATRAIN = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


def test_regulated_verse_is_recognised():
    assert as_regulated(CHUNWANG)[2:4] == ["感时花溅泪", "恨别鸟惊心"]
    assert as_regulated(DENGGAO)[4] == "万里悲秋常作客"
    assert as_regulated(QUATRAIN) is None  # four lines
    assert as_regulated(CHUNWANG.replace("城春草木深", "城春草木深深")) is None  # uneven
    assert as_regulated(CHUNWANG.replace("国破", "国□")) is None  # a missing character
    assert as_regulated(CHUNWANG.replace("感时", "感、时")) is None  # punctuation inside a line


def test_pairs_are_lines_3_4_and_5_6_once_each():
    repeat = SHANJU.replace("空山新雨后", "空山旧雨后")  # another poem sharing both middle couplets
    shared_one = CHUNWANG.replace("烽火连三月", "烽烟连三月")  # shares only lines 3-4 with 春望
    got = couplets([CHUNWANG, QUATRAIN, SHANJU, repeat, shared_one, DENGGAO])
    assert got == [
        [("感时花溅泪", "恨别鸟惊心"), ("烽火连三月", "家书抵万金")],
        [("明月松间照", "清泉石上流"), ("竹喧归浣女", "莲动下渔舟")],
        [("烽烟连三月", "家书抵万金")],
        [("无边落木萧萧下", "不尽长江滚滚来"), ("万里悲秋常作客", "百年多病独登台")],
    ]
    text = render_couplets(got[:2])
    assert text == "感时花溅泪\t恨别鸟惊心\n烽火连三月\t家书抵万金\n\n明月松间照\t清泉石上流\n竹喧归浣女\t莲动下渔舟\n\n"
    assert read_pairs(text) == got[:2]


def test_the_builder_writes_couplets_tsv_from_tang_and_song(tmp_path):
    pkg = tmp_path / "package" / "dist"
    (pkg / "quantangshi").mkdir(parents=True)
    (pkg / "mengxue").mkdir(parents=True)
    tang = [{"paragraphs": ["國破山河在，城春草木深。", "感時花濺淚，恨別鳥驚心。", "烽火連三月，家書抵萬金。",
                            "白頭搔更短，渾欲不勝簪。"]}, {"paragraphs": [QUATRAIN]}]
    song = [{"paragraphs": [SHANJU]}, {"paragraphs": [CHUNWANG]}]  # 春望 again: kept once
    (pkg / "quantangshi" / "poet.tang.0.json").write_text(json.dumps(tang, ensure_ascii=False), encoding="utf-8")
    (pkg / "quantangshi" / "poet.song.0.json").write_text(json.dumps(song, ensure_ascii=False), encoding="utf-8")
    t300 = {"content": [{"content": [{"paragraphs": [QUATRAIN]}]}]}
    (pkg / "mengxue" / "tangshisanbaishou.json").write_text(json.dumps(t300, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out"
    main([str(tmp_path), "--out", str(out), "--couplets"])
    poems = read_pairs((out / "couplets.tsv").read_text(encoding="utf-8"))
    assert poems == [[("感时花溅泪", "恨别鸟惊心"), ("烽火连三月", "家书抵万金")],
                     [("明月松间照", "清泉石上流"), ("竹喧归浣女", "莲动下渔舟")]]
    assert not (out / "song.txt").exists() and not (out / "all.txt").exists()  # those need --all
    assert build(tmp_path)["tang.txt"][0] == CHUNWANG


def test_split_keeps_a_poems_pairs_together():
    poems = [[(f"甲{i:03d}", f"乙{i:03d}"), (f"丙{i:03d}", f"丁{i:03d}")] for i in range(200)]
    train, valid = split_pairs(poems, 0.1, seed=3)
    assert len(valid) == 20 and len(train) == 180 and sorted(train + valid) == sorted(poems)
    sides = {}
    for side, pairs in (("train", flatten(train)), ("valid", flatten(valid))):
        for a, _ in pairs:
            sides.setdefault(a[1:], set()).add(side)
    assert all(len(s) == 1 for s in sides.values()) and len(sides) == 200
    assert split_pairs(poems, 0.1, seed=3) == (train, valid)  # deterministic
    assert split_pairs(poems, 0.1, seed=4)[1] != valid


@pytest.mark.parametrize("text, message", [
    ("明月松间照\n", "not a pair written 上联<TAB>下联"),
    ("明月松间照\t清泉石上\n", "different lengths"),
    ("明月\t清泉\t白云\n", "not a pair"),
    ("\t清泉\n", "not a pair"),
    ("\n\n  \n", "holds no pairs"),
    ("甲" * 40 + "\t" + "乙" * 40 + "\n", "more than the 32"),
])
def test_a_bad_pairs_file_is_one_sentence(text, message):
    with pytest.raises(CharLMError, match=message):
        read_pairs(text)


def test_tone_opposition_of_real_couplets():
    table = RhymeTable.default()
    assert couplet_positions(5) == [1, 3, 4] and couplet_positions(7) == [1, 3, 5, 6]
    assert tones_opposed("明月松间照", "清泉石上流", table) is True
    assert tones_opposed("无边落木萧萧下", "不尽长江滚滚来", table) is True
    assert tones_opposed("明月松间照", "明月松间照", table) is False
    assert tones_opposed("明月松间照", "清泉石上", table) is False
