"""The couplet encoder–decoder: its attention against the equations, training on tiny pairs (the
loss drops, a trivial mapping is learned), save and load, and resume."""

import itertools
import json
import math

import pytest
import torch

from charlm import checkpoint
from charlm.config import Config, ModelConfig, TrainConfig
from charlm.couplet import CoupletModel, Memory, attend, expected_shapes
from charlm.errors import CharLMError
from charlm.seq2seq import beam_answers, prepare_pairs, score_pairs, train_pairs

from conftest import InterruptAt

# A trivial mapping, character by character: 仄 characters in the first line, 平 ones in the answer.
MAPPING = dict(zip("月雪木石竹玉", "风花山春秋天"))


def mapping_pairs() -> str:
    """Every 5-character arrangement without repeats of 5 of the 6 first-line characters (720),
    as poems of two pairs, the answers mapped character by character."""
    lines = ["".join(p) for p in itertools.permutations(MAPPING, 5)]
    pairs = [f"{a}\t{''.join(MAPPING[c] for c in a)}" for a in lines]
    return "".join(f"{a}\n{b}\n\n" for a, b in zip(pairs[0::2], pairs[1::2]))


def tiny(**train) -> Config:
    settings = dict(batch_size=16, max_steps=150, eval_interval=50, warmup_steps=0, valid_fraction=0.1,
                    precision="fp32", lr=1e-2, seed=5, unk_alpha=0.0)
    settings.update(train)
    return Config(ModelConfig(embed_dim=16, hidden_size=32, num_layers=1, dropout=0.0), TrainConfig(**settings),
                  task="couplet")


@pytest.fixture(scope="module")
def mapping_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("couplet")
    pairs = d / "pairs.tsv"
    pairs.write_text(mapping_pairs(), encoding="utf-8")
    result = train_pairs(pairs, tiny(), d / "run")
    return pairs, d / "run", result


@torch.no_grad()
def test_attention_is_the_equation_by_hand():
    torch.manual_seed(0)
    H, S, T = 4, 3, 2
    w_k, w_q, v = torch.nn.Linear(2 * H, H, bias=False), torch.nn.Linear(H, H), torch.nn.Linear(H, 1, bias=False)
    m = torch.randn(1, S, 2 * H)
    q = torch.randn(1, T, H)
    with torch.no_grad():
        context, alpha = attend(q, Memory(m, w_k(m)), w_q, v)
    for t in range(T):
        e = [float(v.weight[0] @ torch.tanh(w_k.weight @ m[0, s] + w_q.weight @ q[0, t] + w_q.bias)) for s in range(S)]
        a = [math.exp(x) / sum(math.exp(y) for y in e) for x in e]
        assert alpha[0, t].tolist() == pytest.approx(a, abs=1e-6)
        c = sum(a[s] * m[0, s] for s in range(S))
        assert context[0, t].tolist() == pytest.approx(c.tolist(), abs=1e-6)


def test_the_decoder_output_is_the_equation_by_hand():
    torch.manual_seed(1)
    model = CoupletModel(ModelConfig(vocab_size=11, embed_dim=6, hidden_size=5, num_layers=1, dropout=0.0)).eval()
    x, y = torch.tensor([[3, 4, 5]]), torch.tensor([[6, 7, 8]])
    logits = model(x, y)
    memory, state = model.encode(x)
    m = memory.states[0]  # (S, 2H): the bidirectional encoder's states
    assert torch.allclose(state[0][0, 0], torch.tanh(model.bridge(m.mean(0))))  # h₀ = tanh(W_b mean m)
    # one step at a time, the state carried, gives the teacher-forced logits
    tokens = torch.tensor([1])
    for t in range(3):
        step, state = model.step(tokens, state, memory)
        q = state[0][-1, 0]  # the decoder's top state q_t
        e = model.attn_v(torch.tanh(memory.keys[0] + model.attn_query(q))).squeeze(-1)
        c = torch.softmax(e, 0) @ m
        by_hand = torch.tanh(model.combine(torch.cat([q, c]))) @ model.embed.weight.t() + model.head_bias
        assert torch.allclose(step[0], by_hand, atol=1e-5) and torch.allclose(step[0], logits[0, t], atol=1e-5)
        tokens = y[:, t]


@pytest.mark.parametrize("layers", [1, 2])
def test_expected_shapes_match_the_module(layers):
    config = ModelConfig(vocab_size=23, embed_dim=8, hidden_size=12, num_layers=layers)
    assert {k: tuple(v.shape) for k, v in CoupletModel(config).state_dict().items()} == expected_shapes(config)


