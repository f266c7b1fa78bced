"""Decoding speed of a model, beside plain decoding of the same model in the same run.

    python benchmarks/decode_speed.py [--checkpoint checkpoints/tang] [--repeats 5] [--before DIR]

Plain decoding is the loop of pytorch/examples' word_language_model/generate.py — under
``torch.no_grad()``: ``output, hidden = model(input, hidden)`` with that project's forward
(embedding, nn.LSTM, decoder) on this model's modules, ``weights = output.squeeze()
.div(T).exp()``, ``torch.multinomial(weights, 1)``, ``input.fill_(idx)`` — batch of one. Then
charlm's own decoders (``sample.sample_poems``, ``sample.beam_poems``) with the exact weights and
with int8 ones, and two whole commands against ``python -c "import torch"``.

``--before DIR`` also times an older charlm — a checkout such as ``git worktree add /tmp/before
29162fe`` — on the same model in the same run: its decoders in a subprocess with DIR first on the
path, its command run from DIR (so with that checkout's own default model).

"One sample" is what a user waiting for one poem gets: single-row samples of seeds 1, 2, … until
2,000 characters. Characters are the ones rows actually generate, the end of poem included;
figures are medians of ``--repeats`` runs; "× plain" divides by plain decoding of the same run, so
a busy machine moves both together.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from charlm import checkpoint
from charlm.constrain import PoemSpec
from charlm.poetry import parse_form
from charlm.sample import SampleSettings, beam_poems, sample_poems

JOBS = ["one unconstrained sample", "-n 64 unconstrained", "-n 512 --max-chars 100",
        "-n 100 --form 七律 --rhyme --tones", "--beam 16 -n 8 --form 七绝 --rhyme --tones"]


def examples_forward(model, inp, hidden):
    """pytorch/examples' RNNModel.forward on this model's modules: embedding → the nn.LSTM/GRU/RNN
    module → (projection) → decoder. Not charlm's own forward, so the yardstick stays the same
    whatever charlm's decoding path becomes."""
    out, hidden = model.rnn(model.embed(inp), hidden)
    if model.proj is not None:
        out = model.proj(out)
    return model.head(out), hidden


def plain_decoding(model, chars: int, temperature: float = 0.8, seed: int = 0) -> float:
    """characters/second of pytorch/examples-style decoding (no constraints, no stopping)."""
    torch.manual_seed(seed)
    model.eval()
    inp = torch.zeros(1, 1, dtype=torch.long)
    hidden = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(chars):
            output, hidden = examples_forward(model, inp, hidden)
            weights = output.squeeze().div(temperature).exp()
            idx = torch.multinomial(weights, 1)[0]
            inp.fill_(idx)
    return chars / (time.perf_counter() - t0)


def _quantize_kw(fn, quantize: bool) -> dict:
    """Older charlm has no int8 decoding: its decoders take no ``quantize``."""
    return {"quantize": quantize} if "quantize" in inspect.signature(fn).parameters else {}


def sampling(ck, n: int, spec: PoemSpec, max_chars: int, seed: int, quantize: bool) -> tuple[int, float]:
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    out = sample_poems(ck.model, ck.vocab, "", n, spec=spec, settings=SampleSettings(max_chars=max_chars),
                       generator=g, lines=ck.lines, **_quantize_kw(sample_poems, quantize))
    return sum(len(r.text) + 1 for r in out), time.perf_counter() - t0  # + the end of poem


def one_sample(ck, quantize: bool, chars: int = 2000) -> float:
    done = seconds = 0.0
    seed = 1
    while done < chars:
        c, s = sampling(ck, 1, PoemSpec(), 200, seed, quantize)
        done, seconds, seed = done + c, seconds + s, seed + 1
    return done / seconds


def beam(ck, n: int, width: int, spec: PoemSpec, quantize: bool) -> float:
    t0 = time.perf_counter()
    beam_poems(ck.model, ck.vocab, "", n, spec=spec, beam=width, lines=ck.lines, **_quantize_kw(beam_poems, quantize))
    steps = spec.form.lines * (spec.form.chars + 1) + 1
    return width * steps / (time.perf_counter() - t0)  # characters the beam rows decode


