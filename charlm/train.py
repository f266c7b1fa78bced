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
import dataclasses
import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from charlm import checkpoint, distributed
from charlm.config import Config, TrainConfig
from charlm import encoded
from charlm.data import EpochData, epoch_stream, get_window, good_turing_alpha, unk_probabilities
from charlm.devices import autocast, grad_scaler, resolve_device, resolve_precision, rng_states, set_rng_states
from charlm.distributed import Dist
from charlm.errors import CharLMError, describe
from charlm.evaluate import score
from charlm.model import CharLM, count_parameters, planned_size
from charlm.vocab import EOS_ID, UNK_ID, Vocab


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
    valid_chars: int = 0  # characters scored: the periodic subset (TrainConfig.valid_chars)


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
    processes: int = 1  # processes sharing the batch (torchrun)


@dataclass
class FitResult:
    out: Path
    steps: int
    epochs_done: float
    elapsed: float
    best_valid_bpc: float  # on the periodic validation subset, which chose the best checkpoint
    last_train_bpc: float
    full_valid_bpc: float | None = None  # the best checkpoint on the whole validation split (end of training)
    full_valid_chars: int = 0
    subset_chars: int = 0  # characters in the periodic validation subset
    interrupted: str | None = None  # signal name when stopped by SIGINT, SIGTERM or SIGHUP
    skipped: int = 0  # updates skipped because the loss or gradient was not finite


class Callbacks:
    """Override what you need; the trainer calls these and nothing else to report progress."""

    def on_start(self, info: StartInfo) -> None: ...
    def on_step(self, event: StepEvent) -> None: ...
    def on_valid(self, event: ValidEvent, model: CharLM, vocab: Vocab) -> None: ...


class MultiCallbacks(Callbacks):
    """Several callbacks as one, each told everything in the order given (a display, a log)."""

    def __init__(self, *callbacks: Callbacks) -> None:
        self.callbacks = callbacks

    def on_start(self, info: StartInfo) -> None:
        for c in self.callbacks:
            c.on_start(info)

    def on_step(self, event: StepEvent) -> None:
        for c in self.callbacks:
            c.on_step(event)

    def on_valid(self, event: ValidEvent, model: CharLM, vocab: Vocab) -> None:
        for c in self.callbacks:
            c.on_valid(event, model, vocab)


# -- helpers -------------------------------------------------------------------------------

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


def set_lr(opt: torch.optim.Optimizer, step: int, progress: float, cfg) -> float:
    """Give every parameter group the scheduled learning rate (lr_at) for this step; returns it."""
    lr = lr_at(step, progress, cfg)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def make_optimizer(model: CharLM, cfg) -> torch.optim.AdamW:
    params = {id(p): (n, p) for n, p in model.named_parameters()}.values()
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.99),
    )


# -- data preparation ------------------------------------------------------------------------

@dataclass
class Prepared:
    config: Config
    vocab: Vocab
    data: encoded.Encoded  # both splits as compact arrays (memory-mapped from the corpus cache)
    valid_ids: torch.Tensor  # the periodic validation subset as one stream, (N,) int64
    counts: list[int]
    corpus: dict
    unk_p: np.ndarray | None = None  # per id, the chance an occurrence is read as <unk> (data.unk_probabilities)

    @property
    def lines(self) -> str:
        """The training poems' lines, rendered for lines.txt (checkpoint.render_lines)."""
        return self.data.lines

    def full_valid_ids(self) -> torch.Tensor:
        return torch.from_numpy(encoded.stream(self.data.valid)).long()


