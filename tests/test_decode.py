"""Constrained decoding: every rule holds by construction, even for an untrained model."""

import pytest
import torch

from charlm.config import ModelConfig
from charlm.constrain import PoemConstraint, PoemSpec, Slot
from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.poetry import check_poem, parse_form
from charlm.sample import SampleSettings, beam_poems, sample_poems
from charlm.vocab import Vocab


@pytest.fixture(scope="module")
def vocab():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "corpora" / "tang-quatrains.txt").read_text(encoding="utf-8")
    return Vocab.from_text(text, script="simplified")


@pytest.fixture(scope="module")
def model(vocab):
    torch.manual_seed(0)
    return CharLM(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=8, num_layers=1, dropout=0.0)).eval()


def _gen(model, vocab, n=6, prompt="", seed=0, **spec):
    form = spec.pop("form", None)
    s = PoemSpec(form=parse_form(form) if form else None, **spec)
    return sample_poems(model, vocab, prompt, n, spec=s, settings=SampleSettings(temperature=1.0),
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("form", ["五绝", "七绝", "五律", "七律"])
def test_forms_rhyme_and_tones_hold_for_a_random_model(model, vocab, form):
    for r in _gen(model, vocab, form=form, rhyme=True, tones=True):
        c = check_poem(r.text, parse_form(form))
        assert c.form_valid, r.text
        assert c.rhyme_valid, r.text
        assert c.tone_agreement == 1.0, r.text


def test_form_alone_fixes_shape_and_punctuation(model, vocab):
    for r in _gen(model, vocab, form="qijue"):
        lines = r.text.replace("。", "，").split("，")[:-1]
        assert len(lines) == 4 and all(len(l) == 7 for l in lines)
        assert r.text[7] == "，" and r.text[15] == "。" and r.text.endswith("。")


def test_rhyme_first_line(model, vocab):
    for r in _gen(model, vocab, form="七绝", rhyme=True, rhyme_first=True, tones=True):
        c = check_poem(r.text, parse_form("七绝"))
        assert c.rhyme_valid and c.form_valid


def test_acrostic_with_and_without_form(model, vocab):
    for r in _gen(model, vocab, form="七绝", acrostic="春花秋月", rhyme=True):
        lines = r.text.replace("。", "，").split("，")[:-1]
        assert [l[0] for l in lines] == list("春花秋月")
        assert check_poem(r.text, parse_form("七绝")).rhyme_valid
    # without a form a line ends at any mark; an untrained model seldom writes one, so its poems do
    # not finish the acrostic within --max-chars, which is refused rather than returned cut short
    with pytest.raises(CharLMError, match="--max-chars 200"):
        _gen(model, vocab, acrostic="山水")


def test_prompt_counts_toward_the_first_line(model, vocab):
    for r in _gen(model, vocab, prompt="白日依山", form="五绝"):
        assert r.text.startswith("白日依山") and r.text[5] == "，"


@pytest.mark.parametrize("kwargs, prompt, message", [
    (dict(form="五绝"), "白日依山尽黄", "a 五绝 line has 5 characters, so ， comes here"),
    (dict(form="五绝"), "白日,", "holds 5 Chinese characters and no punctuation"),
    (dict(form="五绝", tones=True), "白云青山", "--tones needs a .-tone character at position"),
    (dict(form="五绝", acrostic="春夏秋"), "", "has 4 lines"),
    (dict(form="五绝", acrostic="春夏秋冬"), "白", "--acrostic 春夏秋冬 starts line 1 with 春"),
    (dict(acrostic="春\u9fff"), "", "not in this model's vocabulary"),
    (dict(rhyme=True), "", "need --form"),
    (dict(form="五绝", rhyme_first=True), "", "needs --rhyme"),
])
def test_conflicts_are_clear_errors(model, vocab, kwargs, prompt, message):
    with pytest.raises(CharLMError, match=message):
        _gen(model, vocab, prompt=prompt, **kwargs)


def test_unknown_form_is_a_clear_error():
    with pytest.raises(CharLMError, match="五绝"):
        parse_form("sonnet")


def test_novel_masks_every_completion_of_a_training_line(vocab):
    spec = PoemSpec(form=parse_form("五绝"), novel=True)
    con = PoemConstraint(vocab, spec, lines={"春眠不觉晓", "春眠不觉眠", "处处闻啼鸟"})
    m = con.mask(Slot(line=0, pos=4, text="春眠不觉"))
    assert not m[vocab.encode("晓")[0]] and not m[vocab.encode("眠")[0]]
    assert m[vocab.encode("春")[0]]
    assert con.mask(Slot(line=0, pos=3, text="春眠不"))[vocab.encode("觉")[0]]


def test_novel_decoding_never_copies(model, vocab):
    # take the lines the sampler writes as "training lines", then decode again with the same seed
    plain = _gen(model, vocab, form="五绝", seed=5)
    lines = {l for r in plain for l in r.text.replace("。", "，").split("，") if l}
    spec = PoemSpec(form=parse_form("五绝"), novel=True)
    out = sample_poems(model, vocab, "", 6, spec=spec, lines=lines, generator=torch.Generator().manual_seed(5))
    for r in out:
        assert check_poem(r.text, parse_form("五绝")).form_valid
        assert not any(l in lines for l in r.text.replace("。", "，").split("，") if l)
    with pytest.raises(CharLMError, match="training lines"):
        sample_poems(model, vocab, "", 1, spec=spec, lines=None)


def test_best_of_keeps_the_likeliest_candidate(model, vocab):
    spec = PoemSpec(form=parse_form("五绝"))
    cands = sample_poems(model, vocab, "", 4, spec=spec, generator=torch.Generator().manual_seed(9))
    best = sample_poems(model, vocab, "", 1, spec=spec, best_of=4, generator=torch.Generator().manual_seed(9))
    assert best[0].text == max(cands, key=lambda r: r.score).text


def test_beam_search_is_valid_distinct_and_ranked(model, vocab):
    out = beam_poems(model, vocab, "", 3, spec=PoemSpec(form=parse_form("五绝"), rhyme=True, tones=True), beam=6)
    assert len({r.text for r in out}) == 3
    assert [r.score for r in out] == sorted((r.score for r in out), reverse=True)
    for r in out:
        c = check_poem(r.text, parse_form("五绝"))
        assert c.form_valid and c.rhyme_valid and c.tone_agreement == 1.0


def test_batched_decoding_steps_one_character_at_a_time(model, vocab, monkeypatch):
    lengths, batches = [], []
    real = model.forward

    def spy(x, state=None):
        lengths.append(x.shape[1])
        batches.append(x.shape[0])
        return real(x, state)

    monkeypatch.setattr(model, "forward", spy)
    _gen(model, vocab, n=16, prompt="白日", form="七律", rhyme=True, tones=True)
    assert lengths[0] == 3 and all(t == 1 for t in lengths[1:])  # the prompt once, then one step each
    assert all(b == 16 for b in batches[1:])  # one batch of 16 poems, not 16 loops


def _repeats(text):
    from charlm.poetry import repetition

    return repetition(text)


@pytest.mark.parametrize("form, n, beam", [("五绝", 3, 6), ("七绝", 4, 8), ("五律", 2, 4)])
def test_beams_never_repeat_a_bigram_keep_the_cap_and_differ(model, vocab, form, n, beam):
    from charlm.constrain import MAX_REPEAT

    spec = PoemSpec(form=parse_form(form), rhyme=True, tones=True)
    out = beam_poems(model, vocab, "", n, spec=spec, beam=beam)
    assert len(out) == n and len({r.text for r in out}) == n
    for r in out:
        repeated, top = _repeats(r.text)
        assert not repeated and top <= MAX_REPEAT, r.text
        assert check_poem(r.text, parse_form(form)).form_valid


def test_beam_search_without_no_repeat_repeats_on_a_random_model(model, vocab):
    # the control: an untrained model's maximum-likelihood beams loop, which is what no_repeat stops
    spec = PoemSpec(form=parse_form("七绝"))
    out = beam_poems(model, vocab, "", 2, spec=spec, beam=4, no_repeat=False)
    assert any(_repeats(r.text)[0] for r in out)


def test_sampling_no_repeat_holds_on_every_row(model, vocab):
    out = sample_poems(model, vocab, "", 8, spec=PoemSpec(form=parse_form("五绝")),
                       settings=SampleSettings(temperature=0.3, no_repeat=True),
                       generator=torch.Generator().manual_seed(0))
    for r in out:
        repeated, top = _repeats(r.text)
        assert not repeated and top <= 2, r.text


def test_decoders_restore_the_models_mode(model, vocab):
    model.train()
    try:
        sample_poems(model, vocab, "", 2, generator=torch.Generator().manual_seed(0))
        assert model.training
        beam_poems(model, vocab, "", 2, spec=PoemSpec(form=parse_form("五绝")), beam=2)
        assert model.training
    finally:
        model.eval()
