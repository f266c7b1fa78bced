"""Sequence to class: train, score and use a classifier (charlm.classifier) on labelled poems.

A labelled file holds one poem a line, ``label<TAB>poem``. Everything but the model's last layer is
the language model's: the file is split by poem with the language model's rule and seed
(data.split_indices), the vocabulary is built from the training poems the same way (or taken from
the language model given with --init-from), and the run uses charlm.train's optimizer, schedule,
budget, update step, metrics log, signals, resume state and checkpoint units.

A poem is read as the language model reads one: the newline that marks a poem start, then at most
``seq_len - 1`` of its characters (longer poems are cut, in training, scoring and use alike):

    poems   春眠不觉晓…        (label tang)   白日依山尽…   (label tang)   …
    batch   x = [\\n 春 眠 不 … pad]   lengths = [T1, T2, …]   y = [tang, tang, …]   (B, T)

An epoch visits the training poems in an order fixed by (seed, epoch), ``batch_size`` at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlm import checkpoint
from charlm.classifier import CharClassifier, ClassifierConfig, check_labels
from charlm.config import Config
from charlm.data import iter_text, split_indices
from charlm.devices import grad_scaler, resolve_device, resolve_precision, rng_states, set_rng_states
from charlm.errors import CharLMError, describe
from charlm.model import count_parameters, planned_size
from charlm.train import (Budget, Callbacks, MetricsLog, StartInfo, StepEvent, TrainState, _catch_signals,
                          _finite, _output_dir, make_optimizer, owned_out, resume_config, set_lr, train_step)
from charlm.vocab import EOS_ID, Vocab, detect_script, normalize

LN2 = math.log(2.0)
SCORE_BATCH = 64  # poems scored at a time


# -- the labelled file -------------------------------------------------------------------------

@dataclass(frozen=True)
class Labelled:
    """Poems and their labels, in file order (blank lines skipped)."""

    labels: list[str]
    texts: list[str]
    sha256: str  # of the file's text
    characters: int  # of the poems

    def select(self, index) -> "Labelled":
        return Labelled([self.labels[i] for i in index], [self.texts[i] for i in index], self.sha256,
                        sum(len(self.texts[i]) for i in index))


def read_labelled(path: str | Path, encoding: str = "utf-8") -> Labelled:
    """Read ``label<TAB>poem`` lines; a line without a tab, with an empty label or an empty poem is
    refused with its line number. Labels are taken as written (spaces around them dropped)."""
    labels, texts, n = [], [], 0
    h = hashlib.sha256()
    for piece in iter_text(path, encoding, what="labelled file"):
        h.update(piece.encode("utf-8"))
        for line in piece.split("\n"):
            n += 1
            if not line.strip():
                continue
            label, tab, text = line.rstrip("\r").partition("\t")
            where = f"line {n} of {str(path)!r}"
            if not tab:
                raise CharLMError(f"{where} has no tab: each line must be label<TAB>poem")
            label, text = label.strip(), text.strip()
            if not label:
                raise CharLMError(f"{where} has an empty label: each line must be label<TAB>poem")
            if not text:
                raise CharLMError(f"{where} has a label but no poem after its tab")
            labels.append(label)
            texts.append(text)
        n -= 1  # a piece ends at a newline: its last, empty part is the next piece's first line
    return Labelled(labels, texts, h.hexdigest(), sum(map(len, texts)))


def label_set(data: Labelled, what: str) -> list[str]:
    """The distinct labels, sorted, checked (at least two)."""
    found = sorted(set(data.labels))
    if len(found) < 2:
        raise CharLMError(f"{what} has only one label ({describe(found[0]) if found else 'none'}); "
                          f"a classifier needs poems of at least two")
    check_labels(found)
    return found


def split(data: Labelled, valid_fraction: float, seed: int) -> tuple[Labelled, Labelled]:
    """(train, valid) by poem, with the language model's rule (data.split_indices)."""
    held = split_indices(len(data.texts), valid_fraction, seed)
    train = [i for i in range(len(data.texts)) if i not in held]
    return data.select(train), data.select(sorted(held))


