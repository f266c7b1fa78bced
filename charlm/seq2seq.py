"""Training, decoding and scoring of the couplet encoder–decoder (charlm.couplet).

Training reuses the language model's pieces: the vocabulary, the split by poem, AdamW with its
schedule and clipping (``train.train_step``), the budget, the metrics log, the progress callbacks,
the checkpoint and resume units, signals and devices. What differs is the data: a step is a
batch of whole pairs of one length (the first lines read by the encoder, the second lines
predicted by the decoder), not a window of a stream, so no state is carried between steps.

Decoding answers a first line with a line of exactly its length, one character per step with
the decoder's state carried, under the couplet rules (``AnswerRules``), by sampling or beam search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlm import checkpoint
from charlm.config import Config, SampleSettings
from charlm.couplet import (MAX_LINE_CHARS, START_ID, CoupletModel, Encoded, Pair, batch_tensors, batches,
                            encode_pairs, pairs_text, read_pairs, split_pairs)
from charlm.data import good_turing_alpha, read_corpus, sha256_text, unk_probabilities
from charlm.devices import grad_scaler, resolve_device, resolve_precision, rng_states, set_rng_states
from charlm.errors import CharLMError
from charlm.evaluate import LN2, Score
from charlm.model import count_parameters
from charlm.poetry import LEVEL, OBLIQUE, RhymeTable, answer_tone, tones_opposed
from charlm.sample import draw, filter_logits
from charlm.train import (DIVERGENCE_LIMIT, Budget, Callbacks, FitResult, MetricsLog, StartInfo, StepEvent,
                          TrainState, ValidEvent, _catch_signals, _diverged, _finite, _output_dir,
                          make_optimizer, owned_out, resume_config, set_lr, train_step)
from charlm.vocab import EOS_ID, UNK_ID, Vocab, detect_script, is_han, normalize

DEMO_LINE = "明月松间照"  # answered in the training display at each validation


# -- data ------------------------------------------------------------------------------------

@dataclass
class PreparedPairs:
    config: Config
    vocab: Vocab
    train: Encoded
    valid: Encoded
    subset: Encoded  # the periodic validation subset
    counts: list[int]
    corpus: dict
    unk_p: np.ndarray


def read_pairs_file(path: str | Path, encoding: str = "utf-8", script: str | None = None) -> tuple[str, str]:
    """The pairs file's text, normalised as the vocabulary expects, and the script."""
    text = read_corpus(path, encoding, what="pairs file")
    script = script or detect_script(text)
    return normalize(text, script), script


def prepare_pairs(path: str | Path, config: Config, vocab: Vocab | None = None) -> PreparedPairs:
    """Read, normalise and split the pairs file by poem; build (or reuse) the vocabulary from the
    training pairs; encode both sides."""
    tc = config.train
    text, script = read_pairs_file(path, tc.encoding, vocab.script if vocab else None)
    train_poems, valid_poems = split_pairs(read_pairs(text, f"pairs file {str(path)!r}"), tc.valid_fraction, tc.seed)
    train, valid = [p for poem in train_poems for p in poem], [p for poem in valid_poems for p in poem]
    vocab = vocab or Vocab.from_text(pairs_text(train), tc.min_count, script)
    config.model.vocab_size = len(vocab)
    counts = np.bincount(vocab.encode(pairs_text(train)), minlength=len(vocab)).tolist()
    keep = (UNK_ID, EOS_ID)
    unk_alpha = good_turing_alpha(counts, keep) if tc.unk_alpha is None else tc.unk_alpha
    unk_p = unk_probabilities(counts, unk_alpha, keep)
    valid_enc = encode_pairs(vocab, valid)
    order = np.random.default_rng(tc.seed).permutation(len(valid))
    kept, chars = [], 0
    for i in order:  # a seeded subset of about valid_chars characters
        if chars >= tc.valid_chars:
            break
        kept.append(i)
        chars += len(valid[i][1])
    subset = encode_pairs(vocab, [valid[i] for i in sorted(kept)])
    corpus = {"path": str(path), "sha256": sha256_text(text), "characters": len(text),
              "train_poems": len(train_poems), "valid_poems": len(valid_poems), "train_pairs": len(train),
              "valid_pairs": len(valid), "script": script, "unk_alpha": unk_alpha}
    return PreparedPairs(config, vocab, encode_pairs(vocab, train), valid_enc, subset, counts, corpus, unk_p)


