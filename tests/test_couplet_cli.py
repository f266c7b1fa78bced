"""Couplets through the command line, as a user runs them: train --task couplet, generate --couplet
(text, --beam, --json), eval on a couplet checkpoint, and bad input (one sentence, exit 1)."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.poetry import LEVEL, RhymeTable

from test_couplet_model import mapping_pairs

runner = CliRunner()
TINY = ["--task", "couplet", "--embed", "16", "--hidden", "32", "--layers", "1", "--dropout", "0", "--batch-size",
        "16", "--precision", "fp32", "--valid-fraction", "0.1", "--lr", "1e-2", "--warmup", "0", "--unk-alpha", "0"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def couplet_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("couplet-cli")
    pairs = d / "pairs.tsv"
    pairs.write_text(mapping_pairs(), encoding="utf-8")
    r = run("train", pairs, "--out", d / "run", "--max-steps", 150, "--eval-interval", 50, "--seed", 5, *TINY)
    assert r.exit_code == 0, r.stderr
    assert "best validation bpc" in r.stderr and r.stdout == ""
    return pairs, d / "run"


def test_generate_answers_with_the_trained_mapping(couplet_run):
    _, out = couplet_run
    r = run("generate", "--checkpoint", out, "--couplet", "月雪木石竹", "--beam", 3)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "风花山春秋\n" and "checkpoint:" in r.stderr
    r = run("generate", "--checkpoint", out, "--couplet", "玉竹石木雪", "-n", 4, "--seed", 2)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and all(len(l) == 5 and LEVEL in RhymeTable.default().tones(l[-1]) for l in lines)


def test_generate_json(couplet_run):
    _, out = couplet_run
    r = run("generate", "--checkpoint", out, "--couplet", "月雪木石竹", "-n", 2, "--beam", 2, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["couplet"] == "月雪木石竹" and data["checkpoint"] == str(out)
    assert data["samples"] == [p["text"] for p in data["poems"]] and data["samples"][0] == "风花山春秋"
    best = data["poems"][0]
    assert best["checks"] == {"length": True, "last_tone": True, "tones_opposed": True, "new_characters": True}
    assert best["logprob"] <= 0 and best["score"] == pytest.approx(best["logprob"] / 5)


def test_eval_reports_bpc_and_tone_opposition(couplet_run):
    pairs, out = couplet_run
    r = run("eval", "--checkpoint", out, "--json", "--generate", 20, "--beam", 2)
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    saved = json.loads((checkpoint.config_path(out)).read_text(encoding="utf-8"))["metrics"]["valid_bpc"]
    assert m["bpc"] == pytest.approx(saved, rel=1e-6)  # the same validation split, rebuilt
    assert m["pairs"] == 72 and m["chars"] == 360 and m["answered"] == 20
    # 月雪木石竹玉 are 仄 and 风花山春秋天 平: the real answers oppose at every position, and so do the
    # model's once it has learned the mapping
    assert m["tones_real"] == 1.0 and m["tones_real_judged"] == 20
    assert m["tones_generated"] == 1.0 and m["tones_generated_judged"] == 20
    r = run("eval", "--checkpoint", out, "--corpus", pairs, "--generate", 5)
    assert r.exit_code == 0, r.stderr
    assert "second line given the first" in r.stdout and "the real second lines" in r.stdout
    assert "720" in r.stdout  # every pair of the file


def test_the_default_couplet_checkpoint_is_the_newest_local_couplet_run(couplet_run, tmp_path, monkeypatch, trained):
    _, out = couplet_run
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path / "checkpoints" / "poems", symlinks=True)
    shutil.copytree(out, tmp_path / "checkpoints" / "pairs", symlinks=True)  # newer, but not a language model
    r = run("generate", "--couplet", "月雪木石竹", "--beam", 2)
    assert r.exit_code == 0, r.stderr
    assert "checkpoints/pairs (newest under ./checkpoints/)" in r.stderr and r.stdout == "风花山春秋\n"
    r = run("generate", "--prompt", "春", "--max-chars", 4, "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert "checkpoints/poems (newest under ./checkpoints/)" in r.stderr


@pytest.mark.skipif(not checkpoint.is_checkpoint(checkpoint.shipped_checkpoint("couplet")),
                    reason="no shipped couplet model")
def test_the_shipped_couplet_model_answers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./checkpoints here: the shipped models are the defaults
    r = run("generate", "--couplet", "明月松间照", "--beam", 4, "-n", 2, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == str(checkpoint.shipped_checkpoint("couplet"))
    assert all(p["checks"]["length"] and p["checks"]["last_tone"] and p["checks"]["new_characters"]
               for p in data["poems"])
    r = run("generate", "--prompt", "春", "--max-chars", 4, "--seed", 1)  # without --couplet: the language model
    assert r.exit_code == 0 and f"{checkpoint.shipped_checkpoint()} (the model shipped" in r.stderr
    r = run("models", "--json")
    names = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    assert names["couplet"]["parameters"] > 0 and names["couplet"]["problem"] is None
    assert not names["couplet"]["default"] and names[json.loads(
        (checkpoint.PACKAGE / "shipped.json").read_text(encoding="utf-8"))["default"]]["default"]


def _one_sentence(r, *words):
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), r.stderr


@pytest.mark.parametrize("first, words", [
    ("明月a松", ["Han characters only", "'a'"]),
    ("明月，松", ["Han characters only", "'，'"]),
    ("", ["needs a first line"]),
    ("明" * 40, ["40 characters", "at most 32"]),
])
def test_bad_first_lines(couplet_run, first, words):
    _, out = couplet_run
    _one_sentence(run("generate", "--checkpoint", out, "--couplet", first), *words)


def test_wrong_checkpoints_and_options(couplet_run, trained):
    pairs, out = couplet_run
    _one_sentence(run("generate", "--checkpoint", trained, "--couplet", "明月松间照"), "is a language model",
                  "not a couplet model")
    _one_sentence(run("generate", "--checkpoint", out, "--prompt", "月"), "is a couplet model", "--couplet")
    _one_sentence(run("generate", "--checkpoint", out), "is a couplet model")
    _one_sentence(run("generate", "--checkpoint", out, "--couplet", "月雪木石竹", "--form", "五绝"),
                  "does not take --form")
    _one_sentence(run("generate", "--checkpoint", out, "--couplet", "月雪木石竹", "--prompt", "风"),
                  "does not take --prompt")
    _one_sentence(run("generate", "--checkpoint", out, "--couplet", "月雪木石竹", "-n", 3, "--beam", 2),
                  "at most --beam")
    _one_sentence(run("eval", "--checkpoint", out, "--form", "五绝"), "--form is for language models")
    _one_sentence(run("compose", "--form", "五绝", "--checkpoint", out), "is a couplet model")
    _one_sentence(run("train", pairs, "--out", out, "--resume", "--task", "lm"), "--task couplet")
    _one_sentence(run("train", pairs, "--out", out, "--task", "poems"), "--task must be one of lm, classify, couplet")
    bad = pairs.parent / "bad.tsv"
    bad.write_text("明月松间照\t清泉石上\n", encoding="utf-8")
    _one_sentence(run("train", bad, "--out", pairs.parent / "bad", *TINY), "line 1", "different lengths")


@pytest.mark.parametrize("tamper, words", [
    (lambda t: t.pop("attn_v.weight"), ["tensor attn_v.weight is missing"]),
    (lambda t: t.update({"bridge.weight": t["bridge.weight"][:, :3]}), ["tensor bridge.weight has shape"]),
    (lambda t: t.update({"head_bias": t["head_bias"] * float("nan")}), ["non-finite weights", "head_bias"]),
])
def test_a_tampered_couplet_checkpoint_is_one_sentence(couplet_run, tmp_path, tamper, words):
    from safetensors.torch import load_file, save_file

    _, out = couplet_run
    bad = checkpoint.export(out, tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    tamper(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(bad / "model.safetensors"))
    for command in (["generate", "--couplet", "月雪木石竹"], ["eval"]):
        _one_sentence(run(*command, "--checkpoint", bad), *words)


def test_an_interrupted_couplet_run_prints_a_hint_that_resumes_it_as_printed(tmp_path, monkeypatch):
    """The hint carries --task couplet: without it the resume is refused (see above)."""
    import os
    import shlex
    import signal

    from charlm import cli

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(mapping_pairs(), encoding="utf-8")
    real_on_step = cli._Display.on_step

    def stop_at_step_20(self, e):
        real_on_step(self, e)
        if e.step == 20:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the trainer, which saves and stops

    monkeypatch.setattr(cli._Display, "on_step", stop_at_step_20)
    r = run("train", pairs, "--out", tmp_path / "run", "--max-steps", 40, "--eval-interval", 20, *TINY)
    monkeypatch.undo()
    assert r.exit_code == 143, r.stderr
    hint = r.stderr.split("continue with: ")[1].strip()
    assert hint == f"charlm train --task couplet {shlex.quote(str(pairs))} --out {shlex.quote(str(tmp_path / 'run'))} --resume"
    resumed = run(*shlex.split(hint)[1:])
    assert resumed.exit_code == 0, resumed.stderr
    assert checkpoint.read_resume(tmp_path / "run")["step"] == 40