def encode(vocab: Vocab, texts: list[str], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Poems (already normalised) as right-padded ids (N, T) and lengths (N,): the start newline,
    then at most seq_len - 1 characters each."""
    rows = [[EOS_ID, *vocab.encode(t[: seq_len - 1])] for t in texts]
    width = max((len(r) for r in rows), default=1)
    x = torch.full((len(rows), width), EOS_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return x, torch.tensor([len(r) for r in rows], dtype=torch.long)


@dataclass
class Prepared:
    config: Config
    classifier: ClassifierConfig
    vocab: Vocab
    train: Labelled  # normalised
    valid: Labelled
    counts: list[int]
    corpus: dict
    init: dict | None = None  # the language model's weights, with --init-from


def prepare(path: str | Path, config: Config, pooling: str = "last", init_from: str | Path | None = None,
            vocab: Vocab | None = None, labels: list[str] | None = None) -> Prepared:
    """Read, split, normalise; the vocabulary from the training poems, or from the language model
    given as ``init_from`` (whose model settings then replace config.model), or ``vocab`` (resume)."""
    tc = config.train
    data = read_labelled(path, tc.encoding)
    labels = labels or label_set(data, f"labelled file {str(path)!r}")
    unknown = sorted(set(data.labels) - set(labels))
    if unknown:
        raise CharLMError(f"labelled file {str(path)!r} has label {describe(unknown[0])}, which this run does not "
                          f"know (it knows {', '.join(labels)})")
    train, valid = split(data, tc.valid_fraction, tc.seed)
    init = None
    if init_from is not None:
        lm = checkpoint.load(init_from, lines=False)
        vocab, init = lm.vocab, {k: v.clone() for k, v in lm.model.state_dict().items()}
        config.model = dataclasses.replace(lm.config.model)
    if vocab is None:
        script = detect_script("".join(train.texts[:5000]))
        train = _normalised(train, script)
        vocab = Vocab.from_text("\n".join(train.texts), tc.min_count, script)
    else:
        train = _normalised(train, vocab.script)
    valid = _normalised(valid, vocab.script)
    config.model.vocab_size = len(vocab)
    missing = sorted(set(labels) - set(train.labels))
    if missing:
        raise CharLMError(f"no training poem has label {describe(missing[0])}; give more poems of it")
    counts = Counter(c for t in train.texts for c in t)
    corpus = {"path": str(path), "sha256": data.sha256, "characters": data.characters,
              "train_poems": len(train.texts), "valid_poems": len(valid.texts), "script": vocab.script,
              "init_from": str(init_from) if init_from is not None else None}
    return Prepared(config, ClassifierConfig(labels, pooling), vocab, train, valid,
                    [counts.get(c, 0) for c in vocab.chars], corpus, init)


def _normalised(data: Labelled, script: str) -> Labelled:
    return dataclasses.replace(data, texts=[normalize(t, script) for t in data.texts])


# -- figures -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    """Accuracy, per-class precision and recall, and the confusion matrix (rows: the true label,
    columns: the predicted one). A class never predicted has precision None; never present, recall None."""

    labels: list[str]
    poems: int
    accuracy: float
    precision: dict[str, float | None]
    recall: dict[str, float | None]
    confusion: list[list[int]]
    loss: float | None = None  # mean cross-entropy, nats per poem (the model's; None for the baseline)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def report(labels: list[str], true: list[int], predicted: list[int], loss: float | None = None) -> Report:
    k = len(labels)
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    n = int(m.sum())
    col, row = m.sum(0), m.sum(1)
    return Report(labels, n, float(np.trace(m) / n) if n else 0.0,
                  {lab: float(m[i, i] / col[i]) if col[i] else None for i, lab in enumerate(labels)},
                  {lab: float(m[i, i] / row[i]) if row[i] else None for i, lab in enumerate(labels)},
                  m.tolist(), loss)


class NaiveBayes:
    """The bag-of-characters baseline: multinomial naive Bayes with add-one smoothing,

        log p(y | x) ∝ log π_y + Σ_c n_c(x) log θ_{y,c},   θ_{y,c} = (N_{y,c} + 1) / (N_y + |C|),

    π_y the share of training poems labelled y, N_{y,c} how often character c occurs in them, C
    the characters of the training poems (others are ignored)."""

    def __init__(self, texts: list[str], y: list[int], n_labels: int) -> None:
        per_label = [Counter() for _ in range(n_labels)]
        for label in range(n_labels):  # one pass over each label's poems joined: fast on 100,000 poems
            per_label[label].update("".join(t for t, k in zip(texts, y) if k == label))
        chars = sorted(set().union(*per_label))
        self.index = {c: i for i, c in enumerate(chars)}
        counts = np.array([[per_label[k][c] for c in chars] for k in range(n_labels)], dtype=np.float64)
        counts = counts.reshape(n_labels, len(chars))
        prior = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_labels).astype(float)
        with np.errstate(divide="ignore"):
            self.log_prior = np.log(prior / prior.sum())
        self.log_theta = np.log((counts + 1) / (counts.sum(1, keepdims=True) + len(chars)))

    def log_scores(self, text: str) -> np.ndarray:
        ids = [i for i in map(self.index.get, text) if i is not None]
        return self.log_prior + self.log_theta[:, ids].sum(1)

    def predict(self, texts: list[str]) -> list[int]:
        return [int(np.argmax(self.log_scores(t))) for t in texts]


@torch.no_grad()
def probabilities(model: CharClassifier, vocab: Vocab, texts: list[str], seq_len: int) -> torch.Tensor:
    """p(label | poem) for normalised poems, (N, labels): poems of like length scored together."""
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), len(model.classifier.labels))
    for s in range(0, len(order), SCORE_BATCH):
        idx = order[s : s + SCORE_BATCH]
        x, lengths = encode(vocab, [texts[i] for i in idx], seq_len)
        out[idx] = model.probabilities(x.to(device), lengths.to(device)).cpu()
    return out


def score(model: CharClassifier, vocab: Vocab, data: Labelled, seq_len: int) -> Report:
    """The model's report on normalised labelled poems."""
    labels = model.classifier.labels
    p = probabilities(model, vocab, data.texts, seq_len)
    y = torch.tensor([labels.index(lab) for lab in data.labels], dtype=torch.long)
    loss = float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-30)).mean()) if len(y) else None
    return report(labels, y.tolist(), p.argmax(1).tolist(), loss)


