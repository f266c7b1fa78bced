"""Devices and precision: what runs on the CPU here, and the GPU paths (skipped without a GPU;
benchmarks/gpu_check.py runs the rest the day one is lent)."""


import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.devices import bf16_supported, resolve_device, resolve_precision
from charlm.errors import CharLMError
from charlm.evaluate import evaluate
from charlm.train import train_corpus

from conftest import POEMS, InterruptAt, tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
TEXT = "\n".join(POEMS * 3) + "\n"


def test_auto_and_cpu_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("name, message", [
    ("tpu", "--device must be"), ("cuda:x", "--device must be"), ("", "--device must be"),
    ("cuda:1:2", "--device must be"), ("cpu\x1b[31m", r"\\x1b"),
])
def test_unknown_devices_are_a_sentence(name, message):
    with pytest.raises(CharLMError, match=message):
        resolve_device(name)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_a_sentence(name):
    with pytest.raises(CharLMError, match="needs a CUDA GPU.*--device cpu"):
        resolve_device(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_without_apple_silicon_is_a_sentence():
    with pytest.raises(CharLMError, match="--device mps needs Apple silicon"):
        resolve_device("mps")


def test_precision_follows_the_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if bf16_supported(cpu) else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(CharLMError, match="fp16 is for CUDA"):
        resolve_precision("fp16", cpu)
    if not bf16_supported(cpu):
        with pytest.raises(CharLMError, match="bf16 needs a CPU with bf16"):
            resolve_precision("bf16", cpu)


@no_cuda
def test_train_with_cuda_on_a_machine_without_one_is_one_sentence(tmp_path):
    (tmp_path / "p.txt").write_text(TEXT, encoding="utf-8")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "p.txt"), "--out", str(tmp_path / "ck"), "--device", "cuda",
                                 "--max-steps", "2"])
    assert r.exit_code == 1 and r.stderr.startswith("error: --device cuda needs a CUDA GPU"), r.stderr
    assert not (tmp_path / "ck" / "best").exists()


def test_explicit_cpu_device_trains_and_loads_anywhere(tmp_path):
    cfg = tiny_config(max_steps=12)
    cfg.train.device = "cpu"
    train_corpus(TEXT, cfg, tmp_path / "ck")
    ck = checkpoint.load(tmp_path / "ck", device="cpu")
    assert next(ck.model.parameters()).device.type == "cpu"
    assert ck.config.train.device == "cpu"


# -- on a GPU ----------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_cuda_training_resumes_and_its_checkpoint_loads_on_the_cpu(tmp_path, precision):
    def cfg():
        c = tiny_config(max_steps=24, eval_interval=8, precision=precision)
        c.train.device = "cuda"
        c.model.dropout = 0.2
        return c

    torch.backends.cudnn.deterministic = True
    train_corpus(TEXT, cfg(), tmp_path / "a")
    train_corpus(TEXT, cfg(), tmp_path / "b", callbacks=InterruptAt(11))
    train_corpus(TEXT, cfg(), tmp_path / "b", resume=True)
    wa, wb = (load_file(str(tmp_path / d / "resume" / "model.safetensors")) for d in "ab")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    ck = checkpoint.load(tmp_path / "a")  # trained on the GPU, read on the CPU
    assert next(ck.model.parameters()).device.type == "cpu"
    result = evaluate(ck.model, ck.vocab, "\n".join(POEMS[:4]) + "\n")
    assert result.bpc == pytest.approx(evaluate(checkpoint.load(tmp_path / "a", device="cuda").model, ck.vocab,
                                                "\n".join(POEMS[:4]) + "\n").bpc, rel=1e-4)


@pytest.mark.parametrize("command", [["generate", "--seed", "1", "--max-chars", "8"], ["eval", "--json"],
                                     ["compose", "--form", "五绝"]])
def test_generate_eval_and_compose_take_a_device(trained, command):
    r = CliRunner().invoke(app, [*command, "--checkpoint", str(trained), "--device", "tpu"], input="q\n")
    assert r.exit_code == 1 and "error: --device must be" in r.stderr, r.stderr
    if command[0] != "compose":
        r = CliRunner().invoke(app, [*command, "--checkpoint", str(trained), "--device", "cpu"])
        assert r.exit_code == 0, r.stderr
    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, [*command, "--checkpoint", str(trained), "--device", "cuda"], input="q\n")
        assert r.exit_code == 1 and "needs a CUDA GPU" in r.stderr, r.stderr


@cuda
def test_the_same_seed_writes_the_same_poems_on_the_gpu(trained):
    """Constraints and sampling run on the CPU whatever the device, so only float rounding could differ."""
    args = ["generate", "--checkpoint", str(trained), "-n", "4", "--seed", "3", "--form", "五绝", "--rhyme"]
    cpu = CliRunner().invoke(app, [*args, "--device", "cpu"])
    gpu = CliRunner().invoke(app, [*args, "--device", "cuda"])
    assert cpu.exit_code == gpu.exit_code == 0 and cpu.stdout == gpu.stdout
