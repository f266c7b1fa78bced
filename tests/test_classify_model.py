"""The classifier head against the text's equation, p(y | x) = softmax(V s + c), with s the final
recurrent state h_T (pooling "last") or the mean of h_1 … h_T ("mean"), recomputed by hand from the
module's weights; and the checkpoint round trip."""

import math

import pytest
import torch

from charlm import checkpoint
from charlm.classifier import CharClassifier, ClassifierConfig, classifier_shapes
from charlm.config import Config, ModelConfig, TrainConfig
from charlm.errors import CharLMError
from charlm.vocab import Vocab


def _lstm_states(model: CharClassifier, ids: list[int]) -> list[torch.Tensor]:
    """h_1 … h_T of a one-layer LSTM, step by step from the gate equations (charlm.model)."""
    rnn, E = model.encoder.rnn, model.encoder.embed.weight
    W, U = rnn.weight_ih_l0, rnn.weight_hh_l0
    b = rnn.bias_ih_l0 + rnn.bias_hh_l0
    H = rnn.hidden_size
    h, c, out = torch.zeros(H), torch.zeros(H), []
    for t in ids:
        z = W @ E[t] + U @ h + b
        i, f, g, o = z[:H].sigmoid(), z[H:2 * H].sigmoid(), z[2 * H:3 * H].tanh(), z[3 * H:].sigmoid()
        c = f * c + i * g
        h = o * c.tanh()
        out.append(h)
    return out


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_label_distribution_is_softmax_of_V_s_plus_c(pooling):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=9, embed_dim=5, hidden_size=6, num_layers=1, dropout=0.0, tie_weights=False)
    model = CharClassifier(config, ClassifierConfig(["tang", "song", "yuan"], pooling)).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))  # c ≠ 0, so the bias is checked too
    poems = [[1, 4, 2, 7, 3], [1, 8, 5]]
    x = torch.tensor([poems[0], poems[1] + [1, 1]])  # right-padded
    lengths = torch.tensor([5, 3])
    got = model.probabilities(x, lengths)
    for row, ids in zip(got, poems):
        hs = _lstm_states(model, ids)
        s = hs[-1] if pooling == "last" else torch.stack(hs).mean(0)
        logits = model.head.weight @ s + model.head.bias  # V s + c
        expected = logits.exp() / logits.exp().sum()  # softmax
        torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)
    assert not model.training
    # padding is never read: the same poem alone gives the same distribution
    torch.testing.assert_close(model.probabilities(torch.tensor([poems[1]]), torch.tensor([3]))[0], got[1])


def test_loss_is_the_mean_cross_entropy_of_the_labels():
    torch.manual_seed(1)
    config = ModelConfig(vocab_size=7, embed_dim=4, hidden_size=4, num_layers=1, dropout=0.0)
    model = CharClassifier(config, ClassifierConfig(["a", "b"])).eval()
    x, lengths, y = torch.tensor([[1, 2, 3], [1, 4, 1]]), torch.tensor([3, 2]), torch.tensor([1, 0])
    loss, state = model.loss(x, (lengths, y))
    p = model.probabilities(x, lengths)
    assert state == ()
    assert loss.item() == pytest.approx(-(math.log(p[0, 1]) + math.log(p[1, 0])) / 2, rel=1e-5)


def test_save_load_round_trip_and_shapes(tmp_path):
    torch.manual_seed(2)
    vocab = Vocab(["<unk>", "\n", "春", "月"])
    mc = ModelConfig(vocab_size=4, embed_dim=6, hidden_size=8, num_layers=2, dropout=0.0, tie_weights=True)
    cc = ClassifierConfig(["song", "tang"], "mean")
    model = CharClassifier(mc, cc)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.head.weight"} == \
        classifier_shapes(mc, cc)
    checkpoint.save(tmp_path / "c", model, Config(mc, TrainConfig(max_steps=1)), vocab, classifier=cc.to_dict())
    loaded = checkpoint.load_classifier(tmp_path / "c")
    x, lengths = torch.tensor([[1, 2, 3, 2]]), torch.tensor([4])
    torch.testing.assert_close(loaded.model.probabilities(x, lengths), model.probabilities(x, lengths))
    assert loaded.classifier == cc
    with pytest.raises(CharLMError, match="is a classifier, not a language model"):
        checkpoint.load(tmp_path / "c")


def test_a_config_json_with_bad_labels_is_one_sentence(tmp_path):
    import json

    mc = ModelConfig(vocab_size=4, embed_dim=4, hidden_size=4, num_layers=1)
    model = CharClassifier(mc, ClassifierConfig(["a", "b"]))
    checkpoint.save(tmp_path / "c", model, Config(mc, TrainConfig(max_steps=1)), Vocab(["<unk>", "\n", "x", "y"]),
                    classifier={"labels": ["a", "b"], "pooling": "last"})
    path = checkpoint.config_path(tmp_path / "c")
    for bad, message in ((["a"], "at least two labels"), (["a", "a"], "distinct"), ("ab", "list of strings"),
                         (["a", "b", "c"], "shape")):
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["classifier"]["labels"] = bad
        path.write_text(json.dumps(meta), encoding="utf-8")
        with pytest.raises(CharLMError, match=message):
            checkpoint.load_classifier(tmp_path / "c")