# -- scoring ---------------------------------------------------------------------------------

@torch.no_grad()
def score_pairs(model: CoupletModel, data: Encoded, batch_size: int = 256) -> Score:
    """The answers' negative log-likelihood given the first lines, in fp32; each second-line
    character is one scored character (the length is given, so no end is predicted)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll = nll_unknown = 0.0
    correct = unknown = chars = 0
    try:
        for index in batches(data, batch_size):
            x, y = (t.to(device) for t in batch_tensors(data, index))
            logits = model(x, y).float()
            each = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                     reduction="none")
            nll += each.sum().item()
            nll_unknown += each[y.reshape(-1) == UNK_ID].sum().item()
            correct += int((logits.argmax(-1) == y).sum())
            unknown += int((y == UNK_ID).sum())
            chars += y.numel()
    finally:
        model.train(was_training)
    return Score(nll, correct, chars, unknown, nll_unknown)


# -- training --------------------------------------------------------------------------------

def _with_unknowns(t: torch.Tensor, unk_p: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Read each character as <unk> with its probability (charlm.data.unk_probabilities)."""
    p = unk_p[t.numpy()]
    return t.masked_fill(torch.from_numpy(rng.random(p.shape) < p), UNK_ID) if p.any() else t


class _PairRun:
    """One couplet training run: model, optimizer, state, and what it writes."""

    def __init__(self, prep: PreparedPairs, out: Path, resume: bool, cb: Callbacks) -> None:
        tc = prep.config.train
        self.prep, self.out, self.cb = prep, out, cb
        self.device = resolve_device(tc.device)
        self.precision = resolve_precision(tc.precision, self.device)
        torch.manual_seed(tc.seed)
        self.model = CoupletModel(prep.config.model).to(self.device)
        self.opt = make_optimizer(self.model, tc)
        self.scaler = grad_scaler(self.precision, self.device)
        if resume:
            counters, tensors = checkpoint.load_resume(out, self.model, self.opt)
            self.st = TrainState.from_counters(counters, None)
            if "rng" not in tensors or tensors["rng"].dtype != torch.uint8:
                raise CharLMError(f"the resume state in {str(out)!r} is damaged (no usable random-number state); "
                                  f"start afresh with --overwrite")
            set_rng_states(tensors, self.device)
            saved_best = checkpoint.read_metrics(out).get("valid_bpc")
            if isinstance(saved_best, (int, float)) and saved_best < self.st.best_bpc:
                self.st.best_bpc = float(saved_best)
        else:
            self.st = TrainState(batch_size=tc.batch_size)
        self.log = MetricsLog(out / checkpoint.METRICS, self.st.step if resume else None)
        self.last_bpc = math.nan

    def epoch_batches(self) -> list[np.ndarray]:
        tc = self.prep.config.train
        return batches(self.prep.train, self.st.batch_size, order_seed=[tc.seed, self.st.epoch])

    def save_resume(self) -> None:
        counters = {**self.st.counters(), "config": self.prep.config.to_dict(), "corpus": self.prep.corpus,
                    "processes": 1}
        checkpoint.save_resume(self.out, self.model, self.opt, counters, rng_states(self.device),
                               self.prep.vocab, self.prep.counts)

    def validate(self) -> None:
        st, prep = self.st, self.prep
        s = score_pairs(self.model, prep.subset)
        improved = s.bpc < st.best_bpc
        if improved:
            st.best_bpc, st.best_step = s.bpc, st.step
            checkpoint.save(self.out, self.model, prep.config, prep.vocab, corpus=prep.corpus, counts=prep.counts,
                            metrics={"step": st.step, "valid_loss": s.loss, "valid_bpc": s.bpc,
                                     "valid_chars": s.chars, "train_bpc": _finite(self.last_bpc),
                                     "elapsed_s": round(st.elapsed, 1), "precision": self.precision})
        st.last_valid_step = st.step
        self.log.write({"step": st.step, "valid_loss": s.loss, "valid_bpc": s.bpc, "valid_chars": s.chars,
                        "best_valid_bpc": st.best_bpc, "elapsed": round(st.elapsed, 2)})
        self.cb.on_valid(ValidEvent(st.step, s.loss, s.bpc, st.best_bpc, improved, s.chars), self.model, prep.vocab)

    def validate_full(self) -> tuple[float, int] | None:
        if not checkpoint.is_checkpoint(self.out):
            return None
        best = checkpoint.load(self.out, device=self.device, lines=False)
        s = score_pairs(best.model, self.prep.valid)
        self.log.write({"step": self.st.step, "full_valid_loss": s.loss, "full_valid_bpc": s.bpc,
                        "full_valid_chars": s.chars, "of_step": self.st.best_step})
        return s.bpc, s.chars


