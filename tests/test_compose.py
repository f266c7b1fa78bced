"""charlm compose: the Composer driven directly, and the command driven end to end through stdin."""

import json

import pytest
import torch
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.checkpoint import is_checkpoint, shipped_checkpoint
from charlm.cli import app
from charlm.compose import Composer, ComposeSpec, tone_marks
from charlm.errors import CharLMError
from charlm.poetry import RhymeTable, check_poem, format_poem, parse_form
from charlm.sample import SampleSettings
from charlm.vocab import EOS_ID

runner = CliRunner()
shipped = pytest.mark.skipif(not is_checkpoint(shipped_checkpoint()), reason="shipped model not present")
TABLE = RhymeTable.default()


@pytest.fixture(scope="module")
def ckpt(trained):
    return checkpoint.load(trained)


def composer(ckpt, seed=0, **spec):
    return Composer(ckpt, ComposeSpec(**{"form": "五绝", **spec}), seed=seed)


def compose(*args, input=""):
    return runner.invoke(app, ["compose", *[str(a) for a in args]], input=input)


# -- the library -------------------------------------------------------------------------------

def test_picking_the_first_candidate_writes_a_rhyming_quatrain(ckpt):
    c = composer(ckpt)
    while not c.done:
        cands = c.candidates(3)
        assert cands and len({x.text for x in cands}) == len(cands)
        assert [x.score for x in cands] == sorted((x.score for x in cands), reverse=True)
        for x in cands:
            assert len(x.text) == 5 and x.marks == tone_marks(x.text, TABLE) and len(x.marks) == 5
            assert x.rhymes is (None if c.line_index % 2 == 0 else True)
            assert x.problems == ()
        c.accept(cands[0].text)
    assert c.poem == format_poem(c.lines) and len(c.lines) == 4
    check = c.checks()
    assert check.form_valid and check.rhyme_valid, check
    with pytest.raises(CharLMError, match="complete"):
        c.candidates(3)


def test_more_candidates_are_new_ones(ckpt):
    c = composer(ckpt)
    first = {x.text for x in c.candidates(3)}
    more = {x.text for x in c.candidates(3)}
    assert first and more and not first & more
    # greedy decoding writes one line only: it is shown once, then there is nothing new
    greedy = Composer(ckpt, ComposeSpec("五绝"), seed=0, settings=SampleSettings(temperature=1e-9))
    assert len(greedy.candidates(3)) == 1 and greedy.candidates(3) == []


def test_the_same_seed_and_choices_give_the_same_candidates(ckpt):
    a, b = composer(ckpt, seed=5), composer(ckpt, seed=5)
    assert a.candidates(4) == b.candidates(4)
    a.accept("春眠不觉晓")
    b.accept("春眠不觉晓")
    assert a.candidates(4) == b.candidates(4)


def test_score_is_the_mean_log_probability_of_the_line_and_its_mark(ckpt):
    c = composer(ckpt)
    c.accept("床前明月光")
    text = "床前明月光，疑是地上霜。"
    ids = torch.tensor([[EOS_ID, *ckpt.vocab.encode(text)]])
    with torch.no_grad():
        logp = torch.log_softmax(ckpt.model(ids)[0][0].float(), -1)  # (T, V)
    # 疑是地上霜 and 。 are the last 6 targets, predicted from positions 6..11
    by_hand = sum(float(logp[t - 1, ids[0, t]]) for t in range(7, 13)) / 6
    assert c.score(["疑是地上霜"])[0] == pytest.approx(by_hand, abs=1e-5)
    assert c.score(["疑是地上霜", "白日依山尽"])[0] == pytest.approx(by_hand, abs=1e-5)


def test_own_lines_are_checked_against_form_rhyme_and_tones(ckpt):
    c = composer(ckpt)
    assert c.check("春眠不觉晓") == [] and c.check("春眠不觉晓，") == []
    assert c.check("春眠不觉") == ["it has 4 characters where a 五绝 line has 5"]
    assert any("not Chinese: a" in p for p in c.check("春眠不觉a"))
    c.accept("春眠不觉晓")
    assert any("no level-tone" in p for p in c.check("处处闻啼鸟"))  # 鸟 is 仄: no rhyme
    assert c.check("疑是地上霜") == []
    c.accept("疑是地上霜")
    c.accept("举头望明月")
    assert c.check("低头思故乡") == []
    assert c.check("花落知多少") == ["it ends in 少, which does not rhyme with 霜"]
    toned = composer(ckpt, tones=True)
    assert toned.check("床前明月光") == ["its 平仄 ○○○●○ breaks the pattern 平平平仄仄: 光 (character 5) is not 仄"]
    assert toned.check("白日依山尽") == []
    assert composer(ckpt, rhyme=False).check("春眠不觉晓") == []


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("  ，", "empty"), ("床前明月光，疑是地上霜", "one line at a time"), ("床前\x1b明月光", r"\\x1b"),
])
def test_text_that_is_not_one_line_is_refused(ckpt, text, message):
    c = composer(ckpt)
    with pytest.raises(CharLMError, match=message):
        c.check(text)
    with pytest.raises(CharLMError, match=message):
        c.accept(text)
    assert c.lines == ()


