import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file

from charlm import checkpoint
from charlm.config import TrainConfig
from charlm.errors import CharLMError
from charlm.train import Callbacks, lr_at, train_corpus

from conftest import POEMS, InterruptAt, tiny_config


def _text():
    return "\n".join(POEMS * 3) + "\n"


def test_training_reduces_loss_and_keeps_the_best_checkpoint(tmp_path):
    losses = []

    class Record(Callbacks):
        def on_step(self, e):
            losses.append(e.loss)

    res = train_corpus(_text(), tiny_config(max_steps=60), tmp_path / "ck", callbacks=Record())
    assert res.steps == 60
    # the first step sits near ln |V|; training brings it well down
    ck = checkpoint.load(tmp_path / "ck")
    assert abs(losses[0] - math.log(len(ck.vocab))) < 0.3
    assert sum(losses[-10:]) / 10 < losses[0] - 0.4
    records = [json.loads(l) for l in (tmp_path / "ck" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    valid = [r["valid_bpc"] for r in records if "valid_bpc" in r]
    assert len(valid) == 6
    assert ck.metrics["valid_bpc"] == pytest.approx(min(valid))


def test_a_tiny_model_overfits_a_tiny_corpus(tmp_path):
    cfg = tiny_config(max_steps=150, lr=2e-2, valid_fraction=0.1)
    cfg.model.hidden_size = 64
    res = train_corpus("\n".join(POEMS[:3] * 20) + "\n", cfg, tmp_path / "ck")
    assert res.last_train_bpc < 0.5  # three memorised poems cost almost nothing


def test_lr_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=1000)
    assert lr_at(0, 0.0, cfg) == pytest.approx(0.1)
    assert lr_at(9, 0.01, cfg) == pytest.approx(1.0, rel=1e-3)
    assert lr_at(500, 0.5, cfg) == pytest.approx(0.55)
    assert lr_at(999, 1.0, cfg) == pytest.approx(0.1)


def test_corpus_shorter_than_one_sequence_is_refused(tmp_path):
    with pytest.raises(CharLMError, match="too short"):
        train_corpus("春眠\n不觉晓\n", tiny_config(seq_len=64), tmp_path / "ck")


@pytest.mark.parametrize("variant", [{}, {"cell": "gru", "conv_kernel": 3, "residual": True}, {"ema": 0.9}])
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, variant):
    """SIGINT saves a resumable checkpoint; --resume continues with the same data order, RNG
    state (dropout), optimizer moments and carried hidden state, to bit-identical weights."""
    def cfg():
        c = tiny_config(max_steps=24, eval_interval=5)
        c.model.dropout = 0.3
        c.model.num_layers = 2
        for k, v in variant.items():
            setattr(c.train if k == "ema" else c.model, k, v)
        return c

    straight = train_corpus(_text(), cfg(), tmp_path / "a")
    assert straight.interrupted is None
    before = signal.getsignal(signal.SIGTERM)
    part = train_corpus(_text(), cfg(), tmp_path / "b", callbacks=InterruptAt(13))
    assert part.interrupted == "SIGTERM" and part.steps == 13
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back as it was
    resumed = train_corpus(_text(), cfg(), tmp_path / "b", resume=True)
    assert resumed.steps == 24
    wa = load_file(str(tmp_path / "a" / "resume" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "resume" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert straight.best_valid_bpc == resumed.best_valid_bpc


def test_resume_refuses_a_different_corpus(tmp_path):
    train_corpus(_text(), tiny_config(max_steps=5), tmp_path / "ck")
    with pytest.raises(CharLMError, match="sha256"):
        train_corpus(_text() + "又一首诗，不同的文本。\n", tiny_config(max_steps=10), tmp_path / "ck", resume=True)


def test_resume_without_state_is_a_clear_error(tmp_path):
    with pytest.raises(CharLMError, match="nothing to resume"):
        train_corpus(_text(), tiny_config(), tmp_path / "none", resume=True)


def test_any_text_trains(tmp_path):
    prose = ("It was the best of times, it was the worst of times. " * 40 + "\n") * 3
    res = train_corpus(prose, tiny_config(max_steps=10), tmp_path / "ck")
    ck = checkpoint.load(tmp_path / "ck")
    assert res.steps == 10 and ck.vocab.script == "none" and "w" in ck.vocab


def test_weight_averaging_is_validated_and_kept_when_better(tmp_path):
    cfg = tiny_config(max_steps=30, eval_interval=10, ema=0.8)
    train_corpus(_text(), cfg, tmp_path / "ck")
    records = [json.loads(l) for l in (tmp_path / "ck" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    valid = [r for r in records if "valid_bpc" in r]
    assert all("ema_valid_bpc" in r for r in valid)
    best = min(min(r["valid_bpc"], r["ema_valid_bpc"]) for r in valid)
    ck = checkpoint.load(tmp_path / "ck")
    assert ck.metrics["valid_bpc"] == pytest.approx(best)
    assert isinstance(ck.metrics["averaged_weights"], bool)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_a_hangup_stops_the_run_like_sigterm_unless_it_was_ignored(tmp_path, sig):
    before = signal.getsignal(sig)
    try:
        signal.signal(sig, lambda *a: None)  # an ordinary handler: the run takes the signal over
        res = train_corpus(_text(), tiny_config(max_steps=20), tmp_path / "a", callbacks=InterruptAt(5, sig))
        assert res.interrupted == signal.Signals(sig).name and res.steps == 5
        assert checkpoint.read_resume(tmp_path / "a")["step"] == 5
        # ignored when the run starts (nohup, a background job): it stays ignored, the run goes on
        signal.signal(sig, signal.SIG_IGN)
        res = train_corpus(_text(), tiny_config(max_steps=20), tmp_path / "b", callbacks=InterruptAt(5, sig))
        assert res.interrupted is None and res.steps == 20
        assert signal.getsignal(sig) is signal.SIG_IGN
    finally:
        signal.signal(sig, before)
