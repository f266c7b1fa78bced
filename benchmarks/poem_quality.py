"""How well the shipped model writes regulated verse, constrained and unconstrained.

    python benchmarks/poem_quality.py [--checkpoint checkpoints/tang-quatrains] [-n 100] [--seed 0]

For each form (五绝, 七绝, 五律, 七律) samples n poems with --rhyme --tones (one batch each), and
n unconstrained poems for contrast, judges them with charlm.judge (the same rules the decoder
enforces) and prints a Markdown table: form-valid, rhyme-valid, mean tonal agreement, tone-valid,
distinct-1/2, copy rate and the longest copied span, plus seconds per batch.
"""

from __future__ import annotations

import argparse
import time

import torch

from charlm import checkpoint
from charlm.constrain import PoemSpec
from charlm.judge import judge
from charlm.poetry import FORMS
from charlm.sample import SampleSettings, sample_poems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(checkpoint.shipped_checkpoint()))
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.8)
    args = ap.parse_args()
    ck = checkpoint.load(args.checkpoint)
    settings = SampleSettings(temperature=args.temperature)
    rows = []
    runs = [("unconstrained", None, PoemSpec())] + [
        (f"--form {name} --rhyme --tones", form, PoemSpec(form=form, rhyme=True, tones=True)) for name, form in FORMS.items()
    ]
    for label, form, spec in runs:
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        poems = [r.text for r in sample_poems(ck.model, ck.vocab, "", args.n, spec=spec, settings=settings,
                                              lines=ck.lines, generator=g)]
        dt = time.perf_counter() - t0
        _, s = judge(poems, form, ck.lines)
        pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        rows.append(f"| {label} | {s.poems} | {pct(s.form_valid)} | {pct(s.rhyme_valid)} | {pct(s.tone_agreement)} | "
                    f"{pct(s.tone_valid)} | {s.distinct_1:.3f} / {s.distinct_2:.3f} | {pct(s.copy_rate)} | "
                    f"{s.longest_copy} | {dt:.1f} |")
    print(f"checkpoint {args.checkpoint}, temperature {args.temperature}, seed {args.seed}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| sampling | poems | form-valid | rhyme-valid | tonal agreement | tone-valid | distinct-1 / -2 | "
          "copy rate | longest copy | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
