import json
import os

import pytest
import torch

from charlm import checkpoint
from charlm.config import Config, ModelConfig
from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.vocab import Vocab


def _model_and_vocab(tie=True):
    vocab = Vocab.from_text("春眠不觉晓，处处闻啼鸟。")
    config = Config(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=12, num_layers=2, tie_weights=tie))
    torch.manual_seed(0)
    return CharLM(config.model), config, vocab


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_gives_bit_identical_logits(tmp_path, tie):
    model, config, vocab = _model_and_vocab(tie)
    model.eval()
    checkpoint.save(tmp_path / "ck", model, config, vocab, metrics={"valid_bpc": 1.5})
    loaded = checkpoint.load(tmp_path / "ck")
    x = torch.randint(0, len(vocab), (3, 7))
    assert torch.equal(model(x)[0], loaded.model(x)[0])
    assert loaded.vocab == vocab and loaded.metrics == {"valid_bpc": 1.5}
    if tie:
        assert loaded.model.head.weight is loaded.model.embed.weight


def test_checkpoint_holds_no_pickles_and_no_temp_files(tmp_path):
    model, config, vocab = _model_and_vocab()
    checkpoint.save(tmp_path / "ck", model, config, vocab)
    unit = os.readlink(tmp_path / "ck" / "best")
    assert sorted(os.listdir(tmp_path / "ck")) == sorted([unit, "best"]) and unit.startswith(".best.")
    names = sorted(os.listdir(tmp_path / "ck" / "best"))
    assert names == ["config.json", "model.safetensors", "vocab.json"]
    meta = json.loads((tmp_path / "ck" / "best" / "config.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == 1 and "torch" in meta["versions"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "best" / "model.safetensors"), "pt") as f:
        assert f.metadata()["format"] == "charlm"


def test_unknown_format_version_is_refused(tmp_path):
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab)
    meta = json.loads((d / "best" / "config.json").read_text(encoding="utf-8"))
    meta["format_version"] = 2
    (d / "best" / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CharLMError, match="format version 2"):
        checkpoint.load(d)


def test_corrupt_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CharLMError, match="does not exist"):
        checkpoint.load(tmp_path / "nothing")
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab)
    (d / "best" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CharLMError, match="corrupt weights"):
        checkpoint.load(d)
    (d / "best" / "config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(CharLMError, match="corrupt"):
        checkpoint.load(d)


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old", encoding="utf-8")

    def explode(tmp):
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint._atomic_write(target, explode)
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_default_checkpoint_prefers_explicit_then_local_then_shipped(tmp_path, monkeypatch):
    model, config, vocab = _model_and_vocab()
    monkeypatch.chdir(tmp_path)
    assert checkpoint.find_default("x")[0].name == "x"
    old = checkpoint.save(tmp_path / "checkpoints" / "old", model, config, vocab)
    new = checkpoint.save(tmp_path / "checkpoints" / "new", model, config, vocab)
    os.utime(old / "best" / "config.json", (1, 1))
    assert checkpoint.find_default(None)[0].resolve() == new.resolve()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(checkpoint, "shipped_checkpoint", lambda: new)
    path, why = checkpoint.find_default(None)
    assert path == new and "shipped" in why


def _files(unit):
    return {p.name: p.read_bytes() for p in unit.iterdir()}


def test_a_failed_save_leaves_the_previous_unit_whole(tmp_path):
    """A crash or a full disk in the middle of a save: the link still names the old unit, and
    nothing of the half-written one is left behind."""
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab, metrics={"valid_bpc": 2.0})
    before = _files(d / "best")

    def half(unit):
        (unit / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CharLMError, match="No space left on device.*last complete one"):
        checkpoint.write_unit(d, checkpoint.BEST, half)
    assert _files(d / "best") == before
    assert sorted(os.listdir(d)) == sorted(["best", os.readlink(d / "best")])
    assert checkpoint.load(d).metrics == {"valid_bpc": 2.0}


def test_a_new_save_switches_every_file_at_once_and_keeps_one_previous_unit(tmp_path):
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab, metrics={"valid_bpc": 2.0})
    first = os.readlink(d / "best")
    checkpoint.save(d, model, config, vocab, metrics={"valid_bpc": 1.0})
    second = os.readlink(d / "best")
    checkpoint.save(d, model, config, vocab, metrics={"valid_bpc": 0.5})
    third = os.readlink(d / "best")
    assert len({first, second, third}) == 3
    # a reader that resolved the link just before the last switch can still read its unit
    assert sorted(os.listdir(d)) == sorted(["best", second, third])
    assert checkpoint.load(d).metrics == {"valid_bpc": 0.5}


def test_stray_files_of_an_interrupted_save_are_removed(tmp_path):
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab)
    (d / ".best.orphan").mkdir()
    (d / ".best.orphan" / "model.safetensors").write_bytes(b"x")
    (d / ".model.safetensors.abc.tmp").write_bytes(b"x")
    (d / ".best.link.tmp").symlink_to(".best.orphan")
    checkpoint.remove_stale(d)
    assert sorted(os.listdir(d)) == sorted(["best", os.readlink(d / "best")])


def test_a_best_link_pointing_outside_is_refused(tmp_path):
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab)
    (d / "best").unlink()
    (d / "best").symlink_to("/etc")
    with pytest.raises(CharLMError, match="points outside"):
        checkpoint.load(d)


def test_one_writer_per_directory(tmp_path):
    with checkpoint.exclusive(tmp_path):
        with pytest.raises(CharLMError, match=f"process {os.getpid()}.*--out"):
            with checkpoint.exclusive(tmp_path):
                pass
    with checkpoint.exclusive(tmp_path):  # released at the end of the run
        pass


def test_saving_the_resume_state_keeps_the_previous_best_unit_for_readers(tmp_path):
    model, config, vocab = _model_and_vocab()
    d = checkpoint.save(tmp_path / "ck", model, config, vocab)
    first = os.readlink(d / "best")
    checkpoint.save(d, model, config, vocab)
    opt = torch.optim.AdamW(model.parameters())
    checkpoint.save_resume(d, model, opt, {"step": 1}, {}, vocab, None)
    assert first in os.listdir(d)  # a reader that resolved best/ a moment ago can still finish
