"""`charlm train` given hostile input, as a user runs it: each case is one sentence on stderr and a
non-zero exit (or success where success is right), never a traceback, and nothing the user
already had — a corpus, another run, a file named by --out — is changed."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app

from conftest import POEMS

runner = CliRunner()
TINY = ["--embed", "16", "--hidden", "24", "--layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--precision", "fp32", "--valid-fraction", "0.2", "--eval-interval", "10"]
OK, ERR, USAGE = 0, 1, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Corpora and one finished run (`run`), made once; each case works on a copy."""
    d = tmp_path_factory.mktemp("world")
    text = "\n".join(POEMS * 3) + "\n"
    (d / "poems.txt").write_text(text, encoding="utf-8")
    (d / "other.txt").write_text(text + "又一首诗，不同的文本。\n", encoding="utf-8")
    (d / "utf16.txt").write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    (d / "empty.txt").write_text("\n\n", encoding="utf-8")
    (d / "a[").mkdir()
    (d / "a[" / "b].txt").write_text(text, encoding="utf-8")
    (d / "a file").write_text("not a directory\n", encoding="utf-8")
    (d / "corpus-dir").mkdir()
    r = runner.invoke(app, ["train", str(d / "poems.txt"), "--out", str(d / "run"), "--max-steps", "20", *TINY])
    assert r.exit_code == 0, r.stderr
    return d


def _snapshot(root: Path) -> dict[str, str]:
    """What a user has under root: every file, with a run's checkpoint and resume state read through
    their best/ and resume/ links (the unit directories behind them are the trainer's business)."""
    found = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith((".best.", ".resume."))  # a tampered link may point
                   and not (os.path.islink(os.path.join(folder, d))  # anywhere: follow only links inside
                            and os.path.isabs(os.readlink(os.path.join(folder, d))))]
        for name in files:
            if name != ".lock":
                p = Path(folder) / name
                found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def tamper_resume(change):
    def apply(run: Path):
        state = run / "resume" / "state.json"
        data = json.loads(state.read_text(encoding="utf-8"))
        state.write_text(json.dumps(change(data)), encoding="utf-8")
    return apply


def _set(key, value):
    def change(data):
        data[key] = value
        return data
    return change


def relink_resume(run: Path):
    (run / "resume").unlink()
    (run / "resume").symlink_to("/tmp")


def garbage_state(run: Path):
    (run / "resume" / "state.safetensors").write_bytes(b"\x00" * 64)


