"""charlm train --tensorboard DIR: the curves in TensorBoard's event files when the package is there,
one sentence naming the extra to install when it is not. The suite never needs tensorboard."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from typer.testing import CliRunner

from charlm.cli import app
from charlm.train import Callbacks, MultiCallbacks, train_corpus

from conftest import POEMS, tiny_config

runner = CliRunner()
TINY = ["--embed", "16", "--hidden", "24", "--layers", "1", "--seq-len", "16", "--batch-size", "4",
        "--precision", "fp32", "--valid-fraction", "0.2"]
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard is not installed (pip install 'charlm[tensorboard]')")
def test_tensorboard_gets_the_training_and_validation_curves(corpus_file, tmp_path):
    out, board = tmp_path / "ck", tmp_path / "tb"
    r = run("train", corpus_file, "--out", out, "--max-steps", 12, "--eval-interval", 6, "--tensorboard", board, *TINY)
    assert r.exit_code == 0, r.stderr
    curves = _scalars(board)
    assert set(curves) == {"train/loss", "train/bpc", "train/lr", "train/chars_per_sec",
                           "valid/loss", "valid/bpc", "valid/best_bpc"}
    assert [step for step, _ in curves["train/bpc"]] == list(range(1, 13))
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    valid = [(rec["step"], rec["valid_bpc"]) for rec in log if "valid_bpc" in rec]
    assert [s for s, _ in curves["valid/bpc"]] == [s for s, _ in valid] == [6, 12]
    assert [v for _, v in curves["valid/bpc"]] == pytest.approx([v for _, v in valid], rel=1e-6)
    trained = {rec["step"]: rec["bpc"] for rec in log if "bpc" in rec}
    assert dict(curves["train/bpc"])[10] == pytest.approx(trained[10], rel=1e-6)

    # Resumed for more steps: the same folder gets the rest of the curve.
    r = run("train", corpus_file, "--out", out, "--resume", "--max-steps", 18, "--tensorboard", board)
    assert r.exit_code == 0, r.stderr
    curves = _scalars(board)
    assert [step for step, _ in curves["valid/bpc"]] == [6, 12, 18]
    assert [step for step, _ in curves["train/bpc"]] == list(range(1, 19))  # each step once


def test_without_tensorboard_one_sentence_names_the_extra(corpus_file, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    out = tmp_path / "ck"
    r = run("train", corpus_file, "--out", out, "--max-steps", 4, "--tensorboard", tmp_path / "tb", *TINY)
    assert r.exit_code == 1
    assert r.stderr.strip() == ("error: --tensorboard needs the tensorboard package, which is not installed: "
                                "pip install 'charlm[tensorboard]'")
    assert not out.exists()  # refused before any training


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard is not installed")
def test_an_unwritable_tensorboard_folder_is_one_sentence(corpus_file, tmp_path):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    r = run("train", corpus_file, "--out", tmp_path / "ck", "--max-steps", 4, "--tensorboard", tmp_path / "file" / "tb", *TINY)
    assert r.exit_code == 1 and r.stderr.startswith("error: cannot write the TensorBoard log to ")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


class Recorder(Callbacks):
    def __init__(self, seen: list, name: str) -> None:
        self.seen, self.name = seen, name

    def on_start(self, info):
        self.seen.append((self.name, "start", info.resumed_from))

    def on_step(self, event):
        self.seen.append((self.name, "step", event.step))

    def on_valid(self, event, model, vocab):
        self.seen.append((self.name, "valid", event.step))


def test_multi_callbacks_tell_each_callback_everything_in_order(tmp_path):
    seen: list = []
    text = "\n".join(POEMS * 3) + "\n"
    train_corpus(text, tiny_config(max_steps=4, eval_interval=2), tmp_path / "ck",
                 callbacks=MultiCallbacks(Recorder(seen, "a"), Recorder(seen, "b")))
    events = [("start", 0), ("step", 1), ("step", 2), ("valid", 2), ("step", 3), ("step", 4), ("valid", 4)]
    assert seen == [(who, kind, n) for kind, n in events for who in "ab"]
