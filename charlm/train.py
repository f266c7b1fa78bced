"""The training loop: AdamW with weight decay, gradient clipping by global norm, warmup and
cosine decay, periodic validation that keeps the best checkpoint, and resume after an interrupt.

The loop reports progress through ``Callbacks`` and imports no UI.

Gradient clipping by norm (the text's remedy for exploding gradients): when the global norm
‖g‖ of all gradients exceeds ``clip``, every gradient is scaled by clip/‖g‖, so the step keeps
its direction but not its size. Weight decay (decoupled, AdamW) shrinks each weight matrix
toward zero by lr·weight_decay per step; biases and the forget-gate offsets are left alone.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from charlm import checkpoint
from charlm.config import Config
from charlm.data import (epoch_stream, get_window, good_turing_alpha, join_poems, poem_lines, sha256_text,
                         split_poems, unk_probabilities)
from charlm.errors import CharLMError
from charlm.evaluate import score
from charlm.model import CharLM, detach_state
from charlm.vocab import EOS_ID, UNK_ID, Vocab, detect_script, normalize


# -- events reported to the caller -----------------------------------------------------------

@dataclass(frozen=True)
class StepEvent:
    step: int
    epoch: int
    loss: float
    bpc: float
    lr: float
    chars_per_sec: float
    elapsed: float
    progress: float  # fraction of the budget used, 0..1


@dataclass(frozen=True)
class ValidEvent:
    step: int
    valid_loss: float
    valid_bpc: float
    best_bpc: float
    improved: bool


@dataclass(frozen=True)
class StartInfo:
    corpus_chars: int
    train_poems: int
    valid_poems: int
    vocab_size: int
    parameters: int
    precision: str
    batch_size: int
    resumed_from: int  # step, 0 for a fresh run


@dataclass
class FitResult:
    out: Path
    steps: int
    epochs_done: float
    elapsed: float
    best_valid_bpc: float
    last_train_bpc: float
    interrupted: str | None = None  # signal name when stopped by SIGINT/SIGTERM
    history: list[dict] = field(default_factory=list)


class Callbacks:
    """Override what you need; the trainer calls these and nothing else to report progress."""

    def on_start(self, info: StartInfo) -> None: ...
    def on_step(self, event: StepEvent) -> None: ...
    def on_valid(self, event: ValidEvent, model: CharLM, vocab: Vocab) -> None: ...


# -- helpers -------------------------------------------------------------------------------

def bf16_supported() -> bool:
    """True where the CPU has native bf16 matrix support (AMX tiles or AVX-512 BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a private probe may change between torch versions
            pass
    return False


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def lr_at(step: int, progress: float, cfg) -> float:
    """Linear warmup over warmup_steps (at most a tenth of --max-steps), then cosine decay to
    lr·min_lr_ratio as progress → 1."""
    warmup = cfg.warmup_steps
    if cfg.max_steps:
        warmup = min(warmup, cfg.max_steps // 10)
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    p = min(1.0, max(0.0, progress))
    cos = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return cfg.lr * warm * cos


def make_optimizer(model: CharLM, cfg) -> torch.optim.AdamW:
    params = {id(p): (n, p) for n, p in model.named_parameters()}.values()
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99),
    )


