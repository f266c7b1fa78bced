"""The only module that knows the checkpoint format on disk.

A training run's output directory::

    <out>/best -> .best.<token>/    the best checkpoint so far (a symbolic link to one unit)
        model.safetensors   weights; metadata {"format": "charlm", "format_version": "1"}
        vocab.json          the vocabulary (charlm.vocab) with its training-text counts
        lines.txt           the training text's lines, for --novel and copy rates
        config.json         {"format_version": 1, "config": {...}, "metrics": {...},
                             "corpus": {...}, "versions": {...}}; a classifier's also has
                             "classifier": {"labels": [...], "pooling": ...} (charlm.classifier)
    <out>/resume -> .resume.<token>/  everything `charlm train --resume` needs
        model.safetensors   the latest weights
        state.safetensors   optimizer moments, RNG state, carried recurrent state, averaged weights
        state.json          counters, budget and settings (charlm.train.TrainState)
        vocab.json          the vocabulary, so a run can resume before its first checkpoint
    <out>/metrics.jsonl     the run's log, one JSON record a line
    <out>/.lock             held (flock) by the one process training into <out>

Each unit is written whole into a fresh directory, every file and the directory fsynced, and
then switched in by renaming a new symbolic link over the old one (one atomic rename), so a
crash at any moment leaves either the previous unit or the new one, never a mix. A checkpoint
directory may also hold the files of a unit directly (the shipped models do); ``load`` reads both.
Nothing is unpickled: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import json
import math
import os
import platform
import fcntl
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from charlm import __version__
from charlm.config import Config
from charlm.errors import CharLMError, describe
from charlm.model import MAX_PARAMETERS, CharLM, expected_shapes, planned_size
from charlm.vocab import Vocab

FORMAT_VERSION = 1
RESUME_FORMAT_VERSION = 2  # 1: a plain resume/ directory of charlm 0.1 (not resumable by this one)
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
CONFIG = "config.json"
LINES = "lines.txt"
BEST = "best"
RESUME = "resume"
METRICS = "metrics.jsonl"
LOCK = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)
# Test-only: seconds to pause inside every unit write, after its files and before the switch,
# so a test can kill a process in the middle of a save.
_SLOW_SAVE_ENV = "CHARLM_TEST_SLOW_SAVE"

# A checkpoint is untrusted input: nothing is read or allocated beyond these bounds.
MAX_JSON_BYTES = 64 * 2**20  # config.json, vocab.json, resume state: a 5,000-character vocabulary is 75 KiB
MAX_LINES_BYTES = 256 * 2**20  # lines.txt (the shipped model's is 1 MiB)
WEIGHTS_SLACK_BYTES = 16 * 2**20  # room for the safetensors header beyond the tensors themselves
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype → bytes per value


@dataclass
class Checkpoint:
    model: CharLM
    config: Config
    vocab: Vocab
    path: Path
    metrics: dict = field(default_factory=dict)
    corpus: dict = field(default_factory=dict)
    counts: list[int] | None = None  # training-text frequency of each vocabulary entry
    lines: set[str] | None = None  # the training text's lines (clauses), for --novel and copy rates
    classifier: object | None = None  # a ClassifierConfig for a classifier (then model is a CharClassifier)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then move tmp_path over path (fsynced first)."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _disk_error(what: str, where: Path, e: Exception, kept: bool = True) -> CharLMError:
    """A failed write as one sentence (safetensors reports I/O errors as SafetensorError)."""
    reason = getattr(e, "strerror", None) or str(e).rsplit("I/O error: ", 1)[-1].split(" (os error")[0]
    return CharLMError(f"could not write the {what} in {str(where)!r} ({reason}); "
                       + ("the last complete one there is kept" if kept else "none had been saved yet"))


def write_unit(root: Path, name: str, fill: Callable[[Path], None], *, keep_previous: bool = False) -> Path:
    """Write a directory unit and switch ``root/name`` to it with one atomic rename.

    ``fill(d)`` writes the unit's files into the fresh directory d. Every file and d are fsynced,
    a new symbolic link to d is renamed over ``root/name``, and root is fsynced: a crash at any
    point leaves the old unit or the new one. Units no longer linked are removed afterwards, except
    the one just replaced when ``keep_previous`` (a reader that resolved the link a moment ago can
    still finish reading it). Returns root/name.
    """
    target, previous = root / name, _link_target(root, name)
    what = "best checkpoint" if name == BEST else "resume state"
    try:
        unit = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    except OSError as e:
        raise _disk_error(what, root, e, kept=previous is not None) from None
    try:
        os.chmod(unit, 0o777 & ~_UMASK)
        fill(unit)
        for f in unit.iterdir():
            _fsync(f)
        _fsync(unit)
        pause = os.environ.get(_SLOW_SAVE_ENV)
        if pause:
            time.sleep(float(pause))
        link = root / f".{name}.link.tmp"
        link.unlink(missing_ok=True)
        os.symlink(unit.name, link)
        if target.is_dir() and not target.is_symlink():
            # a unit written by an older charlm as a plain directory: move it aside first
            os.replace(target, tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        os.replace(link, target)
        _fsync(root)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(unit, ignore_errors=True)
        raise _disk_error(what, root, e, kept=previous is not None or target.is_dir()) from None
    except BaseException:
        shutil.rmtree(unit, ignore_errors=True)
        raise
    remove_stale(root, keep=(previous,) if keep_previous else (), names=(name,))
    return target


def _link_target(root: Path, name: str) -> str | None:
    try:
        return os.readlink(root / name)
    except OSError:
        return None


def remove_stale(root: Path, keep: tuple[str | None, ...] = (), names: tuple[str, ...] = (BEST, RESUME)) -> None:
    """Remove what an interrupted save leaves in a run directory: temporary files and the units
    of ``names`` that no link points to (keeping those named in ``keep``)."""
    if not root.is_dir():
        return
    live = {_link_target(root, BEST), _link_target(root, RESUME), *keep}
    prefixes = tuple(f".{name}." for name in names)
    every_tmp = set(names) == {BEST, RESUME}  # at the start of a run: any file an interrupted write left
    for entry in root.iterdir():
        n = entry.name
        if n.startswith(".") and n.endswith(".tmp") and (every_tmp or n.startswith(prefixes)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        elif n.startswith(prefixes) and n not in live:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def unit_dir(path: Path, name: str = BEST) -> Path:
    """The directory holding a unit's files: the unit ``path/name`` links to, if there is one,
    else ``path`` itself (a checkpoint written flat, like the shipped models). The link is
    resolved once, so all files are read from one unit even while a trainer switches it."""
    target = _link_target(path, name)
    if target is None:  # a plain directory (a copy that followed the link, an older charlm) or flat files
        return path / name if name == RESUME or (path / name).is_dir() else path
    if "/" in target or target in ("", ".", ".."):
        raise CharLMError(f"checkpoint {str(path)!r} is damaged: {name} points outside the checkpoint")
    return path / target


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def versions() -> dict:
    return {"charlm": __version__, "torch": torch.__version__, "python": platform.python_version()}


def unwrap(model: torch.nn.Module) -> CharLM:
    return getattr(model, "_orig_mod", model)


def _vocab_data(vocab: Vocab, counts: list[int] | None) -> dict:
    data = vocab.to_dict()
    if counts is not None:
        data["counts"] = counts
    return data


def save(path: str | Path, model: CharLM, config: Config, vocab: Vocab, *, metrics: dict | None = None,
         corpus: dict | None = None, counts: list[int] | None = None, lines: set[str] | str | None = None,
         classifier: dict | None = None) -> Path:
    """Write a checkpoint unit and make it ``path``'s best. ``lines`` may be pre-rendered
    (render_lines) when the same lines are saved many times. ``classifier`` (a ClassifierConfig's
    dict) marks a classifier's checkpoint."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    meta = {"format": "charlm", "format_version": str(FORMAT_VERSION)}

    def fill(d: Path) -> None:
        # save_model handles the tied embedding/output weight (save_file refuses shared tensors).
        save_model(model, str(d / WEIGHTS), metadata=meta)
        _write_json(d / VOCAB, _vocab_data(vocab, counts))
        if lines is not None:
            (d / LINES).write_text(lines if isinstance(lines, str) else render_lines(lines), encoding="utf-8")
        _write_json(d / CONFIG, {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "metrics": metrics or {},
            "corpus": corpus or {},
            "versions": versions(),
            **({"classifier": classifier} if classifier is not None else {}),
        })

    write_unit(p, BEST, fill, keep_previous=True)
    return p


