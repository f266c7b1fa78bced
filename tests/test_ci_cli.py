"""ci by tune through the CLI, as a user runs it: generate --form <tune> with its options and --json,
--list-forms, eval --poems with a tune, the default model for a tune, and bad input (an unknown
tune, an acrostic of the wrong length, a tampered tune table), each one sentence and exit 1."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from charlm import checkpoint, cipai
from charlm.cli import app
from charlm.poetry import check_poem, split_lines
from ci_fixtures import TUNES, ci_checkpoint, write_table  # noqa: F401  (fixtures)
from test_ci_judge import YANSHU

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """charlm reads the synthetic tune table instead of the packaged one."""
    path = write_table(tmp_path / "cipai.json")
    monkeypatch.setattr(cipai, "table_path", lambda: path)
    return path


def _fails_in_one_sentence(r, *needles):
    assert r.exit_code == 1, (r.stdout, r.stderr)
    said = [line for line in r.stderr.splitlines() if not line.startswith("checkpoint: ")]
    assert len(said) == 1 and said[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize("extra", [[], ["--beam", "4"], ["--best-of", "3"], ["--acrostic", "春花秋月"]])
def test_generate_a_tune_with_its_rules_as_json(ci_checkpoint, synthetic, extra):
    r = run("generate", "--checkpoint", ci_checkpoint, "--form", "平韵令", "--rhyme", "--tones", "-n", 2, "--seed", 1,
            "--json", *extra)
    assert r.exit_code == 0, r.stderr
    poems = json.loads(r.stdout)["poems"]
    assert len(poems) == 2
    form = cipai.find_form("平韵令")
    for p in poems:
        c = p["checks"]
        assert (c["form"], c["form_valid"], c["rhyme_valid"], c["tone_valid"]) == ("平韵令", True, True, True), p
        assert tuple(map(len, split_lines(p["text"]))) == form.lengths and check_poem(p["text"], form).valid
        if extra[:1] == ["--acrostic"]:
            assert [line[0] for line in split_lines(p["text"])] == list("春花秋月")


def test_generate_a_tune_piped_is_one_ci_a_line(ci_checkpoint, synthetic):
    r = run("generate", "--checkpoint", ci_checkpoint, "--form", "仄韵令", "--rhyme", "-n", 3, "--seed", 2)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(check_poem(line, cipai.find_form("仄韵令")).rhyme_valid for line in lines)


def test_list_forms_names_every_form_literally(tmp_path, monkeypatch):
    odd = [t for t in TUNES]
    odd[0] = cipai.Tune(**{**odd[0].__dict__, "name": "[bold]调[/]"})
    path = write_table(tmp_path / "cipai.json", odd)
    monkeypatch.setattr(cipai, "table_path", lambda: path)
    r = run("generate", "--list-forms")
    assert r.exit_code == 0, r.stderr
    for name in ("五绝", "七律", "仄韵令", "换韵令", "[bold]调[/]"):
        assert name in r.stdout
    assert "4 5 3 6" in r.stdout  # the line lengths
    data = json.loads(run("generate", "--list-forms", "--json").stdout)["forms"]
    assert [f["name"] for f in data[:4]] == ["五绝", "七绝", "五律", "七律"]
    assert {f["name"]: (f["lines"], f["lengths"], f["examples"]) for f in data}["[bold]调[/]"] == (4, [4, 5, 3, 6], 20)


def test_list_forms_of_the_packaged_table():
    data = json.loads(run("generate", "--list-forms", "--json").stdout)["forms"]
    assert len(data) == 4 + 130
    huanxisha = next(f for f in data if f["name"] == "浣溪沙")
    assert (huanxisha["lines"], huanxisha["lengths"], huanxisha["examples"], huanxisha["genre"]) == (6, [7] * 6, 776, "ci")


def test_eval_judges_a_file_of_ci_by_tune(tmp_path):
    poems = tmp_path / "ci.txt"
    poems.write_text(YANSHU + "\n" + YANSHU.replace("旧亭台", "旧亭东") + "\n", encoding="utf-8")
    r = run("eval", "--poems", poems, "--form", "浣溪沙", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert [(p["form"], p["rhyme_valid"], p["rhyme_group"]) for p in data["poems"]] == [
        ("浣溪沙", True, "第3部"), ("浣溪沙", False, None)]
    r = run("eval", "--poems", poems, "--form", "浣溪沙")
    assert r.exit_code == 0 and "rhyme-valid (词林正韵)" in r.stdout and "50.0%" in r.stdout


@pytest.mark.parametrize("args, needles", [
    (["--form", "浣溪纱"], ["unknown poem form '浣溪纱'", "--list-forms"]),
    (["--form", "平韵令", "--acrostic", "春花秋"], ["--acrostic 春花秋 has 3 characters but 平韵令 has 4 lines"]),
    (["--form", "平韵令", "--prompt", "春花秋月夜"], ["line 1 of a 平韵令 has 4 characters, so ， comes here"]),
])
def test_bad_input_is_one_sentence(ci_checkpoint, synthetic, args, needles):
    _fails_in_one_sentence(run("generate", "--checkpoint", ci_checkpoint, *args), *needles)


@pytest.mark.parametrize("tamper, needle", [
    (lambda d: d.update(format_version=2), "format_version is 2"),
    (lambda d: d["tunes"]["平韵令"].update(lengths=[4, 5]), "marks"),
    (lambda d: d["tunes"]["仄韵令"].update(rhymes={"0": "仄", "9": "仄"}), "rhyme"),
    (lambda d: d["tunes"]["换韵令"].update(tones=["中"] * 4), "tones"),
])
def test_a_tampered_tune_table_is_one_sentence(ci_checkpoint, synthetic, tamper, needle):
    data = json.loads(synthetic.read_text(encoding="utf-8"))
    tamper(data)
    synthetic.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    for args in (["generate", "--checkpoint", ci_checkpoint, "--form", "平韵令"], ["generate", "--list-forms"],
                 ["eval", "--poems", synthetic, "--form", "平韵令"]):
        _fails_in_one_sentence(run(*args), "the tune table", needle)
    # a regulated form needs no tune table
    assert run("generate", "--checkpoint", ci_checkpoint, "--form", "五绝", "--seed", 1).exit_code == 0


def _package(tmp_path, monkeypatch, manifest: dict) -> None:
    """An installed charlm's package folder holding the shipped models named in ``manifest``."""
    import shutil

    package = tmp_path / "package"
    for name in manifest["models"]:
        shutil.copytree(tmp_path / "models" / name, package / "shipped" / name)
    (package / "shipped.json").write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setattr(checkpoint, "PACKAGE", package)
    monkeypatch.setattr(checkpoint, "project_root", lambda: tmp_path / "no-checkout")
    monkeypatch.chdir(tmp_path)