def fit_pairs(prep: PreparedPairs, out: str | Path, *, callbacks: Callbacks | None = None, resume: bool = False,
              overwrite: bool = False) -> FitResult:
    """Train the encoder–decoder on ``prep`` and keep the best checkpoint (by validation bpc of the
    second lines) in ``out``; the resume state is saved at every validation and every
    ``save_every`` minutes, as for the language model."""
    cb = callbacks or Callbacks()
    out = _output_dir(Path(out))
    with owned_out(out, resume, overwrite):
        run = _PairRun(prep, out, resume, cb)
        try:
            return _loop(run)
        finally:
            run.log.close()


def _loop(run: _PairRun) -> FitResult:
    st, model, opt, tc, log = run.st, run.model, run.opt, run.prep.config.train, run.log
    budget = Budget.of(tc)
    cb = run.cb
    cb.on_start(StartInfo(run.prep.corpus["characters"], len(run.prep.train), len(run.prep.valid),
                          len(run.prep.vocab), count_parameters(model), run.precision, st.batch_size, st.step))

    def loss_fn(x, y, carried):
        return model.loss(x, y), ()

    order = run.epoch_batches()
    clock = last_save = time.perf_counter()
    rate, interrupted = 0.0, None
    with _catch_signals() as flag:
        while True:
            if st.window >= len(order):  # a new epoch: a new order of pairs
                st.epoch, st.window = st.epoch + 1, 0
                order = run.epoch_batches()
            progress = budget.progress(st.step, st.elapsed, st.epochs_done(len(order)))
            if flag["signal"]:
                interrupted = flag["signal"]
                break
            if progress >= 1.0:
                break
            lr = set_lr(opt, st.step, progress, tc)
            x, y = batch_tensors(run.prep.train, order[st.window])  # (B, L) each
            rng = np.random.default_rng([tc.seed, st.epoch, st.window])
            x, y = (_with_unknowns(t, run.prep.unk_p, rng).to(run.device) for t in (x, y))
            t0 = time.perf_counter()
            step = train_step(model, opt, x, y, (), tc.clip, run.precision, run.scaler, loss_fn)
            if step.finite:
                st.bad_streak, run.last_bpc = 0, step.loss / LN2
            else:
                st.skipped, st.bad_streak = st.skipped + 1, st.bad_streak + 1
            st.step, st.window = st.step + 1, st.window + 1
            now = time.perf_counter()
            st.elapsed, clock = st.elapsed + (now - clock), now
            chars = y.numel()
            rate = 0.9 * rate + 0.1 * chars / (now - t0) if rate else chars / (now - t0)
            epochs_done = st.epochs_done(len(order))
            if st.step % 10 == 0 or st.step == 1 or not step.finite:
                log.write({"step": st.step, "epoch": round(epochs_done, 4), "loss": _finite(step.loss),
                           "bpc": _finite(step.loss / LN2), "grad_norm": _finite(step.grad_norm), "lr": lr,
                           "skipped": st.skipped, "chars_per_sec": round(rate, 1), "elapsed": round(st.elapsed, 2)})
            cb.on_step(StepEvent(st.step, st.epoch, step.loss, step.loss / LN2, lr, rate, st.elapsed,
                                 budget.progress(st.step, st.elapsed, epochs_done)))
            if st.bad_streak >= DIVERGENCE_LIMIT:
                raise CharLMError(_diverged(st, tc, run.out))
            if st.step % tc.eval_interval == 0:
                run.validate()
            if st.step % tc.eval_interval == 0 or time.perf_counter() - last_save >= tc.save_every * 60:
                run.save_resume()
                last_save = time.perf_counter()
        if st.last_valid_step != st.step and (st.step > 0 or not checkpoint.is_checkpoint(run.out)):
            run.validate()
        run.save_resume()
        full = run.validate_full() if interrupted is None else None
    return FitResult(run.out, st.step, st.epochs_done(len(order)), st.elapsed, st.best_bpc, run.last_bpc,
                     full[0] if full else None, full[1] if full else 0, run.prep.subset.chars, interrupted,
                     skipped=st.skipped)


