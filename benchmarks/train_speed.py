"""Training and generation speed of the default model on this machine.

    python benchmarks/train_speed.py [--corpus corpora/tang-quatrains.txt] [--steps 30]

Prints characters/second of `charlm train`'s own loop (charlm.train.fit: data windows, carried
state, clipping, schedule, logging) next to a bare loop over the same model — random ids,
forward + cross-entropy + backward + AdamW step, nothing else — in bf16 (where the CPU has it)
and fp32, measured in the same process; then generation characters/second (one sample, one
character per step).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from charlm.config import Config, ModelConfig, TrainConfig
from charlm.data import read_corpus
from charlm.model import CharLM
from charlm.sample import SampleSettings, generate
from charlm.devices import autocast, bf16_supported
from charlm.train import Callbacks, make_optimizer, prepare, fit


def bare_loop(model_cfg: ModelConfig, tc: TrainConfig, precision: str, steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = CharLM(model_cfg).train()
    opt = make_optimizer(model, tc)
    V = model_cfg.vocab_size
    x = torch.randint(0, V, (tc.batch_size, tc.seq_len))
    y = torch.randint(0, V, (tc.batch_size, tc.seq_len))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(precision):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * tc.batch_size * tc.seq_len / (time.perf_counter() - t0)


class _Clock(Callbacks):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.steps = warmup, 0.0, 0.0, 0

    def on_step(self, e) -> None:
        if e.step == self.warmup:
            self.t0 = time.perf_counter()
        self.t1, self.steps = time.perf_counter(), e.step


def charlm_loop(text: str, precision: str, steps: int, warmup: int = 3) -> tuple[float, ModelConfig, TrainConfig]:
    cfg = Config(ModelConfig(), TrainConfig(max_steps=warmup + steps, eval_interval=10**9,
                                            precision=precision, warmup_steps=0))
    prep = prepare(text, cfg, "bench")
    clock = _Clock(warmup)
    with tempfile.TemporaryDirectory() as d:
        fit(prep, d, callbacks=clock)
    chars = (clock.steps - clock.warmup) * cfg.train.batch_size * cfg.train.seq_len
    return chars / (clock.t1 - clock.t0), cfg.model, cfg.train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="corpora/tang-quatrains.txt")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    text = read_corpus(args.corpus)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 supported: {bf16_supported()}")
    print(f"{'precision':<10}{'charlm loop':>14}{'bare loop':>14}{'ratio':>8}   (training characters/second)")
    precisions = ["bf16", "fp32"] if bf16_supported() else ["fp32"]
    for precision in precisions:
        ours, mcfg, tcfg = charlm_loop(text, precision, args.steps)
        bare = bare_loop(mcfg, tcfg, precision, args.steps)
        print(f"{precision:<10}{ours:>14,.0f}{bare:>14,.0f}{ours / bare:>8.2f}")
    torch.manual_seed(0)
    model = CharLM(mcfg).eval()
    from charlm.train import prepare as _prep

    vocab = _prep(text, Config(ModelConfig(), TrainConfig()), "bench").vocab
    g = torch.Generator().manual_seed(0)
    n_chars = 0
    t0 = time.perf_counter()
    while n_chars < 2000:
        out = generate(model, vocab, "", settings=SampleSettings(max_chars=500), generator=g)
        n_chars += len(out) + 1
    print(f"generation: {n_chars / (time.perf_counter() - t0):,.0f} characters/second "
          f"(default model, batch of one, fp32, one step per character)")


if __name__ == "__main__":
    main()