def _models(tmp_path, ci_checkpoint, *names):
    import shutil

    for name in names:
        shutil.copytree(checkpoint.unit_dir(ci_checkpoint / checkpoint.BEST), tmp_path / "models" / name)


def test_a_tune_uses_the_shipped_ci_model_when_installed(tmp_path, monkeypatch, ci_checkpoint, synthetic):
    _models(tmp_path, ci_checkpoint, "tang", "songci")
    _package(tmp_path, monkeypatch, {"default": "tang", "genres": {"ci": "songci"}, "models": ["tang", "songci"]})
    r = run("generate", "--form", "平韵令", "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert "shipped/songci (the ci model shipped with charlm)" in r.stderr and "warning" not in r.stderr
    r = run("generate", "--form", "五绝", "--seed", 1)  # regulated verse keeps the default model
    assert r.exit_code == 0 and "shipped/tang (the model shipped with charlm)" in r.stderr


def test_without_the_ci_model_a_tune_warns_once_and_uses_the_default(tmp_path, monkeypatch, ci_checkpoint, synthetic):
    _models(tmp_path, ci_checkpoint, "tang")
    _package(tmp_path, monkeypatch, {"default": "tang", "genres": {"ci": "songci"}, "models": ["tang"]})
    r = run("generate", "--form", "平韵令", "--seed", 1, "-n", 2)
    assert r.exit_code == 0, r.stderr
    assert "shipped/tang (the model shipped with charlm)" in r.stderr
    assert r.stderr.count("warning:") == 1 and "songci is not installed" in r.stderr and "has not read ci" in r.stderr
    assert len(r.stdout.splitlines()) == 2
    assert "warning" not in run("generate", "--form", "五绝", "--seed", 1).stderr
