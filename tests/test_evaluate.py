import math

import pytest
import torch
import torch.nn.functional as F

from charlm import checkpoint
from charlm.data import join_poems
from charlm.evaluate import evaluate, score, unigram_bpc

from conftest import POEMS


def test_score_equals_one_full_pass(trained):
    """Rows, windows and burn-in change nothing: every character is scored once, from all of its context."""
    ck = checkpoint.load(trained)
    ids = torch.tensor(ck.vocab.encode(join_poems(POEMS[:6])))
    logits, _ = ck.model(ids[None, :-1])
    ref = F.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    acc = (logits[0].argmax(-1) == ids[1:]).sum().item()
    for rows, seq_len, burn_in in [(1, 7, 0), (4, 5, 1000), (3, 64, 1000)]:
        s = score(ck.model, ids, rows=rows, seq_len=seq_len, burn_in=burn_in)
        assert s.chars == ids.numel() - 1
        assert s.nll == pytest.approx(ref, rel=1e-5)
        assert s.correct == acc


def test_metrics_relate_as_defined(trained):
    ck = checkpoint.load(trained)
    r = evaluate(ck.model, ck.vocab, "\n".join(POEMS[:4]) + "\n", ck.counts)
    assert r.bpc == pytest.approx(r.loss / math.log(2))
    assert r.perplexity == pytest.approx(math.exp(r.loss))
    assert 0 <= r.accuracy <= 1 and r.chars == sum(len(p) + 1 for p in POEMS[:4])
    assert r.unknown_chars == 0 and r.unigram_bpc is not None and r.known_bpc == pytest.approx(r.bpc)


def test_unknown_characters_are_counted(trained):
    ck = checkpoint.load(trained)
    r = evaluate(ck.model, ck.vocab, "龘龘春\n", ck.counts)
    assert r.unknown_chars == 2 and r.chars == 4
    # known_bpc leaves the two unknown targets out: it is the bpc of "春" and the newline alone
    ids = torch.tensor(ck.vocab.encode("\n龘龘春\n"))
    with torch.no_grad():
        logp = torch.log_softmax(ck.model(ids[:-1].unsqueeze(0))[0].float(), -1)[0]
    known = -(logp[2, ids[3]] + logp[3, ids[4]]).item() / 2 / math.log(2)
    assert r.known_bpc == pytest.approx(known, rel=1e-4)


def test_unigram_baseline():
    # counts 3 and 1 (+1 smoothing → 4/6, 2/6); text "a a b" scores -log2 of those
    ids = torch.tensor([9, 0, 0, 1])
    expected = -(2 * math.log2(4 / 6) + math.log2(2 / 6)) / 3
    assert unigram_bpc([3, 1], ids) == pytest.approx(expected)
