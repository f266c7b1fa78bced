"""The recurrent family of the text: every cell, the causal convolution and residual layers,
each checked against its equation and run through the command line."""

import json

import pytest
import torch
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.model import CharLM


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=11, embed_dim=5, hidden_size=4, num_layers=1, dropout=0.0, tie_weights=False)
    cfg.update(kw)
    return CharLM(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("cell, f", [("rnn", torch.tanh), ("irnn", torch.relu)])
def test_simple_rnn_step_matches_the_equation(cell, f):
    """h_t = f(U h_{t-1} + W x_t + b)"""
    m = _model(cell=cell)
    h0 = torch.randn(1, 1, 4)
    logits, (h1,) = m(torch.tensor([[3]]), (h0,))
    W, U = m.rnn.weight_ih_l0, m.rnn.weight_hh_l0
    b = m.rnn.bias_ih_l0 + m.rnn.bias_hh_l0
    h = f(U @ h0[0, 0] + W @ m.embed.weight[3] + b)
    torch.testing.assert_close(h1[0, 0], h)
    torch.testing.assert_close(logits[0, 0], m.head.weight @ h + m.head.bias)  # y = V h_t + c


def test_irnn_starts_from_the_identity():
    m = _model(cell="irnn", num_layers=2)
    assert torch.equal(m.rnn.weight_hh_l0, torch.eye(4)) and torch.equal(m.rnn.weight_hh_l1, torch.eye(4))
    assert not m.rnn.bias_ih_l0.any() and not m.rnn.bias_hh_l0.any()


def test_gru_step_matches_the_equations():
    m = _model(cell="gru")
    H = 4
    h0 = torch.randn(1, 1, H)
    _, (h1,) = m(torch.tensor([[2]]), (h0,))
    x, hp = m.embed.weight[2], h0[0, 0]
    gi = m.rnn.weight_ih_l0 @ x + m.rnn.bias_ih_l0
    gh = m.rnn.weight_hh_l0 @ hp + m.rnn.bias_hh_l0
    r = torch.sigmoid(gi[:H] + gh[:H])
    z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
    n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
    torch.testing.assert_close(h1[0, 0], (1 - z) * n + z * hp)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "irnn"])
def test_one_decoding_step_through_the_cell_functions_equals_the_module(cell):
    """run_rnn's single-step path (torch's cell functions, layer by layer) against nn.LSTM/GRU/RNN
    itself, for a stacked network of three layers and a batch of three rows."""
    from charlm.model import run_rnn

    m = _model(cell=cell, num_layers=3, hidden_size=6, embed_dim=5)
    x = torch.randn(3, 1, 5)
    state = tuple(torch.randn(3, 3, 6) for _ in range(2 if cell == "lstm" else 1))
    state = state if cell == "lstm" else state[0]
    with torch.no_grad():
        out, new = run_rnn(m.rnn, x, state)
        ref_out, ref_new = m.rnn(x, state)
    torch.testing.assert_close(out, ref_out)
    for a, b in zip(new if cell == "lstm" else (new,), ref_new if cell == "lstm" else (ref_new,)):
        torch.testing.assert_close(a, b)


def test_training_with_dropout_between_layers_keeps_the_module():
    """The cell path has no dropout between layers, so a training step goes through the module."""
    from charlm.model import run_rnn

    m = _model(num_layers=2, dropout=0.5).train()
    x, state = torch.randn(4, 1, 5), (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
    torch.manual_seed(3)
    out, _ = run_rnn(m.rnn, x, state)
    torch.manual_seed(3)
    ref, _ = m.rnn(x, state)
    torch.manual_seed(3)
    undropped, _ = m.eval().rnn(x, state)
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, undropped)


@pytest.mark.parametrize("kw", [dict(conv_kernel=3), dict(num_layers=2), dict(num_layers=2, cell="irnn"), dict(conv_kernel=4, residual=True, num_layers=3),
                                dict(residual=True, num_layers=2, cell="gru")])