def train_pairs(path: str | Path, config: Config, out: str | Path, *, callbacks: Callbacks | None = None,
                resume: bool = False, overwrite: bool = False, changed: dict[str, str] | None = None) -> FitResult:
    """Everything `charlm train --task couplet PAIRS.tsv` does: prepare the pairs and fit; resuming
    continues the saved run with its saved settings and vocabulary (train.resume_config)."""
    out = Path(out)
    vocab = None
    if resume:
        saved = checkpoint.read_resume(out)
        saved_config = Config.from_dict(saved.get("config"))
        if saved_config.task != "couplet":
            raise CharLMError(f"the run in {str(out)!r} is a language model run, not a couplet run; "
                              f"resume it without --task couplet")
        config = resume_config(saved_config, config, changed or {})
        config.task = "couplet"
        vocab, _ = checkpoint.read_resume_vocab(out)
    prep = prepare_pairs(path, config, vocab)
    if resume:
        old = (saved.get("corpus") or {}).get("sha256")
        if old and old != prep.corpus["sha256"]:
            raise CharLMError("cannot resume: the pairs file is not the one this run was trained on (its sha256 differs)")
    return fit_pairs(prep, out, callbacks=callbacks, resume=resume, overwrite=overwrite)


# -- the couplet rules while decoding ----------------------------------------------------------

def check_first_line(first: str) -> None:
    """Refuse a first line the model cannot answer, with one sentence."""
    if not first.strip():
        raise CharLMError("--couplet needs a first line (上联) of Han characters, e.g. --couplet 明月松间照")
    bad = next((c for c in first if not is_han(c)), None)
    if bad is not None:
        raise CharLMError(f"the first line must be Han characters only; {bad!r} (character {first.index(bad) + 1}) "
                          f"is not one")
    if len(first) > MAX_LINE_CHARS:
        raise CharLMError(f"the first line has {len(first)} characters; a couplet line may have at most "
                          f"{MAX_LINE_CHARS}")


@dataclass(frozen=True)
class VocabMasks:
    """Which vocabulary entries are Han characters, and which can be read 平 or 仄: computed once
    per vocabulary and shared by the rules of every first line."""

    han: torch.Tensor  # (V,) bool
    tone: dict[str, torch.Tensor]  # 平 / 仄 → (V,) bool

    @classmethod
    def of(cls, vocab: Vocab, table: RhymeTable) -> "VocabMasks":
        tones = [table.tones(c) if i > EOS_ID else frozenset() for i, c in enumerate(vocab.chars)]
        return cls(torch.tensor([i > EOS_ID and is_han(c) for i, c in enumerate(vocab.chars)]),
                   {t: torch.tensor([t in ts for ts in tones]) for t in (LEVEL, OBLIQUE)})