def test_going_back(ckpt):
    c = composer(ckpt)
    with pytest.raises(CharLMError, match="no line to go back"):
        c.back()
    c.accept("春眠不觉晓")
    c.accept("疑是地上霜")
    assert [x.rhymes for x in c.candidates(3)] == [None] * 3  # line 3 need not rhyme
    assert c.back() == "疑是地上霜" and c.lines == ("春眠不觉晓",) and c.line_index == 1
    assert [x.rhymes for x in c.candidates(3)] == [True] * 3  # line 2 again: it must
    c.accept("疑是地上霜")
    assert c.poem == "春眠不觉晓，疑是地上霜。"


def test_acrostic_is_respected_by_candidates_and_checked_in_own_lines(ckpt):
    c = composer(ckpt, acrostic="春花明月")
    for head in "春花明月":
        cands = c.candidates(3)
        assert cands and all(x.text.startswith(head) for x in cands), cands
        c.accept(cands[0].text)
    assert c.to_dict()["checks"]["acrostic_valid"] is True
    c = composer(ckpt, acrostic="春花明月")
    assert c.check("白日依山尽") == ["it does not start with 春, the acrostic's character for line 1"]
    with pytest.raises(CharLMError, match="has 4 lines"):
        composer(ckpt, acrostic="春花")


def test_a_rhyme_group_holds_the_rhyme_lines(ckpt):
    c = composer(ckpt, rhyme_group="阳")
    assert c.rhyme_group == "下平七阳"
    c.accept("床前明月光")
    cands = c.candidates(5)
    assert cands and all("下平七阳" in TABLE.level_groups(x.text[-1]) for x in cands), cands
    assert c.check("更上一层楼") == ["it ends in 楼, which is not in the rhyme group 下平七阳"]
    with pytest.raises(CharLMError, match="no level-tone"):
        composer(ckpt, rhyme_group="不是韵")
    with pytest.raises(CharLMError, match="needs the rhyme"):
        composer(ckpt, rhyme_group="阳", rhyme=False)


def test_finding_rhyme_groups_by_name():
    for name in ("下平七阳", "七阳", "阳", "下平七陽", " 阳 "):
        assert TABLE.find_level_group(name) == "下平七阳"
    for name in ("", "上声一董", "xyz"):
        with pytest.raises(CharLMError, match="no level-tone"):
            TABLE.find_level_group(name)
    held = TABLE.rhyming_only("阳")
    assert held.level_groups("光") == {"下平七阳"} and held.level_groups("楼") == frozenset()
    assert held.tones("楼") == TABLE.tones("楼") and not held.rhymes("楼", "流") and TABLE.rhymes("楼", "流")


def test_a_kept_line_that_breaks_the_form_relaxes_later_candidates(ckpt):
    c = composer(ckpt)
    assert c.accept("床前明月") == "床前明月"
    cands = c.candidates(3)
    assert cands and "the form" in c.relaxed
    c.back()
    c.candidates(3)
    assert c.relaxed == ()


def test_unknown_form_and_bad_title(ckpt):
    with pytest.raises(CharLMError, match="unknown poem form"):
        composer(ckpt, form="sonnet")
    with pytest.raises(CharLMError, match="control character"):
        composer(ckpt, title="春\n日")


# -- the command --------------------------------------------------------------------------------

def test_a_session_picks_asks_for_more_goes_back_and_saves_text(trained, tmp_path):
    out = tmp_path / "poem.txt"
    r = compose("--checkpoint", trained, "--form", "五绝", "--seed", 1, "-k", 3, "--title", "[bold]春日",
                "--save", out, input="1\nm\n2\nb\n7\n\n1\n1\n1\n1\n")
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "there is no candidate 7; choose 1 to 3" in r.stderr and "nothing typed" in r.stderr
    assert "back: removed" in r.stderr and "saved:" in r.stderr
    title, poem = r.stdout.splitlines()
    assert title == "[bold]春日"  # printed literally, not as markup
    assert check_poem(poem, parse_form("五绝")).form_valid
    assert out.read_text(encoding="utf-8") == r.stdout
    # the first line was candidate 1 of the first list on stderr
    first_list = r.stderr.split("line 1 of 4")[1].split("line 2 of 4")[0]
    assert first_list.split("\n")[1].split()[1] == poem[:5]


