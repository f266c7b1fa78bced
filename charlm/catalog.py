"""Which models charlm can find, described from their config.json alone (`charlm models`).

The shipped models, then every run under ./checkpoints/, each with its corpus, size on disk,
parameter count and validation bits per character; the one that generate and eval use without
--checkpoint is marked as the default. No weights are read. A checkpoint that cannot be described
is listed with one sentence saying what is wrong, and the listing goes on.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from charlm import checkpoint
from charlm.errors import CharLMError

LOCAL = Path("checkpoints")
SHIPPED, USER = "shipped", "local"  # where a model was found: with charlm, or under ./checkpoints/


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    source: str  # SHIPPED or USER
    default: bool = False  # the checkpoint generate and eval use without --checkpoint
    corpus: str | None = None  # the training corpus as recorded at training time
    corpus_chars: int | None = None
    size_bytes: int | None = None  # the checkpoint's files (one unit: not the resume state)
    parameters: int | None = None
    valid_bpc: float | None = None
    problem: str | None = None  # why it cannot be used, for a broken checkpoint
    task: str = "lm"  # or "classify" (charlm classify)
    valid_accuracy: float | None = None  # a classifier's, on its validation subset

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def _number(value) -> float | None:
    """A finite number from untrusted JSON, else None (a bool is not a number here)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


def _unit_size(d: Path) -> int:
    """Bytes of the checkpoint's files in d: the regular files directly in it (symbolic links not
    followed), less a run's log and lock where a checkpoint is written flat."""
    total = 0
    for entry in d.iterdir():
        if entry.name in (checkpoint.METRICS, checkpoint.LOCK):
            continue
        info = entry.lstat()
        if stat.S_ISREG(info.st_mode):
            total += info.st_size
    return total


def describe(path: Path, name: str, source: str, default: bool = False) -> ModelInfo:
    """A model's description from its config.json; a broken one carries the sentence saying why."""
    try:
        d, meta, config = checkpoint.read_config(path)
        weights = d / checkpoint.WEIGHTS
        if not weights.is_file():
            raise CharLMError(f"checkpoint {str(path)!r} has " + (f"a {checkpoint.WEIGHTS} that is not a regular file"
                              if os.path.lexists(weights) else f"no {checkpoint.WEIGHTS}"))
        parameters = checkpoint.parameters(config)
        if checkpoint.task_of(meta) == checkpoint.TASK_CLASSIFY:  # the encoder's, and the head's
            from charlm.classifier import ClassifierConfig, classifier_shapes

            parameters = sum(math.prod(s) for s in classifier_shapes(config.model, ClassifierConfig.from_dict(
                meta["classifier"])).values())
        size = _unit_size(d)
    except CharLMError as e:
        return ModelInfo(name, path, source, default, problem=str(e))
    except OSError as e:
        return ModelInfo(name, path, source, default,
                         problem=f"checkpoint {str(path)!r} cannot be read ({e.strerror or e})")
    corpus = meta.get("corpus", {})
    chars = _number(corpus.get("characters"))
    metrics = meta.get("metrics", {})
    return ModelInfo(name, path, source, default, corpus=corpus.get("path"),
                     corpus_chars=int(chars) if chars is not None else None, size_bytes=size,
                     parameters=parameters, valid_bpc=_number(metrics.get("valid_bpc")),
                     task=checkpoint.task_of(meta), valid_accuracy=_number(metrics.get("valid_accuracy")))


def _looks_like_checkpoint(d: Path) -> bool:
    """A folder a training run or a copied checkpoint left: worth listing, even when broken."""
    return any(os.path.lexists(d / n) for n in (checkpoint.BEST, checkpoint.CONFIG, checkpoint.WEIGHTS))


def _default() -> Path | None:
    try:
        return checkpoint.find_default(None)[0].resolve()
    except (CharLMError, OSError, RuntimeError):  # RuntimeError: a symbolic link loop
        return None


def list_models(local: Path = LOCAL) -> list[ModelInfo]:
    """The shipped models (the shipped default first), then the folders under ``local``, by name.
    A folder that is also a shipped model (a source checkout's checkpoints/) is listed once."""
    default, seen, found = _default(), set(), []

    def add(path: Path, name: str, source: str) -> None:
        where = path.resolve()
        if where not in seen:
            seen.add(where)
            found.append(describe(path, name, source, default=where == default))

    for name, path in checkpoint.shipped_models().items():
        add(path, name, SHIPPED)
    try:
        folders = sorted(d for d in local.iterdir() if d.is_dir()) if local.is_dir() else []
    except OSError as e:
        found.append(ModelInfo(local.name, local, USER, problem=f"{str(local)!r} cannot be listed ({e.strerror or e})"))
        folders = []
    for d in folders:
        if _looks_like_checkpoint(d):
            add(d, d.name, USER)
    return found