def test_step_by_step_logits_equal_full_sequence_logits(kw):
    m = _model(**kw)
    x = torch.randint(0, 11, (2, 9))
    full, _ = m(x)
    state, steps = None, []
    for t in range(9):
        logits, state = m(x[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full)


def test_convolution_is_causal():
    m = _model(conv_kernel=3)
    x = torch.randint(0, 11, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 11  # change the future from t = 6 on
    a, _ = m(x)
    b, _ = m(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6], b[:, 6])


def test_convolution_is_depthwise_then_pointwise():
    m = _model(conv_kernel=3)
    assert m.conv.depthwise.groups == 5 and m.conv.depthwise.weight.shape == (5, 1, 3)
    assert m.conv.pointwise.weight.shape == (5, 5, 1)


@pytest.mark.parametrize("extra", [["--cell", "gru"], ["--cell", "rnn"], ["--cell", "irnn"],
                                   ["--cell", "lstm", "--conv-kernel", "3"], ["--residual", "--layers", "2"]])
def test_every_variant_trains_reloads_generates_and_evaluates(extra, corpus_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ck"
    args = ["train", str(corpus_file), "--out", str(out), "--max-steps", "6", "--eval-interval", "3",
            "--embed", "8", "--hidden", "12", "--seq-len", "12", "--batch-size", "4", "--precision", "fp32", *extra]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.stderr
    ck = checkpoint.load(out)
    assert ck.config.model.cell == (extra[1] if extra[0] == "--cell" else "lstm")
    # reload is bit-identical
    x = torch.randint(0, len(ck.vocab), (2, 7))
    again = checkpoint.load(out)
    assert torch.equal(ck.model(x)[0], again.model(x)[0])
    r = runner.invoke(app, ["generate", "--checkpoint", str(out), "--seed", "1", "--max-chars", "10", "-n", "2"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 2
    r = runner.invoke(app, ["eval", "--checkpoint", str(out), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["chars"] > 0


def test_bad_cell_is_a_clear_error(corpus_file):
    r = CliRunner().invoke(app, ["train", str(corpus_file), "--cell", "transformer"])
    assert r.exit_code != 0 and "--cell must be one of" in r.stderr


def test_locked_dropout_shares_one_mask_over_time():
    from charlm.model import locked_dropout

    torch.manual_seed(0)
    x = torch.ones(3, 50, 8)
    y = locked_dropout(x, 0.5, training=True)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same at every step
    assert (y == 0).any() and set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_embedding_dropout_drops_whole_characters():
    from charlm.model import embedding_dropout

    torch.manual_seed(1)
    emb = torch.nn.Embedding(20, 6)
    x = torch.randint(0, 20, (4, 30))
    e = embedding_dropout(emb, x, 0.5, training=True)
    for ch in x.unique():
        rows = e[x == ch]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # every occurrence dropped or kept together
    zeroed = {int(ch) for ch in x.unique() if not e[x == ch].any()}
    assert zeroed and all(torch.allclose(e[x == ch][0], 2 * emb.weight[ch]) for ch in x.unique().tolist() if ch not in zeroed)


def test_locked_dropout_model_is_deterministic_in_eval_and_trains(corpus_file, tmp_path):
    m = _model(num_layers=2, locked_dropout=True, embed_dropout=0.1, dropout=0.3)
    x = torch.randint(0, 11, (2, 9))
    assert torch.equal(m(x)[0], m(x)[0])
    r = CliRunner().invoke(app, ["train", str(corpus_file), "--out", str(tmp_path / "ck"), "--max-steps", "4",
                                 "--embed", "8", "--hidden", "8", "--seq-len", "12", "--batch-size", "4",
                                 "--locked-dropout", "--embed-dropout", "0.1", "--precision", "fp32"])
    assert r.exit_code == 0, r.stderr
    assert checkpoint.load(tmp_path / "ck").config.model.locked_dropout


def test_adaptive_softmax_gives_exact_normalised_log_probabilities(corpus_file, tmp_path):
    m = _model(vocab_size=40, softmax="adaptive", cutoffs=[10, 25])
    assert m.head is None and not m.config.tie_weights
    x = torch.randint(0, 40, (2, 6))
    logp, _ = m(x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 6))  # a distribution over all 40
    y = torch.randint(0, 40, (2, 6))
    loss, _ = m.loss(x, y)
    ref = -logp.reshape(-1, 40).gather(1, y.reshape(-1, 1)).mean()
    torch.testing.assert_close(loss, ref)  # the fast training loss equals the exact one
    r = CliRunner().invoke(app, ["train", str(corpus_file), "--out", str(tmp_path / "ck"), "--max-steps", "4",
                                 "--embed", "8", "--hidden", "8", "--seq-len", "12", "--batch-size", "4",
                                 "--softmax", "adaptive", "--precision", "fp32"])
    assert r.exit_code == 0, r.stderr
    r = CliRunner().invoke(app, ["eval", "--checkpoint", str(tmp_path / "ck"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["bpc"] > 0
    r = CliRunner().invoke(app, ["generate", "--checkpoint", str(tmp_path / "ck"), "--seed", "0", "--max-chars", "5"])
    assert r.exit_code == 0 and r.stdout.strip()


@pytest.mark.parametrize("cell", ["gru", "rnn", "irnn"])
def test_each_cell_through_the_command_line_as_a_subprocess(cell, corpus_file, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONIOENCODING="utf-8")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "charlm", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, encoding="utf-8", timeout=300)

    out = tmp_path / "ck"
    r = cli("train", corpus_file, "--out", out, "--cell", cell, "--max-steps", 6, "--embed", 8, "--hidden", 12,
            "--seq-len", 12, "--batch-size", 4, "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    x = torch.randint(0, len(checkpoint.load(out).vocab), (2, 5))
    assert torch.equal(checkpoint.load(out).model(x)[0], checkpoint.load(out).model(x)[0])
    r = cli("generate", "--checkpoint", out, "--seed", 2, "--max-chars", 8, "-n", 2, "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["samples"]) == 2
    r = cli("eval", "--checkpoint", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bpc"] > 0
