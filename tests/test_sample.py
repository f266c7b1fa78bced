import math

import pytest
import torch

from charlm import checkpoint
from charlm.checkpoint import is_checkpoint, shipped_checkpoint
from charlm.errors import CharLMError
from charlm.sample import SampleSettings, filter_logits, generate
from charlm.vocab import EOS_ID, UNK_ID


def test_settings_reject_bad_values():
    with pytest.raises(CharLMError, match="temperature"):
        SampleSettings(temperature=0)
    with pytest.raises(CharLMError, match="top-p"):
        SampleSettings(top_p=0)
    with pytest.raises(CharLMError, match="top-p"):
        SampleSettings(top_p=1.5)


def test_top_k_keeps_the_k_likeliest_and_never_unk():
    logits = torch.tensor([9.0, 1.0, 5.0, 3.0, 4.0])
    out = filter_logits(logits, SampleSettings(temperature=1.0, top_k=2))
    assert torch.isinf(out[UNK_ID]) and torch.isfinite(out[[2, 4]]).all()
    assert torch.isinf(out[[1, 3]]).all()


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([0.0, 0.5, 0.3, 0.15, 0.05])
    logits = torch.log(probs.clamp_min(1e-12))
    out = filter_logits(logits, SampleSettings(temperature=1.0, top_p=0.75))
    assert torch.isfinite(out[[1, 2]]).all() and torch.isinf(out[[3, 4]]).all()


def test_temperature_sharpens():
    logits = torch.tensor([0.0, 1.0, 2.0])
    cold = torch.softmax(filter_logits(logits, SampleSettings(temperature=0.5)), -1)
    warm = torch.softmax(filter_logits(logits, SampleSettings(temperature=2.0)), -1)
    assert cold[2] > warm[2]


def test_generate_is_seeded_continues_the_prompt_and_stops(trained):
    ck = checkpoint.load(trained)
    s = SampleSettings(temperature=1.0, max_chars=30)
    a = generate(ck.model, ck.vocab, "春眠", settings=s, generator=torch.Generator().manual_seed(1))
    b = generate(ck.model, ck.vocab, "春眠", settings=s, generator=torch.Generator().manual_seed(1))
    assert a == b and a.startswith("春眠") and "\n" not in a and len(a) <= 32


def test_streamed_characters_are_the_sample(trained):
    ck = checkpoint.load(trained)
    seen = []
    out = generate(ck.model, ck.vocab, "明月", generator=torch.Generator().manual_seed(3), on_char=seen.append)
    assert out == "明月" + "".join(seen)


def _shapes_of_forward_calls(model, monkeypatch) -> list[tuple[int, int]]:
    """The (rows, steps) of every call of ``model``'s forward from now on."""
    shapes = []
    real_forward = model.forward

    def spy(x, state=None):
        shapes.append(tuple(x.shape))
        return real_forward(x, state)

    monkeypatch.setattr(model, "forward", spy)
    return shapes


def test_sampling_steps_once_per_character(trained, monkeypatch):
    """The prompt is read once; each new character costs one step of length one."""
    ck = checkpoint.load(trained)
    shapes = _shapes_of_forward_calls(ck.model, monkeypatch)
    out = generate(ck.model, ck.vocab, "床前明月光", settings=SampleSettings(max_chars=20),
                   generator=torch.Generator().manual_seed(0))
    lengths = [steps for _, steps in shapes]
    assert lengths[0] == 1 + len("床前明月光")
    assert all(n == 1 for n in lengths[1:])
    assert len(lengths) - 1 <= len(out) - len("床前明月光")


@pytest.mark.parametrize("no_repeat", [False, True])
def test_free_poems_leave_the_batch_as_they_end_and_keep_their_own_scores(trained, monkeypatch, no_repeat):
    """Rows that end drop out of the batch (each step costs only the rows still writing), and every
    poem's log-probability is still the model's own score of its text, read in one pass."""
    from charlm.sample import sample_poems

    ck = checkpoint.load(trained)
    shapes = _shapes_of_forward_calls(ck.model, monkeypatch)
    out = sample_poems(ck.model, ck.vocab, "春", 12, settings=SampleSettings(temperature=1.5, max_chars=40, no_repeat=no_repeat),
                       generator=torch.Generator().manual_seed(4))
    monkeypatch.undo()
    lengths = {len(r.text) for r in out}
    assert len(lengths) > 3  # poems of several lengths, so rows ended at different steps
    steps = [rows for rows, _ in shapes[1:]]
    assert steps == sorted(steps, reverse=True) and steps[0] <= 12 and steps[-1] < steps[0]
    for r in out:
        gen = ck.vocab.encode(r.text[1:])
        ended = r.chars == len(gen) + 1
        ids = torch.tensor([[EOS_ID, *ck.vocab.encode("春"), *gen]])
        with torch.no_grad():
            logp = torch.log_softmax(ck.model(ids)[0][0].double(), -1)
        targets = gen + ([EOS_ID] if ended else [])
        own = sum(float(logp[1 + t, tok]) for t, tok in enumerate(targets))
        assert r.logprob == pytest.approx(own, abs=1e-3), r.text
        if no_repeat:
            bigrams = [r.text[k : k + 2] for k in range(len(r.text) - 1)]
            han = [b for b in bigrams if all("\u4e00" <= c <= "\u9fff" for c in b)]
            assert len(han) == len(set(han)), r.text