C, R = "{w}/poems.txt", "{w}/run"  # the corpus and the finished run
CASES = {
    # numbers and names out of range
    "seed-negative": (["train", C, "--seed", "-1"], USAGE, "--seed"),
    "seed-2**64": (["train", C, "--seed", str(2**64)], USAGE, "--seed"),
    "lr-nan": (["train", C, "--lr", "nan"], ERR, "--lr"),
    "lr-inf": (["train", C, "--lr", "inf"], ERR, "--lr"),
    "lr-negative": (["train", C, "--lr", "-1"], ERR, "--lr"),
    "weight-decay-nan": (["train", C, "--weight-decay", "nan"], ERR, "--weight-decay"),
    "dropout-nan": (["train", C, "--dropout", "nan"], ERR, "--dropout"),
    "dropout-1": (["train", C, "--dropout", "1"], ERR, "--dropout"),
    "save-every-0": (["train", C, "--save-every", "0"], ERR, "--save-every"),
    "save-every-nan": (["train", C, "--save-every", "nan"], ERR, "--save-every"),
    "max-time-negative": (["train", C, "--max-time", "-5m"], ERR, "duration"),
    "max-steps-0": (["train", C, "--max-steps", "0"], USAGE, "--max-steps"),
    "batch-size-0": (["train", C, "--batch-size", "0"], USAGE, "--batch-size"),
    "valid-fraction-0.7": (["train", C, "--valid-fraction", "0.7"], ERR, "--valid-fraction"),
    "cell-unknown": (["train", C, "--cell", "lstm2"], ERR, "--cell"),
    "softmax-unknown": (["train", C, "--softmax", "sparse"], ERR, "--softmax"),
    "hidden-too-large": (["train", C, "--hidden", "3000000", "--out", "{w}/big"], ERR, "larger than"),
    "encoding-unknown": (["train", C, "--encoding", "klingon"], ERR, "unknown encoding"),
    # files
    "corpus-missing": (["train", "{w}/nothing.txt"], ERR, "does not exist"),
    "corpus-directory": (["train", "{w}/corpus-dir"], ERR, "directory"),
    "corpus-empty": (["train", "{w}/empty.txt"], ERR, "empty"),
    "corpus-utf16": (["train", "{w}/utf16.txt"], ERR, "UTF-16"),
    "corpus-markup-path": (["train", "{w}/a[/b].txt", "--out", "{w}/markup[/x]", "--max-steps", "3"], OK,
                           "best validation bpc"),
    "out-is-a-file": (["train", C, "--out", "{w}/a file"], ERR, "is a file"),
    "out-under-a-file": (["train", C, "--out", "{w}/a file/sub"], ERR, "cannot create"),
    # another run in the way
    "fresh-into-a-run": (["train", C, "--out", R, "--max-steps", "5"], ERR, "already holds"),
    "fresh-into-a-run-other-corpus": (["train", "{w}/other.txt", "--out", R], ERR, "--overwrite"),
    "resume-and-overwrite": (["train", C, "--out", R, "--resume", "--overwrite"], ERR, "not both"),
    "resume-nothing": (["train", C, "--out", "{w}/fresh", "--resume"], ERR, "nothing to resume"),
    "resume-other-corpus": (["train", "{w}/other.txt", "--out", R, "--resume"], ERR, "sha256"),
    "resume-changes-hidden": (["train", C, "--out", R, "--resume", "--hidden", "32"], ERR,
                              "--hidden cannot change"),
    "resume-changes-seed": (["train", C, "--out", R, "--resume", "--seed", "5"], ERR, "--seed cannot change"),
    "resume-changes-cell": (["train", C, "--out", R, "--resume", "--cell", "gru"], ERR, "--cell cannot change"),
    "resume-state-null": (["train", C, "--out", R, "--resume"], ERR, "resume state", lambda run: (
        run / "resume" / "state.json").write_text("null", encoding="utf-8")),
    "resume-state-old-format": (["train", C, "--out", R, "--resume"], ERR, "another version",
                                tamper_resume(_set("format_version", 1))),
    "resume-state-step-string": (["train", C, "--out", R, "--resume"], ERR, "damaged",
                                 tamper_resume(_set("step", "abc"))),
    "resume-state-missing-key": (["train", C, "--out", R, "--resume"], ERR, "incomplete",
                                 tamper_resume(lambda d: {k: v for k, v in d.items() if k != "window"})),
    "resume-tensors-garbage": (["train", C, "--out", R, "--resume"], ERR, "corrupt", garbage_state),
    "resume-link-outside": (["train", C, "--out", R, "--resume"], ERR, "points outside", relink_resume),
    "diverging-lr": (["train", C, "--out", "{w}/wild", "--lr", "1e30", "--max-steps", "60", "--eval-interval",
                      "100"], ERR, "diverged"),
}


@pytest.mark.parametrize("name", CASES)
def test_hostile_train(name, world, tmp_path):
    args, code, key, *setup = CASES[name]
    w = tmp_path / "w"
    import shutil

    shutil.copytree(world, w, symlinks=True)
    for prepare in setup:
        prepare(w / "run")
    before = _snapshot(w)
    args = [a.format(w=w) for a in args]
    if args[0] == "train" and "--out" not in args:
        args += ["--out", str(w / "new")]
    r = runner.invoke(app, [args[0], *TINY, *args[1:]])  # the case's own options win
    out = r.stdout + r.stderr
    assert r.exit_code == code, (r.exit_code, out)
    assert "Traceback" not in out and r.exception is None or isinstance(r.exception, SystemExit), out
    if code == ERR:
        errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
        assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0], r.stderr
        assert key in errors[0], errors[0]
        if key != "diverged":  # refused before training: the sentence is all there is, no progress bar
            assert r.stderr.splitlines() == errors, r.stderr
    elif code == USAGE:
        assert key in r.stderr
    else:
        assert key in r.stderr
    after = _snapshot(w)
    changed = {k for k in before if before[k] != after.get(k)}
    assert not changed, changed  # nothing the user had is lost or overwritten


