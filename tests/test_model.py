import math

import torch
import torch.nn.functional as F

from charlm.config import ModelConfig
from charlm.model import CharLM


def test_one_lstm_step_matches_the_gate_equations():
    """f, i, o, c̃, c, h computed by hand from the module's weights (PyTorch gate order i, f, g, o)."""
    torch.manual_seed(0)
    m = CharLM(ModelConfig(vocab_size=11, embed_dim=5, hidden_size=4, num_layers=1, dropout=0.0, tie_weights=False))
    m.eval()
    H = 4
    x = torch.tensor([[3]])
    h0 = torch.randn(1, 1, H)
    c0 = torch.randn(1, 1, H)
    logits, (h1, c1) = m(x, (h0, c0))

    e = m.embed.weight[3]
    W, U = m.rnn.weight_ih_l0, m.rnn.weight_hh_l0
    b = m.rnn.bias_ih_l0 + m.rnn.bias_hh_l0
    z = W @ e + U @ h0[0, 0] + b
    i = torch.sigmoid(z[0:H])
    f = torch.sigmoid(z[H : 2 * H])
    c_tilde = torch.tanh(z[2 * H : 3 * H])
    o = torch.sigmoid(z[3 * H : 4 * H])
    c = f * c0[0, 0] + i * c_tilde  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t
    h = o * torch.tanh(c)  # h_t = o_t ⊙ tanh(c_t)
    torch.testing.assert_close(c1[0, 0], c)
    torch.testing.assert_close(h1[0, 0], h)
    # output layer y = softmax(V h_t + c)
    torch.testing.assert_close(logits[0, 0], m.head.weight @ h + m.head.bias)


def test_forget_gate_bias_starts_at_one():
    m = CharLM(ModelConfig(vocab_size=7, embed_dim=4, hidden_size=3, num_layers=2, dropout=0.0))
    assert torch.all(m.rnn.bias_ih_l1[3:6] == 1.0) and torch.all(m.rnn.bias_hh_l1 == 0.0)


def test_tied_weights_share_one_matrix_with_a_projection():
    m = CharLM(ModelConfig(vocab_size=9, embed_dim=4, hidden_size=6, num_layers=1, tie_weights=True))
    assert m.head.weight is m.embed.weight
    assert m.proj is not None and m.proj.weight.shape == (4, 6)
    logits, _ = m(torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, 9)


def test_initial_loss_is_about_log_vocab_size():
    torch.manual_seed(0)
    V = 500
    m = CharLM(ModelConfig(vocab_size=V, embed_dim=32, hidden_size=32, num_layers=1, dropout=0.0))
    x = torch.randint(0, V, (4, 20))
    logits, _ = m(x)
    loss = F.cross_entropy(logits.reshape(-1, V), torch.randint(0, V, (80,)))
    assert abs(loss.item() - math.log(V)) < 0.1


def test_carried_state_equals_one_long_pass():
    torch.manual_seed(1)
    m = CharLM(ModelConfig(vocab_size=13, embed_dim=8, hidden_size=8, num_layers=2, dropout=0.0)).eval()
    x = torch.randint(0, 13, (2, 10))
    full, _ = m(x)
    a, st = m(x[:, :4])
    b, _ = m(x[:, 4:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full)
