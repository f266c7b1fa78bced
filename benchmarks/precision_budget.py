"""Does bf16 cost validation bpc at an equal wall-clock budget?

    python benchmarks/precision_budget.py [--corpus corpora/tang-quatrains.txt] [--budget 4m]

Trains the default model once in fp32 and once in bf16 (same seed, data order and split), each
for the same --max-time, one after the other in this process, and prints steps taken and the
best validation bpc (always scored in fp32). Needs a CPU with bf16 support (AMX / AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from charlm.config import Config, ModelConfig, TrainConfig, parse_duration
from charlm.data import read_corpus
from charlm.devices import bf16_supported
from charlm.train import fit, prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="corpora/tang-quatrains.txt")
    ap.add_argument("--budget", default="4m")
    args = ap.parse_args()
    if not bf16_supported():
        raise SystemExit("this CPU has no native bf16 support; charlm uses fp32 here")
    text = read_corpus(args.corpus)
    budget = parse_duration(args.budget)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, budget {budget:.0f} s each, {args.corpus}")
    print(f"{'precision':<10}{'steps':>8}{'chars/s':>10}{'best valid bpc':>16}")
    for precision in ("fp32", "bf16"):
        cfg = Config(ModelConfig(), TrainConfig(max_time=budget, precision=precision, eval_interval=100))
        prep = prepare(text, cfg, args.corpus)
        with tempfile.TemporaryDirectory() as d:
            r = fit(prep, d)
        chars = r.steps * cfg.train.batch_size * cfg.train.seq_len
        print(f"{precision:<10}{r.steps:>8}{chars / r.elapsed:>10,.0f}{r.best_valid_bpc:>16.3f}")


if __name__ == "__main__":
    main()
