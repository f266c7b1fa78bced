"""Settings as dataclasses: the model, the training run, and the root saved as config.json.

Each default is written once, here; the CLI reads its defaults from these classes.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from charlm.errors import CharLMError, describe

CELLS = ("lstm", "gru", "rnn", "irnn")
# What a model does: lm, the language model; couplet, the encoder–decoder that answers a first
# line of a couplet (charlm.couplet). Saved as the root config's "task"; older files are lm.
TASKS = ("lm", "couplet")
DEFAULT_EPOCHS = 10  # the budget of a run given none
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"  # charlm.devices reads them
# Bounds far beyond any model this project trains; they keep a hostile config.json from asking for
# a model whose mere description (not yet its weights) is too big to lay out.
MAX_SIZE = 2**24  # vocab_size, embed_dim, hidden_size
MAX_LAYERS = 1024
MAX_CUTOFFS = 16
MAX_STRING = 64  # characters in a string setting (cell, precision, encoding, ...)
# Seeds are 0 … SEED_MAX: what fits a signed 64-bit integer, which torch.Generator.manual_seed,
# numpy's generators and JSON readers all take as it is (manual_seed wraps negative seeds).
SEED_MAX = 2**63 - 1
# charlm compose: candidate lines shown at a time, and the most it will decode for one request.
COMPOSE_CANDIDATES = 5
MAX_COMPOSE_CANDIDATES = 50
# A classifier's summary of a poem (charlm.classifier): the final recurrent state, or their mean.
POOLINGS = ("last", "mean")


@dataclass
class ModelConfig:
    vocab_size: int = 0  # filled in from the vocabulary
    embed_dim: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.4
    tie_weights: bool = True
    cell: str = "lstm"
    conv_kernel: int = 0  # 0 = no convolution block
    residual: bool = False
    embed_dropout: float = 0.0  # drop whole characters' embedding vectors (rows)
    locked_dropout: bool = False  # one dropout mask per sequence, shared by all time steps
    softmax: str = "full"  # or "adaptive" (Grave et al. 2017), which unties the output layer
    cutoffs: list[int] | None = None  # adaptive softmax cluster bounds; chosen from vocab_size if None

    def __post_init__(self) -> None:
        _check(0 <= self.vocab_size <= MAX_SIZE, f"vocab_size must be in [0, {MAX_SIZE:,}]")
        _check(1 <= self.embed_dim <= MAX_SIZE, f"--embed (embed_dim) must be in [1, {MAX_SIZE:,}]")
        _check(1 <= self.hidden_size <= MAX_SIZE, f"--hidden (hidden_size) must be in [1, {MAX_SIZE:,}]")
        _check(1 <= self.num_layers <= MAX_LAYERS, f"--layers (num_layers) must be in [1, {MAX_LAYERS}]")
        _check(0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)")
        _check(0.0 <= self.embed_dropout < 1.0, "--embed-dropout must be in [0, 1)")
        _check(self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, not {describe(self.cell)}")
        _check(self.conv_kernel == 0 or 2 <= self.conv_kernel <= MAX_SIZE,
               f"--conv-kernel (conv_kernel) must be 0 (off) or in [2, {MAX_SIZE:,}]")
        _check(self.softmax in ("full", "adaptive"),
               f"--softmax must be full or adaptive, not {describe(self.softmax)}")
        if self.cutoffs is not None:
            c = self.cutoffs
            _check(1 <= len(c) <= MAX_CUTOFFS and all(a < b for a, b in zip([0, *c], c)),
                   f"cutoffs must be 1 to {MAX_CUTOFFS} increasing positive integers")
            _check(self.vocab_size == 0 or c[-1] < self.vocab_size,
                   f"cutoffs must be below vocab_size ({self.vocab_size})")
        if self.softmax == "adaptive":
            self.tie_weights = False  # the adaptive softmax has its own output matrices


def adaptive_cutoffs(vocab_size: int) -> list[int]:
    """Cluster bounds on the frequency-ordered vocabulary: a head of the 1,000 commonest
    characters, then tails to 4,000 and the rest (fewer clusters for small vocabularies)."""
    cuts = [c for c in (1000, 4000) if c < vocab_size - 1]
    return cuts or [max(1, vocab_size // 2)]


@dataclass
class TrainConfig:
    # Small batches of short windows: on a CPU a step costs about its size, so 32×64 characters
    # give four times the updates of 64×128 for the same time, and learned faster here
    # (checkpoints/tang-quatrains/MODEL_CARD.md).
    seq_len: int = 64
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.1
    clip: float = 1.0
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    epochs: int | None = None
    seed: int = 1234
    valid_fraction: float = 0.05
    min_count: int = 1
    eval_interval: int = 500
    # Periodic validation scores a fixed, seeded subset of the validation poems of about this many
    # characters (the whole split when it is smaller); the end of training scores the whole split.
    valid_chars: int = 100_000
    save_every: float = 10.0  # minutes between resume saves (besides every validation)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0 = off)
    # Replace a character seen c times by <unk> with probability unk_alpha / (unk_alpha + c), so
    # the model learns the cost of unseen characters. None = choose it so the <unk> rate matches
    # the Good-Turing estimate N1/N (charlm.data.good_turing_alpha); 0 = off.
    unk_alpha: float | None = None
    precision: str = "auto"
    device: str = "auto"  # charlm.devices.resolve_device: auto, cpu, cuda, cuda:N, mps
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        _check(self.seq_len >= 2, "--seq-len must be at least 2")
        _check(self.batch_size >= 1, "--batch-size must be at least 1")
        _check(self.lr > 0, "--lr must be positive")
        _check(self.weight_decay >= 0, "--weight-decay must not be negative")
        _check(self.clip >= 0, "--clip must not be negative (0 turns clipping off)")
        _check(self.warmup_steps >= 0, "warmup steps must not be negative")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "the final learning-rate ratio must be in [0, 1]")
        _check(self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1")
        _check(self.max_time is None or self.max_time > 0, "--max-time must be positive")
        _check(self.epochs is None or self.epochs >= 1, "--epochs must be at least 1")
        _check(0.0 < self.valid_fraction < 0.5, "--valid-fraction must be in (0, 0.5)")
        _check(self.min_count >= 1, "--min-count must be at least 1")
        _check(self.eval_interval >= 1, "--eval-interval must be at least 1")
        _check(self.valid_chars >= 1, "--valid-chars must be at least 1")
        _check(0 < self.save_every <= 1e6, "--save-every must be a positive number of minutes")
        _check(0 <= self.seed <= SEED_MAX, f"--seed must be between 0 and {SEED_MAX}")
        _check(self.lr < float("inf"), "--lr must be finite")
        if self.max_steps is None and self.max_time is None and self.epochs is None:
            self.epochs = DEFAULT_EPOCHS
        _check(self.unk_alpha is None or self.unk_alpha >= 0, "--unk-alpha must be 'auto' or a number >= 0")
        _check(0.0 <= self.ema < 1.0, "--ema must be in [0, 1) (0 turns averaging off)")
        _check(self.precision in PRECISIONS,
               f"--precision must be one of {', '.join(PRECISIONS)}, not {describe(self.precision)}")


@dataclass
class Config:
    """The root object saved as config.json: model and training sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: str = "lm"

    def __post_init__(self) -> None:
        _check(self.task in TASKS, f"--task must be one of {', '.join(TASKS)}, not {describe(self.task)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "Config":
        """Strict: each section an object, each known field of its declared type (a bool is
        not an int, a float must be finite), then the ranges of ``__post_init__``. Missing
        fields take their defaults and unknown ones are ignored, so older and newer files load."""
        _check(isinstance(data, dict), f"the config must be an object, not {describe(data)}")
        for section in ("model", "train"):
            _check(section in data, f"the config has no {section!r} section")
        train = _build(TrainConfig, "train", data["train"])
        train.setdefault("unk_alpha", 0.0)  # written before --unk-alpha existed: trained without it
        task = data.get("task", "lm")
        _check(isinstance(task, str) and task in TASKS,
               f"config field task must be one of {', '.join(TASKS)}, not {describe(task)}")
        return cls(model=ModelConfig(**_build(ModelConfig, "model", data["model"])), train=TrainConfig(**train),
                   task=task)


def _build(cls, section: str, data: object) -> dict:
    """The known fields of ``data``, each checked against the dataclass's type annotation."""
    _check(isinstance(data, dict), f"config section {section!r} must be an object, not {describe(data)}")
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.init and f.name in data:
            value = data[f.name]
            _check(_fits(value, hints[f.name]),
                   f"config field {section}.{f.name} must be {_kind(hints[f.name])}, not {describe(value)}")
            out[f.name] = value
    return out


def _fits(value: object, hint) -> bool:
    """Whether a JSON value matches a field annotation: int, float, bool, str, list[int], X | None."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str) and len(value) <= MAX_STRING
    return False


def _kind(hint) -> str:
    """An annotation in words, for the error message."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {_kind(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a finite number", bool: "true or false",
            str: f"a string of at most {MAX_STRING} characters", type(None): "null"}.get(hint, str(hint))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CharLMError(message)


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h', '1h30m' or a bare number of seconds → seconds."""
    import re

    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
        if not parts or "".join(n + u for n, u in parts) != t.replace(" ", ""):
            raise CharLMError(f"cannot read duration {text!r}: use a form like 90s, 10m or 1h")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise CharLMError(f"duration {text!r} must be positive")
    return seconds


def parse_unk_alpha(text: str) -> float | None:
    """'auto' → None (Good-Turing), else a number ≥ 0."""
    t = text.strip().lower()
    if t == "auto":
        return None
    try:
        value = float(t)
    except ValueError:
        raise CharLMError(f"--unk-alpha must be 'auto' or a number >= 0, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise CharLMError(f"--unk-alpha must be 'auto' or a number >= 0, not {text!r}")
    return value


@dataclass(frozen=True)
class SampleSettings:
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_chars: int = 200  # ignored with a form, whose poems have a fixed length
    no_repeat: bool = False  # no repeated bigram, at most constrain.MAX_REPEAT of one character

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:  # also refuses NaN
            raise CharLMError("--temperature must be a finite number greater than 0")
        if self.top_k < 0:
            raise CharLMError("--top-k must be 0 (off) or a positive number")
        if not 0 < self.top_p <= 1:  # also refuses NaN
            raise CharLMError("--top-p must be in (0, 1]")
        if self.max_chars < 1:
            raise CharLMError("--max-chars must be at least 1")