def prepare(corpus: str | encoded.Source, config: Config, corpus_path: str | None = None,
            vocab: Vocab | None = None, cache: Path | None = None) -> Prepared:
    """Normalise, split by poem, build (or reuse) the vocabulary and encode both parts, from the
    corpus cache when it holds them (encoded.load). ``corpus`` is the text, or a Source to read
    the file in pieces from."""
    tc = config.train
    source = corpus if isinstance(corpus, encoded.Source) else encoded.Source(text=corpus)
    data = encoded.load(source, tc.valid_fraction, tc.seed, tc.min_count, vocab, cache)
    vocab = data.vocab
    counts = data.counts
    config.model.vocab_size = len(vocab)
    n_train = data.train.tokens.size
    if n_train < tc.seq_len + 1:
        raise CharLMError(
            f"the corpus is too short: its training part has {n_train} characters, fewer than one "
            f"sequence of --seq-len {tc.seq_len} (+1); use a longer text or a smaller --seq-len"
        )
    keep = (UNK_ID, EOS_ID)
    unk_alpha = good_turing_alpha(counts, keep) if tc.unk_alpha is None else tc.unk_alpha
    unk_p = unk_probabilities(counts, unk_alpha, keep)
    subset = encoded.subset(data.valid, tc.valid_chars, tc.seed)
    corpus_record = {
        "path": corpus_path,
        "sha256": data.sha256,
        "characters": data.characters,
        "train_poems": data.train.poems,
        "valid_poems": data.valid.poems,
        "script": vocab.script,
        "unk_alpha": unk_alpha,
        "unk_rate": float((unk_p * counts).sum() / max(1, sum(counts))),  # expected share read as <unk>
    }
    valid_ids = torch.from_numpy(encoded.stream(data.valid, subset)).long()
    return Prepared(config, vocab, data, valid_ids, counts, corpus_record, unk_p)


# -- the run's state, its budget and the averaged weights -----------------------------------

DIVERGENCE_LIMIT = 8  # non-finite updates in a row that end a run


@dataclass(frozen=True)
class Budget:
    """When a run stops: whichever of steps, seconds of training and epochs runs out first.
    TrainConfig gives a run with no budget DEFAULT_EPOCHS epochs."""

    max_steps: int | None = None
    max_time: float | None = None  # seconds
    epochs: int | None = None

    @classmethod
    def of(cls, tc: TrainConfig) -> "Budget":
        return cls(tc.max_steps, tc.max_time, tc.epochs)

    def progress(self, step: int, elapsed: float, epochs_done: float) -> float:
        """The fraction of the budget used, 0..1 (the learning-rate schedule follows it)."""
        parts = [step / self.max_steps if self.max_steps else 0.0,
                 elapsed / self.max_time if self.max_time else 0.0,
                 epochs_done / self.epochs if self.epochs else 0.0]
        return max(parts)


class WeightAverage:
    """Polyak averaging, as an exponential moving average: w̄ ← ema·w̄ + (1 − ema)·w after every
    update. The averaged weights are validated beside the raw ones and saved when better."""

    def __init__(self, model: CharLM, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self._pairs = list(zip(self.model.parameters(), model.parameters()))

    @torch.no_grad()
    def update(self) -> None:
        for avg, w in self._pairs:
            avg.lerp_(w, 1.0 - self.decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"ema.{n}": p for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for n, p in self.model.named_parameters():
            p.copy_(tensors[f"ema.{n}"])


@dataclass
class TrainState:
    """Everything that moves during a run besides the weights, the optimizer and the averaged
    weights: exactly what the resume state holds (counters in JSON, ``carried`` as tensors)."""

    batch_size: int
    step: int = 0
    epoch: int = 0
    window: int = 0  # the next window of this epoch's layout
    elapsed: float = 0.0  # seconds of training, summed over every part of the run
    best_bpc: float = math.inf
    best_step: int | None = None
    last_valid_step: int | None = None
    skipped: int = 0  # updates skipped because the loss or gradient was not finite
    bad_streak: int = 0  # ... of them in a row, up to now
    carried: tuple[torch.Tensor, ...] | None = None  # the recurrent state carried across windows

    COUNTERS = ("batch_size", "step", "epoch", "window", "elapsed", "best_bpc", "best_step",
                "last_valid_step", "skipped", "bad_streak")

    def counters(self) -> dict:
        c = {k: getattr(self, k) for k in self.COUNTERS}
        c["best_bpc"] = None if math.isinf(self.best_bpc) else self.best_bpc  # JSON has no infinity
        return c

    @classmethod
    def from_counters(cls, data: dict, carried: tuple[torch.Tensor, ...] | None) -> "TrainState":
        missing = [k for k in cls.COUNTERS if k not in data]
        if missing:
            raise CharLMError(f"the resume state is incomplete (no {missing[0]}) and cannot be resumed")
        ints = ("batch_size", "step", "epoch", "window", "skipped", "bad_streak")
        for k in cls.COUNTERS:
            v = data[k]
            ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 0 if k in ints else
                  v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                  if k in ("best_step", "last_valid_step") else
                  v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)))
            if not ok or (k == "elapsed" and v is None):
                raise CharLMError(f"the resume state is damaged: {k} is {describe(v)}")
        st = cls(**{k: data[k] for k in cls.COUNTERS}, carried=carried)
        st.best_bpc = math.inf if st.best_bpc is None else float(st.best_bpc)
        st.batch_size = max(1, st.batch_size)
        return st

    def epochs_done(self, windows: int) -> float:
        return self.epoch + self.window / max(1, windows)


