"""charlm models: the shipped models and the runs under ./checkpoints/, read from config.json only,
the default marked, and a broken checkpoint listed with one sentence instead of ending the list."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.config import Config, ModelConfig
from charlm.model import CharLM
from charlm.vocab import Vocab

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _save(path: Path, hidden: int, bpc: float) -> Path:
    vocab = Vocab.from_text("春眠不觉晓，处处闻啼鸟。")
    config = Config(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=hidden, num_layers=1))
    torch.manual_seed(0)
    return checkpoint.save(path, CharLM(config.model), config, vocab, metrics={"valid_bpc": bpc},
                           corpus={"path": "poems.txt", "characters": 1234})


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """./checkpoints/ with two good runs (the newer one is the default), broken ones and non-runs."""
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "checkpoints"
    old = _save(local / "old", hidden=12, bpc=3.25)
    _save(local / "new", hidden=20, bpc=2.5)
    os.utime(old / "best" / "config.json", (1, 1))
    (local / "corrupt").mkdir()
    (local / "corrupt" / "config.json").write_text("{", encoding="utf-8")
    (local / "dangling").mkdir()
    os.symlink(".best.gone", local / "dangling" / "best")
    markup = _save(local / "a[bold]b", hidden=12, bpc=3.0)
    (markup / "best" / checkpoint.WEIGHTS).unlink()
    (local / "notes").mkdir()  # no checkpoint files at all: not listed
    (local / "README").write_text("not a folder", encoding="utf-8")
    return local


def test_models_lists_shipped_and_local_runs_from_their_config(runs, monkeypatch):
    # No weights are read: loading anything would fail.
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    monkeypatch.setattr(checkpoint, "safe_open", lambda *a, **k: pytest.fail("weights were opened"))
    r = run("models", "--json")
    assert r.exit_code == 0, r.stderr
    found = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    shipped = [m for m in found.values() if m["source"] == "shipped"]
    assert [m["name"] for m in shipped] == list(checkpoint.shipped_models())
    assert set(found) - {m["name"] for m in shipped} == {"old", "new", "corrupt", "dangling", "a[bold]b"}

    new = found["new"]
    assert new["default"] and not found["old"]["default"] and not any(m["default"] for m in shipped)
    assert new["path"] == str(Path("checkpoints") / "new") and new["source"] == "local" and new["problem"] is None
    assert (new["corpus"], new["corpus_chars"], new["valid_bpc"]) == ("poems.txt", 1234, 2.5)
    unit = checkpoint.unit_dir(runs / "new")
    assert new["size_bytes"] == sum(f.stat().st_size for f in unit.iterdir())
    assert found["old"]["valid_bpc"] == 3.25 and found["old"]["parameters"] < new["parameters"]

    assert "corrupt config.json" in found["corrupt"]["problem"]
    assert "best link points to nothing" in found["dangling"]["problem"]
    assert found["a[bold]b"]["problem"] == "checkpoint 'checkpoints/a[bold]b' has no model.safetensors"
    assert found["corrupt"]["parameters"] is None


def test_parameters_are_what_the_weights_file_holds(runs):
    new = next(m for m in json.loads(run("models", "--json").stdout)["models"] if m["name"] == "new")
    with safe_open(str(checkpoint.unit_dir(runs / "new") / checkpoint.WEIGHTS), "pt") as f:
        stored = sum(torch.Size(f.get_slice(k).get_shape()).numel() for k in f.keys())
    assert new["parameters"] == stored


def test_models_table_shows_names_literally_and_marks_broken_and_default(runs):
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "(local)" in line]
    assert any("new (local)" in line and "*" in line and "2.500" in line for line in rows)
    assert any("a[bold]b (local)" in line and "broken: checkpoint" in line for line in rows)
    assert "notes" not in r.stdout and "README" not in r.stdout


def test_models_in_an_empty_directory_shows_the_shipped_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("models", "--json")
    assert r.exit_code == 0, r.stderr
    models = json.loads(r.stdout)["models"]
    if checkpoint.is_checkpoint(checkpoint.shipped_checkpoint()):
        assert models[0]["default"] and models[0]["path"] == str(checkpoint.shipped_checkpoint())
        assert models[0]["source"] == "shipped" and models[0]["valid_bpc"] > 0
    monkeypatch.setattr(checkpoint, "shipped_models", lambda: {})
    monkeypatch.setattr(checkpoint, "shipped_checkpoint", lambda: tmp_path / "nowhere")
    r = run("models")
    assert r.exit_code == 0 and r.stdout == "" and "no models found" in r.stderr
    assert json.loads(run("models", "--json").stdout) == {"models": []}


def test_an_unreadable_checkpoints_folder_is_one_line_of_the_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    real = Path.iterdir

    def refuse(self):
        if self.name == "checkpoints":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    r = run("models", "--json")
    assert r.exit_code == 0, r.stderr
    last = json.loads(r.stdout)["models"][-1]
    assert last["problem"] == "'checkpoints' cannot be listed (Permission denied)"


def test_the_installed_package_is_looked_in_before_the_source_checkout(tmp_path, monkeypatch):
    """An installed charlm finds its models in charlm/shipped/<name>/, with no source tree around it."""
    package = tmp_path / "site-packages" / "charlm"
    package.mkdir(parents=True)
    (package / "shipped.json").write_text('{"default": "b", "models": ["a", "b"]}', encoding="utf-8")
    (package / "shipped").mkdir()
    for name in ("a", "b"):  # flat, as the build copies them
        os.rename(checkpoint.unit_dir(_save(tmp_path / "run" / name, hidden=12, bpc=3.0)), package / "shipped" / name)
    monkeypatch.setattr(checkpoint, "PACKAGE", package)
    assert checkpoint.shipped_models() == {"b": package / "shipped" / "b", "a": package / "shipped" / "a"}
    monkeypatch.chdir(tmp_path)
    assert checkpoint.find_default(None) == (package / "shipped" / "b", "the model shipped with charlm")
    for name in ("a", "b"):
        (package / "shipped" / name / checkpoint.CONFIG).unlink()
    assert checkpoint.shipped_models() == {}  # and no pyproject.toml beside it: not a source checkout
    with pytest.raises(checkpoint.CharLMError, match="no checkpoint found"):
        checkpoint.find_default(None)


def test_in_a_source_checkout_the_shipped_default_beats_a_newer_shipped_model(tmp_path, monkeypatch):
    """A checkout's checkpoints/ holds every shipped model: there, "the newest under ./checkpoints/"
    must not pick one of them over the default that shipped.json names; a run of the user's does."""
    root = tmp_path / "src"
    package = root / "charlm"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text("", encoding="utf-8")
    (package / "shipped.json").write_text('{"default": "a", "models": ["a", "b"]}', encoding="utf-8")
    (root / "checkpoints").mkdir()
    for name in ("a", "b"):  # flat, as the shipped models are committed
        os.rename(checkpoint.unit_dir(_save(tmp_path / "run" / name, hidden=12, bpc=3.0)), root / "checkpoints" / name)
    os.utime(root / "checkpoints" / "a" / checkpoint.CONFIG, (1, 1))  # b is newer
    monkeypatch.setattr(checkpoint, "PACKAGE", package)
    monkeypatch.chdir(root)
    path, why = checkpoint.find_default(None)
    assert path == root / "checkpoints" / "a" and "shipped" in why
    mine = _save(root / "checkpoints" / "mine", hidden=12, bpc=3.0)
    assert checkpoint.find_default(None)[0].resolve() == mine.resolve()


def test_every_tampered_checkpoint_of_the_hostile_matrix_is_listed_without_a_traceback(trained, tmp_path, monkeypatch):
    """The 55 tampered checkpoints of test_hostile_checkpoints side by side under ./checkpoints/: one
    listing names each; what config.json shows is a sentence, the rest waits for load to find."""
    from test_hostile_checkpoints import CASES

    for name, tamper, _ in CASES:
        shutil.copytree(checkpoint.unit_dir(trained), tmp_path / "checkpoints" / name)
        tamper(tmp_path / "checkpoints" / name)
    monkeypatch.chdir(tmp_path)
    r = run("models", "--json")
    assert r.exit_code == 0 and r.exception is None, r.stderr
    found = {m["name"]: m for m in json.loads(r.stdout)["models"] if m["source"] == "local"}
    assert set(found) == {name for name, _, _ in CASES}
    for m in found.values():
        assert m["problem"] is None or ("\n" not in m["problem"] and len(m["problem"]) < 400), m
    assert "corrupt config.json" in found["config-not-utf8"]["problem"]
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "Traceback" not in r.stderr and "\x1b" not in r.stdout
