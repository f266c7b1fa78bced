"""What the ci tests share: a small synthetic tune table with one tune of each kind of shape and
rhyme, and a tiny model trained on real ci (so its vocabulary has 、 and enough characters of
every 词林正韵 part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from charlm import cipai
from charlm.poetry import LEVEL as P, OBLIQUE as Z

ROOT = Path(__file__).resolve().parent.parent
SONGCI = ROOT / "corpora" / "songci.txt"


def tune(name, lengths, marks, rhymes, rhyme_sets, tones, examples=20) -> cipai.Tune:
    return cipai.Tune(name=name, examples=examples, lengths=tuple(lengths), marks=marks, count=examples,
                      stanzas=(len(lengths),), variants=(), rhymes=dict(rhymes), rhyme_sets=tuple(map(tuple, rhyme_sets)),
                      tones=tuple(tones))


# One tune per kind: lines of unequal length closed by ，。、; a rhyme on the level tone, one on the
# oblique tone, a change of rhyme (two rhyme sets), and one set rhyming across both tones (西江月).
TUNES = [
    tune("平韵令", (4, 5, 3, 6), "，。、。", {1: P, 3: P}, [(1, 3)], ("中平中仄", "中仄中平平", "中中仄", "中平中仄仄平")),
    tune("仄韵令", (5, 4, 7), "。，。", {0: Z, 2: Z}, [(0, 2)], ("中平中仄仄", "中中平平", "中仄中平中仄仄")),
    tune("换韵令", (5, 5, 5, 5), "。。，。", {0: Z, 1: Z, 2: P, 3: P}, [(0, 1), (2, 3)],
         ("中中中中仄", "中中中中仄", "中中中中平", "中中中中平")),
    tune("混韵令", (6, 6, 7), "，。。", {0: P, 1: P, 2: Z}, [(0, 1, 2)], ("中平中中中平", "中仄中中中平", "中中中中中中仄")),
]


def write_table(path: Path, tunes=TUNES) -> Path:
    table = cipai.CipaiTable(tunes={t.name: t for t in tunes}, ci=sum(t.examples for t in tunes),
                             covered=sum(t.examples for t in tunes))
    cipai.write(table, path)
    return path


@pytest.fixture(scope="module")
def tune_table(tmp_path_factory) -> cipai.CipaiTable:
    """The synthetic table, written and read back (so it passes the reader's validation)."""
    return cipai.read(write_table(tmp_path_factory.mktemp("tunes") / "cipai.json"))


@pytest.fixture(scope="module")
def ci_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for 10 steps on the first 200 ci of corpora/songci.txt."""
    from charlm.config import Config, ModelConfig, TrainConfig
    from charlm.train import train_corpus

    d = tmp_path_factory.mktemp("ci-model")
    text = "\n".join(SONGCI.read_text(encoding="utf-8").split("\n")[:200]) + "\n"
    config = Config(ModelConfig(embed_dim=16, hidden_size=24, num_layers=1, dropout=0.0, tie_weights=False),
                    TrainConfig(seq_len=16, batch_size=4, max_steps=10, eval_interval=10, warmup_steps=0,
                                valid_fraction=0.03, valid_chars=2000, precision="fp32", lr=1e-2, seed=7))
    train_corpus(text, config, d / "ckpt", corpus_path=str(d / "ci.txt"))
    return d / "ckpt"