def export(src: str | Path, dest: str | Path, *, bf16: bool = False, corpus: str | None = None) -> Path:
    """A standalone copy of ``src``'s checkpoint in the new folder ``dest``, its files flat (as the
    shipped models hold them), with the run's metrics.jsonl when there is one. ``bf16`` stores the
    weights in bfloat16 (half the size; they load into a model of any precision). ``corpus``
    records another path for the training corpus, accepted only when its text is the recorded one
    (the same SHA-256), so `charlm eval` still rebuilds the right validation split."""
    from charlm.data import read_corpus, sha256_text
    from charlm.vocab import normalize

    src, dest = Path(src), Path(dest)
    if dest.exists() or dest.is_symlink():
        raise CharLMError(f"{dest} already exists; give a new folder")
    ck = load(src)  # the whole checkpoint checked before anything is written
    unit = unit_dir(src)
    meta = read_json_file(unit / CONFIG, "config.json")
    if corpus is not None:
        text = normalize(read_corpus(corpus), ck.vocab.script)
        if sha256_text(text) != meta.get("corpus", {}).get("sha256"):
            raise CharLMError(f"{corpus} is not the text this checkpoint was trained on (its SHA-256 differs)")
        meta["corpus"]["path"] = str(corpus)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with safe_open(str(unit / WEIGHTS), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            file_meta = f.metadata()
        if bf16:
            tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata=file_meta)
        shutil.copyfile(unit / VOCAB, tmp / VOCAB)
        if (unit / LINES).is_file():
            shutil.copyfile(unit / LINES, tmp / LINES)
        if (src / METRICS).is_file():
            shutil.copyfile(src / METRICS, tmp / METRICS)
        _write_json(tmp / CONFIG, meta)
        os.chmod(tmp, 0o777 & ~_UMASK)
        os.rename(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CharLMError(f"could not write {str(dest)!r} ({e.strerror or e}); nothing was written there") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_file(path: Path, what: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``max_bytes``.

    ``what`` names whose file it is in messages, e.g. "checkpoint 'out'". The file is opened
    non-blocking and checked on the open descriptor, so a FIFO, a device such as /dev/zero or a
    directory is refused without hanging or reading forever, even if it was swapped in late.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CharLMError(f"{what} has no {path.name}") from None
    except OSError as e:
        raise CharLMError(f"{what} has an unreadable {path.name} ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CharLMError(f"{what} has a {path.name} that is not a regular file")
        if info.st_size > max_bytes:
            raise CharLMError(f"{what} has a {path.name} of {info.st_size:,} bytes, "
                              f"over the limit of {_size(max_bytes)}")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise CharLMError(f"{what} has an unreadable {path.name} ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read it
        raise CharLMError(f"{what} has a {path.name} over the limit of {_size(max_bytes)}")
    return data


def read_json_file(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """The JSON object in ``path`` (see ``read_file``): strict UTF-8, no NaN or Infinity (which
    Python's json would accept), no nesting deeper than Python can parse, an object at the top."""
    def refuse_constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    data = read_file(path, what, max_bytes)
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise CharLMError(f"{what} has a corrupt {path.name} (it is not UTF-8 text)") from None
    except RecursionError:
        raise CharLMError(f"{what} has a corrupt {path.name} (nested too deeply)") from None
    except ValueError as e:  # json.JSONDecodeError, NaN/Infinity, an integer too long to convert
        raise CharLMError(f"{what} has a corrupt {path.name} ({str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise CharLMError(f"{what} has a corrupt {path.name} (it must hold a JSON object, not {describe(value)})")
    return value


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _shape(shape) -> str:
    dims = [str(d) for d in shape]
    return "(" + ", ".join(dims if len(dims) <= 8 else [*dims[:8], "…"]) + ")"


def _config_from(meta: dict, what: str) -> Config:
    """The validated config of config.json, and its metrics and corpus sections checked for the
    types the rest of charlm relies on."""
    try:
        config = Config.from_dict(meta.get("config"))
    except CharLMError as e:
        raise CharLMError(f"{what} has an invalid config.json: {e}") from None
    for section in ("metrics", "corpus"):
        if not isinstance(meta.get(section, {}), dict):
            raise CharLMError(f"{what} has an invalid config.json: {section!r} must be an object, "
                              f"not {describe(meta[section])}")
    for key in ("path", "sha256"):
        value = meta.get("corpus", {}).get(key)
        if value is not None and not isinstance(value, str):
            raise CharLMError(f"{what} has an invalid config.json: corpus {key} must be a string, "
                              f"not {describe(value)}")
    return config


def _vocab_from(data: dict, what: str) -> tuple[Vocab, list[int] | None]:
    try:
        return Vocab.from_dict(data), Vocab.counts_from_dict(data)
    except CharLMError as e:
        raise CharLMError(f"{what} has an invalid vocab.json: {e}") from None


def architecture(config: Config) -> tuple[type, Callable]:
    """The model class a config's task builds, and the function giving its tensors' shapes."""
    if config.task == "couplet":
        from charlm import couplet

        return couplet.CoupletModel, couplet.expected_shapes
    return CharLM, expected_shapes


def parameters(config: Config) -> int:
    """The values the config's model holds, computed without allocating them (capped as planned_size)."""
    n = planned_size(config.model)  # refuses a language model beyond the cap with a sentence
    if config.task != "lm":
        n = sum(math.prod(s) for s in architecture(config)[1](config.model).values())
        if n > 2 * MAX_PARAMETERS:
            raise CharLMError(f"a model of {n:,} parameters is larger than charlm builds")
    return n


def _check_weights(p: Path, config: Config, what: str,
                   shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[int, ...]]:
    """Check model.safetensors against the shapes the config needs, reading only its header and
    before any tensor is allocated: the parameter count is capped, the file is a regular file of
    a plausible size, and every tensor is present, expected, floating point and of the right
    shape. Returns the expected shapes (name → shape): ``shapes`` when given (a classifier's)."""
    try:
        n = parameters(config)
    except CharLMError as e:
        raise CharLMError(f"{what} cannot be loaded: {e}") from None
    planned = architecture(config)[1](config.model)
    shapes = shapes if shapes is not None else planned
    n += sum(math.prod(s) for s in shapes.values()) - sum(math.prod(s) for s in planned.values())
    path = p / WEIGHTS
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CharLMError(f"{what} has no {WEIGHTS}") from None
    except OSError as e:
        raise CharLMError(f"{what} has an unreadable {WEIGHTS} ({e.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CharLMError(f"{what} has a {WEIGHTS} that is not a regular file")
    limit = n * max(FLOAT_DTYPES.values()) + WEIGHTS_SLACK_BYTES
    if info.st_size > limit:
        raise CharLMError(f"{what} has a {WEIGHTS} of {info.st_size:,} bytes, more than the "
                          f"{_size(limit)} a model of {n:,} parameters can take")
    try:
        with safe_open(str(path), "pt") as f:
            names = set(f.keys())
            missing = [k for k in shapes if k not in names]
            if missing:
                raise CharLMError(f"{what} is inconsistent: tensor {missing[0]} is missing from {WEIGHTS}"
                                  + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
            unexpected = sorted(names - shapes.keys())
            if unexpected:
                raise CharLMError(f"{what} is inconsistent: {WEIGHTS} holds tensor {describe(unexpected[0])}, "
                                  f"which its config does not describe")
            for name, shape in shapes.items():
                tensor = f.get_slice(name)
                dtype, got = tensor.get_dtype(), tuple(tensor.get_shape())
                if dtype not in FLOAT_DTYPES:
                    raise CharLMError(f"{what} has tensor {name} of type {describe(dtype)} in {WEIGHTS}; "
                                      f"weights must be floating point")
                if got != shape:
                    raise CharLMError(f"{what} is inconsistent: tensor {name} has shape {_shape(got)} in "
                                      f"{WEIGHTS} but the config needs {_shape(shape)}")
    except (SafetensorError, OSError) as e:
        raise CharLMError(f"{what} has corrupt weights ({WEIGHTS} is not a readable safetensors file: "
                          f"{str(e).splitlines()[0][:200]})") from None
    return shapes


def _check_finite(model: CharLM, names, what: str) -> None:
    state = model.state_dict()
    for name in names:
        if not bool(torch.isfinite(state[name]).all()):
            raise CharLMError(f"{what} has non-finite weights in tensor {name}")


def _read_lines(p: Path, what: str) -> set[str] | None:
    if not os.path.lexists(p / LINES):
        return None
    try:
        text = read_file(p / LINES, what, MAX_LINES_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise CharLMError(f"{what} has a corrupt {LINES} (it is not UTF-8 text)") from None
    return set(text.split("\n")) - {""}


def is_checkpoint(path: Path) -> bool:
    try:
        d = unit_dir(path)
    except CharLMError:
        return True  # damaged, but a checkpoint: loading it says what is wrong
    return (d / CONFIG).is_file() and (d / WEIGHTS).is_file()


def config_path(path: Path) -> Path:
    """The config.json of the checkpoint at ``path`` (its mtime says when it was saved)."""
    return unit_dir(path) / CONFIG


def read_config(path: str | Path) -> tuple[Path, dict, Config]:
    """The directory holding the checkpoint's files, its config.json and its validated config,
    without touching the weights: what ``load`` starts with and ``charlm models`` shows."""
    p = Path(path)
    if not p.exists():
        raise CharLMError(f"checkpoint {str(p)!r} does not exist")
    if not p.is_dir():
        raise CharLMError(f"checkpoint {str(p)!r} is not a directory (a checkpoint is a folder with {CONFIG})")
    what = f"checkpoint {str(p)!r}"
    d = unit_dir(p)  # the files of one unit, however often a trainer switches it meanwhile
    if not d.is_dir():
        raise CharLMError(f"{what} is damaged: its {BEST} link points to nothing")
    meta = read_json_file(d / CONFIG, what)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CharLMError(
            f"checkpoint {str(p)!r} has format version {describe(version)}; this charlm reads version {FORMAT_VERSION}"
        )
    return d, meta, _config_from(meta, what)


TASK_LM, TASK_CLASSIFY, TASK_COUPLET = "lm", "classify", "couplet"


def task_of(meta: dict) -> str:
    """What a checkpoint's config.json says it is: a language model, a couplet model (its config's
    task), or a classifier (a config with a "classifier" section)."""
    if "classifier" in meta:
        return TASK_CLASSIFY
    config = meta.get("config")
    task = config.get("task") if isinstance(config, dict) else None
    return task if task == TASK_COUPLET else TASK_LM


def _refuse_task(p: Path, meta: dict, wanted: str) -> None:
    """A classifier where a network of characters is wanted, or the other way round (load() reads
    language and couplet models alike; the caller tells those apart by config.task)."""
    task = task_of(meta)
    if (task == TASK_CLASSIFY) != (wanted == TASK_CLASSIFY):
        raise CharLMError(
            f"checkpoint {str(p)!r} is a classifier, not a language model; use it with `charlm classify`"
            if task == TASK_CLASSIFY else
            f"checkpoint {str(p)!r} is a language model, not a classifier; train one with `charlm train --task classify`")


def load(path: str | Path, device: torch.device | str | None = None, *, lines: bool = True) -> Checkpoint:
    """Read and check a language model's checkpoint; its model goes to ``device`` (the CPU by default),
    whatever device it was trained on: the weights on disk are plain safetensors. ``lines=False``
    skips the training lines (hundreds of MB as a Python set for a corpus of millions of lines)."""
    p = Path(path)
    d, meta, config = read_config(p)
    _refuse_task(p, meta, TASK_LM)
    return _load(p, d, meta, config, device, lines)


def load_classifier(path: str | Path, device: torch.device | str | None = None) -> Checkpoint:
    """Read and check a classifier's checkpoint (charlm.classifier); a language model is refused."""
    from charlm.classifier import ClassifierConfig

    p = Path(path)
    d, meta, config = read_config(p)
    _refuse_task(p, meta, TASK_CLASSIFY)
    try:
        classifier = ClassifierConfig.from_dict(meta["classifier"])
    except CharLMError as e:
        raise CharLMError(f"checkpoint {str(p)!r} has an invalid config.json: {e}") from None
    return _load(p, d, meta, config, device, False, classifier)


def _load(p: Path, d: Path, meta: dict, config: Config, device, lines: bool, classifier=None) -> Checkpoint:
    what = f"checkpoint {str(p)!r}"
    vocab_data = read_json_file(d / VOCAB, what)
    vocab, counts = _vocab_from(vocab_data, what)
    if config.model.vocab_size != len(vocab):
        raise CharLMError(f"checkpoint {str(p)!r} is inconsistent: config says {config.model.vocab_size} "
                          f"characters, vocabulary has {len(vocab)}")
    if classifier is None:
        shapes = _check_weights(d, config, what)
        model = architecture(config)[0](config.model)
    else:
        from charlm.classifier import CharClassifier, classifier_shapes

        shapes = _check_weights(d, config, what, classifier_shapes(config.model, classifier))
        model = CharClassifier(config.model, classifier)
    try:
        missing, unexpected = load_model(model, str(d / WEIGHTS), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CharLMError(f"checkpoint {str(p)!r} has corrupt weights ({str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise CharLMError(f"checkpoint {str(p)!r} weights do not match its config "
                          f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    _check_finite(model, shapes, what)
    model.eval()
    if device is not None:
        model.to(device)
    return Checkpoint(model, config, vocab, p, meta.get("metrics", {}), meta.get("corpus", {}),
                      counts, _read_lines(d, what) if lines else None, classifier)


def render_lines(lines: set[str]) -> str:
    """The training text's lines, sorted, one per line: what --novel and the copy rate check
    generated lines against, without needing the corpus file."""
    return "\n".join(sorted(lines)) + "\n"


# -- resumable training state ----------------------------------------------------------------

def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as safetensors-ready tensors plus JSON-ready scalars and groups."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def read_metrics(path: str | Path) -> dict:
    """The metrics recorded with the best checkpoint at ``path`` ({} when there are none)."""
    try:
        meta = read_json_file(config_path(Path(path)), f"checkpoint {str(path)!r}")
    except CharLMError:
        return {}
    metrics = meta.get("metrics") if isinstance(meta, dict) else None
    return metrics if isinstance(metrics, dict) else {}


def save_resume(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                counters: dict, tensors: dict[str, torch.Tensor], vocab: Vocab, counts: list[int] | None) -> None:
    """Write the resume unit <path>/resume: the latest weights, the optimizer moments and the
    caller's tensors (safetensors); the counters and settings (JSON); the vocabulary."""
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    all_tensors = {**opt_tensors, **{f"run.{k}": t for k, t in tensors.items()}}
    all_tensors = {k: v.detach().contiguous().cpu() for k, v in all_tensors.items()}

    def fill(d: Path) -> None:
        save_model(unwrap(model), str(d / WEIGHTS))
        save_file(all_tensors, str(d / "state.safetensors"))
        _write_json(d / VOCAB, _vocab_data(vocab, counts))
        _write_json(d / "state.json", {"format_version": RESUME_FORMAT_VERSION, **counters, "optimizer": opt_meta})

    write_unit(Path(path), RESUME, fill)


def has_resume(path: str | Path) -> bool:
    return (unit_dir(Path(path), RESUME) / "state.json").is_file()


def read_resume(path: str | Path) -> dict:
    """The counters and settings of a resumable run (no tensors)."""
    r = unit_dir(Path(path), RESUME)
    if not (r / "state.json").is_file():
        raise CharLMError(f"nothing to resume in {str(path)!r} (no {RESUME}/state.json)")
    state = read_json_file(r / "state.json", f"the resume state in {str(path)!r}")
    if not isinstance(state, dict) or state.get("format_version") != RESUME_FORMAT_VERSION:
        raise CharLMError(f"the resume state in {str(path)!r} was written by another version of charlm "
                          f"(format {state.get('format_version') if isinstance(state, dict) else None!r}, "
                          f"this one reads {RESUME_FORMAT_VERSION}) and cannot be resumed")
    return state


def read_resume_vocab(path: str | Path) -> tuple[Vocab, list[int] | None]:
    """The vocabulary a resumable run was trained with (older runs kept it only in best/)."""
    r = unit_dir(Path(path), RESUME)
    source = r / VOCAB if (r / VOCAB).is_file() else unit_dir(Path(path)) / VOCAB
    return _vocab_from(read_json_file(source, f"the run in {str(path)!r}"), f"the run in {str(path)!r}")


def load_resume(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore weights and optimizer from <path>/resume; return the counters and the caller's
    tensors saved with them."""
    state = read_resume(path)
    r = unit_dir(Path(path), RESUME)
    try:
        tensors = load_file(str(r / "state.safetensors"))
        load_model(unwrap(model), str(r / WEIGHTS))
        _unflatten_optimizer(optimizer, tensors, state["optimizer"])
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CharLMError(f"resume state in {str(path)!r} is corrupt ({first})") from None
    return state, {k.removeprefix("run."): v for k, v in tensors.items() if k.startswith("run.")}


def clear_run(path: Path) -> None:
    """Remove a previous run's checkpoint, resume state and log from ``path`` (--overwrite)."""
    for name in (BEST, RESUME):
        target = path / name
        if target.is_symlink():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    for name in (CONFIG, WEIGHTS, VOCAB, LINES, METRICS):  # a checkpoint written flat, and the log
        (path / name).unlink(missing_ok=True)
    remove_stale(path)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold <path>/.lock (flock) for a training run: one writer per output directory. A second
    run is refused with a sentence naming the process that holds the lock."""
    lock = path / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    except OSError as e:
        raise CharLMError(f"cannot write to {str(path)!r} ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise CharLMError(f"another charlm train ({who}) is writing to {str(path)!r}; wait for it to "
                              f"finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _is_task(d: Path, task: str) -> bool:
    """Whether the checkpoint in d is of ``task``; a damaged one counts as a language model, as
    before classifiers existed, so loading it says what is wrong."""
    try:
        meta = read_json_file(config_path(d), f"checkpoint {str(d)!r}")
    except (CharLMError, OSError):
        return task == TASK_LM
    return task_of(meta) == task


def find_default(explicit: str | Path | None, task: str = TASK_LM, genre: str | None = None) -> tuple[Path, str]:
    """Which checkpoint generate/eval (or, for ``task`` "classify", classify) use, and why:
    --checkpoint, else the newest run of that task under ./checkpoints/ (the shipped models a
    source checkout keeps there do not count), else the one shipped with charlm. For a form of a
    ``genre`` (``ci``) that charlm/shipped.json names a model for, that model when it is installed."""
    return choose_checkpoint(explicit, task, genre)[:2]


def choose_checkpoint(explicit: str | Path | None, task: str = TASK_LM, genre: str | None = None
                      ) -> tuple[Path, str, str | None]:
    """``find_default``'s (path, why), and a warning when a ``genre`` was asked for whose shipped
    model is not installed, so that the default model (which never read that genre) stands in."""
    if explicit is not None:
        return Path(explicit), "given with --checkpoint", None
    wanted = _shipped_manifest().get("genres", {}).get(genre) if genre else None
    local = Path("checkpoints")
    if local.is_dir():
        shipped = {p.resolve() for p in shipped_models().values()}  # a source checkout's own checkpoints/
        found = [d for d in local.iterdir()
                 if d.is_dir() and is_checkpoint(d) and d.resolve() not in shipped and _is_task(d, task)]
        if found:
            newest = max(found, key=lambda d: config_path(d).stat().st_mtime)
            return newest, "newest under ./checkpoints/", None
    if wanted is not None and is_checkpoint(_shipped_path(wanted)):
        return _shipped_path(wanted), f"the {genre} model shipped with charlm", None
    shipped = shipped_checkpoint() if task == TASK_LM else shipped_checkpoint(task)
    if is_checkpoint(shipped):
        warning = None
        if wanted is not None:
            warning = (f"the {genre} model {wanted} is not installed, so the default model "
                       f"{_shipped_manifest()['default']}, which has not read {genre}, writes these; "
                       "pass --checkpoint for a model trained on them")
        return shipped, "the model shipped with charlm", warning
    if task == TASK_CLASSIFY:
        raise CharLMError("no classifier found: train one with `charlm train --task classify LABELLED.tsv` "
                          "or pass --checkpoint DIR")
    if task != TASK_LM:
        raise CharLMError(f"no {task} checkpoint found: train one with `charlm train --task {task} FILE` "
                          f"or pass --checkpoint DIR")
    raise CharLMError("no checkpoint found: train one with `charlm train CORPUS` or pass --checkpoint DIR")


# -- the shipped models ----------------------------------------------------------------------
# charlm/shipped.json names the shipped models and the default. An installed charlm holds them
# in charlm/shipped/<name>/ (setup.py copies them there when it builds the wheel); a source
# checkout, and so an editable install, holds them in checkpoints/<name>/ beside the package.

PACKAGE = Path(__file__).resolve().parent


def project_root() -> Path:
    return PACKAGE.parent


def _shipped_manifest() -> dict:
    return json.loads((PACKAGE / "shipped.json").read_text(encoding="utf-8"))


def _shipped_path(name: str) -> Path:
    """Where the shipped model ``name`` is: inside the package, else in the source checkout."""
    installed = PACKAGE / "shipped" / name
    checkout = project_root() / "checkpoints" / name
    if not is_checkpoint(installed) and (project_root() / "pyproject.toml").is_file() and is_checkpoint(checkout):
        return checkout
    return installed


def shipped_models() -> dict[str, Path]:
    """The shipped models present in this installation, name → folder, the default first."""
    manifest = _shipped_manifest()
    names = sorted(manifest["models"], key=lambda n: n != manifest["default"])
    return {n: p for n in names if is_checkpoint(p := _shipped_path(n))}


def shipped_checkpoint(task: str = TASK_LM) -> Path:
    """The folder of the default shipped model of ``task`` (which may be missing from this
    installation): shipped.json's "default", or for a classifier its "classify"."""
    manifest = _shipped_manifest()
    return _shipped_path(manifest["default"] if task == TASK_LM else manifest.get(task, ""))