@dataclass(frozen=True)
class StepOutcome:
    loss: float
    grad_norm: float
    finite: bool  # False: the update was skipped
    carried: tuple[torch.Tensor, ...]


def train_step(model: CharLM, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               carried: tuple[torch.Tensor, ...], clip: float, precision: str,
               scaler: torch.amp.GradScaler | None = None, loss_fn=None,
               all_true: Callable[[bool], bool] = bool) -> StepOutcome:
    """One update on window (x, y), both (B, T), starting from the carried state.

    Gradients are clipped to global norm ``clip`` (the remedy for exploding gradients). A loss or
    gradient norm that is not finite skips the update, keeps the weights and the carried state as
    they were, and reports finite=False. Under fp16 the loss is scaled (``scaler``); an overflow
    there only lowers the scale, as it should, and is not counted as a bad step. With several
    processes ``loss_fn`` is the DistributedDataParallel module and ``all_true`` makes the skip a
    decision of all of them."""
    model.train()  # whatever a callback did with the model (sampling puts it in eval mode)
    with autocast(precision, x.device):  # validation is always scored in fp32
        loss, new_state = (loss_fn or model.loss)(x, y, carried)
    opt.zero_grad(set_to_none=True)
    value = loss.item()
    if not all_true(math.isfinite(value)):
        return StepOutcome(value, math.nan, False, carried)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf).item()
    if scaler is not None:
        scaler.step(opt)  # skipped by the scaler itself when the gradients overflowed
        scaler.update()
        return StepOutcome(value, norm, True, tuple(s.detach().float() for s in new_state))
    if not math.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return StepOutcome(value, norm, False, carried)
    opt.step()
    return StepOutcome(value, norm, True, tuple(s.detach().float() for s in new_state))


@contextmanager
def _catch_signals() -> Iterator[dict]:
    """Turn SIGINT, SIGTERM and SIGHUP into a flag the loop checks between steps.

    A signal that was ignored when the run started stays ignored (so `nohup charlm train … &`
    survives the terminal closing), and every handler is put back as it was afterwards."""
    flag: dict = {"signal": None}

    def handler(signum, frame):
        flag["signal"] = signal.Signals(signum).name

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
            continue
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class NoLog:
    """The metrics log of processes other than 0: they write nothing."""

    def write(self, record: dict) -> None: ...
    def close(self) -> None: ...