def test_a_second_writer_is_refused_naming_the_first(world, tmp_path):
    import shutil

    shutil.copytree(world / "run", tmp_path / "run", symlinks=True)
    before = _snapshot(tmp_path / "run")
    with checkpoint.exclusive(tmp_path / "run"):  # as another training process holds it
        r = runner.invoke(app, ["train", str(world / "poems.txt"), "--out", str(tmp_path / "run"), "--resume",
                                *TINY])
    assert r.exit_code == 1 and f"(process {os.getpid()}) is writing to" in r.stderr, r.stderr
    assert _snapshot(tmp_path / "run") == before


def test_a_full_disk_is_one_sentence_and_keeps_the_last_good_state(world, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(world / "run", tmp_path / "run", symlinks=True)
    before = _snapshot(tmp_path / "run")

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_model", full)
    r = runner.invoke(app, ["train", str(world / "poems.txt"), "--out", str(tmp_path / "run"), "--resume",
                            "--max-steps", "40", *TINY])
    assert r.exit_code == 1, r.stderr
    assert "No space left on device" in r.stderr and "is kept" in r.stderr and "Traceback" not in r.stderr
    after = _snapshot(tmp_path / "run")
    assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == \
        {k: v for k, v in before.items() if k != "metrics.jsonl"}
    monkeypatch.undo()
    assert checkpoint.read_resume(tmp_path / "run")["step"] == 20  # still resumable from where it was


def test_overwrite_replaces_another_run(world, tmp_path):
    import shutil

    shutil.copytree(world / "run", tmp_path / "run", symlinks=True)
    r = runner.invoke(app, ["train", str(world / "other.txt"), "--out", str(tmp_path / "run"), "--overwrite",
                            "--max-steps", "10", *TINY])
    assert r.exit_code == 0, r.stderr
    assert checkpoint.read_resume(tmp_path / "run")["step"] == 10
    assert checkpoint.load(tmp_path / "run").corpus["path"].endswith("other.txt")


def test_the_printed_hint_resumes_the_same_run_exactly_as_printed(tmp_path):
    """After Ctrl-C, the hint is run as printed (through a shell): it continues with the saved budget
    and averaging, for a corpus whose name holds markup and a space."""
    corpus = tmp_path / "a[bold]b c.txt"
    corpus.write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="utf-8", COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "charlm", "train", corpus.name, "--out", "o[/x] y",
                             "--max-steps", "60", "--ema", "0.9", *TINY], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = tmp_path / "o[" / "x] y" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"step": 20' in metrics.read_text(encoding="utf-8")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    hint = stderr.split("continue with: ")[1].strip()
    assert hint == f"charlm train {shlex.quote(corpus.name)} --out {shlex.quote('o[/x] y')} --resume"
    argv = shlex.split(hint)
    r = subprocess.run([sys.executable, "-m", "charlm", *argv[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert r.returncode == 0, r.stderr
    saved = checkpoint.read_resume(tmp_path / "o[" / "x] y")
    assert saved["step"] == 60 and saved["config"]["train"]["ema"] == 0.9
    records = [json.loads(l) for l in metrics.read_text(encoding="utf-8").splitlines()]
    train_steps = [r["step"] for r in records if "loss" in r]
    assert len(train_steps) == len(set(train_steps)) and train_steps[-1] == 60  # cut back: no step twice
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)


def _resave_state(run: Path, change):
    from safetensors.torch import load_file, save_file

    path = run / "resume" / "state.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


@pytest.mark.parametrize("change, word", [
    (lambda t: t.pop("run.rng"), "random-number state"),
    (lambda t: t.__setitem__("run.rng", t["run.rng"][:10].clone()), "random-number state"),
    (lambda t: t.__setitem__("run.carried.0", t["run.carried.0"][:, :1].clone()), "carried state"),
    (lambda t: t.__setitem__("run.carried.1", t["run.carried.1"].long()), "carried state"),
])
def test_tampered_resume_tensors_are_one_sentence(world, tmp_path, change, word):
    import shutil

    shutil.copytree(world / "run", tmp_path / "run", symlinks=True)
    _resave_state(tmp_path / "run", change)
    r = runner.invoke(app, ["train", str(world / "poems.txt"), "--out", str(tmp_path / "run"), "--resume", *TINY])
    assert r.exit_code == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: the resume state") and word in r.stderr, r.stderr
