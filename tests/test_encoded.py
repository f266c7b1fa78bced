"""The encoded corpus and its cache: the same batches, vocabulary, counts and lines as the
in-memory implementation it replaced, a cache that is reused, and one that is rebuilt when it
does not match or is damaged."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import POEMS, tiny_config

from charlm import encoded
from charlm.config import Config, ModelConfig, TrainConfig
from charlm.data import batchify, epoch_stream, num_windows, read_corpus
from charlm.train import prepare
from charlm.vocab import EOS_ID, UNK_ID, Vocab, detect_script, normalize

ROOT = Path(__file__).resolve().parents[1]


# -- the implementation before the cache (Python lists of ints), kept as the reference ------------

def old_split_poems(text, valid_fraction, seed):
    poems = [line for line in text.split("\n") if line.strip()]
    if len(poems) < 2:
        body = poems[0] if poems else ""
        cut = max(1, int(len(body) * (1 - valid_fraction)))
        return [body[:cut]], [body[cut:]]
    n_valid = max(1, round(len(poems) * valid_fraction))
    order = np.random.default_rng(seed).permutation(len(poems))
    valid_idx = set(order[:n_valid].tolist())
    return ([p for i, p in enumerate(poems) if i not in valid_idx], [p for i, p in enumerate(poems) if i in valid_idx])


def old_join(poems):
    return "".join("\n" + p for p in poems) + "\n"


def old_prepare(text, tc):
    script = detect_script(text)
    text = normalize(text, script)
    train, valid = old_split_poems(text, tc.valid_fraction, tc.seed)
    vocab = Vocab.from_text(old_join(train), min_count=tc.min_count, script=script)
    c = Counter(vocab.encode(old_join(train)))
    counts = [c.get(i, 0) for i in range(len(vocab))]
    split = re.compile("[，。？！；：、\n]")
    lines = {part.strip() for p in train for part in split.split(p) if part.strip()}
    return vocab, [vocab.encode(p) for p in train], vocab.encode(old_join(valid)), counts, lines


def old_epoch_stream(train_ids, eos_id, epoch, seed, batch_size, seq_len, unk_p=None, unk_id=0):
    order = np.random.default_rng([seed, epoch]).permutation(len(train_ids))
    parts = []
    for i in order:
        parts.append(eos_id)
        parts.extend(train_ids[i])
    parts.append(eos_id)
    if unk_p is not None and unk_p.any():
        arr = np.asarray(parts, dtype=np.int64)
        drop = np.random.default_rng([seed, epoch, 1]).random(arr.size) < unk_p[arr]
        arr[drop] = unk_id
        parts = arr
    rows = batchify(torch.as_tensor(parts, dtype=torch.long), batch_size)
    return rows, num_windows(rows, seq_len)


def _config(**train):
    return Config(ModelConfig(), TrainConfig(max_steps=10, **train))


@pytest.mark.parametrize("name", ["tangshi300.txt", "tang-quatrains.txt"])
def test_the_shipped_corpora_give_the_batches_of_the_old_implementation(name, tmp_path):
    text = read_corpus(ROOT / "corpora" / name)
    cfg = _config()
    prep = prepare(encoded.Source(ROOT / "corpora" / name), cfg, name, cache=tmp_path)
    vocab, train_ids, valid_ids, counts, lines = old_prepare(text, cfg.train)
    assert prep.vocab == vocab and prep.counts == counts
    assert set(prep.lines.splitlines()) == lines and prep.lines.splitlines() == sorted(lines)
    assert prep.full_valid_ids().tolist() == valid_ids
    assert prep.valid_ids.tolist() == valid_ids  # under 100,000 characters: the subset is the whole split
    for epoch in (0, 1):
        for batch_size, seq_len in ((32, 64), (5, 17)):
            new = epoch_stream(prep.data.train.tokens, prep.data.train.offsets, EOS_ID, epoch, cfg.train.seed,
                               batch_size, seq_len, prep.unk_p, UNK_ID)
            rows, windows = old_epoch_stream(train_ids, EOS_ID, epoch, cfg.train.seed, batch_size, seq_len,
                                             prep.unk_p, UNK_ID)
            assert new.windows == windows and torch.equal(new.rows.long(), rows)


# Hashes of epoch 0's and 1's rows (batch 32, seq 64) and of the validation stream, computed with
# the code before the cache (commit 1db09cf) on corpora/tangshi300.txt.
SAVED = ("49bc8d93d19f9737", "03ebf97d970ac317", "49dbd66019994b0d")


def test_tangshi300_batches_match_hashes_saved_from_the_old_code(tmp_path):
    cfg = _config()
    prep = prepare(encoded.Source(ROOT / "corpora" / "tangshi300.txt"), cfg, "t", cache=tmp_path)
    got = tuple(hashlib.sha256(epoch_stream(prep.data.train.tokens, prep.data.train.offsets, EOS_ID, e, cfg.train.seed,
                                            32, 64, prep.unk_p, UNK_ID).rows.long().numpy().tobytes()).hexdigest()[:16]
                for e in (0, 1))
    assert got + (hashlib.sha256(prep.valid_ids.numpy().tobytes()).hexdigest()[:16],) == SAVED


@pytest.mark.parametrize("text", [
    "一首诗\n\n  \n第二首\r\n第三首。\n",  # blank lines, CRLF
    "只有一行没有换行符的长长的文字" * 3,  # one line: its tail is the validation part
    "\n".join(POEMS) + "\n",
    "漢字繁體，書寫。\n" * 30 + "風雨聲。\n",  # traditional: converted to simplified
])
def test_small_and_odd_texts_match_the_old_implementation(text, tmp_path):
    tc = TrainConfig(max_steps=1, valid_fraction=0.2, min_count=1)
    # built in pieces of one line, as a large file is read
    pieces = [line + "\n" for line in text.split("\n")[:-1]] + ([text.split("\n")[-1]] if text.split("\n")[-1] else [])
    enc = encoded.build(iter(pieces), tc.valid_fraction, tc.seed, tc.min_count)
    vocab, train_ids, valid_ids, counts, lines = old_prepare(text, tc)
    assert enc.vocab == vocab and enc.counts == counts
    assert encoded.stream(enc.valid).tolist() == valid_ids
    tokens, offsets = enc.train.tokens, enc.train.offsets
    assert [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == [p + [EOS_ID] for p in train_ids]
    assert set(enc.lines.splitlines()) == lines
    assert enc.sha256 == hashlib.sha256(normalize(text, vocab.script).encode()).hexdigest()


def test_a_given_vocabulary_is_used_and_unknown_characters_are_unk(tmp_path):
    vocab = Vocab(["<unk>", "\n", "春", "风"])
    enc = encoded.load(encoded.Source(text="春风秋月\n春花\n风雨\n"), 0.3, 1, 1, vocab, tmp_path)
    assert enc.vocab == vocab and enc.train.tokens.dtype == np.uint16
    assert set(enc.train.tokens.tolist()) <= {0, 1, 2, 3} and UNK_ID in enc.train.tokens.tolist()


def test_the_cache_is_reused_and_damage_means_a_rebuild(tmp_path, monkeypatch):
    src = encoded.Source(text="\n".join(POEMS * 5) + "\n")
    first = encoded.load(src, 0.1, 3, 1, directory=tmp_path)
    assert first.path is not None and first.path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary file left behind
    built = []
    real = encoded.build
    monkeypatch.setattr(encoded, "build", lambda *a, **k: built.append(1) or real(*a, **k))
    again = encoded.load(src, 0.1, 3, 1, directory=tmp_path)
    assert built == [] and isinstance(again.train.tokens, np.memmap)
    assert np.array_equal(again.train.tokens, first.train.tokens) and again.counts == first.counts
    assert again.lines == first.lines and again.vocab == first.vocab

    encoded.load(src, 0.2, 3, 1, directory=tmp_path)  # another split: another file
    assert built == [1] and len(list(tmp_path.iterdir())) == 2

    data = first.path.read_bytes()
    for damaged in (data[:-1], data[: len(data) // 2], data[:100] + b"\xff" + data[101:], b"", b"rubbish"):
        first.path.write_bytes(damaged)
        out = encoded.load(src, 0.1, 3, 1, directory=tmp_path)
        assert np.array_equal(out.train.tokens, first.train.tokens) and out.vocab == first.vocab
    assert len(built) == 6
    assert first.path.read_bytes() == data  # rebuilt in place, the same bytes


def test_a_changed_corpus_is_not_served_from_the_cache(tmp_path):
    a = encoded.load(encoded.Source(text="\n".join(POEMS) + "\n"), 0.1, 3, 1, directory=tmp_path)
    b = encoded.load(encoded.Source(text="\n".join(POEMS[:-1]) + "\n"), 0.1, 3, 1, directory=tmp_path)
    assert a.sha256 != b.sha256 and a.train.tokens.size != b.train.tokens.size


def test_an_unwritable_cache_folder_still_trains(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    enc = encoded.load(encoded.Source(text="\n".join(POEMS) + "\n"), 0.1, 3, 1, directory=blocker / "sub")
    assert enc.path is None and enc.train.poems == len(POEMS) - 1


def test_the_validation_subset_is_fixed_capped_and_in_corpus_order():
    split = encoded.Split(*_pack([[5] * n for n in [10, 3, 7, 20, 4, 9, 12]]))
    a = encoded.subset(split, 30, seed=1)
    assert np.array_equal(a, encoded.subset(split, 30, seed=1)) and list(a) == sorted(a)
    assert np.diff(split.offsets)[a].sum() <= 30 and len(a) >= 1
    assert not np.array_equal(a, encoded.subset(split, 30, seed=2)) or len(a) == 1
    assert encoded.subset(split, 1, seed=1).size == 1  # at least one poem
    assert list(encoded.subset(split, 10**6, seed=1)) == list(range(7))  # small enough: all of it
    assert encoded.stream(split, np.array([1, 4])).tolist() == [EOS_ID, 5, 5, 5, EOS_ID, 5, 5, 5, 5, EOS_ID]


def _pack(poems):
    tokens = np.array([t for p in poems for t in [*p, EOS_ID]], dtype=np.uint16)
    return tokens, np.cumsum([0] + [len(p) + 1 for p in poems]).astype(np.int64)


def test_training_logs_the_subset_and_the_full_split(tmp_path):
    from charlm.train import train_corpus
    import json

    text = "\n".join(POEMS * 10) + "\n"
    res = train_corpus(text, tiny_config(max_steps=6, eval_interval=3, valid_chars=60, valid_fraction=0.3), tmp_path / "r")
    records = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    periodic = [r for r in records if "valid_bpc" in r]
    full = [r for r in records if "full_valid_bpc" in r]
    assert [r["step"] for r in periodic] == [3, 6] and all(r["valid_chars"] <= 60 for r in periodic)
    assert len(full) == 1 and full[0]["full_valid_chars"] > 60 and full[0]["of_step"] in (3, 6)
    assert res.full_valid_bpc == full[0]["full_valid_bpc"] and res.subset_chars <= 60
    assert res.best_valid_bpc == min(r["valid_bpc"] for r in periodic)  # the subset chose the best
