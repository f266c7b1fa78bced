"""Repetition in beam poems of the shipped model: plain maximum-likelihood beam search (what
`--beam` did before: no_repeat off, one group) against today's default (no repeated bigram, the
character cap, one diverse group per poem) and against sampling-then-reranking (--best-of 16 with
--no-repeat), beside the real quatrains of the corpus.

    python benchmarks/beam_repetition.py [--n 8] [--beam 16]
"""

from __future__ import annotations

import argparse

import torch

from charlm import checkpoint
from charlm.config import SampleSettings
from charlm.constrain import PoemSpec
from charlm.judge import judge, repetition_of
from charlm.poetry import parse_form
from charlm.sample import beam_poems, sample_poems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tang-quatrains")
    ap.add_argument("--corpus", default="corpora/tang-quatrains.txt")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--beam", type=int, default=16)
    args = ap.parse_args()
    ck = checkpoint.load(args.checkpoint)
    real = [l for l in open(args.corpus, encoding="utf-8").read().split("\n") if l.strip()]
    c = repetition_of(real)
    print(f"corpus ({c.poems} poems): repeated bigram {c.repeated_bigram:.1%}, top character mean "
          f"{c.top_char_count:.2f}, 4+ uses {c.top_char_4:.1%}")
    methods = {
        "ML beam (before)": lambda spec: beam_poems(ck.model, ck.vocab, "", args.n, spec=spec, beam=args.beam,
                                                    no_repeat=False, groups=1),
        "beam, no-repeat + diverse groups": lambda spec: beam_poems(ck.model, ck.vocab, "", args.n, spec=spec,
                                                                    beam=args.beam),
        "sample best-of-16, no-repeat": lambda spec: sample_poems(
            ck.model, ck.vocab, "", args.n, spec=spec, best_of=16, settings=SampleSettings(no_repeat=True),
            generator=torch.Generator().manual_seed(1)),
    }
    print(f"{'method':<34}{'poems':>6}{'rep.bigram':>11}{'top char':>9}{'4+ uses':>8}{'distinct-2':>11}"
          f"{'nats/char':>10}{'rhyme ok':>9}")
    for name, run in methods.items():
        texts, scores = [], []
        for form in ("五绝", "七绝", "五律", "七律"):
            out = run(PoemSpec(form=parse_form(form), rhyme=True, tones=True))
            texts += [r.text for r in out]
            scores += [r.score for r in out]
            print(f"  {name} {form} #1: {out[0].text}")
        _, s = judge(texts)
        print(f"{name:<34}{s.poems:>6}{s.repeated_bigram:>11.1%}{s.top_char_count:>9.2f}{s.top_char_4:>8.1%}"
              f"{s.distinct_2:>11.3f}{sum(scores) / len(scores):>10.3f}{s.rhyme_valid:>9.1%}")


if __name__ == "__main__":
    main()