class AnswerRules:
    """What the answer to ``first`` may write at each position, as masks over the vocabulary:

    - exactly len(first) characters, each a Han character;
    - the last character's tone opposite to the first line's last (仄 → 平, 平 → 仄; a character
      read either way qualifies; none is required where the first line's tone is unknown or either);
    - no character of the first line, and no character twice, except where the first line repeats
      one: there the answer repeats its own character at the same positions (叠字 for 叠字)."""

    def __init__(self, vocab: Vocab, first: str, table: RhymeTable | None = None,
                 masks: VocabMasks | None = None) -> None:
        table = table or RhymeTable.default()
        masks = masks or VocabMasks.of(vocab, table)
        self.length = len(first)
        self.echo = [first.index(c) if first.index(c) < j else None for j, c in enumerate(first)]
        self.base = masks.han.clone()
        for c in set(first):
            if c in vocab:
                self.base[vocab.encode(c)[0]] = False
        self.tone = answer_tone(first, table)
        self.tone_at = self.echo[-1] if self.echo[-1] is not None else self.length - 1  # the last's first use
        if self.tone is not None:
            self.toned = masks.tone[self.tone]

    def allowed(self, pos: int, prev: torch.Tensor) -> torch.Tensor:
        """(B, V) bool: what each row may write at position ``pos`` after its characters ``prev`` (B, pos)."""
        rows = prev.size(0)
        if self.echo[pos] is not None:
            return torch.zeros(rows, self.base.numel(), dtype=torch.bool).scatter_(
                1, prev[:, self.echo[pos]: self.echo[pos] + 1], True)
        mask = self.base.expand(rows, -1).clone()
        if pos:
            mask.scatter_(1, prev, False)
        if self.tone is not None and pos == self.tone_at:
            mask &= self.toned
        return mask


# -- decoding --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    text: str
    logprob: float  # nats, the whole answer under the model (with the rules' masks)

    @property
    def score(self) -> float:
        return self.logprob / max(1, len(self.text))


def _start(model: CoupletModel, vocab: Vocab, first: str, rows: int):
    device = next(model.parameters()).device
    x = torch.tensor([vocab.encode(first)], device=device)
    memory, state = model.encode(x)
    memory = memory.take(torch.zeros(rows, dtype=torch.long, device=device))
    state = tuple(s.expand(-1, rows, -1).contiguous() for s in state)
    return memory, state, torch.full((rows,), START_ID, dtype=torch.long, device=device)


def _no_answer(first: str) -> CharLMError:
    return CharLMError(f"no answer to {first!r} keeps the couplet rules with this model's vocabulary "
                       f"(a line of {len(first)} new characters, the last of the opposite tone)")


@torch.no_grad()
def sample_answers(model: CoupletModel, vocab: Vocab, first: str, n: int, settings: SampleSettings | None = None,
                   generator: torch.Generator | None = None, rules: AnswerRules | None = None) -> list[Answer]:
    """``n`` answers to ``first`` sampled together, one character per step from the carried state."""
    settings = settings or SampleSettings()
    rules = rules or AnswerRules(vocab, first)
    was_training = model.training
    model.eval()
    try:
        memory, state, tokens = _start(model, vocab, first, n)
        out = torch.zeros(n, 0, dtype=torch.long)
        logprob = torch.zeros(n, dtype=torch.float64)
        for pos in range(len(first)):
            logits, state = model.step(tokens, state, memory)
            allowed = rules.allowed(pos, out)
            if not bool(allowed.any(-1).all()):
                raise _no_answer(first)
            logits = logits.float().cpu().masked_fill(~allowed, -math.inf)
            probs = torch.softmax(filter_logits(logits, settings), -1)
            pick = draw(probs, generator)
            logprob += torch.log_softmax(logits, -1).gather(1, pick[:, None])[:, 0].double()
            out = torch.cat([out, pick[:, None]], 1)
            tokens = pick.to(memory.states.device)
    finally:
        model.train(was_training)
    return [Answer(vocab.decode(row.tolist()), float(lp)) for row, lp in zip(out, logprob)]