class MetricsLog:
    """metrics.jsonl, one record a line. Resuming at step S first cuts the log back to S, so no
    step appears twice; a line torn by a crash is dropped then too."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        kept = []
        if resume_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= resume_step:
                    kept.append(line + "\n")
        try:
            checkpoint._atomic_write(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
            self.file = path.open("a", encoding="utf-8")
        except OSError as e:
            raise checkpoint._disk_error("log metrics.jsonl", path.parent, e) from None

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.file.flush()
        except OSError as e:
            raise checkpoint._disk_error("log metrics.jsonl", self.path.parent, e) from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass


def _output_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise CharLMError(f"--out {str(out)!r} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharLMError(f"cannot create the output directory {str(out)!r} ({e.strerror or e})") from None
    return out


def _existing_run(out: Path) -> str | None:
    """A sentence about the run already in ``out``, or None."""
    if checkpoint.has_resume(out):
        st = checkpoint.read_resume(out)
        best = st.get("best_bpc")
        return f"a training run stopped at step {st.get('step')}" + (f" (best {best:.3f} bpc)" if best else "")
    if checkpoint.is_checkpoint(out):
        return "a checkpoint"
    return None


# -- one run: its model, optimizer, state and the files it writes -------------------------------

class Run:
    """The objects one training run works with, and the two things it writes: the best
    checkpoint (at validation) and the resume state. Built fresh or restored from ``out``."""

    def __init__(self, prep: Prepared, out: Path, device: torch.device, precision: str, callbacks: Callbacks,
                 resume: bool, dist: Dist = Dist()) -> None:
        self.prep, self.out, self.device, self.precision, self.cb = prep, out, device, precision, callbacks
        self.dist = dist
        config, tc = prep.config, prep.config.train
        torch.manual_seed(tc.seed)
        self.model = build_model(config).to(device)  # initialised on the CPU: the same weights anywhere
        if dist.rank:  # each process draws its own dropout masks for its own rows
            torch.manual_seed((tc.seed * 1_000_003 + dist.rank) % 2**63)
        self.opt = make_optimizer(self.model, tc)
        self.scaler = grad_scaler(precision, device)
        tensors: dict[str, torch.Tensor] = {}
        if resume:
            counters, tensors = checkpoint.load_resume(out, self.model, self.opt)
            carried = [tensors[k].to(device) for k in sorted((k for k in tensors if k.startswith("carried.")),
                                                             key=lambda k: int(k.split(".")[1]))]
            self.st = TrainState.from_counters(counters, tuple(carried) or None)
            _check_resume_tensors(out, tensors, self.st, self.model, config)
            if self.st.carried is not None:  # saved for the whole batch: this process's rows
                self.st.carried = tuple(t[:, dist.rows(self.st.batch_size)] for t in self.st.carried)
            own = f"rng.rank{dist.rank}"
            if dist.rank and counters.get("processes") == dist.world and own in tensors:
                tensors = {**tensors, "rng": tensors[own]}
            set_rng_states(tensors, device)
            if self.scaler is not None and isinstance(counters.get("grad_scaler"), dict):
                self.scaler.load_state_dict(counters["grad_scaler"])
            # the resume state and the best checkpoint agree on the best: never replace a better one
            saved_best = checkpoint.read_metrics(out).get("valid_bpc")
            if isinstance(saved_best, (int, float)) and saved_best < self.st.best_bpc:
                self.st.best_bpc = float(saved_best)
        else:
            self.st = TrainState(batch_size=fit_batch_size(prep, tc))
        if self.st.batch_size % dist.world:
            raise CharLMError(f"a batch of {self.st.batch_size} rows cannot be shared by {dist.world} processes; "
                              f"use a --batch-size divisible by {dist.world}")
        self.loss_fn = distributed.wrap(self.model, dist, device)
        self.averaged = WeightAverage(self.model, tc.ema) if tc.ema else None
        if self.averaged is not None and any(k.startswith("ema.") for k in tensors):
            self.averaged.load(tensors)  # else averaging starts now, from the current weights
        self.log = MetricsLog(out / checkpoint.METRICS, self.st.step if resume else None) if dist.main else NoLog()
        self.lines_text = prep.lines
        self.last_bpc = math.nan

    def stream(self) -> EpochData:
        """This epoch's training windows (the order of poems is fixed by seed and epoch)."""
        p, tc = self.prep, self.prep.config.train
        return epoch_stream(p.data.train.tokens, p.data.train.offsets, EOS_ID, self.st.epoch, tc.seed,
                            self.st.batch_size, tc.seq_len, p.unk_p, UNK_ID)

    def save_resume(self) -> None:
        """Every process takes part (the carried rows and RNG states are gathered); process 0 writes."""
        st, dist = self.st, self.dist
        carried = [dist.gather(t, 1) for t in st.carried or ()]  # the whole batch's rows, in order
        rng = rng_states(self.device)
        every_rng = dist.gather(rng["rng"][None], 0)
        if not dist.main:
            return
        tensors = {**rng, **{f"carried.{i}": t for i, t in enumerate(carried)},
                   **{f"rng.rank{r}": every_rng[r] for r in range(1, dist.world)},
                   **(self.averaged.tensors() if self.averaged is not None else {})}
        counters = {**st.counters(), "config": self.prep.config.to_dict(), "corpus": self.prep.corpus,
                    "processes": dist.world}
        if self.scaler is not None:
            counters["grad_scaler"] = self.scaler.state_dict()
        checkpoint.save_resume(self.out, self.model, self.opt, counters, tensors, self.prep.vocab, self.prep.counts)

    def validate(self) -> None:
        """Score the raw (and averaged) weights; save the better one as the best checkpoint if it
        beats every earlier validation."""
        st, prep = self.st, self.prep
        s = score(self.model, prep.valid_ids)
        record = {"step": st.step, "valid_loss": s.loss, "valid_bpc": s.bpc, "valid_chars": s.chars}
        candidate, averaged_better = self.model, False
        if self.averaged is not None:
            s_avg = score(self.averaged.model, prep.valid_ids)
            record["ema_valid_bpc"] = s_avg.bpc
            if s_avg.bpc < s.bpc:
                s, candidate, averaged_better = s_avg, self.averaged.model, True
        improved = s.bpc < st.best_bpc
        if improved:
            st.best_bpc, st.best_step = s.bpc, st.step
            checkpoint.save(self.out, candidate, prep.config, prep.vocab, corpus=prep.corpus, counts=prep.counts,
                            lines=self.lines_text, metrics={
                "step": st.step, "valid_loss": s.loss, "valid_bpc": s.bpc, "valid_chars": s.chars,
                "averaged_weights": averaged_better, "train_bpc": self.last_bpc,
                "elapsed_s": round(st.elapsed, 1), "precision": self.precision,
            })
        st.last_valid_step = st.step
        self.log.write({**record, "best_valid_bpc": st.best_bpc, "elapsed": round(st.elapsed, 2)})
        self.cb.on_valid(ValidEvent(st.step, s.loss, s.bpc, st.best_bpc, improved, s.chars), self.model, prep.vocab)

    def validate_full(self) -> tuple[float, int] | None:
        """Score the best checkpoint on the whole validation split and log it; (bpc, characters)."""
        if not self.dist.main or not checkpoint.is_checkpoint(self.out):  # process 0 alone reports it
            return None
        best = checkpoint.load(self.out, device=self.device, lines=False)
        s = score(best.model, self.prep.full_valid_ids())
        self.log.write({"step": self.st.step, "full_valid_loss": s.loss, "full_valid_bpc": s.bpc,
                        "full_valid_chars": s.chars, "of_step": self.st.best_step})
        return s.bpc, s.chars


