"""The only module that knows the checkpoint format on disk.

    <dir>/model.safetensors   weights; metadata {"format": "charlm", "format_version": "1"}
    <dir>/vocab.json          the vocabulary (charlm.vocab)
    <dir>/config.json         {"format_version": 1, "config": {...}, "metrics": {...},
                               "corpus": {...}, "versions": {...}}   — written last
    <dir>/resume/             optimizer, RNG and data position for `charlm train --resume`

Nothing is unpickled: weights are safetensors, everything else JSON. Each file is written under
a temporary name and moved into place with os.replace, config.json last, so its presence marks
a complete checkpoint and a crash mid-save leaves the previous one intact.
"""

from __future__ import annotations

import json
import math
import os
import platform
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from charlm import __version__
from charlm.config import Config
from charlm.errors import CharLMError, describe
from charlm.model import CharLM, expected_shapes
from charlm.vocab import Vocab

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
CONFIG = "config.json"
LINES = "lines.txt"
RESUME = "resume"
_UMASK = os.umask(0)
os.umask(_UMASK)

# A checkpoint is untrusted input: nothing is read or allocated beyond these bounds.
MAX_JSON_BYTES = 64 * 2**20  # config.json, vocab.json, resume state: a 5,000-character vocabulary is 75 KiB
MAX_LINES_BYTES = 256 * 2**20  # lines.txt (the shipped model's is 1 MiB)
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32; the shipped model has 5.1 million
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


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then move tmp_path over path."""
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, data: dict) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    _atomic_write(path, write)


def versions() -> dict:
    return {"charlm": __version__, "torch": torch.__version__, "python": platform.python_version()}


def unwrap(model: torch.nn.Module) -> CharLM:
    return getattr(model, "_orig_mod", model)


def save(path: str | Path, model: CharLM, config: Config, vocab: Vocab, *, metrics: dict | None = None,
         corpus: dict | None = None, counts: list[int] | None = None, lines: set[str] | None = None) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    meta = {"format": "charlm", "format_version": str(FORMAT_VERSION)}
    # save_model handles the tied embedding/output weight (save_file refuses shared tensors).
    _atomic_write(p / WEIGHTS, lambda tmp: save_model(model, str(tmp), metadata=meta))
    vocab_data = vocab.to_dict()
    if counts is not None:
        vocab_data["counts"] = counts
    _write_json(p / VOCAB, vocab_data)
    if lines is not None:
        save_lines(p, lines)
    _write_json(p / CONFIG, {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "metrics": metrics or {},
        "corpus": corpus or {},
        "versions": versions(),
    })
    return p


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


def _read_json(path: Path, what: str) -> dict:
    return read_json_file(path, f"{what} in {str(path.parent)!r}")


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


def _check_weights(p: Path, config: Config, what: str) -> dict[str, tuple[int, ...]]:
    """Check model.safetensors against the shapes the config needs, reading only its header and
    before any tensor is allocated: the parameter count is capped, the file is a regular file of
    a plausible size, and every tensor is present, expected, floating point and of the right
    shape. Returns the expected shapes (name → shape)."""
    m = config.model
    sizes = (f"vocab_size {m.vocab_size}, embed_dim {m.embed_dim}, hidden_size {m.hidden_size}, "
             f"num_layers {m.num_layers}")
    try:
        shapes = expected_shapes(m)
    except RuntimeError:  # a shape too large for torch to describe at all
        raise CharLMError(f"{what} has a config.json describing a model too large to build ({sizes})") from None
    n = sum(math.prod(s) for s in shapes.values())
    if n > MAX_PARAMETERS:
        raise CharLMError(f"{what} has a config.json describing a model of {n:,} parameters ({sizes}); "
                          f"charlm loads at most {MAX_PARAMETERS:,}")
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
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load(path: str | Path) -> Checkpoint:
    p = Path(path)
    if not p.exists():
        raise CharLMError(f"checkpoint {str(p)!r} does not exist")
    if not p.is_dir():
        raise CharLMError(f"checkpoint {str(p)!r} is not a directory (a checkpoint is a folder with {CONFIG})")
    what = f"checkpoint {str(p)!r}"
    meta = read_json_file(p / CONFIG, what)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CharLMError(
            f"checkpoint {str(p)!r} has format version {describe(version)}; this charlm reads version {FORMAT_VERSION}"
        )
    config = _config_from(meta, what)
    vocab_data = read_json_file(p / VOCAB, what)
    vocab, counts = _vocab_from(vocab_data, what)
    if config.model.vocab_size != len(vocab):
        raise CharLMError(f"checkpoint {str(p)!r} is inconsistent: config says {config.model.vocab_size} "
                          f"characters, vocabulary has {len(vocab)}")
    shapes = _check_weights(p, config, what)
    model = CharLM(config.model)
    try:
        missing, unexpected = load_model(model, str(p / WEIGHTS), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CharLMError(f"checkpoint {str(p)!r} has corrupt weights ({str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise CharLMError(f"checkpoint {str(p)!r} weights do not match its config "
                          f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    _check_finite(model, shapes, what)
    model.eval()
    return Checkpoint(model, config, vocab, p, meta.get("metrics", {}), meta.get("corpus", {}),
                      counts, _read_lines(p, what))


def save_lines(path: str | Path, lines: set[str]) -> None:
    """The training text's lines, sorted, one per line (UTF-8): what --novel and the copy rate
    check generated lines against, without needing the corpus file."""
    text = "\n".join(sorted(lines)) + "\n"
    _atomic_write(Path(path) / LINES, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


def save_resume(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                carried: tuple[torch.Tensor, ...] | None, counters: dict,
                extra: dict[str, torch.Tensor] | None = None) -> None:
    """Everything `--resume` needs in <path>/resume/: the latest weights, the optimizer moments,
    torch's RNG state and the carried recurrent state (safetensors), counters and settings (JSON)."""
    r = Path(path) / RESUME
    r.mkdir(parents=True, exist_ok=True)
    tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    for i, t in enumerate(carried or ()):
        tensors[f"state.{i}"] = t
    for k, t in (extra or {}).items():
        tensors[f"extra.{k}"] = t
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic_write(r / WEIGHTS, lambda tmp: save_model(unwrap(model), str(tmp)))
    _atomic_write(r / "state.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    _write_json(r / "state.json", {"format_version": FORMAT_VERSION, **counters, "optimizer": opt_meta})


def read_resume(path: str | Path) -> dict:
    """The counters and settings of a resumable run (no tensors)."""
    r = Path(path) / RESUME
    if not (r / "state.json").is_file():
        raise CharLMError(f"nothing to resume in {str(path)!r} (no {RESUME}/state.json)")
    state = _read_json(r / "state.json", "resume state")
    if state.get("format_version") != FORMAT_VERSION:
        raise CharLMError(f"resume state in {str(path)!r} has an unsupported format version")
    return state


def load_resume(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[dict, tuple[torch.Tensor, ...] | None, dict[str, torch.Tensor]]:
    """Restore weights, optimizer and RNG from <path>/resume/; return the counters, the carried
    recurrent state and any extra tensors saved with it (e.g. averaged weights)."""
    state = read_resume(path)
    r = Path(path) / RESUME
    try:
        tensors = load_file(str(r / "state.safetensors"))
        load_model(unwrap(model), str(r / WEIGHTS))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CharLMError(f"resume state in {str(path)!r} is corrupt ({str(e).splitlines()[0]})") from None
    _unflatten_optimizer(optimizer, tensors, state["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    keys = sorted((k for k in tensors if k.startswith("state.")), key=lambda k: int(k.split(".")[1]))
    extra = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return state, tuple(tensors[k] for k in keys) or None, extra


def find_default(explicit: str | Path | None) -> tuple[Path, str]:
    """Which checkpoint generate/eval use, and why: --checkpoint, else the newest under
    ./checkpoints/, else the model shipped with charlm."""
    if explicit is not None:
        return Path(explicit), "given with --checkpoint"
    local = Path("checkpoints")
    if local.is_dir():
        found = [d for d in local.iterdir() if d.is_dir() and is_checkpoint(d)]
        if found:
            newest = max(found, key=lambda d: (d / CONFIG).stat().st_mtime)
            return newest, "newest under ./checkpoints/"
    shipped = shipped_checkpoint()
    if is_checkpoint(shipped):
        return shipped, "the model shipped with charlm"
    raise CharLMError("no checkpoint found: train one with `charlm train CORPUS` or pass --checkpoint DIR")


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


def shipped_checkpoint() -> Path:
    return project_root() / "checkpoints" / "tang-quatrains"
