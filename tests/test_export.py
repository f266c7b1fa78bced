"""charlm export: a checkpoint copied flat into a folder of its own, optionally in bfloat16."""

import json
import shutil

import torch
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app

runner = CliRunner()


def _logits(ck):
    ids = torch.tensor([[0, *ck.vocab.encode("白日依山尽")]])
    with torch.no_grad():
        return ck.model.eval()(ids)[0]


def test_export_copies_the_best_flat_and_bf16_halves_the_weights(trained, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    r = runner.invoke(app, ["export", str(trained), str(full)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", str(trained), str(half), "--bf16"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in full.iterdir()) == ["config.json", "lines.txt", "metrics.jsonl", "model.safetensors",
                                                      "vocab.json"]  # no optimizer state, no links
    src, a, b = checkpoint.load(trained), checkpoint.load(full), checkpoint.load(half)
    torch.testing.assert_close(_logits(a), _logits(src), rtol=0, atol=0)
    assert not torch.equal(_logits(b), _logits(src))
    torch.testing.assert_close(_logits(b), _logits(src), rtol=0.05, atol=0.05)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    assert b.model.embed.weight.dtype == torch.float32  # loaded into the model's own precision


def test_export_refuses_an_existing_folder_and_a_corpus_with_other_text(trained, tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine", encoding="utf-8")
    r = runner.invoke(app, ["export", str(trained), str(dest)])
    assert r.exit_code == 1 and "already exists" in r.output and (dest / "keep.txt").read_text() == "mine"
    corpus = checkpoint.load(trained).corpus["path"]
    other = tmp_path / "other.txt"
    other.write_text("床前明月光，疑是地上霜。\n", encoding="utf-8")
    r = runner.invoke(app, ["export", str(trained), str(tmp_path / "x"), "--corpus", str(other)])
    assert r.exit_code == 1 and "not the text" in r.output and not (tmp_path / "x").exists()
    moved = tmp_path / "moved.txt"
    shutil.copyfile(corpus, moved)
    r = runner.invoke(app, ["export", str(trained), str(tmp_path / "y"), "--corpus", str(moved)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "y" / "config.json").read_text(encoding="utf-8"))["corpus"]["path"] == str(moved)
    assert not list(tmp_path.glob(".*.tmp"))
