"""charlm compose with a tune: lines of their own lengths and marks, rhymes by 词林正韵 part on each
line's tone and rhyme set (a tune may change rhyme), driven directly and through the command."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from charlm import checkpoint, cipai
from charlm.cli import app
from charlm.compose import Composer, ComposeSpec
from charlm.errors import CharLMError
from charlm.poetry import LEVEL, OBLIQUE, RhymeTable, check_poem, rhyme_keys, split_lines
from ci_fixtures import ci_checkpoint, write_table  # noqa: F401  (fixtures)

runner = CliRunner()
TABLE = RhymeTable.default()


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """charlm reads the synthetic tune table (ci_fixtures.TUNES) instead of the packaged one."""
    path = write_table(tmp_path / "cipai.json")
    monkeypatch.setattr(cipai, "table_path", lambda: path)
    return path


def _ends_on(tone: str, part_of=None) -> str:
    """A common character that rhymes on ``tone`` in the 词林正韵 (sharing a part with ``part_of``)."""
    for ch in "雨语去处树路里尽月雪时来知归风人天春山花家秋情愁声":
        keys = rhyme_keys(ch, tone, TABLE, "词林正韵")
        if keys and (part_of is None or keys & rhyme_keys(part_of, tone, TABLE, "词林正韵")):
            if ch != part_of:
                return ch
    raise AssertionError("no such character")


def test_picking_the_first_candidate_writes_a_valid_ci(ci_checkpoint, synthetic):
    ck = checkpoint.load(ci_checkpoint)
    c = Composer(ck, ComposeSpec(form="平韵令", tones=True), seed=3)
    form = cipai.find_form("平韵令")
    while not c.done:
        cands = c.candidates(2)
        assert cands, c.line_index
        assert all(len(x.text) == form.lengths[c.line_index] and not x.problems for x in cands)
        assert all(x.rhymes is (True if c.line_index in (1, 3) else None) for x in cands)
        c.accept(cands[0].text)
    assert tuple(map(len, split_lines(c.poem))) == form.lengths
    assert c.poem.endswith("。") and c.poem.count("，") + c.poem.count("、") + c.poem.count("。") == 4
    assert check_poem(c.poem, form).valid, c.checks()


def test_own_lines_are_held_to_their_own_length_tone_and_rhyme_set(ci_checkpoint, synthetic):
    """换韵令 rhymes lines 1–2 on the oblique tone and lines 3–4 on the level tone, in another set."""
    ck = checkpoint.load(ci_checkpoint)
    c = Composer(ck, ComposeSpec(form="换韵令"), seed=0)
    z1 = _ends_on(OBLIQUE)
    assert c.rules() == ["5 characters", "rhyming in a 仄 part of the 词林正韵"]
    level = _ends_on(LEVEL)
    assert any("no oblique-tone (仄) rhyme in the 词林正韵" in p for p in c.check("春风入画" + level))
    c.accept("春风入画" + z1)
    z2 = _ends_on(OBLIQUE, part_of=z1)
    assert c.rules() == ["5 characters", f"rhyming with {z1}"]
    assert c.check("明月照高" + z2) == [] and c.rhymes("明月照高" + z2) is True
    c.accept("明月照高" + z2)
    # the third line opens a new rhyme set, on the level tone: the earlier ends do not bind it
    assert c.rules() == ["5 characters", "rhyming in a 平 part of the 词林正韵"]
    assert c.rhymes("江南春水" + level) is True
    c.accept("江南春水" + level)
    other = next(ch for ch in "东江支鱼佳真元萧歌麻庚尤侵覃"
                 if rhyme_keys(ch, LEVEL, TABLE, "词林正韵") and not rhyme_keys(ch, LEVEL, TABLE, "词林正韵")
                 & rhyme_keys(level, LEVEL, TABLE, "词林正韵"))
    assert c.check("何处不相" + other) == [f"it ends in {other}, which does not rhyme with {level}"]


def test_a_wrong_length_names_the_line_of_the_tune(ci_checkpoint, synthetic):
    c = Composer(checkpoint.load(ci_checkpoint), ComposeSpec(form="平韵令", rhyme=False), seed=0)
    assert c.rules() == ["4 characters"]
    assert c.check("春风又绿江南") == ["it has 6 characters where line 1 of a 平韵令 has 4"]


def test_a_rhyme_group_is_for_regulated_verse(ci_checkpoint, synthetic):
    with pytest.raises(CharLMError, match="--rhyme-group names a 平水韵 group, for the regulated forms; "
                                          "a 平韵令 rhymes by the 词林正韵"):
        Composer(checkpoint.load(ci_checkpoint), ComposeSpec(form="平韵令", rhyme_group="阳"), seed=0)


def test_a_session_with_a_tune_through_the_command(ci_checkpoint, synthetic, tmp_path):
    out = tmp_path / "ci.txt"
    r = runner.invoke(app, ["compose", "--checkpoint", str(ci_checkpoint), "--form", "仄韵令", "--tones",
                            "--seed", "2", "-k", "2", "--save", str(out)], input="1\n1\n1\n")
    assert r.exit_code == 0, r.stderr
    assert "line 1 of 3 (5 characters, rhyming in a 仄 part of the 词林正韵)" in r.stderr
    assert "line 3 of 3 (7 characters, rhyming with " in r.stderr
    poem = r.stdout.strip()
    assert check_poem(poem, cipai.find_form("仄韵令")).valid, poem
    assert out.read_text(encoding="utf-8") == r.stdout


def test_an_unknown_tune_is_one_sentence(ci_checkpoint, synthetic):
    r = runner.invoke(app, ["compose", "--checkpoint", str(ci_checkpoint), "--form", "不存在令"], input="q\n")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown poem form '不存在令'")
