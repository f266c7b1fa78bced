"""Does the encoder earn its keep? The couplet encoder–decoder against the plain language model.

    python benchmarks/couplet_encoder.py [--pairs corpora/couplets.tsv] [--budget 8m]

Both models are trained on the same pairs for the same --max-time, at the same time in two
processes of one thread each (so both see the same load on the machine), with the same embedding
and hidden sizes, seed and split:

- the encoder–decoder (charlm train --task couplet) on the pairs file;
- the language model (charlm train) on the same poems written as text, one poem a line
  (``上联，下联。上联，下联。``), which charlm.data.split_poems splits exactly as the pairs file
  (the same number of poems, fraction and seed: checked below).

Then both score the held-out second lines: the encoder–decoder given the first line, the
language model prompted with ``\\n上联，`` (the start of a poem, the first line and its comma).
Only the second line's characters are scored, in bits per character.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import tempfile
import time
from pathlib import Path

import torch

from charlm.config import Config, ModelConfig, TrainConfig, parse_duration
from charlm.couplet import flatten, read_pairs, split_pairs


def _settings(args, budget: float) -> tuple[ModelConfig, TrainConfig]:
    return (ModelConfig(embed_dim=args.embed, hidden_size=args.hidden, num_layers=1, dropout=args.dropout),
            TrainConfig(max_time=budget, seed=args.seed, eval_interval=args.eval_interval, valid_chars=20_000))


def _train(kind: str, args, budget: float, out: str, lm_corpus: str) -> dict:
    torch.set_num_threads(1)
    model, train = _settings(args, budget)
    if kind == "couplet":
        from charlm.seq2seq import prepare_pairs, fit_pairs

        train.batch_size = 64
        prep = prepare_pairs(args.pairs, Config(model, train, task="couplet"))
        r = fit_pairs(prep, out)
    else:
        from charlm.data import read_corpus
        from charlm.train import fit, prepare

        model.hidden_size = args.lm_hidden or args.hidden
        prep = prepare(read_corpus(lm_corpus), Config(model, train), lm_corpus)
        r = fit(prep, out)
    return {"steps": r.steps, "elapsed": r.elapsed, "epochs": r.epochs_done}


@torch.no_grad()
def lm_second_line_bpc(model, vocab, pairs) -> tuple[float, int]:
    """bpc of each second line under the language model, read after ``\\n上联，``."""
    from charlm.couplet import batches, encode_pairs

    enc = encode_pairs(vocab, pairs)
    nll, chars = 0.0, 0
    comma = vocab.encode("，")[0]
    for index in batches(enc, 256):
        first = torch.tensor(np_stack(enc.first, index))
        second = torch.tensor(np_stack(enc.second, index))
        B, S = first.shape
        ids = torch.cat([torch.ones(B, 1, dtype=torch.long), first, torch.full((B, 1), comma), second], 1)
        logits, _ = model(ids[:, :-1])
        target = ids[:, 1:]
        start = S + 1  # the targets from the second line's first character on
        logp = torch.log_softmax(logits[:, start:].float(), -1).gather(-1, target[:, start:, None])
        nll -= logp.sum().item()
        chars += target[:, start:].numel()
    return nll / chars / math.log(2), chars


def np_stack(rows, index):
    import numpy as np

    return np.stack([rows[i] for i in index])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default="corpora/couplets.tsv")
    ap.add_argument("--budget", default="8m")
    ap.add_argument("--embed", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lm-hidden", type=int, default=None,
                    help="the language model's hidden size (default --hidden); larger to match the parameters")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-interval", type=int, default=500)
    args = ap.parse_args()
    budget = parse_duration(args.budget)
    poems = read_pairs(Path(args.pairs).read_text(encoding="utf-8"))
    tc = TrainConfig(seed=args.seed)
    valid = flatten(split_pairs(poems, tc.valid_fraction, tc.seed)[1])
    with tempfile.TemporaryDirectory() as d:
        lm_corpus = str(Path(d, "poems.txt"))
        Path(lm_corpus).write_text("".join("".join(f"{a}，{b}。" for a, b in pairs) + "\n" for pairs in poems),
                                   encoding="utf-8")
        from charlm.data import split_poems

        lm_valid = split_poems(Path(lm_corpus).read_text(encoding="utf-8"), tc.valid_fraction, tc.seed)[1]
        assert [p for line in lm_valid for p in _pairs_of(line)] == valid, "the two splits differ"
        print(f"torch {torch.__version__}; {len(poems):,} poems, {len(valid):,} held-out pairs; "
              f"embed {args.embed}, hidden {args.hidden}, 1 layer; budget {budget:.0f} s each, in parallel")
        t0 = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(2) as pool:
            jobs = {k: pool.apply_async(_train, (k, args, budget, str(Path(d, k)), lm_corpus))
                    for k in ("couplet", "lm")}
            runs = {k: j.get() for k, j in jobs.items()}
        print(f"both trained in {time.perf_counter() - t0:.0f} s")
        from charlm import checkpoint
        from charlm.model import count_parameters
        from charlm.seq2seq import score_pairs
        from charlm.couplet import encode_pairs

        torch.set_num_threads(1)
        enc = checkpoint.load(Path(d, "couplet"), lines=False)
        s = score_pairs(enc.model, encode_pairs(enc.vocab, valid))
        lm = checkpoint.load(Path(d, "lm"), lines=False)
        lm_bpc, lm_chars = lm_second_line_bpc(lm.model, lm.vocab, valid)
        print(f"{'parameters':>12}{'steps':>8}{'epochs':>8}{'chars':>9}{'bpc':>8}  model")
        print(f"{count_parameters(lm.model):>12,}{runs['lm']['steps']:>8}{runs['lm']['epochs']:>8.2f}{lm_chars:>9,}"
              f"{lm_bpc:>8.3f}  language model (hidden {args.lm_hidden or args.hidden}), prompted with 上联，")
        print(f"{count_parameters(enc.model):>12,}{runs['couplet']['steps']:>8}{runs['couplet']['epochs']:>8.2f}"
              f"{s.chars:>9,}{s.bpc:>8.3f}  encoder-decoder, given the first line")

def _pairs_of(line: str):
    cells = [c for c in line.replace("。", "，").split("，") if c]
    return list(zip(cells[0::2], cells[1::2]))


if __name__ == "__main__":
    main()