def test_loss_at_the_start_is_about_ln_of_the_vocabulary():
    torch.manual_seed(0)
    model = CoupletModel(ModelConfig(vocab_size=500, embed_dim=16, hidden_size=32, num_layers=1))
    loss = model.loss(torch.randint(2, 500, (8, 5)), torch.randint(2, 500, (8, 5)))
    assert abs(loss.item() - math.log(500)) < 0.3


def test_training_learns_the_mapping(mapping_run):
    pairs, run, result = mapping_run
    log = [json.loads(l) for l in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.2 * losses[0]
    assert result.full_valid_bpc is not None and result.full_valid_bpc < 1.0  # from 3.6 bits (12 characters)
    ckpt = checkpoint.load(run)
    assert ckpt.config.task == "couplet" and isinstance(ckpt.model, CoupletModel)
    for first in ("月雪木石竹", "玉竹石木雪"):  # held out or not, the mapping is applied
        (best,) = beam_answers(ckpt.model, ckpt.vocab, first, 1, 3)
        assert best.text == "".join(MAPPING[c] for c in first)


def test_save_and_load_give_identical_scores(mapping_run, tmp_path):
    pairs, run, _ = mapping_run
    ckpt = checkpoint.load(run)
    prep = prepare_pairs(pairs, ckpt.config, ckpt.vocab)
    assert score_pairs(ckpt.model, prep.valid).bpc == pytest.approx(ckpt.metrics["valid_bpc"], rel=1e-6)
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))


def test_export_in_bf16_halves_the_weights_and_keeps_the_scores_close(mapping_run, tmp_path):
    pairs, run, _ = mapping_run
    flat = checkpoint.export(run, tmp_path / "flat", bf16=True)
    assert sorted(p.name for p in flat.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors", "vocab.json"]
    full = (checkpoint.unit_dir(run) / "model.safetensors").stat().st_size
    assert (flat / "model.safetensors").stat().st_size < 0.6 * full
    a, b = checkpoint.load(run), checkpoint.load(flat)
    assert b.config.task == "couplet" and b.model.embed.weight.dtype == torch.float32
    for name, w in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], w.to(torch.bfloat16).float())
    prep = prepare_pairs(pairs, a.config, a.vocab)
    assert abs(score_pairs(a.model, prep.valid).bpc - score_pairs(b.model, prep.valid).bpc) < 0.05


def test_an_unknown_task_in_config_json_is_one_sentence(mapping_run, tmp_path):
    _, run, _ = mapping_run
    d = checkpoint.unit_dir(run)
    meta = json.loads((d / "config.json").read_text(encoding="utf-8"))
    meta["task"] = "lm"
    meta["config"]["task"] = "poems"
    (d / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    try:
        with pytest.raises(CharLMError, match="task must be one of lm, couplet, not 'poems'"):
            checkpoint.load(run)
    finally:
        meta["config"]["task"] = "couplet"
        (d / "config.json").write_text(json.dumps(meta), encoding="utf-8")


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(mapping_pairs(), encoding="utf-8")
    config = tiny(max_steps=40, eval_interval=10, unk_alpha=None)
    config.model.dropout = 0.2  # the dropout masks must resume too
    whole = train_pairs(pairs, config, tmp_path / "whole")
    config2 = tiny(max_steps=40, eval_interval=10, unk_alpha=None)
    config2.model.dropout = 0.2
    cut = train_pairs(pairs, config2, tmp_path / "cut", callbacks=InterruptAt(25))
    assert cut.interrupted == "SIGTERM" and cut.steps == 25
    resumed = train_pairs(pairs, tiny(), tmp_path / "cut", resume=True)
    assert resumed.steps == 40
    a = checkpoint.load(tmp_path / "whole").model.state_dict()
    b = checkpoint.load(tmp_path / "cut").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole.full_valid_bpc == pytest.approx(resumed.full_valid_bpc, rel=1e-9)
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert len(steps) == len(set(steps))  # no step logged twice


def test_a_language_model_run_is_not_resumed_as_a_couplet_one(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run, symlinks=True)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(mapping_pairs(), encoding="utf-8")
    with pytest.raises(CharLMError, match="is a language model run, not a couplet run"):
        train_pairs(pairs, tiny(), run, resume=True)
