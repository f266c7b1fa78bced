"""Where the model runs and in which precision: `--device auto|cpu|cuda|cuda:N|mps`.

auto picks CUDA, then Apple's MPS, then the CPU. Precision `auto` means bf16 autocast where the
device has bf16 matrix units (CUDA GPUs from Ampere on; CPUs with AMX or AVX-512 BF16), fp16 with
a gradient scaler on older CUDA GPUs, and fp32 elsewhere. Weights and the optimizer always stay in
fp32; validation is always scored in fp32.
"""

from __future__ import annotations

import re
from contextlib import nullcontext

import torch

from charlm.config import DEVICE_HELP
from charlm.errors import CharLMError, describe


def resolve_device(name: str) -> torch.device:
    """The torch device a --device value names, refused with a sentence where it is not here."""
    n = name.strip().lower()
    if n == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if n == "cpu":
        return torch.device("cpu")
    if n == "mps":
        if not _mps_available():
            raise CharLMError("--device mps needs Apple silicon with PyTorch's MPS backend, which is not "
                              "available here; use --device cpu")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d{1,4}))?", n)
    if m is None:
        raise CharLMError(f"--device must be {DEVICE_HELP}, not {describe(name)}")
    if not torch.cuda.is_available():
        raise CharLMError(f"--device {n} needs a CUDA GPU, and none is available here "
                          f"(this PyTorch {'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); "
                          f"use --device cpu")
    index = int(m.group(1)) if m.group(1) else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise CharLMError(f"--device {n}: there are only {torch.cuda.device_count()} CUDA devices here "
                          f"(numbered from 0)")
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def bf16_supported(device: torch.device | None = None) -> bool:
    """True where the device has native bf16 matrix support."""
    if device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device is not None and device.type != "cpu":
        return False
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a private probe may change between torch versions
            pass
    return False


def resolve_precision(precision: str, device: torch.device | None = None) -> str:
    """bf16, fp16 or fp32: what --precision means on this device; impossible choices refused."""
    device = device or torch.device("cpu")
    if precision == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        where = ("a CPU with bf16 support (AMX or AVX-512 BF16)" if device.type == "cpu"
                 else "a GPU with bf16 support (NVIDIA Ampere or newer)")
        raise CharLMError(f"--precision bf16 needs {where}; use fp32")
    if precision == "fp16" and device.type != "cuda":
        raise CharLMError("--precision fp16 is for CUDA GPUs; on this device use bf16 or fp32")
    return precision


def autocast(precision: str, device: torch.device | None = None):
    """The autocast context for a resolved precision (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast((device or torch.device("cpu")).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device):
    """fp16 needs its gradients scaled to stay representable; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """Every random-number state dropout draws from on this device (the CPU's always)."""
    states = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["rng"])
    if device.type == "cuda" and "rng.cuda" in states:
        torch.cuda.set_rng_state(states["rng.cuda"], device)
