"""Property-based tests (hypothesis): the vocabulary on arbitrary text, and the constrained decoder
on random poem specifications. Examples are derandomised, so a run is reproducible."""

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from charlm import checkpoint
from charlm.constrain import LINE_ENDS, PoemSpec
from charlm.errors import CharLMError
from charlm.poetry import check_poem, parse_form
from charlm.sample import SampleSettings, beam_poems, sample_poems
from charlm.vocab import UNK, UNK_ID, Vocab, normalize

FAST = settings(max_examples=200, deadline=None, derandomize=True)


# -- the vocabulary ----------------------------------------------------------------------------

@FAST
@given(st.text())
def test_normalize_is_idempotent(text):
    once = normalize(text)
    assert normalize(once) == once


@st.composite
def vocab_and_text(draw):
    """A vocabulary built from arbitrary text, and a text made of its characters."""
    v = Vocab.from_text(normalize(draw(st.text())))
    chars = [c for c in v.chars if c != UNK]
    x = "".join(draw(st.lists(st.sampled_from(chars))))
    return v, x


@FAST
@given(vocab_and_text())
def test_decode_inverts_encode_on_the_vocabulary(vx):
    v, x = vx
    ids = v.encode(x)
    assert len(ids) == len(x) and UNK_ID not in ids
    assert v.decode(ids) == x


@FAST
@given(st.text(), st.text())
def test_unknown_characters_encode_to_the_unknown_id(train, text):
    v = Vocab.from_text(normalize(train))
    ids = v.encode(text)
    assert [i == UNK_ID for i in ids] == [c not in v for c in text]
    assert v.unknown(text) == list(dict.fromkeys(c for c in text if c not in v))


@FAST
@given(st.text(), st.sampled_from(["none", "simplified", "traditional"]))
def test_vocab_dict_and_json_round_trip(text, script):
    v = Vocab.from_text(normalize(text), script=script)
    assert Vocab.from_dict(v.to_dict()) == v
    again = Vocab.from_json(v.to_json())
    assert again == v and again.chars == v.chars and again.script == script
    assert Vocab.from_dict(json.loads(json.dumps(v.to_dict()))) == v  # also with ASCII escapes


# -- the constrained decoder -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(trained):
    return checkpoint.load(trained)


def _han(ckpt):
    return [c for c in ckpt.vocab.chars[2:] if "\u4e00" <= c <= "\u9fff"]


@st.composite
def specs(draw, han: list[str]):
    alphabet = st.sampled_from(han + ["，", "。", "雪", "a", "[", "\n", "\x1b"])  # 雪 is not in the tiny vocabulary
    form = draw(st.sampled_from([None, "五绝", "七绝", "五律", "七律"]))
    fitting = parse_form(form).lines if form else draw(st.integers(1, 5))  # an acrostic the form can take
    mostly_not = st.sampled_from([False, False, False, True])  # for options that are refused here, now and then
    rhyme = draw(st.booleans() if form else mostly_not)
    return dict(
        form=form,
        acrostic=draw(st.one_of(st.just(""), st.text(st.sampled_from(han), min_size=fitting, max_size=fitting),
                                st.text(alphabet, max_size=9))),
        rhyme=rhyme, rhyme_first=draw(st.booleans() if rhyme else mostly_not),
        tones=draw(st.booleans() if form else mostly_not), novel=draw(st.booleans()),
        prompt=draw(st.one_of(st.just(""), st.text(st.sampled_from(han), max_size=3), st.text(alphabet, max_size=8))),
        n=draw(st.integers(1, 3)), best_of=draw(st.integers(1, 2)), beam=draw(st.sampled_from([0, 0, 2, 4]) if form else st.sampled_from([0, 0, 0, 2])),
        temperature=draw(st.sampled_from([1e-45, 0.7, 1.0, 1e300])), seed=draw(st.integers(0, 2**32)),
    )


def _lines(text: str) -> list[str]:
    """Complete lines: the text before each line-ending mark (the decoder's own notion of a line)."""
    return re.findall(f"([^{LINE_ENDS}]*)[{LINE_ENDS}]", text)


