"""Decoding answers under the couplet rules, sampled and by beam search, on a tiny untrained model
(so nothing but the rules keeps the answers in line)."""

import pytest
import torch

from charlm.config import ModelConfig, SampleSettings
from charlm.couplet import CoupletModel
from charlm.errors import CharLMError
from charlm.poetry import LEVEL, OBLIQUE, RhymeTable
from charlm.seq2seq import AnswerRules, answer, beam_answers, check_first_line, sample_answers
from charlm.vocab import Vocab

TABLE = RhymeTable.default()
# Han characters of both tones, a few of either or unknown tone, and punctuation the rules must avoid.
CHARS = "风花山春秋天云烟舟楼人月雪木石竹玉叶水树鸟日落草明松间照清泉上流看思，。a"


@pytest.fixture(scope="module")
def model_vocab():
    torch.manual_seed(0)
    vocab = Vocab(["<unk>", "\n", *CHARS])
    model = CoupletModel(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=16, num_layers=1)).eval()
    return model, vocab


def tone(ch):
    return TABLE.tones(ch)


def assert_keeps_the_rules(first, second):
    assert len(second) == len(first)
    assert all("\u4e00" <= c <= "\u9fff" for c in second)
    want = OBLIQUE if tone(first[-1]) == {LEVEL} else LEVEL if tone(first[-1]) == {OBLIQUE} else None
    if want:
        assert want in tone(second[-1]), (first, second)
    assert not set(second) & set(first)
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            assert (second[i] == second[j]) == (first[i] == first[j]), (first, second)


@pytest.mark.parametrize("first", ["明月松间照", "清泉石上流", "山水看", "风风雨雨花落"])
def test_sampled_answers_keep_the_rules(model_vocab, first):
    model, vocab = model_vocab
    first = vocab.normalize(first)
    # at a high temperature an untrained model would break every rule now and then
    answers = sample_answers(model, vocab, first, 64, SampleSettings(temperature=5.0), torch.Generator().manual_seed(1))
    assert len({a.text for a in answers}) > 10
    for a in answers:
        assert_keeps_the_rules(first, a.text)


@pytest.mark.parametrize("first", ["明月松间照", "清泉石上流", "风风雨雨花落"])
def test_beam_answers_keep_the_rules_and_come_best_first(model_vocab, first):
    model, vocab = model_vocab
    answers = beam_answers(model, vocab, first, 4, 6)
    assert len(answers) == 4 and len({a.text for a in answers}) == 4
    assert [a.logprob for a in answers] == sorted((a.logprob for a in answers), reverse=True)
    for a in answers:
        assert_keeps_the_rules(first, a.text)
    # the beam's best is at least as likely as the greedy answer (a beam of one)
    assert answers[0].logprob >= beam_answers(model, vocab, first, 1, 1)[0].logprob - 1e-9


def test_the_rules_mask_by_hand(model_vocab):
    _, vocab = model_vocab
    rules = AnswerRules(vocab, "明月松间照", TABLE)  # 照 is 仄: the answer ends 平
    prev = torch.tensor([vocab.encode("清泉石上")])
    last = {vocab.chars[i] for i in rules.allowed(4, prev)[0].nonzero()[:, 0].tolist()}
    assert last and all(LEVEL in tone(c) for c in last)
    assert not last & set("清泉石上明月松间照，。a") and "看" in last and "流" in last
    echo = AnswerRules(vocab, "风风雨", TABLE)  # 叠字: position 1 repeats position 0
    allowed = echo.allowed(1, torch.tensor([vocab.encode("花")]))[0]
    assert allowed.nonzero()[:, 0].tolist() == vocab.encode("花")


def test_seeded_answers_repeat(model_vocab):
    model, vocab = model_vocab
    a = answer(model, vocab, "明月松间照", 3, seed=4)
    assert [x.text for x in a] == [x.text for x in answer(model, vocab, "明月松间照", 3, seed=4)]
    assert [x.text for x in a] != [x.text for x in answer(model, vocab, "明月松间照", 3, seed=5)]


def test_when_no_answer_can_keep_the_rules_it_says_so(model_vocab):
    model, vocab = model_vocab
    few = Vocab(["<unk>", "\n", *"明月松间照风"])  # one new character for a five-character answer
    small = CoupletModel(ModelConfig(vocab_size=len(few), embed_dim=4, hidden_size=4, num_layers=1)).eval()
    with pytest.raises(CharLMError, match="no answer to '明月松间照' keeps the couplet rules"):
        answer(small, few, "明月松间照", 1)
    with pytest.raises(CharLMError, match="no answer"):
        answer(small, few, "明月松间照", 1, beam=3)
    with pytest.raises(CharLMError, match="at most --beam"):
        answer(model, vocab, "明月松间照", 5, beam=3)


@pytest.mark.parametrize("first, message", [
    ("", "needs a first line"),
    ("   ", "needs a first line"),
    ("明月，松间照", "Han characters only; '，'"),
    ("moon", "Han characters only; 'm'"),
    ("明" * 33, "at most 32"),
])
def test_a_bad_first_line_is_one_sentence(first, message):
    with pytest.raises(CharLMError, match=message):
        check_first_line(first)
