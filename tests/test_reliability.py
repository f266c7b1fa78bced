"""A run that survives kill -9: killed at random moments (once in the middle of a save), resumed
each time, it ends with exactly the weights, best checkpoint and log of an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlm import checkpoint
from charlm.errors import CharLMError
from charlm.train import train_corpus

from conftest import POEMS, InterruptAt, tiny_config

TINY = ["--embed", "16", "--hidden", "24", "--layers", "2", "--dropout", "0.2", "--seq-len", "16",
        "--batch-size", "4", "--precision", "fp32", "--valid-fraction", "0.2", "--threads", "1"]
STEPS, EVERY = 90, 10


def _train(out: Path, cwd: Path, *extra, env_extra=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONIOENCODING="utf-8", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "charlm", "train", "poems.txt", "--out", str(out),
                             "--max-steps", str(STEPS), "--eval-interval", str(EVERY), "--ema", "0.9", *TINY, *extra],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8")


def _last_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(l)["step"] for l in lines if l.endswith("}")]
    return max(steps, default=0)


def _wait(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """Poll until ready() or the process ends; True if ready() came first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("the training process neither progressed nor ended")


def _saving(out: Path) -> bool:
    """A resume unit is being written: a .resume.* directory that the link does not name yet."""
    live = os.readlink(out / "resume") if (out / "resume").is_symlink() else None
    return any(p.name.startswith(".resume.") and p.name != live and not p.name.endswith(".tmp")
               for p in out.iterdir()) if out.is_dir() else False


