"""Two processes under torchrun (gloo on the CPU) take the same steps as one process with the same
global batch, and a run they started resumes in one process."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from charlm import checkpoint

from conftest import POEMS

TINY = ["--embed", "16", "--hidden", "24", "--layers", "2", "--dropout", "0", "--seq-len", "16", "--batch-size", "4",
        "--precision", "fp32", "--valid-fraction", "0.2", "--threads", "1", "--eval-interval", "6"]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def _env():
    env = dict(os.environ, PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _train(cwd, out, *args, processes=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    for attempt in range(2):
        r = subprocess.run([*launcher, "-m", "charlm", "train", "poems.txt", "--out", out, *TINY, *args], cwd=cwd,
                           env=_env(), capture_output=True, text=True, encoding="utf-8", timeout=300)
        # the launcher picks a free port and binds it a moment later; another job on the machine can
        # take it in between. That race (and only that) is worth a second launch.
        if r.returncode == 0 or "Address already in use" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(d):
    return load_file(str(d / "resume" / "model.safetensors"))


def test_two_processes_equal_one_with_the_same_global_batch_and_resume_in_one(tmp_path):
    (tmp_path / "poems.txt").write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    two = _train(tmp_path, "two", "--max-steps", "12", processes=2)
    assert "2 processes share the work: 2 rows each" in two.stderr
    assert two.stderr.count("training summary") == 1  # process 0 alone reports
    _train(tmp_path, "one", "--max-steps", "12")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # the carried rows of both processes were saved, in order, as one batch: a single process resumes
    state = checkpoint.read_resume(tmp_path / "two")
    assert state["processes"] == 2 and state["step"] == 12
    _train(tmp_path, "two", "--resume", "--max-steps", "18")
    _train(tmp_path, "one", "--resume", "--max-steps", "18")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len((tmp_path / "one" / "metrics.jsonl").read_text(encoding="utf-8").splitlines())


def test_a_batch_the_processes_cannot_share_is_a_sentence(tmp_path):
    (tmp_path / "poems.txt").write_text("\n".join(POEMS * 3) + "\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                        "charlm", "train", "poems.txt", "--out", "odd", *TINY, "--batch-size", "3", "--max-steps", "2"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert r.returncode != 0
    assert "cannot be shared by 2 processes" in r.stderr and "Traceback" not in r.stderr.split("error:")[0]
