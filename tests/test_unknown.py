"""Teaching the model unseen characters: rare characters read as <unk> during training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charlm.checkpoint import load
from charlm.config import Config, parse_unk_alpha
from conftest import pack

from charlm.data import epoch_stream, good_turing_alpha, unk_probabilities
from charlm.errors import CharLMError
from charlm.evaluate import score
from charlm.train import fit, prepare
from charlm.vocab import EOS_ID, UNK_ID

from conftest import POEMS, tiny_config

KEEP = (UNK_ID, EOS_ID)


def test_replacement_probability_is_alpha_over_alpha_plus_count():
    counts = [0, 50, 1, 2, 10, 0]
    p = unk_probabilities(counts, 0.5, KEEP)
    assert p[UNK_ID] == 0 and p[EOS_ID] == 0  # never replaced
    assert p[2] == pytest.approx(0.5 / 1.5) and p[3] == pytest.approx(0.5 / 2.5)
    assert p[4] == pytest.approx(0.5 / 10.5) and p[5] == 0  # unseen ids do not occur anyway
    assert not unk_probabilities(counts, 0.0, KEEP).any()


def test_good_turing_alpha_matches_the_share_of_characters_seen_once():
    rng = np.random.default_rng(0)
    counts = [0, 100] + list(rng.zipf(1.5, size=3000).clip(max=10_000))
    alpha = good_turing_alpha(counts, KEEP)
    c = np.array(counts, dtype=float)
    c[list(KEEP)] = 0
    n1, n = float((c == 1).sum()), c.sum()
    rate = (unk_probabilities(counts, alpha, KEEP) * c).sum() / n
    assert alpha > 0 and rate == pytest.approx(n1 / n, rel=1e-6)
    # no character seen once (e.g. --min-count 2): nothing to estimate, replacement is off
    assert good_turing_alpha([5, 100, 2, 3, 7], KEEP) == 0.0


def test_replacement_is_fixed_by_seed_and_epoch_and_touches_only_rare_ids():
    train_ids = pack([[2, 3, 4, 5] * 50 for _ in range(40)])
    p = np.zeros(6)
    p[5] = 0.3  # only id 5 may be replaced
    a = epoch_stream(*train_ids, EOS_ID, 0, 7, 4, 8, p, UNK_ID).rows
    b = epoch_stream(*train_ids, EOS_ID, 0, 7, 4, 8, p, UNK_ID).rows
    c = epoch_stream(*train_ids, EOS_ID, 1, 7, 4, 8, p, UNK_ID).rows
    plain = epoch_stream(*train_ids, EOS_ID, 0, 7, 4, 8).rows
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = a != plain
    assert set(plain[changed].tolist()) == {5} and set(a[changed].tolist()) == {UNK_ID}
    share = changed.sum().item() / (plain == 5).sum().item()
    assert 0.25 < share < 0.35  # 2,000 draws of p = 0.3


def test_configs_written_before_the_option_resume_without_replacement():
    data = Config().to_dict()
    assert data["train"]["unk_alpha"] is None and Config.from_dict(data).train.unk_alpha is None
    del data["train"]["unk_alpha"]
    assert Config.from_dict(data).train.unk_alpha == 0.0


def test_parse_unk_alpha():
    assert parse_unk_alpha("auto") is None and parse_unk_alpha(" 0.25 ") == 0.25 and parse_unk_alpha("0") == 0
    for bad in ("lots", "-1", "nan", "inf"):
        with pytest.raises(CharLMError, match="--unk-alpha"):
            parse_unk_alpha(bad)


def test_a_trained_model_gives_unseen_characters_a_finite_cost(tmp_path):
    # Each poem once, so most characters are seen once or twice: without replacement the model
    # never sees <unk> and a new character costs it far more than with replacement.
    text = "\n".join(POEMS * 2) + "\n"
    novel = torch.tensor([EOS_ID] + [UNK_ID, 5] * 40, dtype=torch.long)  # stands in for new characters
    cost = {}
    for name, alpha in (("off", 0.0), ("auto", None)):
        prep = prepare(text, tiny_config(max_steps=60, eval_interval=60, unk_alpha=alpha))
        fit(prep, tmp_path / name)
        ck = load(tmp_path / name)
        assert ck.config.train.unk_alpha == alpha  # saved as given (None = auto)
        assert (prep.corpus["unk_alpha"] > 0) == (alpha is None)
        s = score(ck.model, novel)
        with torch.no_grad():
            logits, _ = ck.model(novel[:-1].unsqueeze(0))
        logp = torch.log_softmax(logits.float(), -1)[0]
        cost[name] = -logp[novel[1:] == UNK_ID, UNK_ID].mean().item()  # nats per unseen character
        assert math.isfinite(s.bpc)
    assert cost["auto"] < cost["off"] - 1.0, cost