@contextmanager
def _catch_signals() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps."""
    flag: dict = {"signal": None}

    def handler(signum, frame):
        flag["signal"] = signal.Signals(signum).name

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


# -- data preparation ------------------------------------------------------------------------

@dataclass
class Prepared:
    config: Config
    vocab: Vocab
    train_ids: list[list[int]]
    valid_ids: torch.Tensor
    counts: list[int]
    corpus: dict
    lines: set[str]
    unk_p: np.ndarray | None = None  # per id, the chance an occurrence is read as <unk> (data.unk_probabilities)


def prepare(text: str, config: Config, corpus_path: str | None = None, vocab: Vocab | None = None) -> Prepared:
    """Normalise, split by poem, build (or reuse) the vocabulary and encode both parts."""
    tc = config.train
    script = vocab.script if vocab is not None else detect_script(text)
    text = normalize(text, script)
    train_poems, valid_poems = split_poems(text, tc.valid_fraction, tc.seed)
    train_text = join_poems(train_poems)
    if vocab is None:
        vocab = Vocab.from_text(train_text, min_count=tc.min_count, script=script)
    counts_map: dict[int, int] = {}
    for i in vocab.encode(train_text):
        counts_map[i] = counts_map.get(i, 0) + 1
    counts = [counts_map.get(i, 0) for i in range(len(vocab))]
    config.model.vocab_size = len(vocab)
    train_ids = [vocab.encode(p) for p in train_poems]
    valid_ids = torch.tensor(vocab.encode(join_poems(valid_poems)), dtype=torch.long)
    n_train = sum(len(p) + 1 for p in train_ids)
    if n_train < tc.seq_len + 1:
        raise CharLMError(
            f"the corpus is too short: its training part has {n_train} characters, fewer than one "
            f"sequence of --seq-len {tc.seq_len} (+1); use a longer text or a smaller --seq-len"
        )
    keep = (UNK_ID, EOS_ID)
    unk_alpha = good_turing_alpha(counts, keep) if tc.unk_alpha is None else tc.unk_alpha
    unk_p = unk_probabilities(counts, unk_alpha, keep)
    corpus = {
        "path": corpus_path,
        "sha256": sha256_text(text),
        "characters": len(text),
        "train_poems": len(train_poems),
        "valid_poems": len(valid_poems),
        "script": script,
        "unk_alpha": unk_alpha,
        "unk_rate": float((unk_p * counts).sum() / max(1, sum(counts))),  # expected share read as <unk>
    }
    return Prepared(config, vocab, train_ids, valid_ids, counts, corpus, poem_lines(train_poems), unk_p)


# -- the loop --------------------------------------------------------------------------------

def fit(prep: Prepared, out: str | Path, *, callbacks: Callbacks | None = None, resume: bool = False) -> FitResult:
    """Train on ``prep`` and write the best checkpoint (by validation bpc) to ``out``."""
    cb = callbacks or Callbacks()
    config, vocab, tc = prep.config, prep.vocab, prep.config.train
    out = Path(out)
    precision = resolve_precision(tc.precision)
    if precision == "bf16" and not bf16_supported():
        raise CharLMError("--precision bf16 needs a CPU with bf16 support (AMX or AVX-512 BF16); use fp32")

    torch.manual_seed(tc.seed)
    model = CharLM(config.model)
    opt = make_optimizer(model, tc)

    # the epoch stream; shrink the batch if a small corpus cannot fill it
    batch_size = tc.batch_size
    n_train = sum(len(p) + 1 for p in prep.train_ids) + 1
    while batch_size > 1 and n_train // batch_size < tc.seq_len + 1:
        batch_size //= 2

    step, epoch, window, elapsed_before = 0, 0, 0, 0.0
    best = math.inf
    state = None
    extra: dict = {}
    if resume:
        st, state, extra = checkpoint.load_resume(out, model, opt)
        step, epoch, window = st["step"], st["epoch"], st["window"]
        elapsed_before, best, batch_size = st["elapsed"], st["best_valid_bpc"], st["batch_size"]

    # Weight averaging (Polyak; an exponential moving average): the averaged weights are
    # validated beside the raw ones and saved when they score better.
    averaged = None
    if tc.ema:
        averaged = copy.deepcopy(model).eval()
        saved_avg = {k.removeprefix("ema."): v for k, v in extra.items() if k.startswith("ema.")}
        if saved_avg:
            with torch.no_grad():
                for name, p in averaged.named_parameters():
                    p.copy_(saved_avg[name])
        avg_params = list(averaged.parameters())

    def progress(elapsed: float, ep: float) -> float:
        parts = []
        if tc.max_steps:
            parts.append(step / tc.max_steps)
        if tc.max_time:
            parts.append(elapsed / tc.max_time)
        if tc.epochs:
            parts.append(ep / tc.epochs)
        return max(parts) if parts else 0.0

    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    cb.on_start(StartInfo(prep.corpus["characters"], prep.corpus["train_poems"], prep.corpus["valid_poems"],
                          len(vocab), params, precision, batch_size, step))

    metrics_path = out / "metrics.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        metrics_path.write_text("", encoding="utf-8")
    metrics_file = metrics_path.open("a", encoding="utf-8")

    def log(record: dict) -> None:
        metrics_file.write(json.dumps(record, ensure_ascii=False) + "\n")
        metrics_file.flush()

    def save_resume() -> None:
        avg = {f"ema.{n}": p for n, p in averaged.named_parameters()} if averaged is not None else None
        checkpoint.save_resume(out, model, opt, state, {
            "step": step, "epoch": epoch, "window": window, "elapsed": elapsed,
            "best_valid_bpc": best, "batch_size": batch_size, "config": config.to_dict(),
        }, extra=avg)

    lines_written = False  # lines.txt is written with the first checkpoint of this run

    def validate() -> float:
        nonlocal best, lines_written
        s = score(model, prep.valid_ids)
        record = {"step": step, "valid_loss": s.loss, "valid_bpc": s.bpc}
        candidate, averaged_better = model, False
        if averaged is not None:
            s_avg = score(averaged, prep.valid_ids)
            record["ema_valid_bpc"] = s_avg.bpc
            if s_avg.bpc < s.bpc:
                s, candidate, averaged_better = s_avg, averaged, True
        improved = s.bpc < best
        if improved:
            best = s.bpc
            checkpoint.save(out, candidate, config, vocab, corpus=prep.corpus, counts=prep.counts,
                            lines=None if lines_written else prep.lines, metrics={
                "step": step, "valid_loss": s.loss, "valid_bpc": s.bpc, "valid_chars": s.chars,
                "averaged_weights": averaged_better, "train_bpc": last_bpc, "elapsed_s": round(elapsed, 1),
                "precision": precision,
            })
            lines_written = True
        log({**record, "best_valid_bpc": best, "elapsed": round(elapsed, 2)})
        cb.on_valid(ValidEvent(step, s.loss, s.bpc, best, improved), model, vocab)
        return s.bpc

    model.train()
    start = time.perf_counter()
    elapsed = elapsed_before
    last_bpc = math.nan
    chars_per_step = batch_size * tc.seq_len
    rate = 0.0
    interrupted = None
    last_valid_step = step if resume else -1

    def stream(ep: int):
        return epoch_stream(prep.train_ids, EOS_ID, ep, tc.seed, batch_size, tc.seq_len, prep.unk_p, UNK_ID)

    data = stream(epoch)
    try:
        with _catch_signals() as flag:
            while True:
                if window >= data.windows:
                    epoch, window, state = epoch + 1, 0, None
                    data = stream(epoch)
                ep_progress = epoch + window / max(1, data.windows)
                p = progress(elapsed, ep_progress)
                if p >= 1.0:
                    break
                t0 = time.perf_counter()
                lr = lr_at(step, p, tc)
                for g in opt.param_groups:
                    g["lr"] = lr
                x, y = get_window(data.rows, window, tc.seq_len)  # (B, T) each
                if state is None:
                    state = model.init_state(batch_size)
                with autocast(precision):  # validation is always scored in fp32
                    loss, new_state = model.loss(x, y, state)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
                opt.step()
                if averaged is not None:  # w̄ ← ema·w̄ + (1 − ema)·w
                    with torch.no_grad():
                        for a, p in zip(avg_params, model.parameters()):
                            a.lerp_(p, 1.0 - tc.ema)
                state = tuple(s.float() for s in detach_state(new_state))
                step += 1
                window += 1
                dt = time.perf_counter() - t0
                elapsed = elapsed_before + time.perf_counter() - start
                rate = chars_per_step / dt if rate == 0 else 0.9 * rate + 0.1 * chars_per_step / dt
                last_bpc = loss.item() / math.log(2)
                event = StepEvent(step, epoch, loss.item(), last_bpc, lr, rate, elapsed,
                                  progress(elapsed, epoch + window / max(1, data.windows)))
                if step % 10 == 0 or step == 1:
                    log({"step": step, "epoch": round(epoch + window / max(1, data.windows), 4),
                         "loss": event.loss, "bpc": event.bpc, "lr": lr,
                         "chars_per_sec": round(rate, 1), "elapsed": round(elapsed, 2)})
                cb.on_step(event)
                if step % tc.eval_interval == 0:
                    validate()
                    last_valid_step = step
                if flag["signal"]:
                    interrupted = flag["signal"]
                    break
            if last_valid_step != step and step > 0:
                validate()
            if step == 0 and not checkpoint.is_checkpoint(out):
                validate()
            save_resume()
    finally:
        metrics_file.close()
    return FitResult(out, step, epoch + window / max(1, data.windows), elapsed, best, last_bpc, interrupted)


def train_corpus(text: str, config: Config, out: str | Path, *, corpus_path: str | None = None,
                 callbacks: Callbacks | None = None, resume: bool = False) -> FitResult:
    """Everything `charlm train` does: prepare the data (reusing the saved vocabulary and
    settings when resuming) and fit."""
    out = Path(out)
    vocab = None
    if resume:
        saved = Config.from_dict(checkpoint.read_resume(out)["config"])
        # budget options may be extended when resuming; everything else must stay as it was
        for key in ("max_steps", "max_time", "epochs", "ema"):
            setattr(saved.train, key, getattr(config.train, key))
        config = saved
        best = checkpoint.load(out)
        vocab, old = best.vocab, best.corpus.get("sha256")
    prep = prepare(text, config, corpus_path, vocab)
    if resume and old and old != prep.corpus["sha256"]:
        raise CharLMError("cannot resume: the corpus is not the one this run was trained on (its sha256 differs)")
    return fit(prep, out, callbacks=callbacks, resume=resume)
