"""Decoding speed of the shipped model, beside plain decoding of the same model in the same run.

    python benchmarks/decode_speed.py [--checkpoint checkpoints/tang-quatrains] [--repeats 5]

Plain decoding is the loop of pytorch/examples' word_language_model/generate.py — under
``torch.no_grad()``: ``output, hidden = model(input, hidden)``, ``weights = output.squeeze()
.div(T).exp()``, ``torch.multinomial(weights, 1)``, ``input.fill_(idx)`` — for the same number of
characters, batch of one. Then charlm's own decoders (``sample.sample_poems``, ``sample.beam_poems``)
and two whole commands against ``python -c "import torch"``. Characters are the ones a poem's
rows actually generate, the end of poem included; figures are medians of ``--repeats`` runs, and
ratios divide by the plain-decoding figure of the same run, so a busy machine moves both together.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

from charlm import checkpoint
from charlm.constrain import PoemSpec
from charlm.poetry import parse_form
from charlm.sample import SampleSettings, beam_poems, sample_poems


def plain_decoding(model, chars: int, temperature: float = 0.8, seed: int = 0) -> float:
    """characters/second of pytorch/examples-style decoding (no constraints, no stopping)."""
    torch.manual_seed(seed)
    model.eval()
    inp = torch.zeros(1, 1, dtype=torch.long)
    hidden = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(chars):
            output, hidden = model(inp, hidden)
            weights = output.squeeze().div(temperature).exp()
            idx = torch.multinomial(weights, 1)[0]
            inp.fill_(idx)
    return chars / (time.perf_counter() - t0)


def _generated(results, prompt: str) -> int:
    return sum(len(r.text) - len(prompt) + 1 for r in results)  # + the end of poem


def charlm_sampling(ck, n: int, spec: PoemSpec, max_chars: int, seed: int, quantize: bool = False) -> float:
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = sample_poems(ck.model, ck.vocab, "", n, spec=spec, settings=SampleSettings(max_chars=max_chars),
                       generator=g, lines=ck.lines, quantize=quantize)
    return _generated(out, "") / (time.perf_counter() - t0)


def charlm_beam(ck, n: int, beam: int, spec: PoemSpec, quantize: bool = False) -> float:
    t0 = time.perf_counter()
    beam_poems(ck.model, ck.vocab, "", n, spec=spec, beam=beam, lines=ck.lines, quantize=quantize)
    steps = spec.form.lines * (spec.form.chars + 1) + 1
    return beam * steps / (time.perf_counter() - t0)  # characters the beam rows decode


def command_seconds(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median(f, repeats: int) -> float:
    return statistics.median(f() for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tang-quatrains")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-commands", action="store_true", help="skip the whole-command timings")
    args = ap.parse_args()
    ck = checkpoint.load(args.checkpoint)
    R = args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.checkpoint}; medians of {R} runs")
    plain = median(lambda: plain_decoding(ck.model, 300), R)
    qilv = PoemSpec(form=parse_form("七律"), rhyme=True, tones=True)
    qijue = PoemSpec(form=parse_form("七绝"), rhyme=True, tones=True)
    jobs = [
        ("one unconstrained sample", lambda q: charlm_sampling(ck, 1, PoemSpec(), 200, 1, q)),
        ("-n 64 unconstrained", lambda q: charlm_sampling(ck, 64, PoemSpec(), 200, 2, q)),
        ("-n 512 --max-chars 100", lambda q: charlm_sampling(ck, 512, PoemSpec(), 100, 3, q)),
        ("-n 100 --form 七律 --rhyme --tones", lambda q: charlm_sampling(ck, 100, qilv, 200, 4, q)),
        ("--beam 16 -n 8 七绝 --rhyme --tones", lambda q: charlm_beam(ck, 8, 16, qijue, q)),
    ]
    from charlm.sample import int8_copy

    int8_copy(ck.model)  # made once per loaded model; its 0.2 s is part of the command timings below
    print(f"{'decoding, characters/second':<40}{'fp32':>9}{'× plain':>9}{'int8':>9}{'× plain':>9}")
    print(f"{'plain decoding (pytorch/examples), 1 row':<40}{plain:>9,.0f}{1.0:>9.2f}")
    for name, job in jobs:
        exact, fast = median(lambda: job(False), R), median(lambda: job(True), R)
        print(f"{'charlm: ' + name:<40}{exact:>9,.0f}{exact / plain:>9.2f}{fast:>9,.0f}{fast / plain:>9.2f}")
    if args.no_commands:
        return
    torch_s = median(lambda: command_seconds([sys.executable, "-c", "import torch"]), R)
    gen_s = median(lambda: command_seconds([sys.executable, "-m", "charlm", "generate", "--prompt", "天地",
                                            "--seed", "1"]), R)
    print(f"{'command':<46}{'seconds':>10}{'× torch':>9}")
    label = 'python -c "import torch"'
    print(f"{label:<46}{torch_s:>10.2f}{1.0:>9.2f}")
    print(f"{'charlm generate --prompt 天地':<46}{gen_s:>10.2f}{gen_s / torch_s:>9.2f}")


if __name__ == "__main__":
    main()
