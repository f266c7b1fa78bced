"""The tune table: learning on a tiny synthetic corpus, the JSON format, and the committed table."""

import json
from pathlib import Path

import pytest

from charlm import cipai
from charlm.errors import CharLMError
from charlm.poetry import RhymeTable

COMMITTED = Path(__file__).resolve().parent.parent / "corpora" / "cipai.json"


def _corpus() -> list[tuple[str, str]]:
    """甲调: 20 ci of 5，5。5，5。 whose lines 2 and 4 end in 天/年 (词林正韵 part 7, level) while
    lines 1 and 3 end in 月 (part 18) and 树 (part 4); 3 ci with a fifth line and 2 with a longer
    first line as variants. 乙调 has 19 ci, one short of the minimum; 失调名 is not a tune."""
    ci = []
    for i in range(20):
        first = "春" if i < 17 else "水"  # 17/20 level: above the 0.8 threshold
        second = "山" if i < 15 else "草"  # 15/20 level: below it, so either
        ci.append(("甲调", f"{first}{second}花草月，江流水年天。春水花草树，江流山落年。"))
    for _ in range(3):
        ci.append(("甲调", "春山花草月，江流水年天。春水花草树，江流山落年。江流山落烟。"))
    for _ in range(2):
        ci.append(("甲调", "春山花草落花月，江流水年天。春水花草树，江流山落年。"))
    ci += [("乙调", "春山花草月，江流水年天。")] * 19
    ci += [(cipai.UNKNOWN_TUNE, "春山花草月，江流水年天。")] * 25
    return ci


@pytest.fixture(scope="module")
def learned() -> cipai.CipaiTable:
    return cipai.learn(_corpus(), RhymeTable.default())


def test_learn_keeps_tunes_with_enough_examples(learned):
    assert list(learned.tunes) == ["甲调"]
    assert (learned.ci, learned.covered) == (44, 25)


def test_learn_takes_the_most_common_shape_and_counts_variants(learned):
    tune = learned.tunes["甲调"]
    assert (tune.lengths, tune.marks, tune.count, tune.examples) == ((5, 5, 5, 5), "，。，。", 20, 25)
    assert [(v.lengths, v.marks, v.count) for v in tune.variants] == [
        ((5, 5, 5, 5, 5), "，。，。。", 3),
        ((7, 5, 5, 5), "，。，。", 2),
    ]
    assert tune.stanzas == (2, 2)


def test_learn_finds_the_rhyme_lines_and_their_tone(learned):
    tune = learned.tunes["甲调"]
    assert tune.rhymes == {1: "平", 3: "平"}
    assert tune.rhyme_sets == ((1, 3),)


def test_learn_marks_tones_with_the_threshold(learned):
    tones = learned.tunes["甲调"].tones
    assert tones[0] == "平中平仄仄"  # 17/20 level → 平; 15/20 → 中
    assert tones[1] == "平平仄平平"
    lowered = cipai.learn(_corpus(), RhymeTable.default(), tone_threshold=0.7).tunes["甲调"].tones
    assert lowered[0][1] == "平"


def test_oblique_rhymes_are_learned():
    ci = [("丙调", "春山花草月，江流水年雪。春水花草树，江流山落月。")] * 20
    tune = cipai.learn(ci, RhymeTable.default()).tunes["丙调"]
    assert tune.rhymes == {0: "仄", 1: "仄", 3: "仄"}  # 月 雪 share part 18; 树 (part 4) does not


def test_stanzas_cut_where_the_halves_end_alike():
    assert cipai.stanzas(((7,) * 6, "。。。，。。")) == (3, 3)
    assert cipai.stanzas(((7, 7, 5, 5, 5, 5, 5, 5), "。" * 8)) == (4, 4)
    assert cipai.stanzas(((4, 5, 7, 6), "。。。。")) == (4,)


def test_shape_of_refuses_what_is_not_verse():
    assert cipai.shape_of("春山花草月，江流水年天？") == ((5, 5), "，。")
    assert cipai.shape_of("春山花草月，江流水年天") is None
    assert cipai.shape_of("春山□草月。") is None
    assert cipai.shape_of("，春山。") is None


def test_every_group_of_the_table_is_in_a_part():
    table = RhymeTable.default()
    named = {g for groups in cipai.CILIN_PARTS.values() for g in groups}
    assert named == set(table.group_names())
    assert cipai.cilin_parts("来", table) == {3, 5}  # 十灰 is split between parts 3 and 5


def test_round_trip(tmp_path, learned):
    path = tmp_path / "cipai.json"
    cipai.write(learned, path)
    assert json.loads(path.read_text(encoding="utf-8"))["format_version"] == 1
    assert cipai.read(path) == learned


def _tampered(tmp_path, learned, change) -> Path:
    path = tmp_path / "cipai.json"
    cipai.write(learned, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _tune(data):
    return data["tunes"]["甲调"]


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(format_version=2), "format_version"),
    (lambda d: d.pop("tunes"), "'tunes'"),
    (lambda d: d.update(tunes=[]), "not an object"),
    (lambda d: _tune(d).update(lengths=[5, 5, 0, 5]), "lengths"),
    (lambda d: _tune(d).update(marks="，。，"), "marks"),
    (lambda d: _tune(d).update(stanzas=[2, 3]), "stanzas"),
    (lambda d: _tune(d).update(tones=["平平平平平"] * 3), "tones"),
    (lambda d: _tune(d)["tones"].__setitem__(0, "平平平平X"), "tones"),
    (lambda d: _tune(d).update(rhymes={"9": "平"}), "rhyme"),
    (lambda d: _tune(d).update(rhymes={"1": "上", "3": "平"}), "rhyme"),
    (lambda d: _tune(d).update(rhyme_sets=[[1]]), "rhyme_sets"),
    (lambda d: _tune(d)["variants"].append("x"), "variant"),
    (lambda d: _tune(d).pop("count"), "'count'"),
    (lambda d: d.update(tone_threshold=2), "tone_threshold"),
])
def test_malformed_tables_are_refused_in_one_sentence(tmp_path, learned, change, words):
    path = _tampered(tmp_path, learned, change)
    with pytest.raises(CharLMError) as err:
        cipai.read(path)
    message = str(err.value)
    assert words in message and "\n" not in message and str(path) in message


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "\ufffe"])
def test_unreadable_tables_are_refused(tmp_path, text):
    path = tmp_path / "cipai.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CharLMError):
        cipai.read(path)


def test_committed_table_has_the_common_tunes():
    table = cipai.read(COMMITTED)
    assert len(table.tunes) >= 100 and table.min_examples == 20
    huanxisha = table.tunes["浣溪沙"]
    assert (huanxisha.lengths, huanxisha.stanzas) == ((7,) * 6, (3, 3))
    assert huanxisha.rhymes == {0: "平", 1: "平", 2: "平", 4: "平", 5: "平"}
    shuidiao = table.tunes["水调歌头"]
    assert (len(shuidiao.lengths), shuidiao.stanzas) == (19, (9, 10))
    assert sorted(shuidiao.rhymes) == [1, 3, 6, 8, 11, 13, 16, 18] and set(shuidiao.rhymes.values()) == {"平"}
    niannujiao = table.tunes["念奴娇"]
    assert (len(niannujiao.lengths), sum(niannujiao.lengths), niannujiao.stanzas) == (20, 100, (10, 10))
    assert len(niannujiao.rhymes) == 8 and set(niannujiao.rhymes.values()) == {"仄"}  # 仄韵
