"""The three commands as a user runs them: in-process through Typer's runner, and as a subprocess."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from charlm import cli
from charlm.cli import app

from conftest import POEMS

runner = CliRunner()
TINY = ["--embed", "16", "--hidden", "24", "--layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--precision", "fp32", "--valid-fraction", "0.2"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_generate_eval_in_process(corpus_file, tmp_path):
    out = tmp_path / "ck"
    r = run("train", corpus_file, "--out", out, "--max-steps", 12, "--eval-interval", 6, *TINY)
    assert r.exit_code == 0, r.stderr
    assert "best validation bpc" in r.stderr and r.stdout == ""
    assert (out / "best" / "config.json").is_file() and (out / "metrics.jsonl").is_file()

    r = run("generate", "--checkpoint", out, "--prompt", "春眠", "-n", 3, "--seed", 1, "--max-chars", 20)
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and all(l.startswith("春眠") for l in lines)
    assert "checkpoint:" in r.stderr  # status goes to stderr, stdout holds only poems

    r = run("generate", "--checkpoint", out, "--prompt", "春眠", "-n", 3, "--seed", 1, "--max-chars", 20, "--json")
    data = json.loads(r.stdout)
    assert data["samples"] == lines and data["checkpoint"] == str(out)

    r = run("eval", "--checkpoint", out, "--json")
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    assert {"bpc", "loss", "perplexity", "accuracy", "chars", "unknown_chars"} <= m.keys()
    saved = json.loads((out / "best" / "config.json").read_text(encoding="utf-8"))["metrics"]["valid_bpc"]
    assert m["bpc"] == pytest.approx(saved, rel=1e-6)  # eval rebuilds the same validation split

    r = run("eval", "--checkpoint", out, "--corpus", corpus_file)
    assert r.exit_code == 0 and "bits per character" in r.stdout


def test_traditional_prompt_and_unknown_character_warning(trained):
    r = run("generate", "--checkpoint", trained, "--prompt", "舉頭望明月", "--seed", 0, "--max-chars", 5)
    assert r.exit_code == 0 and r.stdout.startswith("举头望明月")
    r = run("generate", "--checkpoint", trained, "--prompt", "龘春", "--seed", 0, "--max-chars", 5)
    assert r.exit_code == 0 and "龘" in r.stderr and "warning" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "missing.txt"], "does not exist"),
    (["train", "{empty}"], "is empty"),
    (["train", "{gbk}"], "--encoding gbk"),
    (["train", "{short}", "--seq-len", "64"], "too short"),
    (["train", "{corpus}", "--max-time", "soon"], "duration"),
    (["train", "{corpus}", "--dropout", "1.5"], "--dropout"),
    (["train", "{corpus}", "--unk-alpha", "lots"], "--unk-alpha"),
    (["train", "{corpus}", "--unk-alpha", "-1"], "--unk-alpha"),
    (["generate", "--checkpoint", "{trained}", "--temperature", "0"], "--temperature"),
    (["generate", "--checkpoint", "{trained}", "--temperature", "-1"], "--temperature"),
    (["generate", "--checkpoint", "{trained}", "--top-p", "0"], "--top-p"),
    (["generate", "--checkpoint", "{trained}", "--top-p", "1.01"], "--top-p"),
    (["generate", "--checkpoint", "no/such/dir"], "does not exist"),
    (["generate", "--checkpoint", "{corrupt}"], "corrupt"),
    (["eval", "--checkpoint", "{corrupt}"], "corrupt"),
    (["eval", "--checkpoint", "{trained}", "--corpus", "{gbk}"], "--encoding gbk"),
])
def test_bad_input_is_one_sentence_and_nonzero_exit(args, message, tmp_path, corpus_file, trained):
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    (tmp_path / "gbk.txt").write_bytes("春眠不觉晓，处处闻啼鸟。\n".encode("gbk"))
    (tmp_path / "short.txt").write_text("春眠不觉晓\n处处闻啼鸟\n", encoding="utf-8")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in ("config.json", "vocab.json"):
        (corrupt / f).write_bytes((trained / "best" / f).read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 10)
    paths = {"empty": tmp_path / "empty.txt", "gbk": tmp_path / "gbk.txt", "short": tmp_path / "short.txt",
             "corpus": corpus_file, "trained": trained, "corrupt": corrupt}
    r = run(*[a.format(**paths) for a in args])
    assert r.exit_code != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len([l for l in r.stderr.splitlines() if l.startswith("error")]) == 1


def _cli(*args, cwd, **kw):
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "charlm", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300, **kw)


def test_subprocess_train_generate_eval_with_default_paths(tmp_path):
    """As a user: train into ./checkpoints/<stem>, then generate and eval find it by default."""
    (tmp_path / "mine.txt").write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    r = _cli("train", "mine.txt", "--max-steps", 10, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "checkpoints" / "mine" / "best" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
    r = _cli("generate", "--prompt", "白日", "-n", 2, "--seed", 3, "--max-chars", 12, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "checkpoints/mine" in r.stderr and len(r.stdout.splitlines()) == 2
    r = _cli("eval", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chars"] > 0


def test_sigint_saves_a_resumable_checkpoint(tmp_path):
    (tmp_path / "mine.txt").write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "train", "mine.txt", "--max-steps", "100000",
                             "--eval-interval", "1000000", *TINY], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            # Ctrl-C as on a terminal, even when the suite runs as a background job
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "checkpoints" / "mine" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text(encoding="utf-8").count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    state = json.loads((tmp_path / "checkpoints" / "mine" / "resume" / "state.json").read_text(encoding="utf-8"))
    assert state["step"] >= 10
    assert (tmp_path / "checkpoints" / "mine" / "best" / "config.json").is_file()  # best model saved on the way out
    r = _cli("train", "mine.txt", "--resume", "--max-steps", state["step"] + 5, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resumed at step {state['step']}" in r.stderr


def test_the_command_line_holds_the_collector_until_the_model_is_loaded(trained, monkeypatch):
    """main() starts with Python's cyclic collector off and turns it back on, with the start-up's
    objects frozen out of its reach, once generate has its model (cli._settled)."""
    import gc

    calls = []
    for name in ("disable", "freeze", "enable"):
        monkeypatch.setattr(gc, name, lambda name=name: calls.append(name))
    monkeypatch.setattr(sys, "argv", ["charlm", "generate", "--checkpoint", str(trained), "--seed", "1",
                                      "--max-chars", "5"])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 0
    assert calls == ["disable", "freeze", "enable"]


@pytest.mark.parametrize("task, unit", [("lm", "bpc 2.00"), ("couplet", "bpc 2.00"), ("classify", "bits/poem 2.00")])
def test_the_progress_line_names_what_its_bits_are_per(task, unit):
    """A classifier's loss is one label per poem, so its progress line says bits/poem, not bpc."""
    from charlm.train import StepEvent

    class Bar:
        def add_task(self, *a, **kw):
            return 0

        def update(self, bar, **kw):
            self.stats = kw["stats"]

    bar = Bar()
    cli._Display(bar, 0, task).on_step(StepEvent(step=3, epoch=0, loss=1.386, bpc=2.0, lr=1e-3,
                                                 chars_per_sec=5000.0, elapsed=1.0, progress=0.1))
    assert unit in bar.stats and ("bpc" in bar.stats) == (task != "classify")