def baseline(train: Labelled, test: Labelled, labels: list[str], seq_len: int) -> Report:
    """Naive Bayes trained on ``train``, reported on ``test``; both read what the model reads."""
    cut = lambda d: [t[: seq_len - 1] for t in d.texts]  # noqa: E731
    nb = NaiveBayes(cut(train), [labels.index(lab) for lab in train.labels], len(labels))
    return report(labels, [labels.index(lab) for lab in test.labels], nb.predict(cut(test)))


@dataclass(frozen=True)
class EvalResult:
    model: Report
    baseline: Report | None
    source: str
    warnings: list[str]

    def to_dict(self) -> dict:
        return {"corpus": self.source, "model": self.model.to_dict(),
                "baseline": self.baseline.to_dict() if self.baseline else None}


def _training_file(ckpt) -> Path | None:
    stored = (ckpt.corpus or {}).get("path")
    if not stored:
        return None
    return next((p for p in (Path(stored), checkpoint.project_root() / stored) if p.is_file()), None)


def evaluate(ckpt, corpus: str | Path | None = None, encoding: str = "utf-8") -> EvalResult:
    """The classifier on its own validation split (rebuilt from its file, fraction and seed), or on
    every poem of ``corpus``; beside it the naive Bayes baseline trained on the checkpoint's
    training split in this same call (when its file is still there)."""
    tc, labels, warnings = ckpt.config.train, ckpt.classifier.labels, []
    path = _training_file(ckpt)
    train = None
    if path is not None:
        whole = read_labelled(path, tc.encoding)
        if ckpt.corpus.get("sha256") and whole.sha256 != ckpt.corpus["sha256"]:
            warnings.append(f"{ckpt.corpus.get('path')} changed since training: its validation split may overlap "
                            f"the training data")
        train, valid = split(whole, tc.valid_fraction, tc.seed)
        train = _normalised(train, ckpt.vocab.script)
    elif corpus is None:
        stored = (ckpt.corpus or {}).get("path")
        raise CharLMError(f"the training file {stored!r} of this classifier was not found; pass --corpus FILE"
                          if stored else "this checkpoint does not record its training file; pass --corpus FILE")
    if corpus is not None:
        test, source = read_labelled(corpus, encoding), str(corpus)
    else:
        test, source = valid, f"validation split of {ckpt.corpus.get('path')}"
    unknown = sorted(set(test.labels) - set(labels))
    if unknown:
        raise CharLMError(f"{source} has label {describe(unknown[0])}, which this classifier does not know "
                          f"(it knows {', '.join(labels)})")
    test = _normalised(test, ckpt.vocab.script)
    if train is None:
        warnings.append("no baseline: the classifier's training file was not found")
    return EvalResult(score(ckpt.model, ckpt.vocab, test, tc.seq_len),
                      baseline(train, test, labels, tc.seq_len) if train is not None else None, source, warnings)


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    probs: dict[str, float]


