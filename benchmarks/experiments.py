"""The experiments of docs/experiments.md: why gates matter, measured.

    python benchmarks/experiments.py gradients [--steps 300] [--out docs]
    python benchmarks/experiments.py budget [--budget 90s] [--corpora corpora/tang-quatrains.txt corpora/tang.txt]

gradients — the long-range dependency problem: for each cell (rnn, irnn, gru, lstm; one layer of
256, embedding 64), at initialisation and after --steps training steps on the quatrains, the mean
norm ‖∂L_T/∂h_{T−k}‖ of the gradient of the loss at the last step T with respect to the hidden
state k steps earlier, k = 0…200, over 16 held-out windows. Writes docs/gradient-norms.png and
prints the numbers at k = 1, 10, 50, 100, 200.

budget — same data, same wall-clock budget: the default model (2×512, embedding 256, tied) for
each variant — rnn, irnn, gru, lstm, lstm+conv (kernel 4), lstm+residual, and lstm without
gradient clipping, without weight decay — trained for --budget on each corpus, one after the
other in one process; prints a Markdown table of steps and best validation bpc.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from charlm.config import Config, ModelConfig, TrainConfig, parse_duration
from charlm.data import read_corpus
from charlm.model import CharLM
from charlm.train import fit, prepare

CELLS = ("rnn", "irnn", "gru", "lstm")
KS = (1, 10, 50, 100, 200)


def gradient_norms(model: CharLM, windows: torch.Tensor, K: int = 200) -> list[float]:
    """Mean over windows of ‖∂L_T/∂s_{T−k}‖ for k = 0..K, where s_j is the hidden state h entering
    step j (h_{j−1}) and L_T the loss of the prediction made at the last step T = K."""
    model.eval()  # no dropout; gradients still flow
    B, T = windows.shape[0], K
    state = tuple(s.requires_grad_() for s in model.init_state(B))
    entering = []
    for t in range(T + 1):
        h = state[0]
        if not h.is_leaf:
            h.retain_grad()
        entering.append(h)
        logits, state = model(windows[:, t : t + 1], state)
    F.cross_entropy(logits[:, -1], windows[:, T + 1]).backward()
    return [float(entering[T - k].grad.transpose(0, 1).reshape(B, -1).norm(dim=1).mean()) for k in range(K + 1)]


def run_gradients(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = read_corpus(args.corpus)
    results = {}
    for cell in CELLS:
        cfg = Config(ModelConfig(embed_dim=64, hidden_size=256, num_layers=1, dropout=0.0, tie_weights=False, cell=cell),
                     TrainConfig(max_steps=args.steps, eval_interval=10**9, precision="fp32", seq_len=100))
        prep = prepare(text, cfg, args.corpus)
        stream = prep.valid_ids
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, stream.numel() - 202, (16,), generator=g)
        windows = torch.stack([stream[s : s + 202] for s in starts.tolist()])
        torch.manual_seed(cfg.train.seed)
        init = gradient_norms(CharLM(cfg.model), windows)
        with tempfile.TemporaryDirectory() as d:
            fit(prep, d)
            from charlm import checkpoint

            trained_model = checkpoint.load(d).model
        trained = gradient_norms(trained_model, windows)
        results[cell] = (init, trained)
        print(f"{cell:5s} init    " + "  ".join(f"k={k}: {init[k]:.2e}" for k in KS))
        print(f"{cell:5s} trained " + "  ".join(f"k={k}: {trained[k]:.2e}" for k in KS))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, idx, title in ((axes[0], 0, "at initialisation"), (axes[1], 1, f"after {args.steps} steps")):
        for cell, r in results.items():
            ax.semilogy(range(len(r[idx])), r[idx], label=cell)
        ax.set_title(title)
        ax.set_xlabel("k (steps back)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean ‖∂L_T / ∂h_{T−k}‖")
    axes[1].legend()
    fig.tight_layout()
    out = Path(args.out) / "gradient-norms.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"plot: {out}")


VARIANTS = {
    "rnn": dict(cell="rnn"),
    "irnn": dict(cell="irnn"),
    "gru": dict(cell="gru"),
    "lstm": dict(),
    "lstm+conv": dict(conv_kernel=4),
    "lstm+residual": dict(residual=True),
    "lstm, no clipping": dict(train=dict(clip=0.0)),
    "lstm, no weight decay": dict(train=dict(weight_decay=0.0)),
}


def run_budget(args) -> None:
    budget = parse_duration(args.budget)
    print(f"budget {budget:.0f} s per run, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| corpus | variant | steps | best valid bpc |")
    print("|---|---|---:|---:|")
    for corpus in args.corpora:
        text = read_corpus(corpus)
        for name, kw in VARIANTS.items():
            kw = dict(kw)
            train_kw = kw.pop("train", {})
            cfg = Config(ModelConfig(**kw), TrainConfig(max_time=budget, eval_interval=10**9, **train_kw))
            prep = prepare(text, cfg, corpus)
            with tempfile.TemporaryDirectory() as d:
                r = fit(prep, d)
            print(f"| {Path(corpus).name} | {name} | {r.steps} | {r.best_valid_bpc:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gradients")
    g.add_argument("--corpus", default="corpora/tang-quatrains.txt")
    g.add_argument("--steps", type=int, default=300)
    g.add_argument("--out", default="docs")
    b = sub.add_parser("budget")
    b.add_argument("--budget", default="90s")
    b.add_argument("--corpora", nargs="+", default=["corpora/tang-quatrains.txt", "corpora/tang.txt"])
    args = ap.parse_args()
    (run_gradients if args.what == "gradients" else run_budget)(args)


if __name__ == "__main__":
    main()