def _log(out: Path) -> list[tuple]:
    """The log without wall-clock figures."""
    rows = []
    for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rows.append(tuple(sorted((k, v) for k, v in r.items() if k not in ("elapsed", "chars_per_sec"))))
    return rows


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    (tmp_path / "poems.txt").write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    straight = _train(tmp_path / "straight", tmp_path)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    out = tmp_path / "killed"
    rng = random.Random(20261130)
    kills = []
    # three kills at random steps, the second one inside a save (slowed by the test-only hook)
    for n, target in enumerate(sorted(rng.sample(range(EVERY + 1, STEPS - 5), 3))):
        resuming = checkpoint.has_resume(out) if out.exists() else False
        slow = {"CHARLM_TEST_SLOW_SAVE": "1.5"} if n == 1 else None
        proc = _train(out, tmp_path, *(["--resume"] if resuming else []), env_extra=slow)
        if _wait(proc, (lambda: _saving(out) and _last_step(out) >= target) if slow else
                 (lambda: _last_step(out) >= target)):
            proc.send_signal(signal.SIGKILL)
            kills.append(("in a save" if slow else "at step", _last_step(out)))
        proc.wait(timeout=60)
        assert checkpoint.load(out).metrics["valid_bpc"] > 0  # the best checkpoint is always whole
    assert len(kills) == 3, kills
    final = _train(out, tmp_path, "--resume")
    assert final.wait(timeout=300) == 0, final.stderr.read()

    for unit in ("resume", "best"):
        a = load_file(str(tmp_path / "straight" / unit / "model.safetensors"))
        b = load_file(str(out / unit / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (unit, k, kills)
    ra, rb = (load_file(str(d / "resume" / "state.safetensors")) for d in (tmp_path / "straight", out))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)  # optimizer moments, averaged weights, RNG
    assert _log(out) == _log(tmp_path / "straight")  # no step twice, none missing
    leftovers = sorted(p.name for p in out.iterdir())
    assert len([n for n in leftovers if n.startswith(".resume.")]) == 1, leftovers
    assert not [n for n in leftovers if n.endswith(".tmp")], leftovers


def test_a_stale_resume_state_never_replaces_a_better_best_checkpoint(tmp_path):
    """The old failure: resume/ lagged behind best/, so resuming from it overwrote a better model.
    Here best/ is made newer and better than resume/ by hand; the resumed run must keep it."""
    text = "\n".join(POEMS * 3) + "\n"
    out = tmp_path / "ck"
    train_corpus(text, tiny_config(max_steps=10, eval_interval=10), out)
    meta_path = out / "best" / "config.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["metrics"]["valid_bpc"] = 0.001  # a better model than anything this run can reach
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    res = train_corpus(text, tiny_config(max_steps=30, eval_interval=10), out, resume=True,
                       changed={"train.max_steps": "--max-steps"})
    assert res.steps == 30 and res.best_valid_bpc == 0.001
    assert checkpoint.load(out).metrics["valid_bpc"] == 0.001


def test_resume_cuts_the_log_back_to_the_saved_step(tmp_path):
    text = "\n".join(POEMS * 3) + "\n"
    out = tmp_path / "ck"
    train_corpus(text, tiny_config(max_steps=20, eval_interval=10), out)
    with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:  # what a killed run logged after its save
        f.write(json.dumps({"step": 25, "loss": 1.0}) + "\n" + '{"step": 26, "lo')
    train_corpus(text, tiny_config(), out, resume=True, changed={"train.max_steps": "--max-steps"})
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert 25 not in steps and 26 not in steps
    assert steps == sorted(steps) and steps[-1] == 20


def test_resume_keeps_every_setting_and_a_new_budget_extends_the_run(tmp_path):
    text = "\n".join(POEMS * 3) + "\n"
    out = tmp_path / "ck"
    cfg = tiny_config(max_steps=1000, eval_interval=10, ema=0.9)

    train_corpus(text, cfg, out, callbacks=InterruptAt(12))
    # the hint as printed: no other flags. The CLI's defaults (EMA off, 10 epochs) must not leak in.
    res = train_corpus(text, tiny_config(max_steps=15), out, resume=True, changed={}, callbacks=InterruptAt(20))
    assert res.interrupted == "SIGTERM" and res.steps == 20  # the saved budget of 1000 steps, not 15
    saved = checkpoint.read_resume(out)
    assert saved["config"]["train"]["ema"] == 0.9 and saved["config"]["train"]["max_steps"] == 1000
    with pytest.raises(CharLMError, match="--hidden cannot change when resuming"):
        bigger = tiny_config()
        bigger.model.hidden_size = 99
        train_corpus(text, bigger, out, resume=True, changed={"model.hidden_size": "--hidden"})
    res = train_corpus(text, tiny_config(max_steps=res.steps + 7), out, resume=True,
                       changed={"train.max_steps": "--max-steps"})
    saved = checkpoint.read_resume(out)["config"]["train"]
    assert saved["max_steps"] == res.steps and saved["epochs"] is None and saved["ema"] == 0.9


def test_a_diverging_run_stops_with_a_sentence_and_keeps_the_last_good_state(tmp_path):
    text = "\n".join(POEMS * 3) + "\n"
    out = tmp_path / "ck"
    train_corpus(text, tiny_config(max_steps=10, eval_interval=10), out)
    good = load_file(str(out / "resume" / "model.safetensors"))
    with pytest.raises(CharLMError, match=r"diverged.*steps \d+–\d+.*nothing was saved.*lower --lr \(this run used 1e\+30\)"):
        train_corpus(text, tiny_config(max_steps=100, lr=1e30, eval_interval=50), tmp_path / "wild")
    assert not checkpoint.has_resume(tmp_path / "wild")
    records = [json.loads(l) for l in (tmp_path / "wild" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[-1]["skipped"] >= 8 and records[-1]["loss"] is None  # JSON null, not NaN
    # divergence after the last save: the saved state is left as it was
    cfg = tiny_config(max_steps=40, eval_interval=10)
    cfg.train.lr = 1e30
    with pytest.raises(CharLMError, match="kept"):
        train_corpus(text, cfg, out, resume=True, changed={"train.max_steps": "--max-steps", "train.lr": "--lr"})
    after = load_file(str(out / "resume" / "model.safetensors"))
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_weight_averaging_can_be_switched_on_when_resuming(tmp_path):
    text = "\n".join(POEMS * 3) + "\n"
    out = tmp_path / "ck"
    train_corpus(text, tiny_config(max_steps=10, eval_interval=10), out)
    assert not any(k.startswith("run.ema.") for k in load_file(str(out / "resume" / "state.safetensors")))
    train_corpus(text, tiny_config(max_steps=20, eval_interval=10, ema=0.9), out, resume=True,
                 changed={"train.max_steps": "--max-steps", "train.ema": "--ema"})
    assert checkpoint.read_resume(out)["config"]["train"]["ema"] == 0.9
    saved = load_file(str(out / "resume" / "state.safetensors"))
    weights = load_file(str(out / "resume" / "model.safetensors"))
    # the average started from the step-10 weights, so after 10 more steps it differs from the latest
    assert not torch.equal(saved["run.ema.embed.weight"], weights["embed.weight"])
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "ema_valid_bpc" in [r for r in records if "valid_bpc" in r][-1]  # the last periodic validation
