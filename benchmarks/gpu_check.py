"""The GPU check: ready to run the moment a GPU is lent.

    python benchmarks/gpu_check.py [--corpus corpora/tang-quatrains.txt] [--minutes 2] [--device cuda]

Trains the default model (charlm train's defaults) for two minutes on the GPU, then prints the
training characters/second, the validation bpc of the best checkpoint, and generation
characters/second for a batch of 1 and of 64 — beside the same generation figures on the CPU in
the same run. It also checks what CPU tests cannot: a checkpoint trained on the GPU loads and
scores the same on the CPU, and resuming on the GPU continues the run. Without a GPU it says so
and exits 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from charlm import checkpoint
from charlm.config import Config
from charlm.data import read_corpus
from charlm.devices import resolve_precision
from charlm.evaluate import evaluate, validation_text
from charlm.sample import SampleSettings, sample_poems
from charlm.train import Callbacks, train_corpus


class Clock(Callbacks):
    """Training characters/second over the run, leaving out the first 20 steps (warm-up, cuDNN plans)."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_step(self, e) -> None:
        if e.step > 20:
            self.rates.append(e.chars_per_sec)

    def on_valid(self, e, model, vocab) -> None:
        print(f"  step {e.step}: validation bpc {e.valid_bpc:.3f}", flush=True)


def generation_rate(model, vocab, n: int, device: torch.device, chars: int = 200, repeats: int = 3) -> float:
    """Unconstrained sampling, characters/second (median of ``repeats`` timed runs after a warm-up)."""
    model.to(device)
    settings = SampleSettings(max_chars=chars)
    times, produced = [], 0
    for i in range(repeats + 1):
        g = torch.Generator(device="cpu").manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        results = sample_poems(model, vocab, "", n, settings=settings, generator=g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
            produced = sum(r.chars for r in results)
    return produced / sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="corpora/tang-quatrains.txt")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check (run this on a machine with one)")
        return 1
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(device)}, "
          f"precision auto → {resolve_precision('auto', device)}", flush=True)
    text = read_corpus(args.corpus)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = Config()
        cfg.train.max_time, cfg.train.epochs, cfg.train.device = args.minutes * 60 / 2, None, args.device
        clock = Clock()
        t0 = time.perf_counter()
        first = train_corpus(text, cfg, out, corpus_path=args.corpus, callbacks=clock)
        print(f"first half: {first.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        # the second minute as a resumed run: resuming on the GPU must continue the same run
        cfg.train.max_time = args.minutes * 60
        second = train_corpus(text, cfg, out, corpus_path=args.corpus, callbacks=clock, resume=True,
                              changed={"train.max_time": "--max-time"})
        rates = sorted(clock.rates)
        print(f"training: {second.steps} steps, median {rates[len(rates) // 2]:,.0f} characters/second "
              f"(default model, batch {cfg.train.batch_size} × {cfg.train.seq_len})")
        print(f"best validation bpc (periodic): {second.best_valid_bpc:.4f}; last training bpc "
              f"{second.last_train_bpc:.3f}")
        on_gpu = checkpoint.load(out, device=device)
        on_cpu = checkpoint.load(out, device="cpu")
        valid, _ = validation_text(on_cpu)
        bpc_gpu = evaluate(on_gpu.model, on_gpu.vocab, valid).bpc
        bpc_cpu = evaluate(on_cpu.model, on_cpu.vocab, valid).bpc
        print(f"validation bpc of the best checkpoint: {bpc_gpu:.4f} on the GPU, {bpc_cpu:.4f} on the CPU "
              f"(difference {abs(bpc_gpu - bpc_cpu):.2e})")
        ok = math.isfinite(bpc_gpu) and abs(bpc_gpu - bpc_cpu) < 1e-3
        for n in (1, 64):
            gpu = generation_rate(on_gpu.model, on_gpu.vocab, n, device)
            cpu = generation_rate(on_cpu.model, on_cpu.vocab, n, torch.device("cpu"))
            print(f"generation, batch {n:>2}: {gpu:,.0f} characters/second on the GPU, {cpu:,.0f} on the CPU")
    print("OK" if ok else "MISMATCH between GPU and CPU figures")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