@torch.no_grad()
def beam_answers(model: CoupletModel, vocab: Vocab, first: str, n: int, beam: int,
                 rules: AnswerRules | None = None) -> list[Answer]:
    """The ``n`` likeliest answers to ``first`` found by a beam search of width ``beam``."""
    if n > beam:
        raise CharLMError(f"-n {n} asks for more answers than the beam holds; use -n at most --beam ({beam})")
    rules = rules or AnswerRules(vocab, first)
    was_training = model.training
    model.eval()
    try:
        memory, state, tokens = _start(model, vocab, first, 1)
        out = torch.zeros(1, 0, dtype=torch.long)
        total = torch.zeros(1, dtype=torch.float64)
        for pos in range(len(first)):
            logits, state = model.step(tokens, state, memory)
            logp = torch.log_softmax(logits.float().cpu(), -1).masked_fill(~rules.allowed(pos, out), -math.inf)
            cand = (total[:, None] + logp.double()).reshape(-1)  # (rows × V)
            k = min(beam, int(torch.isfinite(cand).sum()))
            if k == 0:
                raise _no_answer(first)
            best, flat = torch.topk(cand, k)
            row, char = flat // logp.size(1), flat % logp.size(1)
            out = torch.cat([out[row], char[:, None]], 1)
            total = best
            state = tuple(s[:, row.to(s.device)] for s in state)
            memory = memory.take(row.to(memory.states.device))
            tokens = char.to(memory.states.device)
    finally:
        model.train(was_training)
    answers = [Answer(vocab.decode(r.tolist()), float(t)) for r, t in zip(out, total)]
    if len(answers) < n:
        raise _no_answer(first) if not answers else CharLMError(
            f"only {len(answers)} answers to {first!r} keep the couplet rules; ask for at most that many with -n")
    return answers[:n]


def answer(model: CoupletModel, vocab: Vocab, first: str, n: int = 1, *, beam: int = 0,
           settings: SampleSettings | None = None, seed: int | None = None) -> list[Answer]:
    """What `charlm generate --couplet FIRST` prints: the first line checked and normalised, then
    ``n`` answers by beam search (``beam`` ≥ 1) or sampling (seeded when ``seed`` is given)."""
    first = vocab.normalize(first.strip())
    check_first_line(first)
    rules = AnswerRules(vocab, first)
    if beam:
        return beam_answers(model, vocab, first, n, beam, rules)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return sample_answers(model, vocab, first, n, settings, generator, rules)


def demo_answer(model: CoupletModel, vocab: Vocab, generator: torch.Generator | None = None) -> str:
    """The answer to DEMO_LINE, shown by the training display at each validation."""
    (a,) = sample_answers(model, vocab, vocab.normalize(DEMO_LINE), 1, SampleSettings(temperature=0.8), generator)
    return f"{DEMO_LINE} / {a.text}"


# -- evaluation ------------------------------------------------------------------------------

DEFAULT_EVAL_ANSWERS = 200  # first lines of the validation split answered to measure tone opposition


