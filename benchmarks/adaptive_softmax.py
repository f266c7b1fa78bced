"""Training speed of the full softmax against the adaptive softmax on a large vocabulary.

    python benchmarks/adaptive_softmax.py [--corpus corpora/tang.txt] [--steps 15]

Builds the vocabulary of the corpus (corpora/tang.txt: ~8,900 characters), then times
forward + loss + backward + AdamW steps of the default model on random windows with each output
layer, in the same process, and prints characters/second and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from charlm.config import Config, ModelConfig, TrainConfig
from charlm.data import read_corpus
from charlm.model import CharLM
from charlm.devices import autocast, resolve_precision
from charlm.train import make_optimizer, prepare


def rate(cfg: ModelConfig, tc: TrainConfig, steps: int, precision: str) -> float:
    torch.manual_seed(0)
    model = CharLM(cfg).train()
    opt = make_optimizer(model, tc)
    x = torch.randint(0, cfg.vocab_size, (tc.batch_size, tc.seq_len))
    y = torch.randint(0, cfg.vocab_size, (tc.batch_size, tc.seq_len))
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        with autocast(precision):
            loss, _ = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * tc.batch_size * tc.seq_len / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="corpora/tang.txt")
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    cfg = Config(ModelConfig(), TrainConfig())
    V = len(prepare(read_corpus(args.corpus), cfg, args.corpus).vocab)
    precision = resolve_precision("auto")
    print(f"{args.corpus}: vocabulary {V:,}; default model, batch {cfg.train.batch_size}×{cfg.train.seq_len}, "
          f"{precision}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    full = rate(ModelConfig(vocab_size=V), cfg.train, args.steps, precision)
    adaptive = rate(ModelConfig(vocab_size=V, softmax="adaptive"), cfg.train, args.steps, precision)
    print(f"full softmax     {full:10,.0f} chars/s")
    print(f"adaptive softmax {adaptive:10,.0f} chars/s   ({adaptive / full:.2f}× the full softmax)")


if __name__ == "__main__":
    main()
