"""charlm installed like any package: built into a source distribution and a wheel, installed into a
fresh virtual environment, and run from an empty directory where the source tree is out of reach."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from charlm import checkpoint

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((ROOT / "charlm" / "shipped.json").read_text(encoding="utf-8"))
DEFAULT = MANIFEST["default"]
SHIPPED = sorted(MANIFEST["models"], key=lambda n: n != DEFAULT)


def _run(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(not checkpoint.is_checkpoint(ROOT / "checkpoints" / DEFAULT), reason="no source checkout")
def test_a_wheel_installed_in_a_fresh_venv_generates_with_the_shipped_model(tmp_path):
    # The source tree as a checkout holds it (no virtual environment, no build output), plus what a
    # user may have trained into checkpoints/: that must stay out of the packages.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
    run = src / "checkpoints" / "my-run"
    run.mkdir()
    for name in ("config.json", "vocab.json", "model.safetensors"):
        shutil.copyfile(src / "checkpoints" / DEFAULT / name, run / name)

    # python -m build's way: the source distribution first, then the wheel built from it.
    dist = tmp_path / "dist"
    build = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    sdist = dist / _run(sys.executable, "-c", build, dist, cwd=src).stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.10.12+, 3.11.4+
        tar.extractall(tmp_path / "unpacked", **safe)
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", dist, unpacked)
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"charlm/shipped/{DEFAULT}/model.safetensors" in names and "charlm/shipped.json" in names
    assert "charlm/cipai.json" in names  # the tune table that --form <tune> reads
    assert not [n for n in names if "my-run" in n or n.endswith("metrics.jsonl")]

    # A fresh venv with only the wheel installed; the dependencies (torch, …) come from this test's
    # environment through a .pth file, which puts them after the venv's own site-packages.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "_outer_dependencies.pth").write_text("\n".join(outer) + "\n", encoding="utf-8")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    where = _run(python, "-c", "import charlm; print(charlm.__file__)", cwd=empty, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # not the source tree, not the test's own charlm

    r = _run(venv / "bin" / "charlm", "generate", "--prompt", "春", "--seed", 1, "--max-chars", 10, cwd=empty, env=env)
    assert r.stdout.startswith("春") and len(r.stdout.strip()) > 1
    installed = site / "charlm" / "shipped" / DEFAULT
    assert f"checkpoint: {installed} (the model shipped with charlm)" in r.stderr
    assert _sha256(installed / "model.safetensors") == _sha256(ROOT / "checkpoints" / DEFAULT / "model.safetensors")

    r = _run(venv / "bin" / "charlm", "generate", "--list-forms", "--json", cwd=empty, env=env)
    assert "浣溪沙" in [f["name"] for f in json.loads(r.stdout)["forms"]]
    assert _sha256(site / "charlm" / "cipai.json") == _sha256(ROOT / "corpora" / "cipai.json")

    r = _run(venv / "bin" / "charlm", "models", "--json", cwd=empty, env=env)
    found = json.loads(r.stdout)["models"]
    assert [m["name"] for m in found] == SHIPPED  # the default first
    model = found[0]
    assert (model["name"], model["path"], model["source"], model["default"]) == (DEFAULT, str(installed), "shipped", True)
    assert all(m["source"] == "shipped" and not m["default"] and m["problem"] is None for m in found[1:])

    # the couplet model answers from the wheel too
    assert f"charlm/shipped/{MANIFEST['couplet']}/model.safetensors" in names
    r = _run(venv / "bin" / "charlm", "generate", "--couplet", "明月松间照", "--seed", 1, cwd=empty, env=env)
    assert len(r.stdout.strip()) == 5
    assert f"checkpoint: {site / 'charlm' / 'shipped' / MANIFEST['couplet']} (the model shipped with charlm)" in r.stderr
    assert model["parameters"] > 0 and model["problem"] is None

    # the shipped classifier is the default of charlm classify, and generate's stays the language model
    r = _run(venv / "bin" / "charlm", "classify", "--json", "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
             cwd=empty, env=env)
    classifier = site / "charlm" / "shipped" / MANIFEST["classify"]
    assert f"checkpoint: {classifier} (the model shipped with charlm)" in r.stderr
    (result,) = json.loads(r.stdout)["results"]
    assert result["label"] in result["probs"] and sum(result["probs"].values()) == pytest.approx(1)
    assert os.listdir(empty) == []