def test_own_line_kept_and_a_wrong_length_warned_refused_then_overridden(trained):
    r = compose("--checkpoint", trained, "--form", "五绝", "--seed", 1,
                input="春眠不觉晓\n处处闻\nn\n处处闻\ny\n1\n1\n")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("warning: it has 3 characters where a 五绝 line has 5\nkeep it anyway? y/n:") == 2
    assert r.stdout.startswith("春眠不觉晓，处处闻。")
    assert "decoded without" in r.stderr  # later candidates are no longer held to the form
    assert "form ✗ 五绝" in r.stderr and "warning: line 2 has 3 characters" in r.stderr


def test_json_saved_and_printed(trained, tmp_path):
    out = tmp_path / "poem.json"
    r = compose("--checkpoint", trained, "--form", "wujue", "--seed", 2, "--json", "--save", out,
                "--first-line", "白日依山尽", input="1\n1\n1\n")
    assert r.exit_code == 0, r.stderr
    printed, saved = json.loads(r.stdout), json.loads(out.read_text(encoding="utf-8"))
    assert printed == saved
    assert saved["format"] == "charlm-poem" and saved["format_version"] == 1 and saved["form"] == "五绝"
    assert saved["lines"][0] == "白日依山尽" and len(saved["lines"]) == 4
    assert saved["poem"] == format_poem(saved["lines"]) and saved["seed"] == 2
    assert saved["checks"]["form_valid"] is True and saved["checks"]["rhyme_valid"] is True


@pytest.mark.parametrize("answers, code, message", [
    ("1\n", 1, "the input ended at line 2 of 4"),
    ("", 1, "the input ended at line 1 of 4"),
    ("1\n春眠不觉\n", 1, "the input ended at line 2 of 4"),  # ended at the y/n question
    ("1\nq\n", 0, "stopped: at line 2 of 4; nothing saved"),
])
def test_a_session_that_ends_early_saves_nothing(trained, tmp_path, answers, code, message):
    out = tmp_path / "poem.txt"
    r = compose("--checkpoint", trained, "--form", "五绝", "--seed", 1, "--save", out, input=answers)
    assert r.exit_code == code and message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--form", "sonnet"], "unknown poem form"),
    (["--form", "五绝", "--acrostic", "春山"], "has 4 lines"),
    (["--form", "五绝", "--rhyme-group", "没有"], "no level-tone"),
    (["--form", "五绝", "--save", "{dir}"], "is a directory"),
    (["--form", "五绝", "--save", "{dir}/no/such/poem.txt"], "does not exist"),
    (["--form", "五绝", "-k", "0"], "-k"),
])
def test_bad_options_are_one_sentence(trained, tmp_path, args, message):
    args = [a.format(dir=tmp_path) for a in args]
    r = compose("--checkpoint", trained, *args, input="1\n1\n1\n1\n")
    assert r.exit_code != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_an_existing_save_file_is_kept_unless_overwrite(trained, tmp_path):
    out = tmp_path / "poem.txt"
    out.write_text("mine\n", encoding="utf-8")
    r = compose("--checkpoint", trained, "--form", "五绝", "--seed", 1, "--save", out, input="1\n1\n1\n1\n")
    assert r.exit_code == 1 and "already exists" in r.stderr and "--overwrite" in r.stderr
    assert out.read_text(encoding="utf-8") == "mine\n" and "line 1 of 4" not in r.stderr  # refused before work
    r = compose("--checkpoint", trained, "--form", "五绝", "--seed", 1, "--save", out, "--overwrite",
                input="1\n1\n1\n1\n")
    assert r.exit_code == 0, r.stderr
    assert out.read_text(encoding="utf-8") == r.stdout and r.stdout != "mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["poem.txt"]  # no temporary file left behind


@shipped
@pytest.mark.parametrize("args", [[], ["--tones", "--rhyme-group", "阳"]])
def test_shipped_model_always_picking_one_writes_a_valid_quatrain(args):
    r = compose("--form", "五绝", "--seed", 0, "--checkpoint", shipped_checkpoint(), *args, input="1\n" * 4)
    assert r.exit_code == 0, r.stderr
    check = check_poem(r.stdout.strip(), parse_form("五绝"))
    assert check.form_valid and check.rhyme_valid, check
    if args:
        assert check.tone_valid and check.rhyme_group == "下平七阳", check