def classify(ckpt, texts: list[str]) -> list[Prediction]:
    """The label and the probability of each label, for each poem (normalised here)."""
    labels = ckpt.classifier.labels
    if not texts:
        raise CharLMError("there is no poem to classify: give a TEXT or a --file with a poem on a line")
    norm = [ckpt.vocab.normalize(t) for t in texts]
    p = probabilities(ckpt.model, ckpt.vocab, norm, ckpt.config.train.seq_len)
    return [Prediction(t, labels[int(row.argmax())], {lab: float(v) for lab, v in zip(labels, row)})
            for t, row in zip(norm, p)]


# -- training ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassValidEvent:
    """A validation of a classifier (the display's on_valid receives it in place of a ValidEvent)."""

    step: int
    valid_loss: float  # nats per poem
    accuracy: float
    best_loss: float
    improved: bool
    poems: int

    @property
    def valid_bpc(self) -> float:  # bits per poem: what a language model's logs (TensorBoard) plot
        return self.valid_loss / LN2

    @property
    def best_bpc(self) -> float:
        return self.best_loss / LN2


@dataclass
class ClassifyResult:
    out: Path
    steps: int
    epochs_done: float
    elapsed: float
    best_valid_loss: float  # nats per poem, the validation that chose the checkpoint
    best_accuracy: float | None
    last_train_loss: float
    full: Report | None = None  # the best checkpoint on the whole validation split
    interrupted: str | None = None
    skipped: int = 0