def _check_resume_tensors(out: Path, tensors: dict[str, torch.Tensor], st: TrainState, model: CharLM,
                          config: Config) -> None:
    """The resume state's own tensors, checked before anything uses them (it is untrusted input)."""
    def damaged(what: str) -> CharLMError:
        return CharLMError(f"the resume state in {str(out)!r} is damaged ({what}); "
                           f"start afresh with --overwrite")

    rng = tensors.get("rng")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise damaged("no usable random-number state")
    if st.carried is not None:
        expected = [tuple(t.shape) for t in model.init_state(st.batch_size)]
        if [tuple(t.shape) for t in st.carried] != expected or not all(t.is_floating_point() for t in st.carried):
            raise damaged(f"its carried state does not fit a batch of {st.batch_size} rows of this model")
    if config.train.ema and any(k.startswith("ema.") for k in tensors):
        for name, p in model.named_parameters():
            t = tensors.get(f"ema.{name}")
            if t is None or t.shape != p.shape:
                raise damaged(f"its averaged weights lack or misshape {name}")


def build_model(config: Config) -> CharLM:
    planned_size(config.model)  # a sentence, not an allocation failure, for an impossible size
    try:
        return CharLM(config.model)
    except (RuntimeError, MemoryError):  # torch's "can't allocate memory"
        raise CharLMError(f"there is not enough memory for a model of {planned_size(config.model):,} "
                          f"parameters; use a smaller --hidden, --embed or --layers") from None