def measure(path: str, repeats: int, quantize_too: bool) -> dict:
    """Plain decoding and each job, characters/second (medians); with ``quantize_too``, each job in int8 too."""
    ck = checkpoint.load(path)
    qilv = PoemSpec(form=parse_form("七律"), rhyme=True, tones=True)
    qijue = PoemSpec(form=parse_form("七绝"), rhyme=True, tones=True)

    def rate(job):
        c, s = job
        return c / s

    jobs = {
        JOBS[0]: lambda q: one_sample(ck, q),
        JOBS[1]: lambda q: rate(sampling(ck, 64, PoemSpec(), 200, 2, q)),
        JOBS[2]: lambda q: rate(sampling(ck, 512, PoemSpec(), 100, 3, q)),
        JOBS[3]: lambda q: rate(sampling(ck, 100, qilv, 200, 4, q)),
        JOBS[4]: lambda q: beam(ck, 8, 16, qijue, q),
    }
    out = {"plain": statistics.median(plain_decoding(ck.model, 300) for _ in range(repeats)), "fp32": {}, "int8": {}}
    if quantize_too:
        from charlm.sample import int8_copy

        int8_copy(ck.model)  # made once per loaded model; its cost is part of the command timings
    for name, job in jobs.items():
        out["fp32"][name] = statistics.median(job(False) for _ in range(repeats))
        if quantize_too:
            out["int8"][name] = statistics.median(job(True) for _ in range(repeats))
    return out


def command_seconds(args: list[str], cwd: str | None = None, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=env)
    return time.perf_counter() - t0


def _before_env(before: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.path.abspath(before)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="checkpoints/tang")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", metavar="DIR", help="an older charlm checkout to time on the same model")
    ap.add_argument("--no-commands", action="store_true", help="skip the whole-command timings")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)  # the --before subprocess
    args = ap.parse_args()
    R = args.repeats
    if args.json_only:
        print(json.dumps(measure(args.checkpoint, R, quantize_too=False)))
        return
    before = None
    if args.before:
        cmd = [sys.executable, os.path.abspath(__file__), "--checkpoint", os.path.abspath(args.checkpoint),
               "--repeats", str(R), "--json-only"]
        before = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                           env=_before_env(args.before)).stdout.splitlines()[-1])
    now = measure(args.checkpoint, R, quantize_too=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.checkpoint}; medians of {R} runs")
    cols = ([("before", before)] if before else []) + [("now, fp32", now), ("now, int8", now)]
    print(f"{'decoding, characters/second':<44}" + "".join(f"{c:>12}{'× plain':>9}" for c, _ in cols))
    print(f"{'plain decoding (pytorch/examples), 1 row':<44}"
          + "".join(f"{r['plain']:>12,.0f}{1.0:>9.2f}" if c != "now, int8" else " " * 21 for c, r in cols))
    for name in JOBS:
        cells = []
        for c, r in cols:
            v = r["int8" if c == "now, int8" else "fp32"][name]
            cells.append(f"{v:>12,.0f}{v / r['plain']:>9.2f}")
        print(f"{name:<44}" + "".join(cells))
    if args.no_commands:
        return
    runs = {'python -c "import torch"': lambda: command_seconds([sys.executable, "-c", "import torch"]),
            "charlm generate --prompt 天地": lambda: command_seconds(
                [sys.executable, "-m", "charlm", "generate", "--prompt", "天地", "--seed", "1"])}
    if args.before:
        runs["the same, before (its default model)"] = lambda: command_seconds(
            [sys.executable, "-m", "charlm", "generate", "--prompt", "天地", "--seed", "1"],
            cwd=args.before, env=_before_env(args.before))
    times = {k: [] for k in runs}
    for _ in range(R):  # alternating, so a busy spell hits every command alike
        for k, f in runs.items():
            times[k].append(f())
    base = statistics.median(times['python -c "import torch"'])
    print(f"{'command (medians, alternating runs)':<46}{'seconds':>10}{'× torch':>9}")
    for k, ts in times.items():
        print(f"{k:<46}{statistics.median(ts):>10.2f}{statistics.median(ts) / base:>9.2f}")


if __name__ == "__main__":
    main()
