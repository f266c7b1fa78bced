import pytest
import torch

from conftest import pack

from charlm.data import batchify, epoch_stream, get_window, join_poems, num_windows, read_corpus, split_poems
from charlm.errors import CharLMError


def test_missing_empty_and_non_utf8_corpora_are_clear_errors(tmp_path):
    with pytest.raises(CharLMError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(CharLMError, match="empty"):
        read_corpus(empty)
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("春眠不觉晓".encode("gbk"))
    with pytest.raises(CharLMError, match="--encoding gbk"):
        read_corpus(gbk)
    assert read_corpus(gbk, encoding="gbk") == "春眠不觉晓"


def test_split_is_by_poem_deterministic_and_disjoint():
    poems = [f"诗{i}" for i in range(100)]
    text = "\n".join(poems)
    a = split_poems(text, 0.1, seed=3)
    b = split_poems(text, 0.1, seed=3)
    assert a == b
    train, valid = a
    assert len(valid) == 10 and len(train) == 90
    assert set(train).isdisjoint(valid) and set(train) | set(valid) == set(poems)
    assert split_poems(text, 0.1, seed=4)[1] != valid


def test_single_line_text_splits_by_characters():
    train, valid = split_poems("一二三四五六七八九十", 0.2, seed=0)
    assert train == ["一二三四五六七八"] and valid == ["九十"]


def test_targets_are_inputs_shifted_by_one():
    stream = torch.arange(100)
    rows = batchify(stream, 4)  # (4, 25)
    assert rows.shape == (4, 25)
    for w in range(num_windows(rows, 6)):
        x, y = get_window(rows, w, 6)
        assert x.shape == y.shape == (4, 6)
        assert torch.equal(y, x + 1)  # the stream is 0, 1, 2, ... so "next character" is +1


def test_windows_continue_each_row_for_carried_state():
    rows = batchify(torch.arange(100), 4)
    x0, _ = get_window(rows, 0, 6)
    x1, _ = get_window(rows, 1, 6)
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)  # row r of window 1 picks up where window 0 ended


def test_epoch_order_is_fixed_by_seed_and_epoch():
    ids = pack([[i + 2] * 3 for i in range(20)])
    a = epoch_stream(*ids, 1, epoch=0, seed=5, batch_size=2, seq_len=4)
    b = epoch_stream(*ids, 1, epoch=0, seed=5, batch_size=2, seq_len=4)
    c = epoch_stream(*ids, 1, epoch=1, seed=5, batch_size=2, seq_len=4)
    assert torch.equal(a.rows, b.rows) and not torch.equal(a.rows, c.rows)
    assert sorted(a.rows.flatten().tolist()) == sorted(c.rows.flatten().tolist())


def test_join_poems_starts_each_poem_after_a_newline():
    assert join_poems(["春晓", "静夜思"]) == "\n春晓\n静夜思\n"