def _decode(ckpt, s):
    form = parse_form(s["form"]) if s["form"] else None
    spec = PoemSpec(form=form, acrostic=s["acrostic"], rhyme=s["rhyme"], rhyme_first=s["rhyme_first"],
                    tones=s["tones"], novel=s["novel"])
    max_chars = s.get("max_chars", 60)
    if s["beam"]:
        return spec, beam_poems(ckpt.model, ckpt.vocab, s["prompt"], s["n"], spec=spec, beam=s["beam"],
                                lines=ckpt.lines)
    return spec, sample_poems(ckpt.model, ckpt.vocab, s["prompt"], s["n"], spec=spec, best_of=s["best_of"],
                              settings=SampleSettings(temperature=s["temperature"], max_chars=max_chars),
                              lines=ckpt.lines, generator=torch.Generator().manual_seed(s["seed"]))


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decoder_meets_the_spec_or_says_why(ckpt, data):
    s = data.draw(specs(_han(ckpt)))
    try:
        spec, results = _decode(ckpt, s)
    except CharLMError as e:
        message = str(e)
        assert message.strip() and "\n" not in message, message
        event(f"refused: {message[:30]}")
        return
    event("decoded " + " ".join(k for k in ("form", "acrostic", "rhyme", "tones", "novel", "beam") if s[k]))
    assert 1 <= len(results) <= s["n"]
    for r in results:
        assert r.text.startswith(s["prompt"]) and UNK not in r.text
        if spec.form is not None:
            c = check_poem(r.text, spec.form)
            assert c.form_valid, (r.text, c.problems)
            if spec.rhyme:
                assert c.rhyme_valid, r.text
            if spec.tones:
                assert c.tone_agreement == 1.0, r.text
        lines = _lines(r.text)
        if spec.acrostic:
            assert [line[:1] for line in lines] == list(spec.acrostic), r.text
        if spec.novel:
            assert not set(lines) & ckpt.lines, r.text


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_acrostic_and_novelty_without_a_form(ckpt, data):
    """No fixed shape: lines end at any line-ending mark, so the decoder must still close every
    acrostic line within --max-chars, or say why it cannot."""
    han = _han(ckpt)
    s = dict(form=None, rhyme=False, rhyme_first=False, tones=False, beam=0,
             acrostic=data.draw(st.text(st.sampled_from(han), min_size=1, max_size=4)),
             novel=data.draw(st.booleans()), prompt=data.draw(st.text(st.sampled_from(han), max_size=2)),
             n=data.draw(st.integers(1, 3)), best_of=1, temperature=data.draw(st.sampled_from([1e-45, 1.0])),
             seed=data.draw(st.integers(0, 2**32)), max_chars=data.draw(st.sampled_from([6, 12, 60])))
    try:
        spec, results = _decode(ckpt, s)
    except CharLMError as e:
        assert str(e).strip() and "\n" not in str(e)
        event("refused: " + str(e)[:30])
        return
    event("decoded")
    for r in results:
        lines = _lines(r.text)
        assert [line[:1] for line in lines] == list(spec.acrostic), r.text
        assert r.text.endswith("。"), r.text
        if spec.novel:
            assert not set(lines) & ckpt.lines, r.text


# -- batched masks equal the per-poem rules ----------------------------------------------------

def _walk(con, rng, steps):
    """Slots met along random allowed paths (per-poem rules), with the token taken from each."""
    out = []
    for s in con.start_slots():
        for _ in range(steps):
            allowed = torch.nonzero(con.mask(s))[:, 0].tolist()
            t = allowed[rng.randrange(len(allowed))]
            out.append((s, t))
            s = con.advance(s, t)
    return out


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from([None, "五绝", "七绝", "五律", "七律"]), acrostic=st.booleans(), rhyme=st.booleans(),
       rhyme_first=st.booleans(), tones=st.booleans(), novel=st.booleans(), seed=st.integers(0, 2**16))
def test_tensor_masks_equal_the_per_poem_masks(ckpt, form, acrostic, rhyme, rhyme_first, tones, novel, seed):
    import random

    from charlm.constrain import PoemConstraint

    f = parse_form(form) if form else None
    han = _han(ckpt)
    rng = random.Random(seed)
    lines = {"".join(rng.choice(han) for _ in range(k)) for k in (4, 5, 6, 7) for _ in range(20)}
    spec = PoemSpec(form=f, acrostic="".join(rng.choice(han) for _ in range(f.lines if f else 3)) if acrostic else "",
                    rhyme=rhyme and f is not None, rhyme_first=rhyme_first and rhyme and f is not None,
                    tones=tones and f is not None, novel=novel)
    if not spec.constrained:
        return
    con = PoemConstraint(ckpt.vocab, spec, lines=lines)
    walked = _walk(con, rng, 70)
    slots = [s for s, _ in walked]
    tokens = torch.tensor([t for _, t in walked])
    rows = con.rows(slots)
    assert torch.equal(con.masks(rows), torch.stack([con.mask(s) for s in slots]))
    moved = con.advance_rows(con.rows(slots), tokens)
    assert torch.equal(con.masks(moved), torch.stack([con.mask(con.advance(s, int(t))) for s, t in walked]))