# -- the loop --------------------------------------------------------------------------------

def fit(prep: Prepared, out: str | Path, *, callbacks: Callbacks | None = None, resume: bool = False,
        overwrite: bool = False) -> FitResult:
    """Train on ``prep`` and keep the best checkpoint (by validation bpc) in ``out``.

    The resume state is written at every validation and every ``save_every`` minutes, so a run
    killed at any moment continues with ``resume=True`` from its last save, and from there
    repeats the uninterrupted run bit for bit (given a step or epoch budget)."""
    tc = prep.config.train
    dist = distributed.from_env()
    cb = (callbacks or Callbacks()) if dist.main else Callbacks()
    out = _output_dir(Path(out))
    device = resolve_device(tc.device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # one GPU per process
    precision = resolve_precision(tc.precision, device)
    distributed.start(dist, device)
    try:
        with checkpoint.exclusive(out) if dist.main else nullcontext():
            refused = None
            if dist.main:
                try:
                    checkpoint.remove_stale(out)
                    if not resume:
                        _claim(out, overwrite)
                except CharLMError as e:
                    refused = e
            if not dist.all_true(refused is None):
                raise refused or CharLMError("process 0 of the launch refused to start the run (see its message)")
            run = Run(prep, out, device, precision, cb, resume, dist)
            try:
                result = _loop(run)
            finally:
                run.log.close()
            # gloo's worker threads must be idle and unreferenced before the group goes: drop the
            # DistributedDataParallel wrapper, then wait until every process is done (process 0
            # validates and saves last), so none tears the group down under another
            del run
            dist.barrier()
            return result
    finally:
        distributed.stop(dist)


def _loop(run: Run) -> FitResult:
    """Train until the budget is spent or a signal arrives; validate and save on the way."""
    st, model, opt, tc, log, dist = run.st, run.model, run.opt, run.prep.config.train, run.log, run.dist
    budget = Budget.of(tc)
    run.cb.on_start(StartInfo(run.prep.corpus["characters"], run.prep.corpus["train_poems"],
                              run.prep.corpus["valid_poems"], len(run.prep.vocab), count_parameters(model),
                              run.precision, st.batch_size, st.step, dist.world))
    pin = run.device.type == "cuda"  # page-locked rows let each window's copy overlap the GPU's work

    def my_rows(data: EpochData) -> torch.Tensor:  # this process's share of the rows
        rows = data.rows[dist.rows(st.batch_size)]
        return rows.pin_memory() if pin else rows

    data = run.stream()
    rows = my_rows(data)
    chars_per_step = st.batch_size * tc.seq_len
    clock = last_save = time.perf_counter()
    rate, interrupted = 0.0, None
    with _catch_signals() as flag:
        while True:
            if st.window >= data.windows:  # a new epoch: a new order of poems, a fresh state
                st.epoch, st.window, st.carried = st.epoch + 1, 0, None
                data = run.stream()
                rows = my_rows(data)
            # process 0 decides for all: the learning rate follows its clock, and so do stops
            progress, stopped = dist.agree(budget.progress(st.step, st.elapsed, st.epochs_done(data.windows)),
                                           1.0 if flag["signal"] else 0.0)
            if stopped:
                interrupted = flag["signal"] or "a signal to process 0"
                break
            if progress >= 1.0:
                break
            lr = set_lr(opt, st.step, progress, tc)
            x, y = (t.to(run.device, non_blocking=True) for t in get_window(rows, st.window, tc.seq_len))  # (B, T)
            t0 = time.perf_counter()
            step = train_step(model, opt, x, y, st.carried or model.init_state(x.size(0)), tc.clip, run.precision,
                              run.scaler, run.loss_fn, dist.all_true)
            if step.finite:
                if run.averaged is not None:
                    run.averaged.update()
                st.carried, st.bad_streak, run.last_bpc = step.carried, 0, step.loss / math.log(2)
            else:
                st.skipped, st.bad_streak = st.skipped + 1, st.bad_streak + 1
            st.step, st.window = st.step + 1, st.window + 1
            now = time.perf_counter()
            st.elapsed, clock = st.elapsed + (now - clock), now
            rate = 0.9 * rate + 0.1 * chars_per_step / (now - t0) if rate else chars_per_step / (now - t0)

            epochs_done = st.epochs_done(data.windows)
            if st.step % 10 == 0 or st.step == 1 or not step.finite:
                log.write({"step": st.step, "epoch": round(epochs_done, 4), "loss": _finite(step.loss),
                           "bpc": _finite(step.loss / math.log(2)), "grad_norm": _finite(step.grad_norm),
                           "lr": lr, "skipped": st.skipped, "chars_per_sec": round(rate, 1),
                           "elapsed": round(st.elapsed, 2)})
            run.cb.on_step(StepEvent(st.step, st.epoch, step.loss, step.loss / math.log(2), lr, rate, st.elapsed,
                                     budget.progress(st.step, st.elapsed, epochs_done)))
            if st.bad_streak >= DIVERGENCE_LIMIT:
                raise CharLMError(_diverged(st, tc, run.out))
            if st.step % tc.eval_interval == 0 and dist.main:
                run.validate()
            (save_due,) = dist.agree(1.0 if time.perf_counter() - last_save >= tc.save_every * 60 else 0.0)
            if st.step % tc.eval_interval == 0 or save_due:
                run.save_resume()
                last_save = time.perf_counter()
        if dist.main and st.last_valid_step != st.step and (st.step > 0 or not checkpoint.is_checkpoint(run.out)):
            run.validate()
        run.save_resume()
        full = run.validate_full() if interrupted is None else None  # the whole split, once, at the end
    return FitResult(run.out, st.step, st.epochs_done(data.windows), st.elapsed, st.best_bpc, run.last_bpc,
                     full[0] if full else None, full[1] if full else 0, int(run.prep.valid_ids.numel()) - 1,
                     interrupted, skipped=st.skipped)


def _claim(out: Path, overwrite: bool) -> None:
    """A fresh run may not write over another run's checkpoint unless told to (--overwrite)."""
    existing = _existing_run(out)
    if existing and not overwrite:
        raise CharLMError(f"{str(out)!r} already holds {existing}; continue it with --resume, "
                          f"choose another --out, or pass --overwrite to replace it")
    if existing:
        checkpoint.clear_run(out)


@contextmanager
def owned_out(out: Path, resume: bool, overwrite: bool) -> Iterator[None]:
    """A single-process run's hold on its folder: the lock, stale units swept and, for a new run,
    the folder claimed (the classifier and couplet trainers; fit does this across processes)."""
    with checkpoint.exclusive(out):
        checkpoint.remove_stale(out)
        if not resume:
            _claim(out, overwrite)
        yield


def _finite(x: float) -> float | None:
    """A figure for the JSON log: null where it is not finite (JSON has no NaN)."""
    return x if math.isfinite(x) else None


def _diverged(st: TrainState, tc: TrainConfig, out: Path) -> str:
    kept = (f"the last good checkpoint and resume state in {str(out)!r} are kept"
            if checkpoint.has_resume(out) else "nothing was saved")
    return (f"training diverged: the loss or gradient was not finite for {st.bad_streak} steps in a row "
            f"(steps {st.step - st.bad_streak + 1}–{st.step}); {kept}; try a lower --lr (this run used {tc.lr:g})")


def fit_batch_size(prep: Prepared, tc: TrainConfig) -> int:
    """--batch-size, halved until a small corpus can fill each row with at least one window."""
    batch_size = tc.batch_size
    n_train = int(prep.data.train.tokens.size) + 1
    while batch_size > 1 and n_train // batch_size < tc.seq_len + 1:
        batch_size //= 2
    return batch_size


# -- a whole run, resumed or fresh -----------------------------------------------------------

# Settings that may change when resuming: the budget, and the optimisation and bookkeeping settings,
# which change neither the model nor the data (a lower --lr after a divergence, say).
RESUME_BUDGET = ("max_steps", "max_time", "epochs")
RESUME_FREE = ("lr", "clip", "weight_decay", "warmup_steps", "min_lr_ratio", "eval_interval", "save_every",
               "precision", "encoding", "ema", "device")


def resume_config(saved: Config, given: Config, changed: dict[str, str]) -> Config:
    """The configuration a resumed run continues with: the saved one, except the settings the
    user gave (``changed`` maps "section.field" to the flag that set it). A new budget replaces the
    old one as a whole and extends (or shortens) the run; a setting that would change the model or
    the data is refused."""
    train = {}
    for name, flag in changed.items():
        section, key = name.split(".")
        new, old = getattr(getattr(given, section), key), getattr(getattr(saved, section), key)
        if key in RESUME_FREE:
            train[key] = new
        elif key not in RESUME_BUDGET and new != old:
            raise CharLMError(f"{flag} cannot change when resuming: this run was trained with {old!r}; "
                              f"drop {flag}, or start a new run with another --out")
    if any(f"train.{k}" in changed for k in RESUME_BUDGET):
        train.update({k: getattr(given.train, k) if f"train.{k}" in changed else None for k in RESUME_BUDGET})
    return Config(saved.model, dataclasses.replace(saved.train, **train))


def train_corpus(corpus: str | encoded.Source, config: Config, out: str | Path, *, corpus_path: str | None = None,
                 callbacks: Callbacks | None = None, resume: bool = False, overwrite: bool = False,
                 changed: dict[str, str] | None = None) -> FitResult:
    """Everything `charlm train` does: prepare the data (``corpus`` is the text, or an
    encoded.Source naming the file) and fit. Resuming continues the saved
    run with its saved settings, vocabulary and data, changed only where ``changed`` says
    (see resume_config)."""
    out = Path(out)
    vocab = None
    if resume:
        saved = checkpoint.read_resume(out)
        if "classifier" in saved:
            raise CharLMError(f"the run in {str(out)!r} trains a classifier; resume it with --task classify")
        saved_config = Config.from_dict(saved.get("config"))
        if saved_config.task != config.task:
            raise CharLMError(f"the run in {str(out)!r} was started with --task {saved_config.task}; resume it "
                              f"with --task {saved_config.task}")
        config = resume_config(saved_config, config, changed or {})
        vocab, _ = checkpoint.read_resume_vocab(out)
    prep = prepare(corpus, config, corpus_path, vocab)
    if resume:
        old = (saved.get("corpus") or {}).get("sha256")
        if old and old != prep.corpus["sha256"]:
            raise CharLMError("cannot resume: the corpus is not the one this run was trained on (its sha256 differs)")
    return fit(prep, out, callbacks=callbacks, resume=resume, overwrite=overwrite)
