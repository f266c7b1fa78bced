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
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from charlm import __version__
from charlm.config import Config
from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.vocab import Vocab

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
CONFIG = "config.json"
LINES = "lines.txt"
RESUME = "resume"
_UMASK = os.umask(0)
os.umask(_UMASK)


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


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CharLMError(f"checkpoint {str(path.parent)!r} has no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CharLMError(f"checkpoint {str(path.parent)!r} has a corrupt {what} ({e})") from None


def is_checkpoint(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def load(path: str | Path) -> Checkpoint:
    p = Path(path)
    if not p.exists():
        raise CharLMError(f"checkpoint {str(p)!r} does not exist")
    if not p.is_dir():
        raise CharLMError(f"checkpoint {str(p)!r} is not a directory (a checkpoint is a folder with {CONFIG})")
    meta = _read_json(p / CONFIG, "config.json")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CharLMError(
            f"checkpoint {str(p)!r} has format version {version!r}; this charlm reads version {FORMAT_VERSION}"
        )
    config = Config.from_dict(meta.get("config", {}))
    vocab_data = _read_json(p / VOCAB, "vocab.json")
    vocab = Vocab.from_dict(vocab_data)
    if config.model.vocab_size != len(vocab):
        raise CharLMError(f"checkpoint {str(p)!r} is inconsistent: config says {config.model.vocab_size} "
                          f"characters, vocabulary has {len(vocab)}")
    model = CharLM(config.model)
    if not (p / WEIGHTS).is_file():
        raise CharLMError(f"checkpoint {str(p)!r} has no {WEIGHTS}")
    try:
        missing, unexpected = load_model(model, str(p / WEIGHTS), strict=False)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CharLMError(f"checkpoint {str(p)!r} has corrupt weights ({str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise CharLMError(f"checkpoint {str(p)!r} weights do not match its config "
                          f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    model.eval()
    lines = None
    if (p / LINES).is_file():
        lines = set((p / LINES).read_text(encoding="utf-8").split("\n")) - {""}
    return Checkpoint(model, config, vocab, p, meta.get("metrics", {}), meta.get("corpus", {}),
                      vocab_data.get("counts"), lines)


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
