"""`charlm generate` poem options and `charlm eval --poems/--generate`, through the CLI."""

import json

import pytest
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.checkpoint import is_checkpoint, project_root, shipped_checkpoint, shipped_models
from charlm.cli import app
from charlm.evaluate import validation_text
from charlm.holdout import han_key
from charlm.poetry import check_poem, parse_form

runner = CliRunner()
shipped = pytest.mark.skipif(not is_checkpoint(shipped_checkpoint()), reason="shipped model not present")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_form_on_a_tiny_model_and_json_checks(trained):
    r = run("generate", "--checkpoint", trained, "--form", "wujue", "-n", 3, "--seed", 1, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert len(data["samples"]) == 3 and len(data["poems"]) == 3
    for p in data["poems"]:
        assert p["checks"]["form_valid"] and p["checks"]["form"] == "五绝"
        assert p["logprob"] < 0 and p["score"] == pytest.approx(p["logprob"] / 25)  # 20 characters, 4 marks, end of poem
    r = run("generate", "--checkpoint", trained, "--form", "五绝", "-n", 2, "--seed", 1)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2  # piped: one poem per line


@pytest.mark.parametrize("args, message", [
    (["--form", "sonnet"], "五绝"),
    (["--form", "五绝", "--prompt", "春眠不觉晓处"], "a 五绝 line has 5 characters"),
    (["--form", "五绝", "--acrostic", "春山"], "has 4 lines"),
    (["--acrostic", "春\u9fff"], "\u9fff"),
    (["--rhyme"], "need --form"),
    (["--beam", "4"], "needs --form"),
    (["--novel", "--form", "五绝", "--checkpoint", "{plain}"], "training lines"),
    (["--form", "五绝", "--max-chars", "20"], "--max-chars does not apply with --form"),
    (["-n", "24", "--max-chars", "3", "--acrostic", "山天人月知江明"], "raise --max-chars"),
])
def test_poem_option_errors(trained, tmp_path, args, message):
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("config.json", "vocab.json", "model.safetensors"):
        (plain / f).write_bytes((trained / "best" / f).read_bytes())
    args = [a.format(plain=plain) for a in args]
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(trained), *args]
    r = run("generate", *args)
    assert r.exit_code != 0 and message in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_eval_poems_judges_real_and_broken_poems(tmp_path, trained):
    f = tmp_path / "poems.txt"
    f.write_text("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n"
                 "白日依山尽，黄河入海流。欲穷千里目，更上一层阁。\n"
                 "白日依山尽，黄河入海流。欲穷千里目。\n", encoding="utf-8")
    r = run("eval", "--checkpoint", trained, "--poems", f, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    p = data["poems"]
    assert [x["form_valid"] for x in p] == [True, True, False]
    assert [x["rhyme_valid"] for x in p][:2] == [True, False]
    assert p[0]["tone_agreement"] == 1.0
    s = data["summary"]
    assert s["poems"] == 3 and s["form_valid"] == pytest.approx(2 / 3)
    assert 0 < s["distinct_2"] <= s["distinct_1"] <= 1 or 0 < s["distinct_1"] <= 1
    # the tiny model was trained on 登鹳雀楼: its lines are copies
    assert s["copy_rate"] > 0.5 and s["longest_copy"] in ("白日依山尽", "黄河入海流", "欲穷千里目", "更上一层楼")
    r = run("eval", "--checkpoint", trained, "--poems", f)
    assert r.exit_code == 0 and "form-valid" in r.stdout


@shipped
def test_shipped_acrostic_quatrain():
    r = run("generate", "--checkpoint", shipped_checkpoint(), "--acrostic", "春花秋月", "--form", "七绝",
            "--rhyme", "--seed", 0)
    assert r.exit_code == 0, r.stderr
    poem = r.stdout.strip()
    c = check_poem(poem, parse_form("七绝"))
    assert c.form_valid and c.rhyme_valid
    assert [line[0] for line in c.lines] == list("春花秋月")


@shipped
def test_shipped_eval_generate_is_valid():
    r = run("eval", "--checkpoint", shipped_checkpoint(), "--generate", 8, "--form", "七律", "--rhyme", "--tones",
            "--novel", "--seed", 1, "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)["summary"]
    assert s["form_valid"] == 1.0 and s["rhyme_valid"] == 1.0 and s["tone_agreement"] == 1.0
    assert s["copy_rate"] == 0.0


@pytest.mark.skipif(not {"tang", "tang-quatrains"} <= set(shipped_models()), reason="shipped models not present")
def test_the_tang_model_beats_the_quatrain_model_on_the_quatrain_models_own_split(tmp_path):
    """The quatrain model reproduces its card; the Tang model, which never read that split
    (corpora/tang-train.txt leaves it out), scores it lower (the target of the Tang model)."""
    models = shipped_models()
    card = json.loads((models["tang-quatrains"] / "config.json").read_text(encoding="utf-8"))["metrics"]
    r = run("eval", "--checkpoint", models["tang-quatrains"], "--json")
    assert r.exit_code == 0, r.stderr
    own = json.loads(r.stdout)
    assert own["bpc"] == pytest.approx(card["valid_bpc"], abs=1e-3) and own["chars"] == card["valid_chars"]
    assert own["bpc"] <= 6.6 and own["unknown_chars"] == 56
    split, _ = validation_text(checkpoint.load(models["tang-quatrains"], lines=False))
    tang_corpus = checkpoint.load(models["tang"], lines=False).corpus["path"]
    read = {han_key(p) for p in (project_root() / tang_corpus).read_text(encoding="utf-8").split("\n")}
    assert not any(han_key(p) in read for p in split.split("\n") if p)  # no leak
    (tmp_path / "split.txt").write_text(split, encoding="utf-8")
    r = run("eval", "--checkpoint", models["tang"], "--corpus", tmp_path / "split.txt", "--json")
    assert r.exit_code == 0, r.stderr
    tang = json.loads(r.stdout)
    assert tang["chars"] == own["chars"] and tang["bpc"] < own["bpc"] - 0.2


@shipped
def test_errors_name_the_rule_that_fails():
    r = run("generate", "--prompt", "长", "--form", "wujue", "--acrostic", "忆无梦无")
    assert r.exit_code == 1 and "--acrostic 忆无梦无 starts line 1 with 忆" in r.stderr, r.stderr
    r = run("generate", "--prompt", "白云青山", "--form", "五绝", "--tones")
    assert r.exit_code == 1 and "--tones needs a" in r.stderr, r.stderr


@pytest.mark.skipif("tang-quatrains" not in shipped_models(), reason="shipped quatrain model not present")
def test_prompt_marks_the_model_lacks_are_mapped():
    quatrains = shipped_models()["tang-quatrains"]  # its vocabulary has no ！ (the Tang model's has)
    r = run("generate", "--checkpoint", quatrains, "--prompt", "春眠不觉晓！处处", "--seed", "1", "--max-chars", "10")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr
    assert r.stdout.startswith("春眠不觉晓。处处"), r.stdout


@shipped
def test_shipped_beam_poems_do_not_repeat_and_differ():
    r = run("generate", "--form", "七绝", "--beam", "8", "-n", "4", "--rhyme", "--tones", "--json")
    assert r.exit_code == 0, r.stderr
    poems = json.loads(r.stdout)["poems"]
    assert len({p["text"] for p in poems}) == 4
    for p in poems:
        assert not p["checks"]["repeated_bigram"] and p["checks"]["top_char_count"] <= 2, p["text"]
        assert p["checks"]["form_valid"] and p["checks"]["rhyme_valid"], p["text"]


def test_eval_reports_repetition(tmp_path):
    poems = tmp_path / "p.txt"
    poems.write_text("不知何事事何如，何事人间不得知。今日不知何处去，不知何处是何时。\n"
                     "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n", encoding="utf-8")
    r = run("eval", "--poems", poems, "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert [p["repeated_bigram"] for p in out["poems"]] == [True, False]
    assert [p["top_char_count"] for p in out["poems"]] == [6, 1]
    assert out["summary"]["repeated_bigram"] == 0.5 and out["summary"]["top_char_4"] == 0.5