def test_incremental_logits_equal_full_sequence_logits(trained):
    ck = checkpoint.load(trained)
    ids = torch.tensor([[EOS_ID, *ck.vocab.encode("白日依山尽，黄河入海流。")]])
    full, _ = ck.model(ids)
    logits, state = ck.model(ids[:, :1])
    steps = [logits]
    for t in range(1, ids.shape[1]):
        logits, state = ck.model(ids[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full)


def test_int8_decoding_is_used_only_for_enough_work_and_leaves_the_model_alone(trained):
    from charlm.constrain import PoemSpec
    from charlm.poetry import check_poem, parse_form
    from charlm.sample import decoder, sample_poems

    ck = checkpoint.load(trained)
    before = {k: v.clone() for k, v in ck.model.state_dict().items()}
    assert decoder(ck.model, 1, 30, quantize=True) is ck.model  # not worth its quantising time
    assert decoder(ck.model, 64, 30, quantize=False) is ck.model
    fast = decoder(ck.model, 64, 30, quantize=True)
    assert fast is not ck.model and decoder(ck.model, 8, 1, quantize=True) is fast  # made once
    assert "quantized" in type(fast.rnn).__module__ and "quantized" in type(fast.head).__module__
    spec = PoemSpec(form=parse_form("五绝"), rhyme=True)
    poems = sample_poems(ck.model, ck.vocab, "", 16, spec=spec, settings=SampleSettings(),
                         generator=torch.Generator().manual_seed(1), quantize=True)
    assert all(check_poem(p.text, spec.form).form_valid for p in poems)
    assert all(torch.equal(before[k], v) for k, v in ck.model.state_dict().items())
    assert ck.model.training is False and "int8" not in "".join(ck.model.state_dict())


def test_a_free_sample_switches_to_int8_only_once_it_has_run_long(trained):
    from charlm.sample import QUANTIZE_MIN_ROWS, QUANTIZE_MIN_STEPS, sample_poems

    def run(quantize, temperature):
        ck = checkpoint.load(trained)  # a fresh model: no int8 copy cached on it
        out = sample_poems(ck.model, ck.vocab, "", QUANTIZE_MIN_ROWS - 1,
                           settings=SampleSettings(temperature=temperature, max_chars=QUANTIZE_MIN_STEPS + 60),
                           generator=torch.Generator().manual_seed(3), quantize=quantize)
        return [r.text for r in out], "_int8_copy" in ck.model.__dict__

    short, made = run(True, 0.8)  # poems that end long before --max-chars never pay for quantising
    assert max(map(len, short)) < QUANTIZE_MIN_STEPS and not made
    long, made = run(True, 50.0)
    plain, _ = run(False, 50.0)
    assert made and max(map(len, long)) > QUANTIZE_MIN_STEPS  # a row ran past the switch
    assert [t[:QUANTIZE_MIN_STEPS] for t in long] == [t[:QUANTIZE_MIN_STEPS] for t in plain]  # the model's own weights until then


def test_an_int8_copy_already_made_decodes_from_the_first_step(trained):
    """Quantising is paid once per model: a short single sample waits for enough work, but once the
    copy exists (compose, a caller's loop) every decoding uses it."""
    from charlm.sample import decoder, int8_copy

    ck = checkpoint.load(trained)
    assert decoder(ck.model, 1, 0, quantize=True) is ck.model
    copy = int8_copy(ck.model)
    assert decoder(ck.model, 1, 0, quantize=True) is copy
    assert decoder(ck.model, 1, 0, quantize=False) is ck.model  # --fp32 still means the exact weights


@pytest.mark.skipif(not is_checkpoint(shipped_checkpoint()), reason="shipped model not present")
def test_int8_weights_move_the_shipped_models_bpc_by_under_a_hundredth():
    from charlm.evaluate import evaluate, validation_text
    from charlm.sample import int8_copy

    ck = checkpoint.load(shipped_checkpoint())
    text, _ = validation_text(ck)
    text = "\n".join(text.split("\n")[:120]) + "\n"
    exact = evaluate(ck.model, ck.vocab, text).bpc
    fast = evaluate(int8_copy(ck.model), ck.vocab, text).bpc
    assert abs(fast - exact) < 0.01, (exact, fast)


def test_draw_follows_the_probabilities_and_never_picks_an_impossible_character():
    from charlm.sample import draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]], dtype=torch.float64).expand(20000, -1)
    picks = draw(probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=5).double() / picks.numel()
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts[[0, 2, 3]], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), atol=0.015)
    one_hot = torch.zeros(3, 7, dtype=torch.float64)
    one_hot[torch.arange(3), torch.tensor([0, 6, 3])] = 1.0
    assert draw(one_hot).tolist() == [0, 6, 3]


def test_sampling_weights_are_e_to_the_score_and_nothing_for_masked_or_negligible_characters():
    """weights_ on scaled scores (the best is 0): e^x where it matters, exactly 0 for a masked
    character (−inf) and for one scoring NEGLIGIBLE or less; draw then never picks those."""
    from charlm.sample import NEGLIGIBLE, draw, weights_

    x = torch.tensor([[0.0, -1.0, -float("inf"), NEGLIGIBLE - 20, NEGLIGIBLE, NEGLIGIBLE + 1, -1e30]])
    w = weights_(x.clone())
    assert w[0, 0] == 1.0 and w[0, 1] == pytest.approx(math.exp(-1.0))
    assert w[0, 5] == pytest.approx(math.exp(NEGLIGIBLE + 1), rel=1e-5) and w[0, 5] > 0
    assert w[0, [2, 3, 4, 6]].tolist() == [0.0, 0.0, 0.0, 0.0]
    picks = draw(weights_(x.expand(5000, -1).clone()), torch.Generator().manual_seed(0))
    assert set(picks.tolist()) <= {0, 1, 5}