class _Run:
    def __init__(self, prep: Prepared, out: Path, device: torch.device, precision: str, cb: Callbacks,
                 resume: bool) -> None:
        self.prep, self.out, self.device, self.precision, self.cb = prep, out, device, precision, cb
        tc = prep.config.train
        torch.manual_seed(tc.seed)
        planned_size(prep.config.model)  # a sentence, not an allocation failure, for an impossible size
        self.model = CharClassifier(prep.config.model, prep.classifier)
        if prep.init is not None:
            self.model.encoder.load_state_dict(prep.init)
        self.model.to(device)
        self.opt = make_optimizer(self.model, tc)
        self.scaler = grad_scaler(precision, device)
        if resume:
            counters, tensors = checkpoint.load_resume(out, self.model, self.opt)
            self.st = TrainState.from_counters(counters, None)
            set_rng_states(tensors, device)
            if self.scaler is not None and isinstance(counters.get("grad_scaler"), dict):
                self.scaler.load_state_dict(counters["grad_scaler"])
        else:
            self.st = TrainState(batch_size=min(tc.batch_size, len(prep.train.texts)))
        self.x, self.lengths = encode(prep.vocab, prep.train.texts, tc.seq_len)
        self.y = torch.tensor([prep.classifier.labels.index(lab) for lab in prep.train.labels])
        self.subset = _subset(prep.valid, tc.valid_chars, tc.seed)
        self.log = MetricsLog(out / checkpoint.METRICS, self.st.step if resume else None)
        self.best_accuracy: float | None = None
        self.last_loss = math.nan

    @property
    def batches(self) -> int:
        return max(1, len(self.prep.train.texts) // self.st.batch_size)

    def batch(self) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Batch st.window of epoch st.epoch: x (B, T) cut to its longest poem, (lengths, labels)."""
        st, tc = self.st, self.prep.config.train
        order = np.random.default_rng([tc.seed, st.epoch]).permutation(len(self.y))
        idx = torch.from_numpy(order[st.window * st.batch_size : (st.window + 1) * st.batch_size])
        lengths = self.lengths[idx]
        x = self.x[idx, : int(lengths.max())]
        return x.to(self.device), (lengths.to(self.device), self.y[idx].to(self.device))

    def validate(self) -> None:
        st, prep = self.st, self.prep
        r = score(self.model, prep.vocab, self.subset, prep.config.train.seq_len)
        improved = r.loss < st.best_bpc * LN2
        if improved:
            st.best_bpc, st.best_step, self.best_accuracy = r.loss / LN2, st.step, r.accuracy
            checkpoint.save(self.out, self.model, prep.config, prep.vocab, corpus=prep.corpus, counts=prep.counts,
                            classifier=prep.classifier.to_dict(), metrics={
                                "step": st.step, "valid_loss": r.loss, "valid_accuracy": r.accuracy,
                                "valid_poems": r.poems, "train_loss": self.last_loss,
                                "elapsed_s": round(st.elapsed, 1), "precision": self.precision})
        st.last_valid_step = st.step
        self.log.write({"step": st.step, "valid_loss": r.loss, "valid_accuracy": r.accuracy, "valid_poems": r.poems,
                        "best_valid_loss": st.best_bpc * LN2, "elapsed": round(st.elapsed, 2)})
        self.cb.on_valid(ClassValidEvent(st.step, r.loss, r.accuracy, st.best_bpc * LN2, improved, r.poems),
                         self.model, prep.vocab)

    def save_resume(self) -> None:
        counters = {**self.st.counters(), "config": self.prep.config.to_dict(), "corpus": self.prep.corpus,
                    "classifier": self.prep.classifier.to_dict(), "processes": 1}
        if self.scaler is not None:
            counters["grad_scaler"] = self.scaler.state_dict()
        checkpoint.save_resume(self.out, self.model, self.opt, counters, rng_states(self.device), self.prep.vocab,
                               self.prep.counts)


def _subset(valid: Labelled, chars: int, seed: int) -> Labelled:
    """A fixed, seeded subset of the validation poems of about ``chars`` characters (all when fewer)."""
    order = np.random.default_rng(seed).permutation(len(valid.texts))
    total, keep = 0, []
    for i in order.tolist():
        if total >= chars:
            break
        keep.append(i)
        total += len(valid.texts[i])
    return valid.select(sorted(keep))


def fit(prep: Prepared, out: str | Path, *, callbacks: Callbacks | None = None, resume: bool = False,
        overwrite: bool = False) -> ClassifyResult:
    """Train the classifier and keep the best checkpoint (by validation loss) in ``out``; the resume
    state is saved at every validation and every ``save_every`` minutes, as for a language model."""
    tc = prep.config.train
    cb = callbacks or Callbacks()
    out = _output_dir(Path(out))
    device = resolve_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    with owned_out(out, resume, overwrite):
        run = _Run(prep, out, device, precision, cb, resume)
        try:
            return _loop(run)
        finally:
            run.log.close()


def _loop(run: _Run) -> ClassifyResult:
    st, model, opt, tc, prep = run.st, run.model, run.opt, run.prep.config.train, run.prep
    budget = Budget.of(tc)
    run.cb.on_start(StartInfo(prep.corpus["characters"], len(prep.train.texts), len(prep.valid.texts), len(prep.vocab),
                              count_parameters(model), run.precision, st.batch_size, st.step))
    clock = last_save = time.perf_counter()
    rate, interrupted = 0.0, None
    with _catch_signals() as flag:
        while True:
            if st.window >= run.batches:
                st.epoch, st.window = st.epoch + 1, 0
            progress = budget.progress(st.step, st.elapsed, st.epochs_done(run.batches))
            if flag["signal"]:
                interrupted = flag["signal"]
                break
            if progress >= 1.0:
                break
            lr = set_lr(opt, st.step, progress, tc)
            x, target = run.batch()
            t0 = time.perf_counter()
            step = train_step(model, opt, x, target, (), tc.clip, run.precision, run.scaler)
            if step.finite:
                st.bad_streak, run.last_loss = 0, step.loss
            else:
                st.skipped, st.bad_streak = st.skipped + 1, st.bad_streak + 1
            st.step, st.window = st.step + 1, st.window + 1
            now = time.perf_counter()
            st.elapsed, clock = st.elapsed + (now - clock), now
            chars = int(target[0].sum())
            rate = 0.9 * rate + 0.1 * chars / (now - t0) if rate else chars / (now - t0)
            epochs_done = st.epochs_done(run.batches)
            if st.step % 10 == 0 or st.step == 1 or not step.finite:
                run.log.write({"step": st.step, "epoch": round(epochs_done, 4), "loss": _finite(step.loss),
                               "grad_norm": _finite(step.grad_norm), "lr": lr, "skipped": st.skipped,
                               "chars_per_sec": round(rate, 1), "elapsed": round(st.elapsed, 2)})
            run.cb.on_step(StepEvent(st.step, st.epoch, step.loss, step.loss / LN2, lr, rate, st.elapsed,
                                     budget.progress(st.step, st.elapsed, epochs_done)))
            if st.bad_streak >= 8:
                raise CharLMError(f"training diverged: the loss or gradient was not finite for {st.bad_streak} steps "
                                  f"in a row; try a lower --lr (this run used {tc.lr:g})")
            if st.step % tc.eval_interval == 0:
                run.validate()
            if st.step % tc.eval_interval == 0 or time.perf_counter() - last_save >= tc.save_every * 60:
                run.save_resume()
                last_save = time.perf_counter()
        if st.last_valid_step != st.step and (st.step > 0 or not checkpoint.is_checkpoint(run.out)):
            run.validate()
        run.save_resume()
    full = None
    if interrupted is None and checkpoint.is_checkpoint(run.out):  # the best on the whole split, once
        best = checkpoint.load_classifier(run.out, device=run.device)
        full = score(best.model, best.vocab, prep.valid, tc.seq_len)
        run.log.write({"step": st.step, "full_valid_loss": full.loss, "full_valid_accuracy": full.accuracy,
                       "full_valid_poems": full.poems, "of_step": st.best_step})
    return ClassifyResult(run.out, st.step, st.epochs_done(run.batches), st.elapsed, st.best_bpc * LN2,
                          run.best_accuracy, run.last_loss, full, interrupted, st.skipped)


def train_labelled(path: str | Path, config: Config, out: str | Path, *, pooling: str = "last",
                   init_from: str | Path | None = None, callbacks: Callbacks | None = None, resume: bool = False,
                   overwrite: bool = False, changed: dict[str, str] | None = None) -> ClassifyResult:
    """Everything `charlm train --task classify` does. Resuming continues the saved run with its
    saved settings, labels and vocabulary (see train.resume_config); --init-from is then not read."""
    out = Path(out)
    if resume:
        saved = checkpoint.read_resume(out)
        if "classifier" not in saved:
            raise CharLMError(f"the run in {str(out)!r} trains a language model; resume it without --task classify")
        config = resume_config(Config.from_dict(saved.get("config")), config, changed or {})
        classifier = ClassifierConfig.from_dict(saved["classifier"])
        vocab, _ = checkpoint.read_resume_vocab(out)
        prep = prepare(path, config, classifier.pooling, None, vocab, classifier.labels)
        old = (saved.get("corpus") or {}).get("sha256")
        if old and old != prep.corpus["sha256"]:
            raise CharLMError("cannot resume: the labelled file is not the one this run was trained on "
                              "(its sha256 differs)")
        prep.corpus["init_from"] = (saved.get("corpus") or {}).get("init_from")
    else:
        prep = prepare(path, config, pooling, init_from)
    return fit(prep, out, callbacks=callbacks, resume=resume, overwrite=overwrite)