@dataclass(frozen=True)
class CoupletEval:
    pairs: int
    chars: int  # second-line characters scored
    loss: float  # nats per character of the second line given the first
    bpc: float
    perplexity: float
    accuracy: float  # top-1, teacher forced
    unknown_chars: int
    answered: int  # first lines answered by the model for the tone figures
    tones_generated: float | None  # share of the model's answers whose tones oppose (2nd, 4th, 6th, last)
    tones_generated_judged: int  # answers whose characters there all have a known tone
    tones_real: float | None  # the same share for the real second lines of those first lines
    tones_real_judged: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def validation_pairs(ckpt, corpus: str | Path | None = None) -> tuple[list[Pair], str, list[str]]:
    """The pairs to score: the checkpoint's own validation split, rebuilt from its pairs file,
    fraction and seed, or every pair of ``corpus``. Returns (pairs, where from, warnings)."""
    tc = ckpt.config.train
    if corpus is not None:
        text, _ = read_pairs_file(corpus, tc.encoding, ckpt.vocab.script)
        return [p for poem in read_pairs(text, f"pairs file {str(corpus)!r}") for p in poem], str(corpus), []
    stored = ckpt.corpus.get("path")
    if not stored:
        raise CharLMError("this checkpoint does not record its pairs file; pass --corpus FILE")
    path = next((p for p in (Path(stored), checkpoint.project_root() / stored) if p.is_file()), None)
    if path is None:
        raise CharLMError(f"the pairs file {stored!r} of this checkpoint was not found; build it with "
                          f"`python -m charlm.corpora TARBALL --couplets` or pass --corpus FILE")
    text, _ = read_pairs_file(path, tc.encoding, ckpt.vocab.script)
    warnings = []
    if ckpt.corpus.get("sha256") and sha256_text(text) != ckpt.corpus["sha256"]:
        warnings.append(f"{stored} changed since training: its validation split may overlap the training data")
    _, valid = split_pairs(read_pairs(text, f"pairs file {stored!r}"), tc.valid_fraction, tc.seed)
    return [p for poem in valid for p in poem], f"validation split of {stored}", warnings


def _share(flags: list[bool | None]) -> tuple[float | None, int]:
    judged = [f for f in flags if f is not None]
    return (sum(judged) / len(judged) if judged else None), len(judged)


def evaluate_pairs(model: CoupletModel, vocab: Vocab, pairs: list[Pair], *, answers: int = DEFAULT_EVAL_ANSWERS,
                   settings: SampleSettings | None = None, beam: int = 0, seed: int = 0,
                   table: RhymeTable | None = None) -> CoupletEval:
    """bpc of the second lines given the first, and how often tones oppose at the 2nd, 4th, 6th
    and last characters: in the model's answers to the first ``answers`` first lines, beside the
    real second lines of the same pairs."""
    if not pairs:
        raise CharLMError("there are no pairs to evaluate")
    table = table or RhymeTable.default()
    s = score_pairs(model, encode_pairs(vocab, pairs))
    if not math.isfinite(s.nll) or s.loss > 700:
        raise CharLMError(f"the model's loss on these pairs is not a usable number ({s.loss:.4g} nats per "
                          f"character): its weights are broken")
    generator = torch.Generator().manual_seed(seed)
    chosen = [p for p in pairs if all(is_han(c) for c in p[0])][:answers]
    generated, real = [], []
    masks = VocabMasks.of(vocab, table)
    for first, second in chosen:
        try:
            rules = AnswerRules(vocab, first, table, masks)
            got = (beam_answers(model, vocab, first, 1, beam, rules) if beam else
                   sample_answers(model, vocab, first, 1, settings, generator, rules))[0].text
            generated.append(tones_opposed(first, got, table))
        except CharLMError:  # no answer keeps the rules: counted as not opposed
            generated.append(False)
        real.append(tones_opposed(first, second, table))
    g, g_n = _share(generated)
    r, r_n = _share(real)
    return CoupletEval(len(pairs), s.chars, s.loss, s.bpc, math.exp(min(s.loss, 700)), s.correct / max(1, s.chars),
                       s.unknown, len(chosen), g, g_n, r, r_n)


def checks(first: str, second: str, table: RhymeTable | None = None) -> dict:
    """The couplet checks of one answer, for --json."""
    table = table or RhymeTable.default()
    tone = answer_tone(first, table)
    return {"length": len(second) == len(first),
            "last_tone": None if tone is None else tone in table.tones(second[-1:] or " "),
            "tones_opposed": tones_opposed(first, second, table),
            "new_characters": not (set(second) & set(first))}
