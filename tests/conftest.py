"""Shared fixtures: tiny corpora in tmp_path and one tiny trained checkpoint per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from charlm.config import Config, ModelConfig, TrainConfig

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _corpus_cache(tmp_path_factory):
    """The encoded-corpus cache in a temporary folder, never the user's ~/.cache (subprocesses
    inherit it through the environment)."""
    import os

    old = os.environ.get("CHARLM_CACHE")
    os.environ["CHARLM_CACHE"] = str(tmp_path_factory.mktemp("corpus-cache"))
    yield
    if old is None:
        os.environ.pop("CHARLM_CACHE", None)
    else:
        os.environ["CHARLM_CACHE"] = old


def pack(poems: list[list[int]], eos_id: int = 1):
    """Poems of ids as (tokens, offsets), each poem followed by eos_id (charlm.encoded.Split)."""
    import numpy as np

    tokens = np.array([t for p in poems for t in [*p, eos_id]], dtype=np.uint16)
    offsets = np.cumsum([0] + [len(p) + 1 for p in poems]).astype(np.int64)
    return tokens, offsets

POEMS = [
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
    "红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
    "空山不见人，但闻人语响。返景入深林，复照青苔上。",
    "向晚意不适，驱车登古原。夕阳无限好，只是近黄昏。",
    "松下问童子，言师采药去。只在此山中，云深不知处。",
    "独坐幽篁里，弹琴复长啸。深林人不知，明月来相照。",
    "移舟泊烟渚，日暮客愁新。野旷天低树，江清月近人。",
    "绿蚁新醅酒，红泥小火炉。晚来天欲雪，能饮一杯无。",
    "北斗七星高，哥舒夜带刀。至今窥牧马，不敢过临洮。",
]


def tiny_config(**train) -> Config:
    defaults = dict(seq_len=16, batch_size=4, max_steps=20, eval_interval=10, warmup_steps=0,
                    valid_fraction=0.2, precision="fp32", lr=1e-2, seed=7)
    defaults.update(train)
    return Config(ModelConfig(embed_dim=16, hidden_size=24, num_layers=1, dropout=0.0, tie_weights=False),
                  TrainConfig(**defaults))


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    p = tmp_path / "poems.txt"
    p.write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A tiny checkpoint trained once through the library."""
    from charlm.train import train_corpus

    d = tmp_path_factory.mktemp("trained")
    corpus = d / "poems.txt"
    corpus.write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    config = tiny_config(max_steps=30)
    config.model = ModelConfig(embed_dim=16, hidden_size=24, num_layers=2, dropout=0.1, tie_weights=True)
    train_corpus(corpus.read_text(encoding="utf-8"), config, d / "ckpt", corpus_path=str(corpus))
    return d / "ckpt"


class InterruptAt:
    """Callbacks that send this process a signal at one step. SIGTERM by default: SIGINT is ignored
    in a background job, and the suite must pass however it is started."""

    def __init__(self, step, sig=None):
        import signal

        self.step, self.sig = step, sig or signal.SIGTERM

    def on_start(self, info): ...
    def on_valid(self, e, model, vocab): ...

    def on_step(self, e):
        import os

        if e.step == self.step:
            os.kill(os.getpid(), self.sig)
